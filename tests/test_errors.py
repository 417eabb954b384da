"""Bad input: each case is a specvlm.InputError subclass naming the problem and what is accepted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import specvlm
from specvlm import api
from specvlm.cli import main
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.target import load_target
from specvlm.tiny import build_tiny_llava
from tests.conftest import noise_image


def test_missing_folder(tmp_path):
    with pytest.raises(specvlm.ModelFolderError, match="not found"):
        load_target(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(specvlm.ModelFolderError, match="no config.json"):
        load_target(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(
        specvlm.UnsupportedModelError, match="supported: LlavaForConditionalGeneration"
    ):
        load_target(tmp_path)


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(specvlm.ModelFolderError, match="cannot read"):
        load_target(tmp_path)


def test_missing_weights(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(specvlm.ModelFolderError, match="cannot load the LLaVA weights"):
        load_target(broken)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return api.Engine(load_target(tiny_dir), None)


def test_non_image_file(engine, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(specvlm.ImageError, match="cannot read .* as an image.*PNG, JPEG"):
        engine.generate("describe", images=[text])


def test_corrupt_image_file(engine, tmp_path):
    good = tmp_path / "ok.png"
    noise_image(0).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(specvlm.ImageError, match="bad.png"):
        engine.generate("describe", images=[bad])


def test_missing_image_file(engine, tmp_path):
    with pytest.raises(specvlm.ImageError, match="not found"):
        engine.generate("describe", images=[tmp_path / "gone.png"])


def test_placeholder_without_image(engine):
    with pytest.raises(specvlm.ImageError, match="1 '<image>' placeholders but 0 images"):
        engine.generate("what is in <image>?")


def test_image_for_text_only_template(tmp_path, tiny_dir):
    folder = tmp_path / "textonly"
    shutil.copytree(tiny_dir, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "USER: {{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:"
    )
    engine = api.Engine(load_target(folder), None)
    with pytest.raises(
        specvlm.ImageError,
        match="template placed 0 images, but 1 were given; it cannot take images",
    ):
        engine.generate("describe", images=[noise_image(0)])


def test_prompt_longer_than_context(tmp_path):
    folder = build_tiny_llava(tmp_path / "short", max_position_embeddings=40)
    engine = api.Engine(load_target(folder), None)
    with pytest.raises(specvlm.PromptError, match="context is 40"):
        engine.generate("describe the image in great detail please", images=[noise_image(0)])


def test_generation_stops_at_the_context_limit(tmp_path):
    folder = build_tiny_llava(tmp_path / "short", max_position_embeddings=40, with_eos=False)
    target = load_target(folder)
    n_prompt = target.prepare("hi", [noise_image(0)]).input_ids.shape[0]
    torch.manual_seed(0)
    head = EagleHead(EagleConfig.for_target(target.info)).eval()
    for draft in (None, head):
        out = api.Engine(target, draft).generate("hi", images=[noise_image(0)], max_new_tokens=500)
        assert len(out.token_ids) == 40 - n_prompt


@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_bad_max_new_tokens(engine, value):
    with pytest.raises(specvlm.GenerationArgumentError, match="max_new_tokens must be a positive"):
        engine.generate("describe", images=[noise_image(0)], max_new_tokens=value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature must be"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -2}, "top_k must be"),
    ],
)
def test_bad_sampling_arguments(engine, kwargs, message):
    with pytest.raises(specvlm.GenerationArgumentError, match=message):
        engine.generate("describe", images=[noise_image(0)], **kwargs)


def test_video_for_an_image_target(engine):
    with pytest.raises(specvlm.InputError, match="does not read video"):
        engine.generate("describe", video=["frame.png"])


def test_draft_for_another_target_is_refused(tmp_path, tiny_dirs):
    a, b = tiny_dirs["llama-mha-untied-vfl1-32px"], tiny_dirs["qwen2-gqa-untied-vfl2-32px"]
    head = EagleHead(EagleConfig.for_target(load_target(b).info))
    head.save(tmp_path / "draft_b")
    with pytest.raises(specvlm.DraftMismatchError, match="different target"):
        api.load(target=a, draft=tmp_path / "draft_b")


def test_draft_for_same_shape_other_weights_is_refused(tmp_path, tiny_dir):
    twin = build_tiny_llava(tmp_path / "twin", num_layers=3, with_eos=False, seed=99)
    head = EagleHead(EagleConfig.for_target(load_target(twin).info))
    head.save(tmp_path / "draft_twin")
    with pytest.raises(specvlm.DraftMismatchError, match="different weights"):
        api.load(target=tiny_dir, draft=tmp_path / "draft_twin")


def test_draft_folder_with_unknown_keys(tmp_path, tiny_dir):
    head = EagleHead(EagleConfig.for_target(load_target(tiny_dir).info))
    head.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["mystery"] = 1
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(specvlm.ModelFolderError, match="unknown keys \\['mystery'\\]"):
        api.load(target=tiny_dir, draft=tmp_path / "d")


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    code = main(["generate", "--target", str(tmp_path / "missing"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "model folder not found" in err and "Traceback" not in err


def test_cli_bad_usage_exit_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "specvlm.cli", "generate", "--max-new-tokens", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
