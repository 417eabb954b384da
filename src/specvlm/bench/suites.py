"""Benchmark suites for `specvlm bench`: built-in world suites, and the benchmarks SpecVLM reports.

    items = load_suite("world-detailed")                 # 20 descriptions of world test scenes
    items = load_suite("world", n=10)                    # the five world suites interleaved
    items = load_suite("data/llava-bench-in-the-wild")   # format detected from the files
    items = load_suite("mmbench:data/MMBench_DEV_EN.tsv", n=60, mc_rewrite=True)

Each item is a chat ending with a user turn, its images in placeholder order, and a reference
answer when the suite has one (`BenchItem`, in loaders.py). Speed benchmarks only decode them.

Built-in suites (SUITES): deterministic, from the world's TEST split (sample i of suite seed s is
test sample s * 1_000_000 + i), images rendered at 224 px into `<cache_dir>/world/`.
`world-detailed`, `world-conversation`, `world-reasoning`, `world-mc` (the record's own prompt,
which already asks for a justification) and `world-multiturn` (the turns before the last question
are the record's, the last question is the one answered); `world` interleaves the five. Default
n: 20 per suite (100 for `world`).

`world-multi-N` (N = 1 .. 16) puts N test scenes in one prompt ("Image 1: <image>" ... "Image N:
<image>") and asks the detailed-description question about one of them (image i % N + 1 of item
i; the reference is that scene's description): N x 64 visual tokens on the world targets (the
embedded world target and world-smol read 64 per image, an 8 x 8 grid), N x 16 on the tiny
random LLaVA (4 x 4). Item i uses test samples s * 1_000_000 + i * N + j, j < N. It is the
visual-token sweep of the elastic visual compressor (issue 22): world-multi-1 / 4 / 8 give
64 / 256 / 512 visual tokens per prompt. A world suite is one `WorldSuite(family, kind)` entry in
WORLD_SUITES; an `events` kind works as is (its polarity picture is an image). `world-video-*`
(detailed, conversation, reasoning, mc, multiturn; `world-video` interleaves them) ask the same
families about test clips, for a target that reads video: each item carries its clip as a
folder of 128 px frames (`BenchItem.video`), which the target samples to its frame count.

User files (FORMATS), detected from the path, or named with a prefix "FORMAT:PATH":

    llava-bench:  folder with questions.jsonl, images/, optional answers_gpt4.jsonl
    mmmu:         MMMU .parquet files (needs pyarrow) or the same rows as .json / .jsonl;
                  a folder's validation files are used when it has any
    scienceqa:    problems.json (or its folder) + images/<split>/<id>/image.png; test split,
                  questions with an image (scienceqa-all: text-only questions too)
    mmbench:      an MMBench .tsv with base64 images (or a folder holding one)

Multiple-choice prompts end "Answer with the option's letter from the given choices directly.";
`mc_rewrite=True` asks for the letter and a detailed and reasonable explanation instead, as
SpecVLM does (it lengthens the answers that decoding speed is measured on). With `n`, the first n
items are kept (the papers' protocol), or with `seed` != 0 a seeded sample of n, in file order.

Cache: `cache_dir`, else $SPECVLM_CACHE/bench, else ~/.cache/specvlm/bench. Every load re-renders
world images and replaces a cached file only when its bytes differ, so the cache never goes stale.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specvlm.bench.loaders import (
    IMAGE,
    BenchItem,
    load_llava_bench,
    load_mmbench,
    load_mmmu,
    load_scienceqa,
    write_atomic,
)
from specvlm.errors import DataError, InputError
from specvlm.world.dataset import DEFAULT_RESOLUTION, write_media
from specvlm.world.language import make_record
from specvlm.world.splits import SPLIT_SIZE, split_seed, world_sample

__all__ = [
    "FORMATS",
    "PATTERN_SUITES",
    "SUITES",
    "BenchItem",
    "default_cache_dir",
    "detect_format",
    "load_suite",
    "multi_images",
]


@dataclass(frozen=True)
class WorldSuite:
    family: str  # a world task family (language.FAMILIES)
    kind: str  # "image" (or "events": its polarity picture is the image)
    description: str
    events: bool = False  # a video item that also carries its clip's event stream


WORLD_SUITES: dict[str, WorldSuite] = {
    "world-detailed": WorldSuite(
        "detailed", "image", "world test scenes: describe everything (60-200 words)"
    ),
    "world-conversation": WorldSuite(
        "conversation",
        "image",
        "world test scenes: one short question (count, colour, position, ...)",
    ),
    "world-reasoning": WorldSuite(
        "reasoning",
        "image",
        "world test scenes: a comparison or a cause, answered with an explanation",
    ),
    "world-mc": WorldSuite(
        "multiple_choice", "image", "world test scenes: options A-D, the letter and why"
    ),
    "world-multiturn": WorldSuite(
        "multiturn", "image", "world test scenes: the last turn of a 2-4 turn chat"
    ),
}
# The same five families about world test clips, for a target that reads video (a frames folder
# per item, every frame of the clip; the target samples them to its frame count)
VIDEO_SUITES: dict[str, WorldSuite] = {
    f"world-video-{short}": WorldSuite(family, "video", f"world test clips: {what}")
    for short, family, what in (
        ("detailed", "detailed", "describe the clip, every object's motion"),
        ("conversation", "conversation", "one short question (motion, count, colour, ...)"),
        ("reasoning", "reasoning", "a cause or comparison about the motion, explained"),
        ("mc", "multiple_choice", "options A-D about the motion, the letter and why"),
        ("multiturn", "multiturn", "the last turn of a 2-4 turn chat about the clip"),
    )
}
# The world-video suites' items (the same clips and questions), each also carrying its clip's
# event stream (`BenchItem.events`, an .npz): what an event drafter reads in place of the video
EVENTS_SUITES: dict[str, WorldSuite] = {
    name.replace("world-video-", "world-events-"): WorldSuite(
        spec.family, "video", spec.description + "; with the clip's event stream", events=True
    )
    for name, spec in VIDEO_SUITES.items()
}
ALL_WORLD_SUITES = {**WORLD_SUITES, **VIDEO_SUITES, **EVENTS_SUITES}

WORLD_MIX = "world"
VIDEO_MIX = "world-video"
EVENTS_MIX = "world-events"
MIXES: dict[str, tuple[str, ...]] = {
    WORLD_MIX: tuple(WORLD_SUITES),
    VIDEO_MIX: tuple(VIDEO_SUITES),
    EVENTS_MIX: tuple(EVENTS_SUITES),
}
SUITES: dict[str, str] = {
    **{name: s.description for name, s in ALL_WORLD_SUITES.items()},
    WORLD_MIX: "the five world suites interleaved (n items in all)",
    VIDEO_MIX: "the five world-video suites interleaved (n items in all)",
    EVENTS_MIX: "the five world-events suites interleaved (n items in all)",
}
FORMATS: dict[str, str] = {
    "llava-bench": "LLaVA-Bench-in-the-Wild: a folder with questions.jsonl, images/ and optionally answers_gpt4.jsonl",
    "mmmu": "MMMU: Hugging Face .parquet files (needs pyarrow) or .json/.jsonl rows with image paths, or their folder",
    "scienceqa": "ScienceQA: problems.json (or its folder) with images/<split>/<id>/image.png; test questions with an image",
    "scienceqa-all": "ScienceQA as above, text-only test questions included",
    "mmbench": "MMBench: a .tsv with columns index, question, hint, A-D, answer, image (base64)",
}
MULTI = re.compile(r"world-multi-(\d+)")  # world-multi-N: N scenes in one prompt
# 16 x 64 = 1,024 visual tokens: world-smol (context 8,192) takes them all; the embedded world
# target (context 1,024) up to 13 (a longer prompt is refused by its adapter, saying why)
MULTI_MAX = 16
MULTI_FAMILY = "detailed"  # the question asked about one of the scenes: long answers
PATTERN_SUITES: dict[str, str] = {
    "world-multi-N": f"N = 1..{MULTI_MAX} world test scenes in one prompt, a detailed question "
    "about one of them (N x 64 visual tokens on the world targets)",
}
ACCEPTED = (
    f"a built-in suite ({', '.join([*SUITES, *PATTERN_SUITES])}), a path to benchmark files, or "
    f"FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}"
)
DEFAULT_N = 20
WORLD_SPLIT = "test"
SEED_STRIDE = 1_000_000  # world suite seed s uses test samples s * SEED_STRIDE + i


def default_cache_dir() -> Path:
    """$SPECVLM_CACHE/bench, else ~/.cache/specvlm/bench."""
    env = os.environ.get("SPECVLM_CACHE")
    return Path(env).expanduser() / "bench" if env else Path.home() / ".cache" / "specvlm" / "bench"


def load_suite(
    name_or_path: str,
    *,
    n: int | None = None,
    cache_dir: Path | None = None,
    mc_rewrite: bool = False,
    seed: int = 0,
) -> list[BenchItem]:
    """The items of a built-in suite, or of benchmark files on disk (see the module docstring)."""
    if n is not None and n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    if seed < 0:
        raise InputError(f"seed must be 0 or more, got {seed}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = cache.resolve()
    if name_or_path in SUITES:
        return world_suite(name_or_path, n=n, cache_dir=cache, seed=seed)
    if (n_images := multi_images(name_or_path)) is not None:
        return world_multi_suite(n_images, n=n, cache_dir=cache, seed=seed)
    fmt, path = parse_source(name_or_path)
    if fmt == "llava-bench":
        return load_llava_bench(path, n=n, seed=seed)
    if fmt == "mmmu":
        return load_mmmu(path, cache_dir=cache, n=n, seed=seed, mc_rewrite=mc_rewrite)
    if fmt in ("scienceqa", "scienceqa-all"):
        only = fmt == "scienceqa"
        return load_scienceqa(path, n=n, seed=seed, mc_rewrite=mc_rewrite, images_only=only)
    return load_mmbench(path, cache_dir=cache, n=n, seed=seed, mc_rewrite=mc_rewrite)


def parse_source(name_or_path: str) -> tuple[str, Path]:
    """(format, path) from "FORMAT:PATH" or a bare path whose format is detected."""
    prefix, sep, rest = name_or_path.partition(":")
    if sep and prefix in FORMATS:
        path = Path(rest).expanduser()
        if not path.exists():
            raise DataError(
                f"{path} not found (from {name_or_path!r}); {prefix} expects {FORMATS[prefix]}"
            )
        return prefix, path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DataError(f"no suite or file named {name_or_path!r}; accepted: {ACCEPTED}")
    return detect_format(path), path


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------


def _json_format(path: Path) -> str | None:
    """The format a .json / .jsonl file's first row looks like, or None."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                data = json.loads(next((line for line in fh if line.strip()), "null"))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return "scienceqa" if "choices" in next(iter(data.values())) else None  # id -> problem
    row = data[0] if isinstance(data, list) and data else data
    if not isinstance(row, dict):
        return None
    if "question_id" in row and "text" in row:
        return "llava-bench"
    if "question" in row and ("options" in row or "image_1" in row):
        return "mmmu"
    return None


def detect_format(path: Path) -> str:
    """The benchmark format of a file or folder (a key of FORMATS); DataError if none fits."""
    if path.is_dir():
        if (path / "questions.jsonl").is_file():
            return "llava-bench"
        if (path / "problems.json").is_file():
            return "scienceqa"
        if any(path.glob("*.tsv")):
            return "mmbench"
        if any(path.rglob("*.parquet")):
            return "mmmu"
        jsons = sorted(p for p in path.rglob("*.json*") if p.suffix in (".json", ".jsonl"))
        if any(_json_format(p) == "mmmu" for p in jsons[:20]):
            return "mmmu"
    elif path.suffix == ".tsv":
        return "mmbench"
    elif path.suffix == ".parquet":
        return "mmmu"
    elif path.suffix in (".json", ".jsonl"):
        fmt = _json_format(path)
        if fmt is not None:
            return fmt
    raise DataError(
        f"cannot tell the benchmark format of {path}; accepted: {ACCEPTED}. Formats: "
        + "; ".join(f"{k}: {v}" for k, v in FORMATS.items())
    )


# ---------------------------------------------------------------------------------------------
# World suites
# ---------------------------------------------------------------------------------------------


def _media_writer(folder: Path, kind: str) -> Callable[[int], dict[str, str]]:
    """index -> the record's media keys; renders each sample once per load into `folder`.

    Files are rendered into a temporary folder and moved into place only when their bytes
    differ from the cached ones (atomic rename), so concurrent loads never see half a file.
    """
    done: dict[int, dict[str, str]] = {}
    resolution = DEFAULT_RESOLUTION[kind]

    def media(index: int) -> dict[str, str]:
        if index not in done:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder, prefix=".render-") as tmp:
                for sub in ("images", "events"):
                    (Path(tmp) / sub).mkdir()
                world = world_sample(WORLD_SPLIT, index, kind)
                seed = split_seed(WORLD_SPLIT, index)
                done[index] = write_media(world, kind, index, seed, Path(tmp), resolution)
                for src in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                    dest = folder / src.relative_to(tmp)
                    data = src.read_bytes()
                    if not dest.is_file() or dest.read_bytes() != data:
                        write_atomic(dest, data)
        return done[index]

    return media


def world_item(
    name: str, index: int, media: Callable[[int], dict[str, str]], folder: Path
) -> BenchItem:
    """One item of a world suite: the record's chat without its last answer (the reference)."""
    spec = ALL_WORLD_SUITES[name]
    record = make_record(WORLD_SPLIT, index, spec.family, spec.kind, media(index))
    role = {"human": "user", "gpt": "assistant"}
    chat = [{"role": role[t["from"]], "content": t["value"]} for t in record["conversations"]]
    video = folder / record["video"] if spec.kind == "video" else None
    return BenchItem(
        id=record["id"],
        suite=name,
        messages=tuple(chat[:-1]),
        images=() if video is not None else (folder / record["image"],),
        reference=chat[-1]["content"],
        video=video,
        events=_clip_events_file(index, folder) if spec.events else None,
    )


def _clip_events_file(index: int, folder: Path) -> Path:
    """The event stream of test clip `index` (`dataset.clip_events`, as `specvlm world make
    --kind events` writes it, simulated from the item's own frames), cached in `folder`."""
    import io

    from specvlm.world.dataset import clip_events
    from specvlm.world.events import save_events

    path = folder / "events" / f"{index:09d}.npz"
    if not path.is_file():
        clip = world_sample(WORLD_SPLIT, index, "video")
        events = clip_events(clip, split_seed(WORLD_SPLIT, index), DEFAULT_RESOLUTION["video"])
        buffer = io.BytesIO()
        save_events(buffer, events)
        write_atomic(path, buffer.getvalue())
    return path


def world_suite(name: str, *, n: int | None, cache_dir: Path, seed: int = 0) -> list[BenchItem]:
    """A built-in world suite; `world` (`world-video`) takes its five in turn (item k from suite
    k % 5)."""
    names = list(MIXES[name]) if name in MIXES else [name]
    total = n if n is not None else DEFAULT_N * len(names)
    start = seed * SEED_STRIDE
    if start + SEED_STRIDE > SPLIT_SIZE or total > SEED_STRIDE * len(names):
        raise InputError(
            f"world suites take seed < {SPLIT_SIZE // SEED_STRIDE} and n <= {SEED_STRIDE} per suite"
        )
    writers: dict[str, tuple[Callable[[int], dict[str, str]], Path]] = {}
    items = []
    for k in range(total):
        suite = names[k % len(names)]
        kind = ALL_WORLD_SUITES[suite].kind
        if kind not in writers:
            folder = cache_dir / "world" / f"{WORLD_SPLIT}-{kind}-{DEFAULT_RESOLUTION[kind]}px"
            writers[kind] = (_media_writer(folder, kind), folder)
        media, folder = writers[kind]
        items.append(world_item(suite, start + k // len(names), media, folder))
    return items


def multi_images(name: str) -> int | None:
    """N of a `world-multi-N` suite name, or None for any other name; InputError for an N out
    of range."""
    m = MULTI.fullmatch(name)
    if m is None:
        return None
    n_images = int(m.group(1))
    if not 1 <= n_images <= MULTI_MAX:
        raise InputError(
            f"suite {name!r}: world-multi-N takes N = 1..{MULTI_MAX} scenes per prompt "
            f"(N x 64 visual tokens must fit the world target's context), got {n_images}"
        )
    return n_images


def world_multi_suite(
    n_images: int, *, n: int | None, cache_dir: Path, seed: int = 0
) -> list[BenchItem]:
    """`world-multi-N`: item i holds N test scenes and the detailed question about one."""
    total = n if n is not None else DEFAULT_N
    start = seed * SEED_STRIDE
    if start + SEED_STRIDE > SPLIT_SIZE or total * n_images > SEED_STRIDE:
        raise InputError(
            f"world suites take seed < {SPLIT_SIZE // SEED_STRIDE} and n * N <= {SEED_STRIDE}"
        )
    kind = "image"
    folder = cache_dir / "world" / f"{WORLD_SPLIT}-{kind}-{DEFAULT_RESOLUTION[kind]}px"
    media = _media_writer(folder, kind)
    name = f"world-multi-{n_images}"
    items = []
    for i in range(total):
        scenes = [start + i * n_images + j for j in range(n_images)]
        asked = i % n_images
        record = make_record(WORLD_SPLIT, scenes[asked], MULTI_FAMILY, kind, media(scenes[asked]))
        question = record["conversations"][0]["value"].replace(IMAGE, "").strip()
        listing = "".join(f"Image {j + 1}: {IMAGE}\n" for j in range(n_images))
        prompt = f"{listing}The question is about image {asked + 1}. {question}"
        images = tuple(folder / media(index)["image"] for index in scenes)
        items.append(
            BenchItem(
                id=f"{record['id']}-of-{n_images}",
                suite=name,
                messages=({"role": "user", "content": prompt},),
                images=images,
                reference=record["conversations"][1]["value"],
            )
        )
    return items
