"""The distillation trainer: answer masking, bad rows, learning, resume after SIGKILL, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import specvlm
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.target import load_target
from specvlm.train.data import Conversation, encode, read_conversations
from specvlm.train.distill import TrainConfig, distill_loss, target_sequence, train_draft
from specvlm.world.dataset import make_dataset
from tests.conftest import noise_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    return make_dataset(
        "train", 4, out, families=["conversation", "reasoning"], resolution=64, progress=False
    )


def test_answer_mask_covers_answer_tokens_only(tiny_dir, tmp_path):
    noise_image(0).save(tmp_path / "a.png")
    conv = Conversation(
        "x",
        [
            ("user", "<image>\nwhat is it?"),
            ("assistant", "a red circle."),
            ("user", "and left?"),
            ("assistant", "nothing there."),
        ],
        [tmp_path / "a.png"],
    )
    target = load_target(tiny_dir)
    enc = encode(target, conv)
    ids, mask = enc.prompt.input_ids, enc.answer_mask
    tok = target.tokenizer
    assert tok.decode(ids[mask]) == " a red circle.</s> nothing there.</s>"
    assert not mask[ids == target.image_token_id].any()  # image positions never count
    assert "what is it?" in tok.decode(ids[~mask]) and "and left?" in tok.decode(ids[~mask])
    # the loss reads exactly the rows that predict those tokens
    features, embeds, m = target_sequence(target, conv)
    head = EagleHead(EagleConfig.for_target(target.info))
    _, _, rows = distill_loss(head, target, features, embeds, m, TrainConfig())
    assert rows == int(mask[1:].sum())


def test_bad_rows_are_counted_or_stop_the_run(tmp_path):
    noise_image(0).save(tmp_path / "a.png")
    good = {
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "image": "missing.png"}),
        json.dumps({"image": "a.png", "conversations": [{"from": "human", "value": "q"}]}),
        json.dumps(
            {**good, "conversations": good["conversations"] * 1, "image": ["a.png", "a.png"]}
        ),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines))
    convs, report = read_conversations(path)
    assert len(convs) == 1 and report.rows == 5
    assert report.skipped == {
        "bad JSON (Expecting property name enclosed in double quotes)": 1,
        "missing image": 1,
        "no answer (no non-empty gpt turn)": 1,
        "image placeholders do not match images": 1,
    }
    with pytest.raises(specvlm.DataError, match=r"d.jsonl:2: bad JSON"):
        read_conversations(path, on_bad_row="stop")


def test_bad_settings_are_refused():
    with pytest.raises(specvlm.InputError, match="schedule must be"):
        TrainConfig(schedule="linear")
    with pytest.raises(specvlm.InputError, match=r"unknown training settings \['lrr'\]"):
        TrainConfig.from_dict({"lrr": 1})


def _agreement(target, head, convs) -> float:
    total = 0.0
    for conv in convs:
        f, e, m = target_sequence(target, conv)
        with torch.no_grad():
            total += distill_loss(head, target, f, e, m, TrainConfig())[1]
    return total / len(convs)


def test_short_training_raises_agreement_far_above_random(tiny_dir, data, tmp_path):
    cfg = TrainConfig(
        epochs=6, batch_size=4, lr=3e-3, checkpoint_every=100, regenerate_max_new_tokens=40
    )
    head = train_draft(
        tiny_dir, data, tmp_path / "d", cfg, regenerate=True, progress=False, log=lambda *_: None
    )
    target = load_target(tiny_dir)
    convs = read_conversations(tmp_path / "d" / "regenerated.jsonl", "/")[0]
    torch.manual_seed(0)
    random_head = EagleHead(EagleConfig.for_target(target.info))
    before, after = _agreement(target, random_head, convs), _agreement(target, head, convs)
    assert before < 0.05 and after > 0.5, (before, after)
    log = [json.loads(x) for x in (tmp_path / "d" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 12 and log[-1]["loss"] < log[0]["loss"]
    assert (tmp_path / "d" / "model.safetensors").is_file()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "specvlm.cli", "train-draft", *args, "--no-progress"]


@pytest.mark.slow
def test_resume_after_sigkill_ends_with_the_same_weights(tiny_dir, data, tmp_path):
    common = [
        "--target",
        str(tiny_dir),
        "--data",
        str(data),
        "--batch-size",
        "2",
        "--epochs",
        "3",
        "--checkpoint-every",
        "1",
        "--feature-noise",
        "0.1",
        "--schedule",
        "cosine",
        "--warmup-steps",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*common, "--out", str(killed)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text() not in ("", "step-1"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = int(latest.read_text().split("-")[1])
    assert 2 <= stopped_at < 12
    subprocess.run(
        _cli(*common, "--out", str(killed), "--resume"), env=env, check=True, capture_output=True
    )
    whole = tmp_path / "whole"
    subprocess.run(_cli(*common, "--out", str(whole)), env=env, check=True, capture_output=True)
    a = load_file(str(killed / "checkpoints" / "step-12" / "head.safetensors"))
    b = load_file(str(whole / "checkpoints" / "step-12" / "head.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_dir, data, tmp_path):
    common = [
        "--target",
        str(tiny_dir),
        "--data",
        str(data),
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--checkpoint-every",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "specvlm.cli",
        "train-draft",
        *common,
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    subprocess.run(run, env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(
        _cli(*common, "--out", str(tmp_path / "one")), env=env, check=True, capture_output=True
    )
    a = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-2" / "head.safetensors"))
    b = load_file(str(tmp_path / "one" / "checkpoints" / "step-2" / "head.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["world"] == 2


def test_regenerated_answers_are_reused_only_for_the_same_inputs(tmp_path, monkeypatch):
    """`--regenerate`'s cache in OUT is keyed by target, prompts, images and token limit."""
    from types import SimpleNamespace

    from specvlm.train import distill
    from specvlm.train.data import Conversation

    calls: list[int] = []

    def fake_regenerate(target, convs, max_new, progress):
        calls.append(len(convs))
        return [Conversation(c.id, [(r, t if r == "user" else f"new {max_new}") for r, t in c.turns])
                for c in convs]  # fmt: skip

    monkeypatch.setattr(distill, "regenerate_answers", fake_regenerate)
    convs = [Conversation("a", [("user", "q1"), ("assistant", "old")])]
    cache = tmp_path / "regenerated.jsonl"
    target_a = SimpleNamespace(info=SimpleNamespace(fingerprint={"structure": "A"}))
    target_b = SimpleNamespace(info=SimpleNamespace(fingerprint={"structure": "B"}))

    first = distill._regenerated(target_a, convs, cache, 0, 1, 8)
    assert first[0].turns[1] == ("assistant", "new 8") and calls == [1]
    distill._regenerated(target_a, convs, cache, 0, 1, 8)
    assert calls == [1]  # same inputs: the cache is reused
    distill._regenerated(target_b, convs, cache, 0, 1, 8)
    assert calls == [1, 1]  # another target: regenerated
    distill._regenerated(target_b, convs, cache, 0, 1, 16)
    other = [Conversation("a", [("user", "q2"), ("assistant", "old")])]
    distill._regenerated(target_b, other, cache, 0, 1, 16)
    assert calls == [1, 1, 1, 1]  # another limit, another prompt: regenerated each time


def test_video_rows_train_a_draft_for_a_video_target(tiny_dir, tmp_path):
    """`world make --kind video` rows (a frames folder each) train a draft for a Video-LLaVA:
    the answer mask is the answers', the frames are read as the video's tokens, regeneration
    keeps the video, and an image target refuses such rows by name."""
    from specvlm.errors import DataError
    from specvlm.tiny_video import build_tiny_video_llava

    folder = build_tiny_video_llava(tmp_path / "tv", num_frames=2)
    data = make_dataset(
        "train", 2, tmp_path / "clips", kind="video", families=["conversation", "reasoning"],
        resolution=32, progress=False,
    )  # fmt: skip
    convs, report = read_conversations(data)
    assert report.kept == 4 and all(c.video is not None and c.video.is_dir() for c in convs)
    target = load_target(folder)
    enc = encode(target, convs[0])
    ids, mask = enc.prompt.input_ids, enc.answer_mask
    answer = convs[0].turns[1][1]
    assert target.tokenizer.decode(ids[mask]).strip().startswith(answer)
    # two frames of a 32 px tower with 8 px patches: 16 patches + the CLS a video keeps, each
    assert int((ids == target.video_token_id).sum()) == 2 * (16 + 1)
    assert not mask[ids == target.video_token_id].any()
    cfg = TrainConfig(epochs=1, batch_size=2, checkpoint_every=100, regenerate_max_new_tokens=6)
    head = train_draft(
        folder, data, tmp_path / "d", cfg, regenerate=True, progress=False, log=lambda *_: None
    )
    assert (tmp_path / "d" / "model.safetensors").is_file() and head is not None
    regenerated = read_conversations(tmp_path / "d" / "regenerated.jsonl", "/")[0]
    assert [c.video.resolve() for c in regenerated] == [c.video.resolve() for c in convs]
    with pytest.raises(DataError, match="does not read video"):
        encode(load_target(tiny_dir), convs[0])
