"""`world make` / `world show` / `world tokenizer` through `register`, as the main CLI wires them."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from specvlm.errors import InputError
from specvlm.world.cli import register
from specvlm.world.language import FAMILIES


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="specvlm")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["world", *argv])
    return args.func(args)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_make_images_writes_llava_jsonl_with_existing_paths(tmp_path):
    out = tmp_path / "img"
    assert run("make", "--split", "train", "--n", "3", "--out", str(out), "--resolution", "48") == 0
    rows = read_jsonl(out / "data.jsonl")
    assert len(rows) == 3 * len(FAMILIES)
    for row in rows:
        assert (out / row["image"]).is_file()
        assert Image.open(out / row["image"]).size == (48, 48)
        assert row["conversations"][0]["value"].startswith("<image>\n")
    assert len({r["id"] for r in rows}) == len(rows)


def test_make_is_deterministic_and_start_offsets(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out in (a, b):
        run(
            "make",
            "--split",
            "val",
            "--n",
            "2",
            "--out",
            str(out),
            "--resolution",
            "32",
            "--families",
            "conversation",
        )
    assert (a / "data.jsonl").read_bytes() == (b / "data.jsonl").read_bytes()
    assert (a / "images/000000001.png").read_bytes() == (b / "images/000000001.png").read_bytes()
    run(
        "make",
        "--split",
        "val",
        "--n",
        "1",
        "--out",
        str(c),
        "--resolution",
        "32",
        "--families",
        "conversation",
        "--start",
        "1",
    )
    assert read_jsonl(c / "data.jsonl")[0] == read_jsonl(a / "data.jsonl")[1]


def test_make_video_and_events(tmp_path):
    vid, ev = tmp_path / "vid", tmp_path / "ev"
    run(
        "make",
        "--split",
        "hard",
        "--n",
        "2",
        "--out",
        str(vid),
        "--kind",
        "video",
        "--resolution",
        "32",
        "--families",
        "detailed,reasoning",
    )
    rows = read_jsonl(vid / "data.jsonl")
    assert [r["meta"]["family"] for r in rows] == ["detailed", "reasoning"] * 2
    for row in rows:
        frames = sorted((vid / row["video"]).glob("frame_*.png"))
        assert len(frames) == row["meta"]["clip"]["n_frames"]
        assert row["conversations"][0]["value"].startswith("<video>\n")
    run(
        "make",
        "--split",
        "test",
        "--n",
        "2",
        "--out",
        str(ev),
        "--kind",
        "events",
        "--resolution",
        "32",
        "--families",
        "multiple_choice",
    )
    for row in read_jsonl(ev / "data.jsonl"):
        assert (ev / row["image"]).is_file()
        with np.load(ev / row["events"]) as data:
            assert set(data.files) == {"x", "y", "t", "p"}
            assert np.all(np.diff(data["t"]) >= 0) and data["x"].max() < 32


@pytest.mark.parametrize(
    "argv, message",
    [
        (("make", "--split", "dev", "--n", "1", "--out", "o"), "accepted: hard, test, train, val"),
        (("make", "--split", "train", "--n", "0", "--out", "o"), "at least 1"),
        (
            ("make", "--split", "train", "--n", "1", "--out", "o", "--kind", "audio"),
            "accepted: image, video, events",
        ),
        (
            ("make", "--split", "train", "--n", "1", "--out", "o", "--families", "poems"),
            "accepted: detailed",
        ),
        (
            ("make", "--split", "train", "--n", "1", "--out", "o", "--resolution", "4"),
            "between 16 and 1024",
        ),
        (
            ("make", "--split", "train", "--n", "1", "--out", "o", "--start", "-1"),
            "samples must lie",
        ),
        (("show", "--out", "sheet.jpg"), ".png"),
        (("show", "--n", "0", "--out", "s.png"), "between 1 and 64"),
        (("train-target", "--out", "t", "--steps", "5", "--lr", "0"), "--lr must be positive"),
        (("train-target", "--out", "t", "--steps", "5", "--init", "nowhere"), "not a model folder"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message):
        run(*argv)


def test_show_writes_a_contact_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    assert run("show", "--split", "hard", "--n", "2", "--out", str(out), "--resolution", "64") == 0
    img = Image.open(out)
    assert img.width >= 2 * 64 and img.height > 64
    out_ev = tmp_path / "ev.png"
    assert (
        run("show", "--kind", "events", "--n", "1", "--out", str(out_ev), "--resolution", "32") == 0
    )
    assert out_ev.is_file()


def test_tokenizer_command(tmp_path):
    out = tmp_path / "tok"
    assert run("tokenizer", "--out", str(out), "--samples", "3", "--vocab-size", "600") == 0
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
