"""Words and phrases of the world's language, the geometry behind them, and an answer checker.

Shared by the image and clip question generators. Every phrase list holds interchangeable ways
of saying the same true fact; `pick` chooses one with the sample's generator. Object names always
put the colour right before the shape word ("red circle", "small red disk"), which is what
`check_answer` and `mentions` look for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from specvlm.world.scenes import COLORS, SHAPES, SceneObject

T = TypeVar("T")

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "hexagon": ("hexagon",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
_PLURAL = {"cross": "crosses", "plus sign": "plus signs", "rhombus": "rhombuses"}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "ten", "eleven", "twelve",
)  # fmt: skip

REGIONS = (
    "top left",    "top",    "top right",
    "left",        "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
CORNERS = ("top left", "top right", "bottom left", "bottom right")
REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "in the upper left corner", "at the top left"),
    "top": ("at the top", "near the top edge", "in the upper middle part"),
    "top right": ("in the top right corner", "in the upper right corner", "at the top right"),
    "left": ("on the left side", "near the left edge", "at the left, halfway down"),
    "center": ("in the middle", "in the center", "near the center of the image"),
    "right": ("on the right side", "near the right edge", "at the right, halfway down"),
    "bottom left": ("in the bottom left corner", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom edge", "in the lower middle part"),
    "bottom right": ("in the bottom right corner", "in the lower right corner", "at the bottom right"),
}  # fmt: skip
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of", "on the left side of"),
    "right": ("to the right of", "right of", "on the right side of"),
    "above": ("above", "higher up than", "over"),
    "below": ("below", "lower down than", "beneath"),
}
MARGIN = 0.05  # relations need the centres this far apart along the axis (canvas units)


# ---------------------------------------------------------------------------------------------
# Choosing and wording
# ---------------------------------------------------------------------------------------------


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def number(rng: np.random.Generator, n: int) -> str:
    """n as a word or as digits."""
    if n < len(NUMBER_WORDS) and rng.random() < 0.6:
        return NUMBER_WORDS[n]
    return str(n)


def plural(word: str) -> str:
    return _PLURAL.get(word, word + "s")


def shape_word(rng: np.random.Generator, shape: str, n: int = 1) -> str:
    w = pick(rng, SHAPE_WORDS[shape])
    return w if n == 1 else plural(w)


def size_word(rng: np.random.Generator, size: str) -> str:
    return pick(rng, SIZE_WORDS[size])


def noun(
    rng: np.random.Generator, obj: SceneObject, size: bool | None = None, color: bool = True
) -> str:
    """'red circle', 'small red disk', 'large star' (no article). size=None: 30% of the time."""
    with_size = rng.random() < 0.3 if size is None else size
    parts = [size_word(rng, obj.size)] if with_size else []
    if color:
        parts.append(obj.color)
    parts.append(shape_word(rng, obj.shape))
    return " ".join(parts)


def a(phrase: str) -> str:
    """'a red circle', 'an orange star'."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def join(items: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(rng: np.random.Generator, n: int, shape: str) -> str:
    """'no circles', 'one circle', 'three disks'."""
    if n == 0:
        return "no " + shape_word(rng, shape, 2)
    return f"{number(rng, n)} {shape_word(rng, shape, n)}"


# ---------------------------------------------------------------------------------------------
# Geometry behind the words
# ---------------------------------------------------------------------------------------------


def region(x: float, y: float) -> str:
    """Which ninth of the canvas (a 3 x 3 grid) holds the point."""
    col = (
        ("left", "", "right")[min(int(x * 3), 2)] if 0 <= x <= 1 else ("left" if x < 0 else "right")
    )
    row = (
        ("top", "", "bottom")[min(int(y * 3), 2)] if 0 <= y <= 1 else ("top" if y < 0 else "bottom")
    )
    return " ".join(w for w in (row, col) if w) or "center"


def region_is_clear(x: float, y: float, margin: float = 0.04) -> bool:
    """True when the point is not within `margin` of a grid line (its region is unambiguous)."""
    return all(abs(v - line) >= margin for v in (x, y) for line in (1 / 3, 2 / 3))


def region_phrase(rng: np.random.Generator, name: str) -> str:
    return pick(rng, REGION_PHRASES[name])


def horizontal(a_: SceneObject, b: SceneObject, margin: float = MARGIN) -> str | None:
    """'left' / 'right' when a's centre is clearly left / right of b's, else None."""
    if a_.x < b.x - margin:
        return "left"
    if a_.x > b.x + margin:
        return "right"
    return None


def vertical(a_: SceneObject, b: SceneObject, margin: float = MARGIN) -> str | None:
    """'above' / 'below' when a's centre is clearly above / below b's, else None."""
    if a_.y < b.y - margin:
        return "above"
    if a_.y > b.y + margin:
        return "below"
    return None


def main_relation(a_: SceneObject, b: SceneObject) -> str | None:
    """The relation of a to b along the axis where they are further apart (or None)."""
    if abs(a_.x - b.x) >= abs(a_.y - b.y):
        return horizontal(a_, b)
    return vertical(a_, b)


def distance(a_: SceneObject, b: SceneObject) -> float:
    return float(np.hypot(a_.x - b.x, a_.y - b.y))


def next_to(a_: SceneObject, b: SceneObject) -> bool:
    """Close neighbours: less than 0.12 of the canvas between their bounding squares."""
    return distance(a_, b) < a_.radius + b.radius + 0.12


# ---------------------------------------------------------------------------------------------
# Checking answers (for evaluators): does a free-text answer state the expected short answer?
# ---------------------------------------------------------------------------------------------

_SHAPE_OF = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
_SHAPE_OF.update({plural(w): s for s, ws in SHAPE_WORDS.items() for w in ws})
_SIZE_OF = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_SHAPE_RE = "|".join(sorted((re.escape(w) for w in _SHAPE_OF), key=len, reverse=True))
_OBJECT_RE = re.compile(
    rf"\b(?:({'|'.join(map(re.escape, _SIZE_OF))})\s+)?(?:({'|'.join(COLORS)})\s+)?({_SHAPE_RE})\b"
)
_NUMBER_RE = re.compile(rf"\b(\d+|{'|'.join(NUMBER_WORDS)}|no|once|twice)\b")


def _object(m: re.Match | None) -> tuple[str | None, str | None, str] | None:
    return (
        None if m is None else (_SIZE_OF.get(m.group(1) or ""), m.group(2), _SHAPE_OF[m.group(3)])
    )


def first_object(text: str) -> tuple[str | None, str | None, str] | None:
    """(size, color, shape) of the first shape mentioned, canonical names; None if none."""
    return _object(_OBJECT_RE.search(text.lower()))


def last_object(text: str) -> tuple[str | None, str | None, str] | None:
    """(size, color, shape) of the last shape mentioned, canonical names; None if none."""
    return _object(next(reversed(list(_OBJECT_RE.finditer(text.lower()))), None))


def mentions(text: str, color: str | None, shape: str) -> bool:
    """True when the text names a `color` `shape` (any synonym) somewhere."""
    for m in _OBJECT_RE.finditer(text.lower()):
        if _SHAPE_OF[m.group(3)] == shape and (color is None or m.group(2) == color):
            return True
    return False


def _number_value(w: str) -> int:
    special = {"no": 0, "once": 1, "twice": 2}
    return special[w] if w in special else int(w) if w.isdigit() else NUMBER_WORDS.index(w)


def first_number(text: str) -> int | None:
    m = _NUMBER_RE.search(text.lower())
    return None if m is None else _number_value(m.group(1))


def last_number(text: str) -> int | None:
    found = _NUMBER_RE.findall(text.lower())
    return _number_value(found[-1]) if found else None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def text_region(text: str) -> str:
    w = _words(text)
    row = "top" if w & {"top", "upper"} else "bottom" if w & {"bottom", "lower"} else ""
    col = "left" if "left" in w else "right" if "right" in w else ""
    return " ".join(x for x in (row, col) if x) or "center"


def text_direction(text: str) -> str | None:
    w = _words(text)
    vert = (
        "up"
        if w & {"up", "upward", "upwards"}
        else "down"
        if w & {"down", "downward", "downwards"}
        else ""
    )
    horiz = (
        "right"
        if w & {"right", "rightward", "rightwards"}
        else "left"
        if w & {"left", "leftward", "leftwards"}
        else ""
    )
    return "-".join(x for x in (vert, horiz) if x) or None


# An answer that opens with the letter: "B", "B.", "B)", "B:", "B,", "(B)". A bare letter followed
# by a word ("A red circle ...") is the article, not an option.
LETTER_START = r"^\s*\(?([A-D])(?:[.):,]|\s*$)"
_OPTION_LETTER = re.compile(
    LETTER_START + r"|\(([A-D])\)|(?i:\b(?:answer|option|choice))(?:\s+is)?:?\s+\(?([A-D])\b"
)


def option_letter(text: str) -> str | None:
    """The option letter (A-D) an answer gives: the one it opens with, else the first "(B)",
    "answer is B", "option B" or "choice: B" in it; None when it gives none."""
    found = option_letter_at(text)
    return None if found is None else found[0]


def option_letter_at(text: str) -> tuple[str, int] | None:
    """`option_letter` and where it stands in `text` (its character index)."""
    m = _OPTION_LETTER.search(text)
    if m is None:
        return None
    g = next(i for i, g in enumerate(m.groups(), 1) if g)
    return m.group(g), m.start(g)


_SO_RE = re.compile(r",\s+so\s+", re.IGNORECASE)


def conclusion(text: str) -> str:
    """The text after the last ", so " (a reasoning answer's verdict); the whole text if none."""
    return _SO_RE.split(text)[-1]


def read_answer(kind: str, text: str, meta: dict | None = None) -> object | None:
    """The short answer of `kind` a text gives, canonical (None when it gives none)."""
    low = text.strip().lower()
    if kind == "number":
        return first_number(low)
    if kind == "yesno":
        m = re.match(r"\W*(yes|no)\b", low)
        return m.group(1) if m else None
    if kind == "letter":
        return option_letter(text)
    if kind == "color":
        found = re.search(rf"\b({'|'.join(COLORS)})\b", low)
        return found.group(1) if found else None
    if kind in ("shape", "object"):
        obj = first_object(low)
        return None if obj is None else obj[2] if kind == "shape" else obj
    if kind == "region":
        return text_region(low)
    if kind == "direction":
        return text_direction(low)
    if kind == "word":  # which of the expected word and its alternatives appear
        said = _words(low) & {
            str((meta or {}).get("answer")),
            *(meta or {}).get("alternatives", ()),
        }
        return frozenset(said) or None
    raise ValueError(f"unknown answer_kind {kind!r}")


def check_answer(meta: dict, text: str) -> bool | None:
    """Score a model's answer to a closed question against meta["answer"].

    meta["answer_kind"] says how: number (first number), yesno (first word), color (first colour
    word), shape (first shape word), object ("color shape" or "size shape": the first object
    named), region (position words), direction (motion words), word (the word appears and none of
    meta["alternatives"] do), letter (`option_letter`: the letter it opens with, else the first
    "(B)", "answer is B", "option B"). With meta["conclusion"] (reasoning answers, which give
    their facts first) the text after the last ", so " is read, or the whole text when that part
    gives no answer of the kind. Returns None for open questions (answer None).
    """
    kind, expected = meta.get("answer_kind"), meta.get("answer")
    if expected is None or kind is None:
        return None
    found = read_answer(kind, conclusion(text), meta) if meta.get("conclusion") else None
    if found is None:
        found = read_answer(kind, text, meta)
    if found is None:
        return False
    if kind == "number":
        return found == int(expected)
    if kind == "letter":
        return found == str(expected).upper()
    if kind == "object":
        *mods, shape = expected.split()
        size = next((m for m in mods if m in SIZE_WORDS), None)
        color = next((m for m in mods if m in COLORS), None)
        return (
            found[2] == shape
            and (size is None or found[0] == size)
            and (color is None or found[1] == color)
        )
    if kind == "word":
        return found == {expected}
    return found == expected


assert set(SHAPE_WORDS) == set(SHAPES)
