"""The event-camera simulator and the event representations."""

from __future__ import annotations

import numpy as np
import pytest

from specvlm.world.clips import Clip, Track, render_clip
from specvlm.world.events import (
    EVENT_DTYPE,
    LOG_EPS,
    as_events,
    events_to_count_images,
    events_to_polarity_image,
    events_to_voxel_grid,
    load_events,
    save_events,
    simulate_events,
)
from specvlm.world.scenes import Background, SceneObject
from specvlm.world.splits import world_sample


def moving_clip(speed: str, n_frames: int = 10) -> Clip:
    obj = SceneObject("square", "red", "medium", 0.3, 0.5, 0)
    return Clip((Track(obj, "right", speed),), Background("plain", "white"), n_frames)


def test_static_clip_without_noise_gives_no_events():
    scene_clip = Clip(
        (Track(SceneObject("star", "blue", "large", 0.5, 0.5, 0)),), Background("noise", "gray"), 8
    )
    ev = simulate_events(render_clip(scene_clip, 48), fps=10.0)
    assert ev.dtype == EVENT_DTYPE and len(ev) == 0


def test_brightening_fires_positive_and_darkening_negative():
    frames = np.full((3, 4, 4), 0.2)  # (T, H, W) luma
    frames[1, 0, 0] = 0.8  # pixel (x=0, y=0) gets brighter, then back to darker
    frames[1:, 3, 2] = 0.02  # pixel (x=2, y=3) gets darker and stays dark
    ev = simulate_events(frames, fps=10.0, threshold=0.2)
    a = ev[(ev["x"] == 0) & (ev["y"] == 0)]
    assert set(a["p"][a["t"] <= 100_000]) == {1} and set(a["p"][a["t"] > 100_000]) == {-1}
    b = ev[(ev["x"] == 2) & (ev["y"] == 3)]
    assert len(b) > 0 and set(b["p"]) == {-1}
    assert set(zip(ev["x"], ev["y"], strict=True)) == {(0, 0), (2, 3)}  # nothing else fires


def test_crossing_count_and_interpolated_timestamps_are_exact():
    lo, hi, c = 0.2, 0.8, 0.2
    frames = np.array([[[lo]], [[hi]]])  # one pixel, two frames 0.1 s apart
    ev = simulate_events(frames, fps=10.0, threshold=c)
    delta = np.log(hi + LOG_EPS) - np.log(lo + LOG_EPS)
    n = int(np.floor(delta / c))
    assert len(ev) == n and set(ev["p"]) == {1}
    expected_t = np.round(np.arange(1, n + 1) * c / delta * 0.1 * 1e6)  # linear in log intensity
    np.testing.assert_array_equal(ev["t"], expected_t.astype(np.int64))


def test_events_grow_with_speed():
    counts = [len(simulate_events(render_clip(moving_clip(s), 64), 10.0)) for s in ("slow", "fast")]
    assert 0 < counts[0] < counts[1]


def test_timestamps_sorted_and_inside_the_clip():
    clip = world_sample("train", 2, "events")
    ev = simulate_events(render_clip(clip, 48), clip.fps, noise_rate_hz=0.5, seed=1)
    assert len(ev) > 0
    assert np.all(np.diff(ev["t"]) >= 0)
    assert ev["t"].min() >= 0 and ev["t"].max() <= round(clip.duration * 1e6)
    assert set(np.unique(ev["p"])) <= {-1, 1}
    assert ev["x"].max() < 48 and ev["y"].max() < 48


def test_noise_on_a_static_clip_has_the_expected_rate():
    frames = np.full((11, 20, 20), 0.5)  # 1 s, 400 pixels
    ev = simulate_events(frames, fps=10.0, noise_rate_hz=2.0, seed=3)
    assert 600 < len(ev) < 1000  # Poisson mean 800
    assert set(np.unique(ev["p"])) == {-1, 1}
    again = simulate_events(frames, fps=10.0, noise_rate_hz=2.0, seed=3)
    np.testing.assert_array_equal(ev, again)


def test_refractory_period_spaces_a_pixels_events():
    frames = np.array([[[0.05]], [[0.9]]])  # many crossings within 0.1 s
    free = simulate_events(frames, fps=10.0)
    slow = simulate_events(frames, fps=10.0, refractory_s=0.03)
    assert len(slow) < len(free)
    assert np.all(np.diff(slow["t"]) >= 30_000)


def test_count_images_shape_and_sum():
    clip = world_sample("val", 1, "events")
    ev = simulate_events(render_clip(clip, 40), clip.fps, noise_rate_hz=0.2)
    counts = events_to_count_images(ev, 40, 40, n_slices=5)
    assert counts.shape == (5, 2, 40, 40)
    assert counts.sum() == len(ev)
    assert counts[:, 0].sum() == (ev["p"] > 0).sum() and counts[:, 1].sum() == (ev["p"] < 0).sum()
    # first and last event land in the first and last slice
    assert counts[0].sum() > 0 and counts[-1].sum() > 0


def test_voxel_grid_shape_and_bilinear_weights():
    ev = as_events({"x": [1, 2, 3], "y": [0, 0, 0], "t": [0, 50, 100], "p": [1, -1, 1]})
    grid = events_to_voxel_grid(ev, 2, 4, n_bins=3)
    assert grid.shape == (3, 2, 4) and grid.dtype == np.float32
    assert grid[0, 0, 1] == 1.0  # first event: bin 0 only
    assert grid[1, 0, 2] == -1.0  # middle event: exactly bin 1
    assert grid[2, 0, 3] == 1.0  # last event: last bin
    ev2 = as_events({"x": [0], "y": [0], "t": [25], "p": [1]})
    g2 = events_to_voxel_grid(ev2, 1, 1, n_bins=3, t_range=(0, 100))
    np.testing.assert_allclose(g2[:, 0, 0], [0.5, 0.5, 0.0])
    assert grid.sum() == pytest.approx(ev["p"].sum())


def test_polarity_image_and_npz_round_trip(tmp_path):
    ev = as_events({"x": [0, 1], "y": [0, 1], "t": [0, 10], "p": [1, -1]})
    img = events_to_polarity_image(ev, 2, 2)
    assert img.size == (2, 2)
    px = np.asarray(img)
    assert tuple(px[0, 0]) == (220, 30, 30) and tuple(px[1, 1]) == (30, 60, 220)
    assert tuple(px[0, 1]) == (255, 255, 255)
    grid = events_to_polarity_image(ev, 8, 8, n_slices=4)
    assert grid.size == (2 * 8 + 1, 2 * 8 + 1)
    save_events(tmp_path / "e.npz", ev)
    back = load_events(tmp_path / "e.npz")
    np.testing.assert_array_equal(back, ev)
    with np.load(tmp_path / "e.npz") as data:
        assert set(data.files) == {"x", "y", "t", "p"}
