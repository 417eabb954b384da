"""Data splits: disjoint seed ranges, and what each split's scenes may contain.

Sample `index` of split `name` uses seed `SPLIT_SEED_BASE[name] + index`, with
0 <= index < SPLIT_SIZE, so no seed (and hence no scene) is shared between splits.

- train / val / test: 1-5 objects, colour-shape pairs from TRAIN_PAIRS only.
- hard: 6-8 objects, any pair, and at least one HELD_OUT_PAIRS pair in every scene (also in
  every clip's first frame): more objects than ever seen in training, and unseen combinations.

Every random draw of a sample comes from `rng(seed, stream)`, one independent stream per purpose,
so that, for example, asking for fewer task families never changes the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specvlm.errors import InputError
from specvlm.world.clips import Clip, sample_clip
from specvlm.world.scenes import ALL_PAIRS, HELD_OUT_PAIRS, TRAIN_PAIRS, Pair, Scene, sample_scene

SPLITS: frozenset[str] = frozenset({"train", "val", "test", "hard"})
SPLIT_SIZE = 1_000_000_000
SPLIT_SEED_BASE: dict[str, int] = {
    "train": 0,
    "val": SPLIT_SIZE,
    "test": 2 * SPLIT_SIZE,
    "hard": 3 * SPLIT_SIZE,
}

# Random streams of one sample (second word of the seed sequence).
STREAM_SCENE, STREAM_CLIP, STREAM_EVENTS, STREAM_LANGUAGE = 0, 1, 2, 3


@dataclass(frozen=True)
class SplitSpec:
    name: str
    n_objects: tuple[int, int]  # inclusive range
    pairs: tuple[Pair, ...]  # colour-shape pairs allowed anywhere in the split
    must_include: tuple[Pair, ...]  # every scene holds at least one of these (empty = no rule)


_SPECS = {
    "train": SplitSpec("train", (1, 5), TRAIN_PAIRS, ()),
    "val": SplitSpec("val", (1, 5), TRAIN_PAIRS, ()),
    "test": SplitSpec("test", (1, 5), TRAIN_PAIRS, ()),
    "hard": SplitSpec("hard", (6, 8), ALL_PAIRS, HELD_OUT_PAIRS),
}


def check_split(name: str) -> str:
    if name not in SPLITS:
        raise InputError(f"unknown split {name!r}; accepted: {', '.join(sorted(SPLITS))}")
    return name


def split_spec(name: str) -> SplitSpec:
    return _SPECS[check_split(name)]


def split_seed(name: str, index: int) -> int:
    """The seed of sample `index` of split `name` (unique across all splits)."""
    check_split(name)
    if not 0 <= index < SPLIT_SIZE:
        raise InputError(f"sample index must be in [0, {SPLIT_SIZE}), got {index}")
    return SPLIT_SEED_BASE[name] + index


def seed_split(seed: int) -> str:
    """The split a seed belongs to (inverse of `split_seed`)."""
    for name, base in SPLIT_SEED_BASE.items():
        if base <= seed < base + SPLIT_SIZE:
            return name
    raise ValueError(f"seed {seed} is outside every split's range")


def rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    """The generator of one purpose (`stream`) of one sample (`seed`)."""
    return np.random.default_rng([seed, stream, *extra])


KINDS: tuple[str, ...] = ("image", "video", "events")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
    return kind


def world_sample(split: str, index: int, kind: str = "image") -> Scene | Clip:
    """The symbolic content of sample `index` of a split: a Scene for images, a Clip otherwise.

    A clip's first frame is the image sample's scene with the same index.
    """
    seed = split_seed(split, index)
    spec = split_spec(split)
    scene = sample_scene(rng(seed, STREAM_SCENE), spec.n_objects, spec.pairs, spec.must_include)
    if check_kind(kind) == "image":
        return scene
    return sample_clip(rng(seed, STREAM_CLIP), scene, spec.pairs, max_objects=spec.n_objects[1])
