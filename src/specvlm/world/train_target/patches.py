"""What each image patch shows, from the scene's ground truth: the auxiliary training targets.

`patch_labels`: per-patch classes for the patch heads (which colour and shape covers a patch,
which object's centre lies in it and in which ninth of the canvas). `patch_words`: the words
(and region codes) naming the object centred in each patch, for the alignment loss.
`motion_labels`: per patch of each sampled clip frame, which way the object covering it moved
since the frame before, for the video recipe's motion loss.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from specvlm.errors import InputError
from specvlm.world.clips import DIRECTIONS, Clip, timeline
from specvlm.world.grammar import REGION_PHRASES, region
from specvlm.world.scenes import COLORS, SHAPES, SIZES, Scene, SceneObject, visible_masks

# Per-patch labels; class 0 is "nothing" in each. "cover_*": the object with the most visible
# pixels in the patch (if it fills at least MIN_COVER of it); "center_*": the object whose centre
# lies in the patch (the front one, if two do). Centre labels make counting a sum over patches.
# "center_region" (which ninth of the canvas holds that centre, as the grammar names it) keeps
# where a patch is in its features: without it the tower's features lost position, and so the
# projector could not say " top left".
REGIONS: tuple[str, ...] = tuple(REGION_PHRASES)
PATCH_LABELS: dict[str, int] = {
    "cover_color": len(COLORS) + 1,
    "cover_shape": len(SHAPES) + 1,
    "center_color": len(COLORS) + 1,
    "center_shape": len(SHAPES) + 1,
    "center_size": len(SIZES) + 1,
    "center_region": len(REGIONS) + 1,
}
MIN_COVER = 0.1
NOTHING_WEIGHT = 0.2  # loss weight of the "nothing" class
_PATCH_MASK_RES = 8  # mask pixels per patch side

N_PATCH_WORDS = 3  # colour, shape, size: token ids whose embeddings the target sums
N_PATCH_SLOTS = N_PATCH_WORDS + 2  # ... then the region as a row code and a column code
N_REGION_CODES = 6  # row thirds (top, middle, bottom), then column thirds (left, center, right)


def centre_patches(scene: Scene, grid: int) -> list[tuple[int, int, SceneObject]]:
    """(row, column, object) of the patch holding each object's centre, back to front (so a
    writer that overwrites keeps the front object where two centres share a patch)."""
    return [
        (min(int(o.y * grid), grid - 1), min(int(o.x * grid), grid - 1), o)
        for o in scene.by_depth()
    ]


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """(len(PATCH_LABELS), grid * grid) int64 class ids, patches in row-major order."""
    colors, shapes, sizes = list(COLORS), list(SHAPES), list(SIZES)
    out = np.zeros((len(PATCH_LABELS), grid, grid), dtype=np.int64)
    if scene.objects:
        best, filled = _covering(scene, grid)
        for i, o in enumerate(scene.objects):
            here = filled & (best == i)
            out[0][here] = colors.index(o.color) + 1
            out[1][here] = shapes.index(o.shape) + 1
    for r, c, o in centre_patches(scene, grid):
        out[2, r, c] = colors.index(o.color) + 1
        out[3, r, c] = shapes.index(o.shape) + 1
        out[4, r, c] = sizes.index(o.size) + 1
        out[5, r, c] = REGIONS.index(region(o.x, o.y)) + 1
    return out.reshape(len(PATCH_LABELS), grid * grid)


def _covering(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """For a scene with objects: (grid, grid) the index of the object with the most visible
    pixels in each patch, and whether it fills at least MIN_COVER of the patch."""
    vis = visible_masks(scene, grid * _PATCH_MASK_RES)
    cover = (
        np.stack([vis[i] for i in range(len(scene.objects))])
        .reshape(len(scene.objects), grid, _PATCH_MASK_RES, grid, _PATCH_MASK_RES)
        .mean(axis=(2, 4))
    )  # (n_objects, grid, grid) visible pixel fraction of each patch
    return cover.argmax(0), cover.max(0) >= MIN_COVER


def region_thirds(x: float, y: float) -> tuple[int, int]:
    """(row, column) third of the canvas holding the point, 0-2 each: `grammar.region` in
    numbers (row 0 = " top", column 0 = " left", (1, 1) = " center")."""
    return min(max(int(y * 3), 0), 2), min(max(int(x * 3), 0), 2)


def object_slots(o: SceneObject, tid) -> list[int]:
    """The N_PATCH_SLOTS numbers naming object `o` in `patch_words`: the token ids (`tid(word)`)
    of its colour, shape and size words, then 1 + its row third and 4 + its column third (the
    region codes' numbers, 1-6)."""
    row, col = region_thirds(o.x, o.y)
    return [tid(o.color), tid(o.shape), tid(o.size), 1 + row, 4 + col]


def word_id(tokenizer):
    """word -> the token id of " word" (which must be one token)."""

    def tid(word: str) -> int:
        ids = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is not one token of this tokenizer")
        return ids[0]

    return tid


def patch_words(scene: Scene, grid: int, tokenizer) -> np.ndarray:
    """(grid * grid, N_PATCH_SLOTS) what names the object whose centre lies in each patch (the
    front one), as `object_slots`: " red", " star", " small", then its region codes; 0 = none."""
    tid = word_id(tokenizer)
    out = np.zeros((grid, grid, N_PATCH_SLOTS), dtype=np.int64)
    for r, c, o in centre_patches(scene, grid):
        out[r, c] = object_slots(o, tid)
    return out.reshape(grid * grid, N_PATCH_SLOTS)


@functools.cache
def region_codes(dim: int) -> torch.Tensor:
    """(1 + N_REGION_CODES, dim): row 0 zero (no code), rows 1-6 fixed orthonormal directions
    (the same for every run of a width; not parameters, never saved: the projector learns to
    emit them from the pixels, the decoder to read them)."""
    g = torch.Generator().manual_seed(2026)
    q, _ = torch.linalg.qr(torch.randn(dim, N_REGION_CODES, generator=g, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dim), q.T.float()])


# Motion classes of a clip frame's patch: class 0 "nothing" (no object covers it), 1 "still",
# then the 8 directions in `clips.DIRECTIONS` order; -1 (ignored): not known from the frames
# seen so far (the first frame; an object absent from the frame before).
MOTION_CLASSES: tuple[str, ...] = ("nothing", "still", *DIRECTIONS)
_SIGNS_TO_CLASS = {
    (int(np.sign(dx)), int(np.sign(dy))): 2 + k for k, (dx, dy) in enumerate(DIRECTIONS.values())
} | {(0, 0): 1}


MOTION_SPANS: tuple[str, ...] = ("step", "clip")  # what `motion_labels` measures from


def motion_class(dx: float, dy: float) -> int:
    """The MOTION_CLASSES index of a displacement (canvas units, y down): the signs of its two
    components (1 "still" for none)."""
    return _SIGNS_TO_CLASS[(int(np.sign(round(dx, 9))), int(np.sign(round(dy, 9))))]


def motion_labels(clip: Clip, frames: list[int], grid: int, span: str = "step") -> np.ndarray:
    """(len(frames), grid * grid) int64: for sampled frame k >= 1 (clip frame `frames[k]`) and
    each patch, the MOTION_CLASSES index of the object that covers the patch most (at least
    MIN_COVER of it; else 0), by its displacement up to frame k from sampled frame k - 1
    (`span` "step": what a model that has seen those two frames could tell) or from the first
    sampled frame the object is in (`span` "clip": the clip's motion so far, larger and closer
    to what the questions ask). -1 for frame 0 and where the object was not in the reference
    frame (for "clip": where frame k is its first)."""
    if span not in MOTION_SPANS:
        raise InputError(f"motion span {span!r}: expected one of {', '.join(MOTION_SPANS)}")
    tl = timeline(clip)
    out = np.full((len(frames), grid, grid), -1, dtype=np.int64)
    for k in range(1, len(frames)):
        now = tl.states[frames[k]]
        tracks = [t for t, o in enumerate(now) if o is not None]  # scene(f)'s objects, in order
        out[k] = 0
        if not tracks:
            continue
        best, filled = _covering(tl.scene(frames[k]), grid)
        for i, t in enumerate(tracks):
            if span == "step":
                ref = tl.states[frames[k - 1]][t]
            else:  # its state in the first sampled frame that has it
                seen = (tl.states[f][t] for f in frames[:k])
                ref = next((s for s in seen if s is not None), None)
            label = -1 if ref is None else motion_class(now[t].x - ref.x, now[t].y - ref.y)
            out[k][filled & (best == i)] = label
    return out.reshape(len(frames), grid * grid)
