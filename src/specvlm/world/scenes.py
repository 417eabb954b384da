"""Procedural scenes: flat-coloured shapes on a plain or textured background.

A `Scene` is the symbolic truth (which objects, where, in what draw order); `render` turns it into
pixels. Everything is deterministic: the same `numpy.random.Generator` state gives the same scene,
and the same scene gives the same image bytes.

Coordinates are normalised to the canvas: x = 0 is the left edge, x = 1 the right edge, y = 0 the
top edge, y = 1 the bottom edge. An object's (x, y) is its centre and its extent is a square of
half-side `radius` around it. Draw order is depth: an object with a higher `z` is drawn later, in
front of the objects it overlaps.

    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng, n_objects=(2, 4))
    >>> image = render(scene, 224)        # PIL.Image, RGB, 224 x 224
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 40),
    "green": (40, 165, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
}

# Half the side of the object's bounding square, as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.06, "medium": 0.085, "large": 0.115}

# Background grey levels (0-255) and the patterns drawn on them.
TONES: dict[str, int] = {"white": 235, "light gray": 190, "gray": 130, "dark gray": 70}
PATTERNS: tuple[str, ...] = ("plain", "stripes", "checker", "noise")
STRIPE_ORIENTATIONS: tuple[str, ...] = ("vertical", "horizontal", "diagonal")

Pair = tuple[str, str]  # (color, shape)

ALL_PAIRS: tuple[Pair, ...] = tuple(itertools.product(COLORS, SHAPES))

# Colour-shape pairs never seen in train/val/test images; only the "hard" split uses them.
# Each of the 8 colours and each of the 7 shapes is held out at least once, and every colour and
# every shape still occurs in training with other partners.
HELD_OUT_PAIRS: tuple[Pair, ...] = (
    ("red", "star"),
    ("orange", "hexagon"),
    ("yellow", "circle"),
    ("green", "diamond"),
    ("cyan", "triangle"),
    ("blue", "cross"),
    ("purple", "square"),
    ("pink", "circle"),
)
TRAIN_PAIRS: tuple[Pair, ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)

MIN_VISIBLE = 0.6  # every object keeps at least this fraction of its area visible
MASK_RES = 96  # resolution of the masks used for visibility and overlap


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: float  # centre, 0 = left edge .. 1 = right edge
    y: float  # centre, 0 = top edge .. 1 = bottom edge
    z: int  # draw order: higher is in front

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def pair(self) -> Pair:
        return (self.color, self.shape)

    @property
    def name(self) -> str:
        """'red circle': unique within a scene (a scene never holds the same pair twice)."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    pattern: str = "plain"  # one of PATTERNS
    tone: str = "light gray"  # one of TONES
    orientation: str = "vertical"  # stripes only: one of STRIPE_ORIENTATIONS
    seed: int = 0  # noise only: the texture's seed


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background = field(default_factory=Background)

    def to_dict(self) -> dict:
        return {
            "objects": [asdict(o) for o in self.objects],
            "background": asdict(self.background),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            objects=tuple(SceneObject(**o) for o in d["objects"]),
            background=Background(**d["background"]),
        )

    def by_depth(self) -> list[SceneObject]:
        """Objects back to front (the order they are drawn in)."""
        return sorted(self.objects, key=lambda o: o.z)


# ---------------------------------------------------------------------------------------------
# Geometry shared by rendering and masks
# ---------------------------------------------------------------------------------------------


def _regular(n: int, cx: float, cy: float, r: float, phase: float) -> list[tuple[float, float]]:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices, in pixels, of `shape` centred at (cx, cy) inside a square of half-side r.

    Circles are drawn as ellipses, not through this function.
    """
    if shape == "square":
        s = 0.88 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":  # pointing up, base on the bottom
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "diamond":  # a rhombus taller than wide
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "hexagon":
        return _regular(6, cx, cy, r, 0.0)
    if shape == "star":  # five points, alternating outer and inner radius
        outer = _regular(5, cx, cy, r, -np.pi / 2)
        inner = _regular(5, cx, cy, 0.45 * r, -np.pi / 2 + np.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":  # a plus sign with arms of width 0.7 r
        a, w = r, 0.35 * r
        return [
            (cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
            (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
            (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _draw_object(
    draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, fill, outline=None, width: int = 0
) -> None:
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(shape_polygon(obj.shape, cx, cy, r), fill=fill, outline=outline, width=width)


def object_mask(obj: SceneObject, res: int = MASK_RES) -> np.ndarray:
    """Boolean (res, res) mask of the pixels the object covers, ignoring everything else."""
    img = Image.new("L", (res, res), 0)
    _draw_object(ImageDraw.Draw(img), obj, res, fill=255)
    return np.asarray(img) > 127


def visible_masks(scene: Scene, res: int = MASK_RES) -> dict[int, np.ndarray]:
    """For each object index, the (res, res) mask of its pixels not covered by objects in front."""
    masks = {i: object_mask(o, res) for i, o in enumerate(scene.objects)}
    visible = {}
    for i, o in enumerate(scene.objects):
        covered = np.zeros((res, res), dtype=bool)
        for j, other in enumerate(scene.objects):
            if other.z > o.z:
                covered |= masks[j]
        visible[i] = masks[i] & ~covered
    return visible


def visible_fractions(scene: Scene, res: int = MASK_RES) -> list[float]:
    """Fraction of each object's own area that is visible (1.0 = not covered at all)."""
    fractions = []
    vis = visible_masks(scene, res)
    for i, o in enumerate(scene.objects):
        full = object_mask(o, res).sum()
        fractions.append(float(vis[i].sum() / max(full, 1)))
    return fractions


def occlusions(scene: Scene, min_fraction: float = 0.03) -> list[tuple[int, int]]:
    """(front, back) index pairs where `front` covers at least `min_fraction` of `back`'s area."""
    masks = [object_mask(o) for o in scene.objects]
    pairs = []
    for i, j in itertools.permutations(range(len(scene.objects)), 2):
        if scene.objects[i].z > scene.objects[j].z:
            overlap = (masks[i] & masks[j]).sum() / max(masks[j].sum(), 1)
            if overlap >= min_fraction:
                pairs.append((i, j))
    return pairs


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def background_array(bg: Background, side: int) -> np.ndarray:
    """(side, side) uint8 grey levels of the background."""
    base = TONES[bg.tone]
    # Textures go darker on light tones and lighter on dark ones, so objects stay visible.
    delta = -28 if base > 128 else 28
    yy, xx = np.mgrid[0:side, 0:side] / side  # (side, side) each, in [0, 1)
    if bg.pattern == "plain":
        level = np.zeros((side, side))
    elif bg.pattern == "stripes":
        coord = {"vertical": xx, "horizontal": yy, "diagonal": (xx + yy) / np.sqrt(2)}
        level = (np.floor(coord[bg.orientation] * 16) % 2).astype(float)  # 8 stripe pairs
    elif bg.pattern == "checker":
        level = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2).astype(float)  # 8 x 8 cells
    elif bg.pattern == "noise":
        # A 12 x 12 random grid upsampled smoothly: the same texture at every resolution.
        coarse = np.random.default_rng(bg.seed).random((12, 12))
        img = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (side, side), Image.Resampling.BICUBIC
        )
        level = np.asarray(img, dtype=float) / 255.0
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r}; known: {PATTERNS}")
    return np.clip(base + delta * level, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 224, supersample: int = 2) -> Image.Image:
    """Draw the scene as an RGB image of `size` x `size` pixels (antialiased by supersampling)."""
    side = size * supersample
    grey = background_array(scene.background, side)  # (side, side)
    img = Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")  # (side, side, 3)
    draw = ImageDraw.Draw(img)
    width = max(1, side // 160)
    for obj in scene.by_depth():
        fill = COLORS[obj.color]
        edge = tuple(int(c * 0.6) for c in fill)  # a darker rim separates overlapping objects
        _draw_object(draw, obj, side, fill=fill, outline=edge, width=width)
    if supersample > 1:
        img = img.resize((size, size), Image.Resampling.BOX)
    return img


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample_background(rng: np.random.Generator) -> Background:
    return Background(
        pattern=str(rng.choice(PATTERNS, p=[0.4, 0.2, 0.2, 0.2])),
        tone=str(rng.choice(list(TONES))),
        orientation=str(rng.choice(STRIPE_ORIENTATIONS)),
        seed=int(rng.integers(0, 2**31)),
    )


def sample_position(rng: np.random.Generator, r: float) -> tuple[float, float]:
    """A centre that keeps the object inside the canvas; one time in four, inside a corner."""
    lo, hi = r + 0.02, 1 - r - 0.02
    if rng.random() < 0.25:
        # A corner: the centre within the outer 30% of both axes.
        def edge() -> float:
            if rng.random() < 0.5:
                return float(rng.uniform(lo, max(lo, 0.3)))
            return float(rng.uniform(min(hi, 0.7), hi))

        return edge(), edge()
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def sample_pairs(
    rng: np.random.Generator,
    n: int,
    pairs: tuple[Pair, ...],
    must_include: tuple[Pair, ...] = (),
) -> list[Pair]:
    """n distinct pairs from `pairs`; at least one from `must_include` when it is not empty."""
    chosen: list[Pair] = []
    if must_include:
        chosen.append(must_include[rng.integers(len(must_include))])
    rest = [p for p in pairs if p not in chosen]
    for k in rng.permutation(len(rest))[: n - len(chosen)]:
        chosen.append(rest[k])
    rng.shuffle(chosen)  # the required pair is not always the first object
    return chosen


def sample_scene(
    rng: np.random.Generator,
    n_objects: tuple[int, int] = (1, 5),
    pairs: tuple[Pair, ...] = TRAIN_PAIRS,
    must_include: tuple[Pair, ...] = (),
    max_tries: int = 200,
) -> Scene:
    """A random scene with n_objects[0]..n_objects[1] objects (inclusive).

    Colour-shape pairs come from `pairs` (distinct within the scene); `must_include` forces at
    least one of its pairs in. Objects may overlap (draw order = depth) but each keeps at least
    MIN_VISIBLE of its area visible, so counting them from the image is always possible.
    """
    lo, hi = n_objects
    if not 1 <= lo <= hi <= len(pairs):
        raise ValueError(f"n_objects must satisfy 1 <= lo <= hi <= {len(pairs)}, got {n_objects}")
    background = sample_background(rng)
    n = int(rng.integers(lo, hi + 1))
    for _ in range(max_tries):
        objects = _place(rng, sample_pairs(rng, n, pairs, must_include))
        if objects is None:
            continue
        scene = Scene(objects=objects, background=background)
        if min(visible_fractions(scene)) >= MIN_VISIBLE:
            return scene
    raise RuntimeError(f"could not place {n} objects in {max_tries} tries")


def _place(rng: np.random.Generator, chosen: list[Pair]) -> tuple[SceneObject, ...] | None:
    sizes = rng.choice(list(SIZES), size=len(chosen))
    depth = rng.permutation(len(chosen))
    placed: list[SceneObject] = []
    for (color, shape), size, z in zip(chosen, sizes, depth, strict=True):
        r = SIZES[str(size)]
        for _ in range(50):
            x, y = sample_position(rng, r)
            # Centres at least 0.75 (r_a + r_b) apart: overlap is possible, hiding is not.
            if all(np.hypot(x - o.x, y - o.y) >= 0.75 * (r + o.radius) for o in placed):
                break
        else:
            return None
        placed.append(SceneObject(shape, color, str(size), round(x, 4), round(y, 4), int(z)))
    return tuple(placed)
