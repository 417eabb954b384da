"""Training data in LLaVA conversation format, and its encoding with an answer-token mask.

A row (JSON list or JSONL, one object per line):
    {"id": "...", "image": "rel/path.png" | ["a.png", "b.png"],
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}
or, for a target that reads video (Video-LLaVA), a row with one video: a folder of frames or a
video file, its `<video>` placeholder in the text or put before the first question:
    {"id": "...", "video": "videos/000000042", "conversations": [...]}
(`specvlm world make --kind video` writes such rows). Paths are relative to `image_folder`
(default: the data file's folder). A row's task family
(for logs, e.g. the compressor gate's choices) is its "family", else its "meta" "family" (world
data), else none.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specvlm.errors import DataError, InputError
from specvlm.target import modalities
from specvlm.target.base import Prompt, Target

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


@dataclass
class Conversation:
    id: str
    turns: list[tuple[str, str]]  # (role, text): role in user / assistant / system
    images: list[Path] = field(default_factory=list)
    source: str = ""  # "FILE:LINE" of the row it was read from, for error messages
    family: str = ""  # the task family, when the row names one
    video: Path | None = None  # a frames folder or a video file (a video target's rows)

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": role, "content": text} for role, text in self.turns]

    def media(self, text: str) -> tuple[list[Path], dict[str, Any]]:
        """The images and the video (as `tokenize` / `generate` keyword arguments) that the
        rendered `text`, a prefix of this conversation, has placeholders for."""
        images = self.images[: text.count(IMAGE_PLACEHOLDER)]
        if self.video is not None and VIDEO_PLACEHOLDER in text:
            return images, {"video": self.video}
        return images, {}


@dataclass
class LoadReport:
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return f"{self.kept} of {self.rows} rows kept" + (f"; skipped: {why}" if why else "")


def _rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed row or the exception) for a JSON list or a JSONL file."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); expected a list of rows") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of conversation rows")
        return list(enumerate(data, start=1))
    rows: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((n, e))
    return rows


def _parse(row: Any, folder: Path) -> Conversation:
    """One row -> Conversation, or ValueError(reason) saying what is wrong."""
    if isinstance(row, json.JSONDecodeError):
        raise ValueError(f"bad JSON ({row.msg})")
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        raise ValueError("no 'conversations' list")
    if "events" in row:
        raise ValueError("'events' rows are read by an event drafter's recipe, not train-draft")
    turns = []
    for turn in row["conversations"]:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise ValueError(f"a turn without 'from' in {sorted(ROLES)}")
        if not isinstance(turn.get("value"), str):
            raise ValueError("a turn without a text 'value'")
        turns.append((ROLES[turn["from"]], turn["value"]))
    if not any(role == "assistant" and text.strip() for role, text in turns):
        raise ValueError("no answer (no non-empty gpt turn)")
    images = row.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    paths = [folder / p for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError("missing image")
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for role, text in turns if role == "user")
    first = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    if first is None:
        raise ValueError("no question (no human turn)")
    if placeholders == 0 and paths:  # LLaVA convention: the image goes before the first question
        turns[first] = ("user", IMAGE_PLACEHOLDER * len(paths) + "\n" + turns[first][1])
    elif placeholders != len(paths):
        raise ValueError("image placeholders do not match images")
    video = None
    if row.get("video") is not None:
        if not isinstance(row["video"], str):
            raise ValueError("'video' must be one path (a frames folder or a video file)")
        video = folder / row["video"]
        if not video.exists():
            raise ValueError("missing video")
    videos = sum(text.count(VIDEO_PLACEHOLDER) for role, text in turns if role == "user")
    if video is not None and videos == 0:  # as images: the video goes before the first question
        turns[first] = ("user", VIDEO_PLACEHOLDER + "\n" + turns[first][1])
    elif videos != int(video is not None):
        raise ValueError("video placeholders do not match the row's video (one at most)")
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    family = row.get("family", meta.get("family", ""))
    return Conversation(
        id=str(row.get("id", "")),
        turns=turns,
        images=paths,
        family=family if isinstance(family, str) else "",
        video=video,
    )


def read_conversations(
    path: str | Path, image_folder: str | Path | None = None, on_bad_row: str = "skip"
) -> tuple[list[Conversation], LoadReport]:
    """Read a LLaVA-format file. Bad rows are skipped and counted, or stop the run."""
    path = Path(path)
    if on_bad_row not in ("skip", "stop"):
        raise InputError(f"on_bad_row must be 'skip' or 'stop', got {on_bad_row!r}")
    if not path.is_file():
        raise DataError(f"data file not found: {path} (expected LLaVA-format .json or .jsonl)")
    folder = Path(image_folder) if image_folder else path.parent
    report, out = LoadReport(), []
    for line, row in _rows(path):
        report.rows += 1
        try:
            conv = _parse(row, folder)
            conv.source = f"{path}:{line}"
            out.append(conv)
        except ValueError as e:
            if on_bad_row == "stop":
                raise DataError(f"{path}:{line}: {e}") from e
            report.skipped[str(e)] += 1
    report.kept = len(out)
    if not out:
        raise DataError(f"{path}: no usable rows ({report.summary()})")
    return out, report


@dataclass
class Encoded:
    prompt: Prompt  # the whole conversation, images expanded
    answer_mask: torch.Tensor  # (S,) True on assistant tokens (answers and their end token)


def _media(conv: Conversation, text: str) -> tuple:
    """`tokenize`'s positional media arguments for `text`: (images,) or (images, video)."""
    images, video = conv.media(text)
    return (images, video["video"]) if video else (images,)


def check_modalities(target: Target, conv: Conversation) -> None:
    """A video row needs a target that reads video (an image target would read `<video>` as
    text): DataError otherwise."""
    if conv.video is not None and "video" not in modalities(target):
        raise DataError(
            f"row {conv.id!r} has a video, and this target ({target.info.architecture}) does not "
            "read video; train on a video target (e.g. Video-LLaVA)"
        )


def tokenize_conversation(target: Target, conv: Conversation) -> Prompt:
    """The whole conversation, rendered by the target's template, with its images and video."""
    check_modalities(target, conv)
    text = target.render_chat(conv.messages(), add_generation_prompt=False)
    return target.tokenize(text, *_media(conv, text))


def encode(target: Target, conv: Conversation) -> Encoded:
    """Token ids of the whole conversation and which of them are answer tokens.

    The answer span of assistant turn k is [len(tokens(conversation before the turn, with the
    generation prompt)), len(tokens(conversation up to and with the turn))). That is exact when
    the chat template renders each prefix of the conversation as a prefix of the whole, which is
    checked token by token.
    """
    messages = conv.messages()
    full = tokenize_conversation(target, conv)
    ids = full.input_ids
    mask = torch.zeros(ids.shape[0], dtype=torch.bool)

    def n_tokens(text: str) -> int:
        part = target.tokenize(text, *_media(conv, text)).input_ids
        if not torch.equal(part, ids[: part.shape[0]]):
            raise DataError(
                f"row {conv.id!r}: this chat template does not tokenize a prefix of the "
                "conversation as a prefix of the whole, so answer tokens cannot be located"
            )
        return part.shape[0]

    for k, (role, _) in enumerate(conv.turns):
        if role == "assistant":
            start = n_tokens(target.render_chat(messages[:k], add_generation_prompt=True))
            end = n_tokens(target.render_chat(messages[: k + 1], add_generation_prompt=False))
            mask[start:end] = True
    return Encoded(prompt=full, answer_mask=mask)
