"""Benchmark items, and loaders for the benchmark files SpecVLM reports on (user-supplied).

`suites.load_suite` picks the loader; this module holds the item type, the prompt templates, and
one loader per format. Every loader returns `BenchItem`s in file order (the first `n`, or a
seeded sample of `n` kept in file order when `seed` is not 0), and raises `DataError` naming the
file and the line or row of anything it cannot use.

Formats (see `suites.py` for how a format is detected):

    llava-bench  folder: questions.jsonl  {"question_id", "image", "text", "category"}
                         images/<image>
                         answers_gpt4.jsonl {"question_id", "text"}   (optional: references)
    mmmu         Hugging Face MMMU: per-subject .parquet files (needs pyarrow), or the same rows as
                 .json / .jsonl; columns id, question, options (a list, or a string holding a
                 Python/JSON list), answer, question_type ("multiple-choice" | "open"),
                 image_1 .. image_7 ({"bytes", "path"}, a file path, or null). <image k> in the
                 question or an option becomes <image>, with image_k at that place in `images`.
    scienceqa    problems.json {id: {question, choices, answer (index), hint, image, split}}
                 + images at images/<split>/<id>/<image> or <split>/<id>/<image>
    mmbench      .tsv with columns index, question, hint, A, B, C, D (some may be empty),
                 answer (absent in test files), image (base64; or the index of a row that holds
                 the image, as VLMEvalKit writes repeated images)

Images carried inside the files (parquet bytes, base64) are written once to
`<cache_dir>/media/<sha256>.<ext>`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from specvlm.errors import DataError, InputError

IMAGE = "<image>"
VIDEO = "<video>"
LETTERS = "ABCDEFGHIJKLMNOP"
MC_DIRECT = "Answer with the option's letter from the given choices directly."
MC_EXPLAIN = (
    "Answer with the option's letter from the given choices, "
    "and give a detailed and reasonable explanation."
)
OPEN_DIRECT = "Answer the question using a single word or phrase."
OPEN_EXPLAIN = "Answer the question, and give a detailed and reasonable explanation."


@dataclass(frozen=True)
class BenchItem:
    """One prompt to decode: a chat ending with a user turn, and its images."""

    id: str  # unique within the suite
    suite: str  # e.g. "world-detailed", "llava-bench", "mmmu"
    messages: tuple[dict, ...]  # ({"role": "user" | "assistant", "content": str}, ...)
    images: tuple[Path, ...]  # in the order of the "<image>" placeholders in user turns
    reference: str | None = None  # the reference answer, when the suite has one
    video: Path | None = None  # a frames folder or video file, at the "<video>" placeholder
    events: Path | None = None  # the clip's event stream (.npz), for an event drafter

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1].get("role") != "user":
            raise DataError(f"item {self.id!r}: the chat must end with a user turn")
        for m in self.messages:
            if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
                raise DataError(
                    f"item {self.id!r}: bad message {m!r}; "
                    "expected role user|assistant and str content"
                )
        n_ph = sum(m["content"].count(IMAGE) for m in self.messages if m["role"] == "user")
        if n_ph != len(self.images):
            raise DataError(
                f"item {self.id!r}: {n_ph} {IMAGE} placeholders but {len(self.images)} images"
            )
        n_video = sum(m["content"].count(VIDEO) for m in self.messages if m["role"] == "user")
        if n_video != (self.video is not None):
            raise DataError(
                f"item {self.id!r}: {n_video} {VIDEO} placeholders but "
                f"{'a video' if self.video is not None else 'no video'}"
            )


def item(where: str, **fields: Any) -> BenchItem:
    """A BenchItem, with any problem reported at `where` (file and line or row)."""
    try:
        return BenchItem(**fields)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def select(total: int, n: int | None, seed: int) -> list[int]:
    """Which rows to keep: all, the first n (seed 0, the papers' "first 60 items"), or n by seed."""
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    if seed == 0:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(total, n, replace=False).tolist())


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def mc_prompt(
    question: str, options: Mapping[str, str], *, hint: str | None = None, rewrite: bool = False
) -> str:
    """'Question: ... Options: A. ... Answer with the option's letter ...' (rewrite: and explain)."""
    lines = [f"Hint: {hint}"] if hint else []
    lines += [f"Question: {question}", "Options:"]
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    lines.append(MC_EXPLAIN if rewrite else MC_DIRECT)
    return "\n".join(lines)


def lettered(options: Sequence[object]) -> dict[str, str]:
    """{"A": first option, "B": second, ...}."""
    return {LETTERS[k]: str(o) for k, o in enumerate(options)}


def open_prompt(question: str, *, rewrite: bool = False) -> str:
    return f"{question}\n{OPEN_EXPLAIN if rewrite else OPEN_DIRECT}"


def _blank(value: Any) -> bool:
    """An empty cell: None, NaN, "" or "nan" (how pandas writes a missing value)."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    return str(value).strip().lower() in ("", "nan")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def store_image(data: bytes, media_dir: Path, where: str) -> Path:
    """Write image bytes to media_dir under their content hash; return the path."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "png").lower()
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: image bytes that cannot be read as an image ({e})") from None
    ext = {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt)
    path = media_dir / f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"
    if not path.is_file():  # content-addressed: an existing file holds these very bytes
        write_atomic(path, data)
    return path


def image_file(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DataError(f"{where}: image file not found: {path}")
    return path.resolve()


def require(row: Any, keys: Sequence[str], where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected an object with keys {', '.join(keys)}, got {type(row).__name__}"
        )
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (a row needs {', '.join(keys)})")
    return row


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each non-blank line; `where` is "file:line"."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where}: not valid JSON ({e}); expected one object per line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rows.append((where, row))
    return rows


def unique_ids(ids: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(f"{where}: id {i!r} appears more than once; ids must be unique")
        seen.add(i)


# ---------------------------------------------------------------------------------------------
# LLaVA-Bench-in-the-Wild
# ---------------------------------------------------------------------------------------------


def load_llava_bench(path: Path, *, n: int | None = None, seed: int = 0) -> list[BenchItem]:
    """A folder with questions.jsonl, images/ and optionally answers_gpt4.jsonl (references)."""
    folder = path.parent if path.is_file() else path
    rows = read_jsonl_rows(folder / "questions.jsonl")
    for where, row in rows:
        require(row, ("question_id", "image", "text"), where)
    unique_ids([str(r["question_id"]) for _, r in rows], str(folder / "questions.jsonl"))
    answers: dict[str, str] = {}
    if (folder / "answers_gpt4.jsonl").is_file():
        for where, row in read_jsonl_rows(folder / "answers_gpt4.jsonl"):
            answers[str(require(row, ("question_id", "text"), where)["question_id"])] = row["text"]
    items = []
    for k in select(len(rows), n, seed):
        where, row = rows[k]
        qid = str(row["question_id"])
        items.append(
            item(
                where,
                id=qid,
                suite="llava-bench",
                messages=({"role": "user", "content": f"{IMAGE}\n{row['text']}"},),
                images=(image_file(folder / "images" / str(row["image"]), where),),
                reference=answers.get(qid),
            )
        )
    return items


# ---------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------

MMMU_REF = re.compile(r"<image (\d+)>")
MMMU_MAX_IMAGES = 7


def mmmu_files(path: Path) -> list[Path]:
    """The file itself, or a folder's validation files (test answers are hidden), else all."""
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json", ".jsonl")
    )
    return [p for p in files if "validation" in p.name] or files


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading parquet files needs pyarrow (pip install pyarrow); "
            "or give the rows as .json / .jsonl with image file paths"
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


def mmmu_rows(path: Path) -> list[tuple[str, Path, dict]]:
    """(where, file, row) of every MMMU row under `path` (rows of a list counted from 0)."""
    out: list[tuple[str, Path, dict]] = []
    for f in mmmu_files(path):
        if f.suffix == ".parquet":
            out += [(f"{f} row {k}", f, r) for k, r in enumerate(_read_parquet(f))]
        elif f.suffix == ".jsonl":
            out += [(where, f, r) for where, r in read_jsonl_rows(f)]
        else:
            data = read_json(f)
            if not isinstance(data, list):
                raise DataError(f"{f}: expected a JSON list of MMMU rows")
            out += [(f"{f} row {k}", f, r) for k, r in enumerate(data)]
    if not out:
        raise DataError(f"no MMMU rows under {path} (expected .parquet, .json or .jsonl files)")
    return out


def parse_options(value: Any, where: str) -> list[str]:
    """MMMU's options: a list, or a string holding a Python or JSON list."""
    if _blank(value):
        return []
    opts = value
    if isinstance(value, str):
        try:
            opts = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            try:
                opts = json.loads(value)
            except json.JSONDecodeError:
                opts = None
    if not isinstance(opts, list | tuple) or len(opts) > len(LETTERS):
        raise DataError(
            f"{where}: options {str(value)[:80]!r} is not a list of up to {len(LETTERS)} options"
        )
    return [str(o) for o in opts]


def _mmmu_image(src: Any, base: Path, media_dir: Path, where: str) -> Path:
    """An image cell: {"bytes": ..., "path": ...} (bytes may be base64 text in JSON) or a path."""
    if isinstance(src, dict) and src.get("bytes") is not None:
        data = src["bytes"]
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise DataError(f"{where}: image bytes given as text must be base64") from None
        return store_image(bytes(data), media_dir, where)
    if isinstance(src, dict) and src.get("path"):
        src = src["path"]
    if isinstance(src, str):
        return image_file(base / src, where)
    raise DataError(
        f"{where}: an image must be {{'bytes', 'path'}}, a file path or null, "
        f"got {type(src).__name__}"
    )


def _no_image(cell: Any) -> bool:
    if isinstance(cell, dict):
        return cell.get("bytes") is None and not cell.get("path")
    return _blank(cell)


def mmmu_item(row: dict, where: str, base: Path, media_dir: Path, rewrite: bool) -> BenchItem:
    """One MMMU row: <image k> becomes <image> with image_k in its place; unmentioned images lead."""
    require(row, ("id", "question"), where)
    options = parse_options(row.get("options"), where)
    if options and row.get("question_type", "multiple-choice") != "open":
        text = mc_prompt(str(row["question"]), lettered(options), rewrite=rewrite)
    else:
        text = open_prompt(str(row["question"]), rewrite=rewrite)
    cells = {}
    for k in range(1, MMMU_MAX_IMAGES + 1):
        if not _no_image(row.get(f"image_{k}")):
            cells[k] = row[f"image_{k}"]
    refs = [int(m) for m in MMMU_REF.findall(text)]
    for k in refs:
        if k not in cells:
            raise DataError(f"{where}: the text refers to <image {k}> but image_{k} is empty")
    loose = [k for k in sorted(cells) if k not in refs]  # images the text never mentions: first
    text = f"{IMAGE}\n" * len(loose) + MMMU_REF.sub(IMAGE, text)
    paths = {
        k: _mmmu_image(cells[k], base, media_dir, f"{where} image_{k}")
        for k in dict.fromkeys(loose + refs)
    }
    return item(
        where,
        id=str(row["id"]),
        suite="mmmu",
        messages=({"role": "user", "content": text},),
        images=tuple(paths[k] for k in loose + refs),
        reference=None if _blank(row.get("answer")) else str(row["answer"]),
    )


def load_mmmu(
    path: Path, *, cache_dir: Path, n: int | None = None, seed: int = 0, mc_rewrite: bool = False
) -> list[BenchItem]:
    """MMMU rows from parquet / JSON / JSONL under `path`; embedded images go to cache_dir/media."""
    rows = mmmu_rows(path)
    for where, _, row in rows:
        require(row, ("id", "question"), where)
    unique_ids([str(r["id"]) for _, _, r in rows], str(path))
    items = []
    for k in select(len(rows), n, seed):
        where, file, row = rows[k]
        items.append(mmmu_item(row, where, file.parent, cache_dir / "media", mc_rewrite))
    return items


# ---------------------------------------------------------------------------------------------
# ScienceQA
# ---------------------------------------------------------------------------------------------


def load_scienceqa(
    path: Path,
    *,
    n: int | None = None,
    seed: int = 0,
    mc_rewrite: bool = False,
    split: str = "test",
    images_only: bool = True,
) -> list[BenchItem]:
    """problems.json rows of `split` (only those with an image unless images_only is False)."""
    problems = path if path.is_file() else path / "problems.json"
    root = problems.parent
    data = read_json(problems)
    if not isinstance(data, dict):
        raise DataError(f"{problems}: expected a JSON object mapping problem id to problem")
    rows = [
        (pid, p)
        for pid, p in data.items()
        if not isinstance(p, dict) or p.get("split", split) == split
    ]
    if images_only:
        rows = [
            (pid, p) for pid, p in rows if not isinstance(p, dict) or not _blank(p.get("image"))
        ]
    if not rows:
        splits = sorted({str(p.get("split")) for p in data.values() if isinstance(p, dict)})
        what = "questions with an image" if images_only else "questions"
        raise DataError(
            f"{problems}: no {what} in split {split!r} (splits present: {', '.join(splits)})"
        )
    items = []
    for k in select(len(rows), n, seed):
        pid, p = rows[k]
        where = f"{problems} problem {pid!r}"
        require(p, ("question", "choices", "answer"), where)
        choices = p["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise DataError(f"{where}: choices must be a list of 2 to {len(LETTERS)} strings")
        answer = p["answer"]
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(
                f"{where}: answer must be the index of a choice (0..{len(choices) - 1}), "
                f"got {answer!r}"
            )
        hint = None if _blank(p.get("hint")) else str(p["hint"])
        opts = lettered(choices)
        text = mc_prompt(str(p["question"]), opts, hint=hint, rewrite=mc_rewrite)
        images: tuple[Path, ...] = ()
        if not _blank(p.get("image")):
            tried = [
                root / d / p.get("split", split) / str(pid) / str(p["image"])
                for d in ("images", ".")
            ]
            found = [t for t in tried if t.is_file()]
            if not found:
                raise DataError(
                    f"{where}: image not found; looked for {', '.join(map(str, tried))}"
                )
            images, text = (found[0].resolve(),), f"{IMAGE}\n{text}"
        msgs = ({"role": "user", "content": text},)
        items.append(
            item(
                where,
                id=str(pid),
                suite="scienceqa",
                messages=msgs,
                images=images,
                reference=LETTERS[answer],
            )
        )
    return items


# ---------------------------------------------------------------------------------------------
# MMBench
# ---------------------------------------------------------------------------------------------

MMBENCH_COLUMNS = ("index", "question", "A", "B", "image")


def load_mmbench(
    path: Path, *, cache_dir: Path, n: int | None = None, seed: int = 0, mc_rewrite: bool = False
) -> list[BenchItem]:
    """An MMBench .tsv (base64 images); its images go to cache_dir/media."""
    if path.is_dir():
        tsvs = sorted(path.glob("*.tsv"))
        if len(tsvs) != 1:
            raise DataError(
                f"{path}: expected exactly one .tsv file, found {len(tsvs)}; name the file"
            )
        path = tsvs[0]
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    csv.field_size_limit(2**31 - 1)  # base64 images are long fields
    rows: list[tuple[str, dict]] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in MMBENCH_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: missing columns {', '.join(missing)}; an MMBench TSV has index, "
                "question, hint, A, B, C, D, answer, image"
            )
        for row in reader:
            rows.append((f"{path}:{reader.line_num}", row))
    by_index = {r["index"]: r for _, r in rows}
    unique_ids([r["index"] for _, r in rows], str(path))
    items = []
    for k in select(len(rows), n, seed):
        where, row = rows[k]
        if None in row or any(row[c] is None for c in MMBENCH_COLUMNS):
            raise DataError(f"{where}: wrong number of tab-separated fields")
        opts = {c: row[c] for c in LETTERS if c in row and not _blank(row[c])}
        if len(opts) < 2:
            raise DataError(f"{where}: fewer than two options in columns A, B, C, D")
        hint = None if _blank(row.get("hint")) else row["hint"]
        text = mc_prompt(row["question"], opts, hint=hint, rewrite=mc_rewrite)
        b64 = row["image"]
        if len(b64) < 64 and b64 in by_index:  # VLMEvalKit: a repeated image names its row
            b64 = by_index[b64]["image"]
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(
                f"{where}: the image column is not base64 (nor the index of a row)"
            ) from None
        image = store_image(data, cache_dir / "media", where)
        ref = None if _blank(row.get("answer")) else row["answer"].strip()
        msgs = ({"role": "user", "content": f"{IMAGE}\n{text}"},)
        items.append(
            item(
                where,
                id=row["index"],
                suite="mmbench",
                messages=msgs,
                images=(image,),
                reference=ref,
            )
        )
    return items
