"""Short clips of a scene in motion: objects move, bounce off the walls, appear, leave, recolour.

A `Clip` is the symbolic recipe (one `Track` per object: where it starts, its direction and
speed, and what happens to it); `timeline(clip)` plays it out frame by frame and lists every
`Happening` (for language); `render_clip` draws the frames. Frame f is at time f / fps seconds.

Motion is in canvas units per frame. A bouncing object reflects off a wall when its bounding
square would cross it; a leaving object ignores the walls and is gone from the first frame in
which it lies entirely outside the canvas.

    >>> clip = sample_clip(np.random.default_rng(0), scene, pairs=TRAIN_PAIRS)
    >>> frames = render_clip(clip, 128)   # list of PIL images, clip.n_frames of them
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from specvlm.world.scenes import (
    COLORS,
    SIZES,
    Background,
    Pair,
    Scene,
    SceneObject,
    render,
    sample_position,
)

_D = float(np.sqrt(0.5))
# Unit vectors in image coordinates (y grows downwards, so "up" is -y).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_D, -_D),
    "up-left": (-_D, -_D),
    "down-right": (_D, _D),
    "down-left": (-_D, _D),
}
SPEEDS: dict[str, float] = {"slow": 0.025, "fast": 0.055}  # canvas sides per frame
WALLS = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Track:
    start: SceneObject  # the object at frame `appear` (position, colour, size, depth)
    direction: str | None = None  # a DIRECTIONS key; None = stays still
    speed: str = "slow"  # a SPEEDS key (ignored when still)
    appear: int = 0  # first frame in which the object is present
    leaves: bool = False  # True: moves out of the canvas instead of bouncing
    recolor: tuple[int, str] | None = None  # (frame, new colour)

    @property
    def velocity(self) -> tuple[float, float]:
        if self.direction is None:
            return (0.0, 0.0)
        ux, uy = DIRECTIONS[self.direction]
        return (ux * SPEEDS[self.speed], uy * SPEEDS[self.speed])

    @property
    def moving(self) -> bool:
        return self.direction is not None


@dataclass(frozen=True)
class Happening:
    frame: int
    kind: str  # "appears" | "leaves" | "bounces" | "changes color"
    track: int  # index into clip.tracks
    detail: str = ""  # bounces/leaves: the wall or edge; changes color: the new colour


@dataclass(frozen=True)
class Clip:
    tracks: tuple[Track, ...]
    background: Background
    n_frames: int
    fps: float = 10.0

    @property
    def duration(self) -> float:
        """Seconds from the first to the last frame."""
        return (self.n_frames - 1) / self.fps

    def frame_times(self) -> np.ndarray:
        return np.arange(self.n_frames) / self.fps  # (n_frames,) seconds

    def to_dict(self) -> dict:
        return {
            "tracks": [asdict(t) for t in self.tracks],
            "background": asdict(self.background),
            "n_frames": self.n_frames,
            "fps": self.fps,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Clip:
        tracks = []
        for t in d["tracks"]:
            t = dict(t, start=SceneObject(**t["start"]))
            if t.get("recolor") is not None:
                t["recolor"] = (int(t["recolor"][0]), str(t["recolor"][1]))
            tracks.append(Track(**t))
        return cls(tuple(tracks), Background(**d["background"]), d["n_frames"], d["fps"])


@dataclass(frozen=True)
class Timeline:
    states: tuple[tuple[SceneObject | None, ...], ...]  # [frame][track]; None = not present
    happenings: tuple[Happening, ...]  # in frame order
    background: Background

    def scene(self, frame: int) -> Scene:
        return Scene(tuple(o for o in self.states[frame] if o is not None), self.background)

    def of(self, track: int, kind: str | None = None) -> list[Happening]:
        return [h for h in self.happenings if h.track == track and kind in (None, h.kind)]


def _outside(x: float, y: float, r: float) -> str | None:
    """The edge an object has left the canvas through, or None while any part is inside."""
    for edge, gone in (
        ("left", x + r < 0),
        ("right", x - r > 1),
        ("top", y + r < 0),
        ("bottom", y - r > 1),
    ):
        if gone:
            return edge
    return None


def _play(
    track: Track, index: int, n_frames: int
) -> tuple[list[SceneObject | None], list[Happening]]:
    """One track's state in every frame, and what happened to it."""
    o, r = track.start, track.start.radius
    x, y = o.x, o.y
    vx, vy = track.velocity
    color = o.color
    states: list[SceneObject | None] = []
    events: list[Happening] = []
    gone = False
    for f in range(n_frames):
        if f < track.appear or gone:
            states.append(None)
            continue
        if f == track.appear:
            if f > 0:
                events.append(Happening(f, "appears", index))
        else:
            x, y = x + vx, y + vy
            if track.leaves:
                edge = _outside(x, y, r)
                if edge is not None:
                    events.append(Happening(f, "leaves", index, edge))
                    gone = True
                    states.append(None)
                    continue
            else:  # reflect off the walls: the bounding square stays inside [0, 1]
                if x < r or x > 1 - r:
                    wall = "left" if x < r else "right"
                    x, vx = (2 * r - x if x < r else 2 * (1 - r) - x), -vx
                    events.append(Happening(f, "bounces", index, wall))
                if y < r or y > 1 - r:
                    wall = "top" if y < r else "bottom"
                    y, vy = (2 * r - y if y < r else 2 * (1 - r) - y), -vy
                    events.append(Happening(f, "bounces", index, wall))
        if track.recolor is not None and f == track.recolor[0]:
            color = track.recolor[1]
            events.append(Happening(f, "changes color", index, color))
        states.append(replace(o, x=round(x, 4), y=round(y, 4), color=color))
    return states, events


def timeline(clip: Clip) -> Timeline:
    """Play the clip: every object's state in every frame, and the happenings in frame order."""
    per_track = [_play(t, i, clip.n_frames) for i, t in enumerate(clip.tracks)]
    states = tuple(tuple(s[f] for s, _ in per_track) for f in range(clip.n_frames))
    happenings = sorted((h for _, hs in per_track for h in hs), key=lambda h: (h.frame, h.track))
    return Timeline(states, tuple(happenings), clip.background)


def render_clip(clip: Clip, size: int = 128, supersample: int = 2) -> list[Image.Image]:
    """The clip's frames as RGB images of `size` x `size` pixels."""
    tl = timeline(clip)
    return [render(tl.scene(f), size, supersample) for f in range(clip.n_frames)]


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _exit_options(o: SceneObject, n_frames: int, appear: int) -> list[tuple[str, str]]:
    """(direction, speed) pairs that carry the object fully out before the last frame."""
    options = []
    for d, (ux, uy) in DIRECTIONS.items():
        for s, v in SPEEDS.items():
            steps = np.arange(1, n_frames - appear)  # frames after the first one
            xs, ys = o.x + ux * v * steps, o.y + uy * v * steps
            if any(_outside(float(x), float(y), o.radius) for x, y in zip(xs, ys, strict=True)):
                options.append((d, s))
    return options


def sample_clip(
    rng: np.random.Generator,
    scene: Scene,
    pairs: tuple[Pair, ...],
    n_frames: tuple[int, int] = (8, 16),
    max_objects: int = 8,
    fps: float = 10.0,
) -> Clip:
    """A clip whose first frame is `scene`.

    Each object stays still (1 in 4) or moves in one of 8 directions at a slow or fast speed;
    a moving object leaves the canvas 1 time in 5 (when it can do so within the clip), an object
    that does not leave changes colour 1 time in 5, and 1 clip in 3 gets a new object appearing in the
    first half. New colour-shape pairs come from `pairs` and stay distinct within the clip.
    Something always moves or happens.
    """
    n = int(rng.integers(n_frames[0], n_frames[1] + 1))
    used = {o.pair for o in scene.objects}
    tracks: list[Track] = []
    for o in scene.objects:
        direction, speed, leaves, recolor = None, "slow", False, None
        if rng.random() >= 0.25:
            direction, speed = str(rng.choice(list(DIRECTIONS))), str(rng.choice(list(SPEEDS)))
            if rng.random() < 0.2:
                options = _exit_options(o, n, 0)
                if options:
                    direction, speed = options[rng.integers(len(options))]
                    leaves = True
        if not leaves and rng.random() < 0.2:
            colors = [c for c in COLORS if (c, o.shape) in pairs and (c, o.shape) not in used]
            if colors:
                new = str(colors[rng.integers(len(colors))])
                used.add((new, o.shape))
                recolor = (int(rng.integers(2, n - 1)), new)
        tracks.append(Track(o, direction, speed, 0, leaves, recolor))

    if len(tracks) < max_objects and rng.random() < 1 / 3:
        track = _new_arrival(rng, tracks, scene.background, n, pairs, used)
        if track is not None:
            tracks.append(track)

    if not any(t.moving or t.recolor or t.appear for t in tracks):
        tracks[0] = replace(tracks[0], direction=str(rng.choice(list(DIRECTIONS))), speed="slow")
    return Clip(tuple(tracks), scene.background, n, fps)


def _new_arrival(
    rng: np.random.Generator,
    tracks: list[Track],
    background: Background,
    n: int,
    pairs: tuple[Pair, ...],
    used: set[Pair],
) -> Track | None:
    """A track that pops into view in the first half, clear of the objects present then."""
    free = [p for p in pairs if p not in used]
    if not free:
        return None
    color, shape = free[rng.integers(len(free))]
    size = str(rng.choice(list(SIZES)))
    appear = int(rng.integers(2, n // 2 + 1))
    others = timeline(Clip(tuple(tracks), background, n)).states[appear]
    r = SIZES[size]
    for _ in range(50):
        x, y = sample_position(rng, r)
        if all(o is None or np.hypot(x - o.x, y - o.y) >= r + o.radius for o in others):
            break
    else:
        return None
    used.add((color, shape))
    z = max(t.start.z for t in tracks) + 1
    obj = SceneObject(shape, color, size, round(x, 4), round(y, 4), z)
    direction = str(rng.choice(list(DIRECTIONS))) if rng.random() < 0.5 else None
    return Track(obj, direction, str(rng.choice(list(SPEEDS))), appear)
