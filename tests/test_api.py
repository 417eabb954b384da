"""The public API and CLI on a tiny target: generate, stream, stats, draft files, --json."""

from __future__ import annotations

import json

import pytest
import torch

import specvlm
from specvlm import api
from specvlm.cli import main
from specvlm.decoding.stats import SpecStats
from specvlm.draft.eagle import EagleHead
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image

PROMPT = "describe the image in detail."


@pytest.fixture(scope="module")
def pair(tiny_dir, tmp_path_factory):
    draft = tmp_path_factory.mktemp("draft") / "head"
    fit_head_to_target(
        tiny_dir, draft, prompts=[(PROMPT, [noise_image(0)])], new_tokens=64, steps=150
    )
    return tiny_dir, draft


def test_load_pair_generate_and_stats(pair):
    engine = api.load(target=pair[0], draft=pair[1])
    plain = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=48, speculative=False)
    spec = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=48)
    assert spec.token_ids == plain.token_ids and len(spec.token_ids) == 48
    assert spec.text == engine.target.decode(spec.token_ids)
    s = spec.stats
    assert s.new_tokens == 48 and s.prompt_tokens > 16  # 16 image tokens + the text
    assert s.target_forwards < plain.stats.target_forwards == 47
    assert s.tau == pytest.approx(47 / s.target_forwards)
    assert sum(k * v for k, v in s.accept_histogram.items()) == 47
    assert s.ttft_s > 0 and s.decode_s > 0 and s.tokens_per_s > 0
    assert set(s.to_dict()) >= {
        "tau",
        "accept_histogram",
        "target_forwards",
        "prefill_s",
        "ttft_s",
        "decode_s",
        "tokens_per_s",
    }


def test_stream_pieces_add_up_to_generate(pair):
    engine = api.load(target=pair[0], draft=pair[1])
    full = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=40)
    stats = SpecStats()
    pieces = list(engine.stream(PROMPT, images=[noise_image(0)], max_new_tokens=40, stats=stats))
    assert [t for p in pieces for t in p.token_ids] == full.token_ids
    assert "".join(p.text for p in pieces) == full.text
    assert len(pieces) == stats.target_forwards + 1  # the first token, then one piece a round
    assert stats.tau == full.stats.tau


def test_draft_round_trip_is_fp16_and_exact(pair, tmp_path):
    head = EagleHead.load(pair[1])
    from safetensors import safe_open

    with safe_open(str(pair[1] / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
        names = set(f.keys())  # noqa: SIM118
    assert dtypes == {torch.float16}
    assert not any("embed" in n or "lm_head" in n for n in names), "shared weights are not stored"
    head.save(tmp_path / "again")
    again = EagleHead.load(tmp_path / "again")
    for (n1, p1), (n2, p2) in zip(
        head.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)


def test_cli_generate_json(pair, tmp_path, capsys):
    image = tmp_path / "x.png"
    noise_image(0).save(image)
    argv = [
        "generate",
        "--target",
        str(pair[0]),
        "--draft",
        str(pair[1]),
        "--image",
        str(image),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "24",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    engine = api.load(target=pair[0])
    expected = engine.generate(PROMPT, images=[image], max_new_tokens=24, speculative=False)
    assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
    assert out["stats"]["new_tokens"] == 24 and out["stats"]["tau"] >= 1


def test_cli_generate_with_a_given_tree(pair, tmp_path, capsys):
    image = tmp_path / "x.png"
    noise_image(0).save(image)
    argv = [
        "generate",
        "--target",
        str(pair[0]),
        "--draft",
        str(pair[1]),
        "--image",
        str(image),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "24",
        "--json",
        "--tree",
        "2,3,4",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    engine = api.load(target=pair[0])
    expected = engine.generate(PROMPT, images=[image], max_new_tokens=24, speculative=False)
    assert out["token_ids"] == expected.token_ids
    assert 1 < out["stats"]["mean_tree_size"] <= 4  # the budget given, root included
    assert max(map(int, out["stats"]["accept_histogram"])) <= 3  # depth 2: 2 drafts + root


def test_cli_rejects_a_malformed_tree(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "hi", "--tree", "5,4"])
    assert e.value.code == 2
    assert "DEPTH,TOP_K,BUDGET" in capsys.readouterr().err


def test_tree_config_parses_depth_top_k_budget():
    from specvlm.config import TreeConfig
    from specvlm.errors import GenerationArgumentError

    assert TreeConfig.parse("5,4,12") == TreeConfig(depth=5, top_k=4, budget=12)
    for bad in ("5,4", "5,x,12", "0,4,12", "5,4,12,1"):
        with pytest.raises(GenerationArgumentError, match="DEPTH,TOP_K,BUDGET"):
            TreeConfig.parse(bad)


def test_cli_generate_streams_text(pair, tmp_path, capsys):
    image = tmp_path / "x.png"
    noise_image(0).save(image)
    argv = [
        "generate",
        "--target",
        str(pair[0]),
        "--draft",
        str(pair[1]),
        "--image",
        str(image),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "24",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    engine = api.load(target=pair[0])
    expected = engine.generate(PROMPT, images=[image], max_new_tokens=24, speculative=False)
    assert captured.out == expected.text + "\n"
    assert "tau" in captured.err and "stopped: --max-new-tokens reached" in captured.err


def test_chat_history_prompt(pair):
    engine = api.load(target=pair[0], draft=pair[1])
    chat = [
        {"role": "user", "content": "<image>\nwhat is it?"},
        {"role": "assistant", "content": "a red circle."},
        {"role": "user", "content": "and on the left?"},
    ]
    prepared = engine.target.prepare(chat, [noise_image(0)])
    assert prepared.text.endswith("USER: and on the left? ASSISTANT:")
    plain = engine.generate(chat, images=[noise_image(0)], max_new_tokens=24, speculative=False)
    spec = engine.generate(chat, images=[noise_image(0)], max_new_tokens=24)
    assert spec.token_ids == plain.token_ids
    with pytest.raises(specvlm.PromptError, match="ending with a user turn"):
        engine.generate(chat[:2], images=[noise_image(0)])


def test_a_template_that_writes_its_own_bos_gets_only_one(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "bos"
    shutil.copytree(tiny_dir, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text("<s>" + template)
    target = api.load(target=folder).target
    ids = target.prepare("hi", [noise_image(0)]).input_ids.tolist()
    bos = target.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos
