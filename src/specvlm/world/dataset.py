"""Write world data sets to disk, and draw contact sheets of them.

    make_dataset("train", 1000, "data/world-train")                    # images + data.jsonl
    make_dataset("val", 200, "data/world-val-ev", kind="events")      # .npz streams + polarity PNGs
    contact_sheet("hard", 4).save("hard.png")                         # what the world looks like

Layout of an output folder (paths in data.jsonl are relative to it):

    data.jsonl                       one LLaVA record per line (one per sample and family)
    images/000000042.png             kind image
    videos/000000042/frame_00.png    kind video: one folder of frames per clip
    events/000000042.npz, .png       kind events: x, y, t (us), p; and its 2 x 2 polarity image
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from specvlm.errors import InputError
from specvlm.world.clips import Clip, render_clip
from specvlm.world.events import events_to_polarity_image, save_events, simulate_events
from specvlm.world.language import FAMILIES, check_families, make_record
from specvlm.world.scenes import Scene, render
from specvlm.world.splits import (
    SPLIT_SIZE,
    STREAM_EVENTS,
    check_kind,
    check_split,
    rng,
    split_seed,
    world_sample,
)

DEFAULT_RESOLUTION: dict[str, int] = {"image": 224, "video": 128, "events": 128}
# Simulator settings for data sets (see events.simulate_events).
EVENT_SETTINGS: dict[str, float] = {
    "threshold": 0.2,
    "threshold_sigma": 0.02,
    "refractory_s": 0.0005,
    "noise_rate_hz": 0.02,
}
POLARITY_SLICES = 4  # the polarity image is a 2 x 2 grid of 4 time slices


def check_resolution(resolution: int | None, kind: str) -> int:
    if resolution is None:
        return DEFAULT_RESOLUTION[kind]
    if not 16 <= resolution <= 1024:
        raise InputError(f"resolution must be between 16 and 1024 pixels, got {resolution}")
    return resolution


def clip_events(
    clip: Clip, seed: int, resolution: int, frames: list[Image.Image] | None = None
) -> np.ndarray:
    """The simulated event stream of a clip (EVENT_SETTINGS, noise seeded per sample)."""
    frames = frames if frames is not None else render_clip(clip, resolution)
    noise_seed = int(rng(seed, STREAM_EVENTS).integers(2**31))
    return simulate_events(frames, clip.fps, seed=noise_seed, **EVENT_SETTINGS)


def clip_polarity_image(clip: Clip, events: np.ndarray, resolution: int) -> Image.Image:
    t_range = (0.0, clip.duration * 1e6)  # the whole clip, in microseconds
    return events_to_polarity_image(events, resolution, resolution, POLARITY_SLICES, t_range)


def write_media(
    world: Scene | Clip, kind: str, index: int, seed: int, out: Path, resolution: int
) -> dict[str, str]:
    """Write the sample's files under `out`; return the record keys with relative paths."""
    stem = f"{index:09d}"
    if kind == "image":
        rel = f"images/{stem}.png"
        render(world, resolution).save(out / rel)
        return {"image": rel}
    frames = render_clip(world, resolution)
    if kind == "video":
        rel = f"videos/{stem}"
        (out / rel).mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(frames):
            frame.save(out / rel / f"frame_{k:02d}.png")
        return {"video": rel}
    events = clip_events(world, seed, resolution, frames)
    rel_npz, rel_png = f"events/{stem}.npz", f"events/{stem}.png"
    save_events(out / rel_npz, events)
    clip_polarity_image(world, events, resolution).save(out / rel_png)
    return {"events": rel_npz, "image": rel_png}


def make_dataset(
    split: str,
    n: int,
    out: str | Path,
    kind: str = "image",
    families: Sequence[str] | None = None,
    resolution: int | None = None,
    start: int = 0,
    progress: bool = True,
) -> Path:
    """Write samples start .. start + n - 1 of `split` under `out`; return the data.jsonl path.

    One record per sample and family (families default to all five). The same arguments always
    write the same bytes.
    """
    check_split(split)
    check_kind(kind)
    fams = check_families(families)
    res = check_resolution(resolution, kind)
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if start < 0 or start + n > SPLIT_SIZE:
        raise InputError(f"samples must lie in [0, {SPLIT_SIZE}); got start {start} and n {n}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder, but {out} is a file")
    folder = {"image": "images", "video": "videos", "events": "events"}[kind]
    (out / folder).mkdir(parents=True, exist_ok=True)
    path = out / "data.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        bar = tqdm(
            range(start, start + n),
            desc=f"world {split}/{kind}",
            unit="sample",
            disable=not progress,
        )
        for index in bar:
            world = world_sample(split, index, kind)
            media = write_media(world, kind, index, split_seed(split, index), out, res)
            for family in fams:
                fh.write(json.dumps(make_record(split, index, family, kind, media)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def sample_picture(split: str, index: int, kind: str, resolution: int) -> Image.Image:
    """What a model is shown for one sample (a video as a strip of 4 of its frames)."""
    world = world_sample(split, index, kind)
    if kind == "image":
        return render(world, resolution)
    frames = render_clip(world, resolution)
    if kind == "video":
        picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
        strip = Image.new("RGB", (4 * resolution + 3, resolution), (160, 160, 160))
        for k, f in enumerate(picks):
            strip.paste(frames[f], (k * (resolution + 1), 0))
        return strip
    events = clip_events(world, split_seed(split, index), resolution, frames)
    return clip_polarity_image(world, events, resolution)


def contact_sheet(
    split: str = "train",
    n: int = 4,
    kind: str = "image",
    resolution: int | None = None,
    start: int = 0,
    width: int = 420,
) -> Image.Image:
    """A grid of `n` samples, each picture above one of its conversations (families in turn)."""
    check_split(split)
    check_kind(kind)
    res = check_resolution(resolution, kind)
    if not 1 <= n <= 64:
        raise InputError(f"--n must be between 1 and 64 for a contact sheet, got {n}")
    font, line_h, pad = _font(12), 15, 8
    cells = []
    for k in range(n):
        index = start + k
        pic = sample_picture(split, index, kind, res)
        pic = pic.resize((width - 2 * pad, round(pic.height * (width - 2 * pad) / pic.width)))
        record = make_record(split, index, FAMILIES[k % len(FAMILIES)], kind)
        lines = [f"{record['id']}"]
        for turn in record["conversations"]:
            who = "USER" if turn["from"] == "human" else "ASSISTANT"
            text = f"{who}: {turn['value']}".replace("\n", " ")
            lines += textwrap.wrap(text, width=(width - 2 * pad) // 6) or [""]
        cell = Image.new("RGB", (width, pic.height + 3 * pad + line_h * len(lines)), "white")
        cell.paste(pic, (pad, pad))
        draw = ImageDraw.Draw(cell)
        for j, line in enumerate(lines):
            draw.text((pad, pic.height + 2 * pad + j * line_h), line, fill=(20, 20, 20), font=font)
        cells.append(cell)
    cols = min(n, 3)
    rows = [cells[r : r + cols] for r in range(0, n, cols)]
    heights = [max(c.height for c in row) for row in rows]
    sheet = Image.new("RGB", (cols * width, sum(heights)), (235, 235, 235))
    y = 0
    for row, h in zip(rows, heights, strict=True):
        for c, cell in enumerate(row):
            sheet.paste(cell, (c * width, y))
        y += h
    return sheet
