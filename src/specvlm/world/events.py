"""An event-camera simulator (in the manner of ESIM / v2e) and the usual event representations.

Each pixel remembers the log intensity at which it last fired (its reference). Between two
consecutive frames the log intensity of every pixel is taken to change linearly in time; each time
it moves a contrast threshold C away from the reference, the pixel emits an event at the
interpolated moment of the crossing and the reference moves by C. p = +1 for brighter, -1 for
darker. Options: per-pixel threshold mismatch, a refractory period (a crossing within
`refractory_s` of the pixel's previous *emitted* event is dropped; the reference still moves, as
in a reset pixel that was blind for a moment), and shot-noise events (Poisson in time, uniform
over pixels, random polarity).

Events are a structured array of dtype EVENT_DTYPE: x, y (pixel column and row), t (integer
microseconds from the first frame, the convention of DSEC and most event datasets) and p (+1/-1),
sorted by t.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "i1")])
LOG_EPS = 0.01  # log(L + LOG_EPS): finite for black pixels, nearly linear below ~0.01

# Polarity image colours (on white): brighter = red, darker = blue.
POS_RGB, NEG_RGB = (220, 30, 30), (30, 60, 220)


def to_log_luma(frames: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    """(T, H, W) float64 log(luma + LOG_EPS) with luma in [0, 1].

    `frames`: PIL images, a (T, H, W) array of luma in [0, 1], or a (T, H, W, 3) uint8 RGB array.
    """
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        arr = np.stack([np.asarray(f.convert("RGB")) for f in frames])  # (T, H, W, 3)
    if arr.ndim == 4:
        rgb = arr.astype(np.float64) / 255.0
        luma = rgb @ np.array([0.299, 0.587, 0.114])  # (T, H, W)
    elif arr.ndim == 3:
        luma = arr.astype(np.float64)
    else:
        raise ValueError(f"frames must be (T, H, W) or (T, H, W, 3), got shape {arr.shape}")
    return np.log(luma + LOG_EPS)


def simulate_events(
    frames: Sequence[Image.Image] | np.ndarray,
    fps: float = 10.0,
    threshold: float = 0.2,
    threshold_sigma: float = 0.0,
    refractory_s: float = 0.0,
    noise_rate_hz: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Turn a clip's frames (frame k at time k / fps) into events sorted by t.

    threshold: contrast threshold C on log intensity (both polarities).
    threshold_sigma: std of the per-pixel threshold mismatch (0 = every pixel uses C).
    refractory_s: minimum time between two emitted events of one pixel.
    noise_rate_hz: shot-noise events per pixel per second, added on top.
    seed: seeds the threshold mismatch and the noise.
    """
    log_i = to_log_luma(frames)  # (T, H, W)
    n_frames, h, w = log_i.shape
    rng = np.random.default_rng(seed)
    flat = log_i.reshape(n_frames, h * w)  # (T, P)
    c = np.full(h * w, threshold)  # (P,) per-pixel threshold
    if threshold_sigma > 0:
        c = np.clip(c + threshold_sigma * rng.standard_normal(h * w), 0.01, None)
    ref = flat[0].copy()  # (P,) log intensity at each pixel's last event
    last_t = np.full(h * w, -np.inf)  # (P,) time of each pixel's last emitted event
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (pixel, t, p)

    for k in range(n_frames - 1):
        i0, i1 = flat[k], flat[k + 1]  # (P,) each
        t0, t1 = k / fps, (k + 1) / fps
        slope = i1 - i0  # (P,) change over the interval
        # Crossings upwards / downwards; a pixel crosses in one direction only per interval.
        # (Gating on the slope keeps float rounding of `ref` from firing on a constant pixel.)
        up = np.where(slope > 0, np.floor(np.maximum(i1 - ref, 0) / c), 0).astype(np.int64)
        down = np.where(slope < 0, np.floor(np.maximum(ref - i1, 0) / c), 0).astype(np.int64)
        n_cross = up + down  # (P,)
        sign = np.where(up > 0, 1, -1)  # (P,)
        for n in range(1, int(n_cross.max(initial=0)) + 1):
            pix = np.nonzero(n_cross >= n)[0]  # pixels with an n-th crossing in this interval
            level = ref[pix] + sign[pix] * n * c[pix]  # (E,) log intensity at the crossing
            t = t0 + (level - i0[pix]) / slope[pix] * (t1 - t0)  # (E,) linear interpolation
            t = np.clip(t, t0, t1)
            keep = t - last_t[pix] >= refractory_s
            last_t[pix[keep]] = t[keep]
            chunks.append((pix[keep], t[keep], sign[pix[keep]]))
        ref = ref + sign * n_cross * c  # every crossing moves the reference, emitted or not

    if noise_rate_hz > 0 and n_frames > 1:
        duration = (n_frames - 1) / fps
        n_noise = rng.poisson(noise_rate_hz * h * w * duration)
        chunks.append(
            (
                rng.integers(0, h * w, n_noise),
                rng.uniform(0, duration, n_noise),
                rng.choice(np.array([-1, 1]), n_noise),
            )
        )
    return _pack(chunks, w)


def _pack(chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], w: int) -> np.ndarray:
    pix = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
    t = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0)
    p = np.concatenate([c[2] for c in chunks]) if chunks else np.zeros(0, np.int64)
    t_us = np.round(t * 1e6).astype(np.int64)
    order = np.argsort(t_us, kind="stable")
    out = np.empty(len(order), dtype=EVENT_DTYPE)
    out["x"], out["y"] = pix[order] % w, pix[order] // w
    out["t"], out["p"] = t_us[order], p[order]
    return out


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def as_events(events: np.ndarray | dict) -> np.ndarray:
    """A structured EVENT_DTYPE array from a structured array or a dict / npz with x, y, t, p."""
    if isinstance(events, np.ndarray) and events.dtype.names:
        missing = {"x", "y", "t", "p"} - set(events.dtype.names)
    else:
        missing = {"x", "y", "t", "p"} - set(events.keys())
    if missing:
        raise ValueError(f"events need fields x, y, t, p; missing {sorted(missing)}")
    out = np.empty(len(events["t"]), dtype=EVENT_DTYPE)
    for k in ("x", "y", "t", "p"):
        out[k] = np.asarray(events[k])
    return out


def save_events(path: str | Path, events: np.ndarray) -> None:
    """Write an .npz with arrays x, y, t (microseconds), p."""
    np.savez_compressed(path, **{k: events[k] for k in ("x", "y", "t", "p")})


def load_events(path: str | Path) -> np.ndarray:
    with np.load(path) as data:
        return as_events({k: data[k] for k in ("x", "y", "t", "p")})


# ---------------------------------------------------------------------------------------------
# Representations
# ---------------------------------------------------------------------------------------------


def _t_range(ev: np.ndarray, t_range: tuple[float, float] | None) -> tuple[float, float]:
    if t_range is not None:
        return float(t_range[0]), float(t_range[1])
    if len(ev) == 0:
        return 0.0, 1.0
    return float(ev["t"].min()), float(ev["t"].max())


def events_to_count_images(
    events: np.ndarray | dict,
    height: int,
    width: int,
    n_slices: int = 1,
    t_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """(n_slices, 2, H, W) int32 event counts; channel 0 = positive, 1 = negative events.

    Time is cut into n_slices equal slices of `t_range` (default: first to last event); events
    outside `t_range` are dropped, an event at the end goes into the last slice.
    """
    ev = as_events(events)
    t0, t1 = _t_range(ev, t_range)
    ev = ev[(ev["t"] >= t0) & (ev["t"] <= t1)]
    span = max(t1 - t0, 1e-9)
    s = np.minimum(((ev["t"] - t0) / span * n_slices).astype(np.int64), n_slices - 1)  # (N,)
    ch = (ev["p"] < 0).astype(np.int64)  # (N,) 0 = positive, 1 = negative
    flat = ((s * 2 + ch) * height + ev["y"].astype(np.int64)) * width + ev["x"]  # (N,)
    counts = np.bincount(flat, minlength=n_slices * 2 * height * width)
    return counts.reshape(n_slices, 2, height, width).astype(np.int32)


def events_to_voxel_grid(
    events: np.ndarray | dict,
    height: int,
    width: int,
    n_bins: int = 5,
    t_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """(n_bins, H, W) float32 voxel grid: each event adds its polarity to the two nearest bins,
    weighted linearly in time (the first event at bin 0, the last at bin n_bins - 1)."""
    ev = as_events(events)
    t0, t1 = _t_range(ev, t_range)
    ev = ev[(ev["t"] >= t0) & (ev["t"] <= t1)]
    grid = np.zeros(n_bins * height * width, dtype=np.float64)
    tn = (ev["t"] - t0) / max(t1 - t0, 1e-9) * (n_bins - 1)  # (N,) in [0, n_bins - 1]
    left = np.floor(tn).astype(np.int64)
    frac = tn - left
    pix = ev["y"].astype(np.int64) * width + ev["x"]  # (N,)
    p = ev["p"].astype(np.float64)
    np.add.at(grid, left * height * width + pix, p * (1 - frac))
    right = left + 1
    inside = right < n_bins  # the last bin's events have frac = 0
    np.add.at(grid, right[inside] * height * width + pix[inside], (p * frac)[inside])
    return grid.reshape(n_bins, height, width).astype(np.float32)


def polarity_image(counts: np.ndarray) -> Image.Image:
    """Red/blue RGB image of one (2, H, W) count slice: white where nothing fired, red where more
    positive than negative events fired, blue otherwise."""
    pos, neg = counts[0].astype(np.int64), counts[1].astype(np.int64)  # (H, W) each
    rgb = np.full((*pos.shape, 3), 255, dtype=np.uint8)  # (H, W, 3)
    rgb[(pos > 0) & (pos >= neg)] = POS_RGB
    rgb[(neg > 0) & (neg > pos)] = NEG_RGB
    return Image.fromarray(rgb, mode="RGB")


def events_to_polarity_image(
    events: np.ndarray | dict,
    height: int,
    width: int,
    n_slices: int = 1,
    t_range: tuple[float, float] | None = None,
    columns: int | None = None,
) -> Image.Image:
    """The events as red (brighter) / blue (darker) on white, for a model or a person to look at.

    With n_slices > 1 the time slices are tiled left to right, top to bottom, in a grid of
    `columns` columns (default: as square as possible), with a 1-pixel grey line between them.
    """
    counts = events_to_count_images(events, height, width, n_slices, t_range)
    cols = columns or int(np.ceil(np.sqrt(n_slices)))
    rows = int(np.ceil(n_slices / cols))
    sheet = Image.new("RGB", (cols * width + cols - 1, rows * height + rows - 1), (160, 160, 160))
    for s in range(n_slices):
        r, c = divmod(s, cols)
        sheet.paste(polarity_image(counts[s]), (c * (width + 1), r * (height + 1)))
    return sheet


def events_to_tiles(
    events: np.ndarray | dict,
    height: int,
    width: int,
    size: int = 128,
    n_slices: int = 4,
    t_range: tuple[float, float] | None = None,
) -> Image.Image:
    """The event drafter's picture of a stream: a `size` x `size` RGB image of `n_slices` time
    slices (a square number), each a polarity picture (`polarity_image`) of the sensor's
    (height, width) binned down to one tile, tiled left to right, top to bottom, no borders.

    With 4 slices and a 128 px picture, each slice is 64 x 64: a 128 px sensor's pixels in
    2 x 2 blocks. `t_range` defaults to (0, the last event's t): the stream's own span, so a
    picture needs nothing but the events."""
    cols = int(round(np.sqrt(n_slices)))
    if cols * cols != n_slices or size % cols:
        raise ValueError(f"n_slices must be a square whose root divides size; got {n_slices}")
    ev = as_events(events)
    if len(ev) and (int(ev["x"].max()) >= width or int(ev["y"].max()) >= height):
        raise ValueError(
            f"events reach x = {int(ev['x'].max())}, y = {int(ev['y'].max())}, outside the "
            f"{width} x {height} sensor"
        )
    if t_range is None:
        t_range = (0.0, float(ev["t"].max()) if len(ev) else 1.0)
    tile = size // cols
    binned = ev.copy()
    binned["x"] = (ev["x"].astype(np.int64) * tile // width).astype(binned["x"].dtype)
    binned["y"] = (ev["y"].astype(np.int64) * tile // height).astype(binned["y"].dtype)
    counts = events_to_count_images(binned, tile, tile, n_slices, t_range)  # (S, 2, tile, tile)
    sheet = Image.new("RGB", (size, size))
    for s in range(n_slices):
        r, c = divmod(s, cols)
        sheet.paste(polarity_image(counts[s]), (c * tile, r * tile))
    return sheet
