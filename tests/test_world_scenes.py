"""World scenes, clips and splits: determinism, split rules, geometry."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from specvlm.errors import InputError
from specvlm.world.clips import DIRECTIONS, Clip, Track, render_clip, timeline
from specvlm.world.scenes import (
    ALL_PAIRS,
    COLORS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    TRAIN_PAIRS,
    Background,
    Scene,
    SceneObject,
    render,
    sample_scene,
    visible_fractions,
)
from specvlm.world.splits import (
    SPLIT_SEED_BASE,
    SPLIT_SIZE,
    SPLITS,
    seed_split,
    split_seed,
    world_sample,
)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_vocabulary_sizes():
    assert len(SHAPES) >= 6 and len(COLORS) == 8 and len(SIZES) == 3
    assert len(set(HELD_OUT_PAIRS)) == len(HELD_OUT_PAIRS)
    # every colour and every shape is held out somewhere and still seen in training
    assert {c for c, _ in HELD_OUT_PAIRS} == set(COLORS)
    assert {s for _, s in HELD_OUT_PAIRS} == set(SHAPES)
    assert {c for c, _ in TRAIN_PAIRS} == set(COLORS)
    assert {s for _, s in TRAIN_PAIRS} == set(SHAPES)


def test_same_seed_same_scene_and_bytes():
    a = sample_scene(np.random.default_rng(7), (1, 8), ALL_PAIRS)
    b = sample_scene(np.random.default_rng(7), (1, 8), ALL_PAIRS)
    assert a == b
    assert png_bytes(render(a, 96)) == png_bytes(render(b, 96))
    c = sample_scene(np.random.default_rng(8), (1, 8), ALL_PAIRS)
    assert a != c


def test_render_size_and_scene_round_trip():
    scene = world_sample("train", 3)
    for size in (32, 80):
        img = render(scene, size)
        assert img.size == (size, size) and img.mode == "RGB"
    assert Scene.from_dict(scene.to_dict()) == scene


def test_every_pattern_renders_and_differs():
    obj = SceneObject("star", "red", "large", 0.5, 0.5, 0)
    arrays = []
    for pattern in ("plain", "stripes", "checker", "noise"):
        img = render(Scene((obj,), Background(pattern, "gray", "diagonal", 3)), 64)
        arrays.append(np.asarray(img))
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert not np.array_equal(arrays[i], arrays[j])


def test_objects_drawn_in_depth_order():
    back = SceneObject("square", "blue", "large", 0.5, 0.5, 0)
    front = SceneObject("circle", "red", "small", 0.5, 0.5, 1)
    img = np.asarray(render(Scene((front, back)), 64))  # listed front first: z decides
    assert tuple(img[32, 32]) == COLORS["red"]
    behind = SceneObject("circle", "red", "small", 0.5, 0.5, -1)
    img = np.asarray(render(Scene((back, behind)), 64))
    assert tuple(img[32, 32]) == COLORS["blue"]


def test_scene_rules_hold_for_many_seeds():
    for seed in range(40):
        scene = sample_scene(np.random.default_rng(seed), (1, 8), ALL_PAIRS)
        pairs = [o.pair for o in scene.objects]
        assert len(pairs) == len(set(pairs))  # (colour, shape) unique in a scene
        assert min(visible_fractions(scene)) >= 0.6  # nothing is hidden
        for o in scene.objects:
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius


def test_split_seed_ranges_are_disjoint():
    assert {"train", "val", "test", "hard"} == SPLITS
    ranges = sorted((SPLIT_SEED_BASE[s], SPLIT_SEED_BASE[s] + SPLIT_SIZE) for s in SPLITS)
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end <= start
    for s in SPLITS:
        assert seed_split(split_seed(s, 0)) == s and seed_split(split_seed(s, SPLIT_SIZE - 1)) == s
    with pytest.raises(InputError, match="accepted"):
        split_seed("dev", 0)
    with pytest.raises(InputError):
        split_seed("train", SPLIT_SIZE)


def test_no_scene_shared_between_splits():
    seen: dict[str, str] = {}
    for split in sorted(SPLITS):
        for i in range(30):
            key = repr(world_sample(split, i))
            assert key not in seen, f"{split}/{i} repeats {seen.get(key)}"
            seen[key] = f"{split}/{i}"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_regular_splits_never_show_held_out_pairs(split):
    for i in range(25):
        scene = world_sample(split, i)
        assert 1 <= len(scene.objects) <= 5
        assert not {o.pair for o in scene.objects} & set(HELD_OUT_PAIRS)
        clip = world_sample(split, i, "video")
        seen = {t.start.pair for t in clip.tracks}
        seen |= {(t.recolor[1], t.start.shape) for t in clip.tracks if t.recolor}
        assert not seen & set(HELD_OUT_PAIRS)
        assert len(clip.tracks) <= 5


def test_hard_split_has_more_objects_and_held_out_pairs():
    for i in range(25):
        scene = world_sample("hard", i)
        assert 6 <= len(scene.objects) <= 8
        assert {o.pair for o in scene.objects} & set(HELD_OUT_PAIRS)


def test_generation_does_not_depend_on_hash_seed():
    code = (
        "import hashlib; from specvlm.world.language import make_record, FAMILIES; "
        "print(hashlib.sha256(repr([make_record('train', i, f, k) for i in range(6) "
        "for f in FAMILIES for k in ('image', 'video', 'events')]).encode()).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    from specvlm.world.language import FAMILIES, make_record

    records = [
        make_record("train", i, f, k)
        for i in range(6)
        for f in FAMILIES
        for k in ("image", "video", "events")
    ]
    assert out.stdout.strip() == hashlib.sha256(repr(records).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# clips
# ---------------------------------------------------------------------------------------------


def test_clip_determinism_and_length():
    a, b = world_sample("val", 5, "video"), world_sample("val", 5, "video")
    assert a == b and 8 <= a.n_frames <= 16
    fa, fb = render_clip(a, 48), render_clip(b, 48)
    assert len(fa) == a.n_frames
    assert all(png_bytes(x) == png_bytes(y) for x, y in zip(fa, fb, strict=True))
    assert Clip.from_dict(a.to_dict()) == a


def test_clip_first_frame_is_the_image_scene():
    for i in range(10):
        scene = world_sample("train", i)
        clip = world_sample("train", i, "video")
        assert timeline(clip).scene(0).objects == scene.objects


def test_bounce_reflects_off_the_wall():
    obj = SceneObject("circle", "red", "small", 0.85, 0.5, 0)
    clip = Clip((Track(obj, "right", "fast"),), Background(), 10)
    tl = timeline(clip)
    xs = [s[0].x for s in tl.states]
    assert max(xs) <= 1 - obj.radius + 1e-9
    assert [h.kind for h in tl.happenings] == ["bounces"] and tl.happenings[0].detail == "right"
    assert xs[-1] < xs[2]  # it came back


def test_leaving_object_disappears_and_is_reported():
    obj = SceneObject("square", "blue", "small", 0.5, 0.2, 0)
    clip = Clip((Track(obj, "up", "fast", leaves=True),), Background(), 10)
    tl = timeline(clip)
    (h,) = tl.of(0, "leaves")
    assert h.detail == "top"
    assert all(s[0] is None for s in tl.states[h.frame :])
    assert all(s[0] is not None for s in tl.states[: h.frame])


def test_appear_and_recolor_happen_on_their_frames():
    a_ = SceneObject("star", "green", "medium", 0.3, 0.3, 0)
    b_ = SceneObject("hexagon", "pink", "medium", 0.7, 0.7, 1)
    clip = Clip(
        (Track(a_, recolor=(4, "blue")), Track(b_, "left", "slow", appear=3)), Background(), 9
    )
    tl = timeline(clip)
    assert [(h.frame, h.kind) for h in tl.happenings] == [(3, "appears"), (4, "changes color")]
    assert tl.states[2][1] is None and tl.states[3][1] is not None
    assert tl.states[3][0].color == "green" and tl.states[4][0].color == "blue"
    assert set(DIRECTIONS) >= {"left", "right", "up", "down"}
