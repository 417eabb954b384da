"""Questions and answers about a clip, for the video and the event-camera modalities.

Same five families as `qa_image`, about motion: directions, speeds, bounces, objects appearing,
leaving and changing colour. In the event variant (`events=True`) a model sees only changes, so
objects are named without colour ("the large circle"), only objects that produce events
(moving, appearing, leaving, or changing brightness) are talked about, and colour questions are
never asked. Every answer is computed from the clip's timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np

from specvlm.world.clips import DIRECTIONS, Clip, timeline
from specvlm.world.events import LOG_EPS
from specvlm.world.grammar import (
    a,
    cap,
    join,
    number,
    pick,
    region,
    region_phrase,
    shape_word,
    size_word,
)
from specvlm.world.qa_image import QA, _mc, closed, is_are
from specvlm.world.scenes import COLORS, Pair, Scene, visible_fractions

DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "right": ("to the right", "rightwards"),
    "left": ("to the left", "leftwards"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
    "up-right": ("up and to the right", "diagonally up and to the right"),
    "up-left": ("up and to the left", "diagonally up and to the left"),
    "down-right": ("down and to the right", "diagonally down and to the right"),
    "down-left": ("down and to the left", "diagonally down and to the left"),
}
SPEED_WORDS = {
    "slow": ("slowly", "at a slow pace", "gently"),
    "fast": ("quickly", "fast", "at high speed"),
}
EDGES = ("left", "right", "top", "bottom")


def _luma(color: str) -> float:
    r, g, b = COLORS[color]
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255


class ClipFacts:
    """The clip, its timeline, and how to name each track in this modality."""

    def __init__(self, clip: Clip, pairs: tuple[Pair, ...], events: bool = False):
        self.clip, self.tl, self.pairs, self.events = clip, timeline(clip), pairs, events
        self.tracks = clip.tracks
        self.n = clip.n_frames

    def brightness_change(self, i: int) -> str | None:
        """'brighter' / 'darker' if the recolour changes log luma by more than 0.3.

        That is 1.5 contrast thresholds (C = 0.2), so the change fires events even with
        threshold mismatch; smaller changes are not talked about in the event variant.
        """
        t = self.tracks[i]
        if t.recolor is None:
            return None
        d = np.log(_luma(t.recolor[1]) + LOG_EPS) - np.log(_luma(t.start.color) + LOG_EPS)
        return None if abs(d) <= 0.3 else "brighter" if d > 0 else "darker"

    def observable(self, i: int) -> bool:
        t = self.tracks[i]
        if not self.events:
            return True
        return t.moving or t.appear > 0 or t.leaves or self.brightness_change(i) is not None

    @cached_property
    def keys(self) -> dict[int, str]:
        """Canonical names of the tracks that can be referred to unambiguously in this modality."""
        seen = [i for i in range(len(self.tracks)) if self.observable(i)]
        if not self.events:
            return {i: self.tracks[i].start.name for i in seen}
        out = {}
        for i in seen:
            o = self.tracks[i].start
            same = [j for j in seen if self.tracks[j].start.shape == o.shape]
            if len(same) == 1:
                out[i] = o.shape
            elif sum(self.tracks[j].start.size == o.size for j in same) == 1:
                out[i] = f"{o.size} {o.shape}"
        return out

    def name(self, rng: np.random.Generator, i: int) -> str:
        """A phrase for track i: its key with shape and size synonyms."""
        *mods, shape = self.keys[i].split()
        mods = [size_word(rng, m) if m in ("small", "medium", "large") else m for m in mods]
        return " ".join([*mods, shape_word(rng, shape)])

    def named(self, pred: Callable[[int], bool] = lambda i: True) -> list[int]:
        return [i for i in self.keys if pred(i)]

    def when(self, rng: np.random.Generator, frame: int) -> str:
        frac = frame / max(self.n - 1, 1)
        if frac < 0.34:
            return pick(rng, ("early in the clip", "near the start"))
        if frac < 0.67:
            return pick(rng, ("about halfway through", "in the middle of the clip"))
        return pick(rng, ("near the end", "towards the end"))

    def start_scene(self) -> Scene:
        return self.tl.scene(0)

    def end_count(self) -> int | None:
        """Objects in the last frame, or None if one of them is mostly hidden there."""
        last = self.tl.scene(self.n - 1)
        if any(not (0 <= o.x <= 1 and 0 <= o.y <= 1) for o in last.objects):
            return None  # an object half out of the frame: hard to count, so do not ask
        if any(f < 0.25 for f in visible_fractions(last)):
            return None
        return len(last.objects)

    def bounces(self, i: int) -> list[str]:
        return [h.detail for h in self.tl.of(i, "bounces")]

    def moving(self) -> list[int]:
        return [i for i, t in enumerate(self.tracks) if t.moving]


def direction_phrase(rng: np.random.Generator, d: str) -> str:
    return pick(rng, DIRECTION_PHRASES[d])


def movers(f: ClipFacts, rng: np.random.Generator) -> str | None:
    """What moves and what stays still, object by object ("The red circle and the blue square
    move, while the green star stays still"): the facts a count of moving objects is read from.
    None when a moving object (or, in video, any object) cannot be named unambiguously."""
    moving = f.moving()
    if any(i not in f.keys for i in moving):
        return None
    if not f.events and len(f.keys) != len(f.tracks):
        return None
    go = join([f"the {f.name(rng, i)}" for i in moving])
    if f.events:  # still shapes leave no events: only the movers can be named
        if not moving:
            return "No shape leaves a trail of events as it moves"
        return cap(f"{go} {'moves' if len(moving) == 1 else 'move'}, and nothing else does")
    still = [i for i in f.keys if not f.tracks[i].moving]
    stay = join([f"the {f.name(rng, i)}" for i in still])
    if not moving:
        return cap(
            f"{stay} {'stays' if len(still) == 1 else 'all stay'} where {'it is' if len(still) == 1 else 'they are'}"
        )
    parts = [f"{go} {'moves' if len(moving) == 1 else 'move'}"]
    if still:
        parts.append(f"{stay} {'stays' if len(still) == 1 else 'stay'} still")
    return cap(", while ".join(parts))


def times(rng: np.random.Generator, n: int) -> str:
    """'once', 'twice', 'three times', '4 times'."""
    if n in (1, 2) and rng.random() < 0.7:
        return ("once", "twice")[n - 1]
    return f"{number(rng, n)} {'time' if n == 1 else 'times'}"


# ---------------------------------------------------------------------------------------------
# conversation
# ---------------------------------------------------------------------------------------------


def v_count_start(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    if f.events:
        return None
    n = len(f.start_scene().objects)
    q = pick(
        rng,
        (
            "How many objects are there at the beginning of the video?",
            "How many shapes are visible in the first frame?",
        ),
    )
    return QA(
        q,
        f"There {is_are(n)} {number(rng, n)} {'object' if n == 1 else 'objects'} at the start.",
        closed("count", n, "number"),
    )


def v_count_moving(f: ClipFacts, rng: np.random.Generator) -> QA:
    n = len(f.moving())
    q = pick(rng, ("How many objects move during the clip?", "How many of the shapes are moving?"))
    facts = movers(f, rng)
    if facts is not None:  # object by object first, then the count
        moves = "object moves" if n == 1 else "objects move"
        return QA(
            q,
            f"{facts}, so {number(rng, n)} {moves}.",
            closed("count_moving", n, "number", conclusion=True),
        )
    ans = (
        f"{cap(number(rng, n))} {'object moves' if n == 1 else 'objects move'}."
        if n
        else "Zero. Nothing moves."
    )
    return QA(q, ans, closed("count_moving", n, "number"))


def v_direction(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: f.tracks[i].moving)
    if not ids:
        return None
    i = pick(rng, ids)
    name, d = f.name(rng, i), f.tracks[i].direction
    q = pick(
        rng,
        (
            f"In which direction does the {name} move at first?",
            f"Which way is the {name} moving when it first appears?",
        ),
    )
    said = f"It moves {direction_phrase(rng, d)}."
    return QA(q, said, closed("direction", d, "direction", track=i))


def v_moving(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named()
    if not ids:
        return None
    i = pick(rng, ids)
    name, moving = f.name(rng, i), f.tracks[i].moving
    if rng.random() < 0.5:
        q = f"Is the {name} moving?"
        ans = (
            f"Yes, it moves {direction_phrase(rng, f.tracks[i].direction)}."
            if moving
            else "No, it stays in the same place."
        )
        return QA(q, ans, closed("moving", "yes" if moving else "no", "yesno", track=i))
    q = f"Does the {name} stay still?"
    ans = "No, it moves." if moving else "Yes, it does not move at all."
    return QA(q, ans, closed("moving", "no" if moving else "yes", "yesno", track=i))


def v_leaves(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named()
    if not ids:
        return None
    i = pick(rng, ids)
    name, gone = f.name(rng, i), f.tl.of(i, "leaves")
    q = pick(rng, (f"Does the {name} leave the scene?", f"Does the {name} move out of the frame?"))
    if gone:
        ans = f"Yes, it leaves through the {gone[0].detail} edge {f.when(rng, gone[0].frame)}."
        return QA(q, ans, closed("leaves", "yes", "yesno"))
    return QA(q, "No, it stays in view until the end.", closed("leaves", "no", "yesno"))


def v_appears(f: ClipFacts, rng: np.random.Generator) -> QA:
    new = [i for i in f.keys if f.tracks[i].appear > 0]
    q = pick(
        rng,
        ("Does a new object appear during the video?", "Does anything new show up in the clip?"),
    )
    if not any(t.appear > 0 for t in f.tracks):
        return QA(q, "No, no new object appears.", closed("appears", "no", "yesno"))
    if new:
        i = new[0]
        o = f.tl.states[f.tracks[i].appear][i]
        ans = f"Yes, {a(f.name(rng, i))} appears {f.when(rng, f.tracks[i].appear)}, {region_phrase(rng, region(o.x, o.y))}."
    else:
        ans = "Yes, a new object appears."
    return QA(q, ans, closed("appears", "yes", "yesno"))


def v_recolor(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named()
    if f.events or not ids:
        return None
    i = pick(rng, ids)
    t, name = f.tracks[i], f.name(rng, i)
    if t.recolor is not None and rng.random() < 0.6:
        q = pick(
            rng,
            (f"What color does the {name} turn into?", f"Which color does the {name} change to?"),
        )
        return QA(
            q,
            f"It turns {t.recolor[1]} {f.when(rng, t.recolor[0])}.",
            closed("new_color", t.recolor[1], "color"),
        )
    q = f"Does the {name} change color?"
    if t.recolor is not None:
        return QA(q, f"Yes, it turns {t.recolor[1]}.", closed("changes_color", "yes", "yesno"))
    return QA(
        q, f"No, it stays {t.start.color} the whole time.", closed("changes_color", "no", "yesno")
    )


def v_bounces(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: f.tracks[i].moving and not f.tracks[i].leaves)
    if not ids:
        return None
    i = pick(rng, ids)
    walls = f.bounces(i)
    q = pick(
        rng,
        (
            f"How many times does the {f.name(rng, i)} bounce off a wall?",
            f"How often does the {f.name(rng, i)} hit the edge of the frame?",
        ),
    )
    if not walls:
        return QA(
            q,
            "It never reaches a wall, so it bounces zero times.",
            closed("bounces", 0, "number", conclusion=True),
        )
    # each bounce with its moment first, then the count
    hits = [f"the {h.detail} wall {f.when(rng, h.frame)}" for h in f.tl.of(i, "bounces")]
    ans = f"It bounces off {join(hits)}, so it bounces {times(rng, len(walls))}."
    return QA(q, ans, closed("bounces", len(walls), "number", conclusion=True))


# the questions about motion, which a drill asks every third turn (`language.make_drill`)
MOTION = (v_direction, v_moving, v_count_moving)

CONVERSATION = (
    v_count_start,
    v_count_moving,
    v_direction,
    v_moving,
    v_leaves,
    v_appears,
    v_recolor,
    v_bounces,
)


# ---------------------------------------------------------------------------------------------
# reasoning
# ---------------------------------------------------------------------------------------------


def vr_turn(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: bool(f.bounces(i)))
    if not ids:
        return None
    i = pick(rng, ids)
    first = f.tl.of(i, "bounces")[0]
    extra = " for the first time" if len(f.bounces(i)) > 1 else ""
    q = f"Why does the {f.name(rng, i)} change direction{extra}?"
    ans = f"Because it hits the {first.detail} wall of the frame {f.when(rng, first.frame)} and bounces off it, so its motion towards that wall is reversed."
    return QA(
        q,
        ans,
        closed(
            "why_turn", first.detail, "word", alternatives=[e for e in EDGES if e != first.detail]
        ),
    )


def vr_faster(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: f.tracks[i].moving)
    pairs = [
        (i, j)
        for i in ids
        for j in ids
        if f.tracks[i].speed == "fast" and f.tracks[j].speed == "slow"
    ]
    if not pairs:
        return None
    fast, slow = pick(rng, pairs)
    nf, ns = f.name(rng, fast), f.name(rng, slow)
    first, second = (nf, ns) if rng.random() < 0.5 else (ns, nf)
    q = pick(
        rng,
        (
            f"Which moves faster, the {first} or the {second}?",
            f"Which object is quicker: the {first} or the {second}?",
        ),
    )
    ans = f"The {nf} moves faster. In every frame it travels more than twice as far as the {ns}, which drifts along {pick(rng, SPEED_WORDS['slow'])}."
    return QA(q, ans, closed("faster", f.keys[fast], "object"))


def vr_gone(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: bool(f.tl.of(i, "leaves")))
    if not ids:
        return None
    i = pick(rng, ids)
    h = f.tl.of(i, "leaves")[0]
    q = pick(
        rng,
        (
            f"Why can't the {f.name(rng, i)} be seen at the end of the video?",
            f"What happens to the {f.name(rng, i)}?",
        ),
    )
    ans = f"It moves out of the frame: it crosses the {h.detail} edge {f.when(rng, h.frame)} and does not come back, so it is no longer visible."
    return QA(
        q,
        ans,
        closed("why_gone", h.detail, "word", alternatives=[e for e in EDGES if e != h.detail]),
    )


def vr_end_count(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    n_end = f.end_count()
    if f.events or n_end is None:
        return None
    n0 = len(f.start_scene().objects)
    changes = []
    for h in f.tl.happenings:
        if h.kind == "appears":
            changes.append(f"the {f.name(rng, h.track)} appears")
        elif h.kind == "leaves":
            changes.append(f"the {f.name(rng, h.track)} leaves through the {h.detail} edge")
    why = f"then {join(changes)}" if changes else "and no object appears or leaves"
    q = pick(
        rng,
        (
            "How many objects are in the last frame, and why?",
            "How many shapes are left at the end of the video? Explain.",
        ),
    )
    ans = f"{cap(number(rng, n_end))}. The clip starts with {number(rng, n0)} {'object' if n0 == 1 else 'objects'}, {why}."
    return QA(q, ans, closed("end_count", n_end, "number"))


def vr_still(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    if f.events:
        return None
    still = [i for i in f.keys if not f.tracks[i].moving]
    q = "Is any object standing still during the whole video?"
    if still:
        names = join([f"the {f.name(rng, i)}" for i in still])
        return QA(
            q,
            f"Yes. {cap(names)} {'does' if len(still) == 1 else 'do'} not move; the other objects do.",
            closed("still", "yes", "yesno"),
        )
    return QA(
        q, "No. Every object in the clip moves at some point.", closed("still", "no", "yesno")
    )


def vr_how_many_move(f: ClipFacts, rng: np.random.Generator) -> QA:
    moving = f.moving()
    n = len(moving)
    q = pick(
        rng,
        (
            "How many objects are moving, and how can you tell?",
            "How many shapes change position during the clip? Explain.",
        ),
    )
    facts = movers(f, rng)
    if facts is not None:  # object by object, how that shows, then the count
        how = (
            "only a moving shape leaves a trail of events"
            if f.events
            else "a moving shape's position changes from frame to frame"
        )
        moves = "object moves" if n == 1 else "objects move"
        return QA(
            q,
            f"{facts}: {how}, so {number(rng, n)} {moves}.",
            closed("count_moving", n, "number", conclusion=True),
        )
    if n == 0:
        return QA(
            q,
            "Zero. None of the shapes changes position from one moment to the next.",
            closed("count_moving", 0, "number"),
        )
    named = [f"the {f.name(rng, i)}" for i in moving if i in f.keys]
    who = f" ({join(named)})" if len(named) == n else ""
    how = (
        "they leave trails of events, while anything that stays still produces none"
        if f.events
        else "their positions change from frame to frame, while the rest stay in place"
    )
    if not f.events and n == len(f.tracks):
        how = "every one of them changes position from frame to frame"
    elif n == 1:
        how = how.replace("they leave trails", "it leaves a trail").replace(
            "their positions change", "its position changes"
        )
    ans = f"{cap(number(rng, n))}{who}: {how}."
    return QA(q, ans, closed("count_moving", n, "number"))


REASONING = (vr_turn, vr_faster, vr_gone, vr_end_count, vr_still, vr_how_many_move)


# ---------------------------------------------------------------------------------------------
# multiple_choice
# ---------------------------------------------------------------------------------------------


def vmc_direction(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: f.tracks[i].moving)
    if not ids:
        return None
    i = pick(rng, ids)
    d, name = f.tracks[i].direction, f.name(rng, i)
    wrong = [DIRECTION_PHRASES[k][0] for k in DIRECTIONS if k != d]
    why = f"At the start the {name} moves {DIRECTION_PHRASES[d][0]}, {pick(rng, SPEED_WORDS[f.tracks[i].speed])}."
    return _mc(
        rng,
        "mc_direction",
        f"In which direction does the {name} move at first?",
        DIRECTION_PHRASES[d][0],
        wrong,
        why,
        d,
    )


def vmc_count_moving(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    n = len(f.moving())
    wrong = [str(k) for k in range(max(0, n - 2), n + 4) if k != n]
    facts = movers(f, rng)
    if facts is not None:  # object by object, then the count, then the letter
        q = "How many objects move during the clip?"
        return _mc(
            rng, "mc_count_moving", q, str(n), wrong, "", str(n), facts=f"{facts}: {n} in all"
        )
    why = f"{cap(number(rng, n))} of the objects {'moves' if n == 1 else 'move'}" + (
        "."
        if f.events
        else f", and {number(rng, len(f.tracks) - n)} {'stays' if len(f.tracks) - n == 1 else 'stay'} still."
    )
    return _mc(
        rng, "mc_count_moving", "How many objects move during the clip?", str(n), wrong, why, str(n)
    )


def vmc_new_color(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    ids = f.named(lambda i: f.tracks[i].recolor is not None)
    if f.events or not ids:
        return None
    i = pick(rng, ids)
    old, (frame, new) = f.tracks[i].start.color, f.tracks[i].recolor
    name = f.name(rng, i)
    wrong = [c for c in COLORS if c not in (old, new)]
    why = f"The {name} starts out {old} and turns {new} {f.when(rng, frame)}."
    return _mc(rng, "mc_new_color", f"What color does the {name} turn into?", new, wrong, why, new)


def vmc_which(f: ClipFacts, rng: np.random.Generator) -> QA | None:
    """Which object leaves / appears (when exactly one does)."""
    kind = pick(rng, ("leaves", "appears"))
    doers = {h.track for h in f.tl.happenings if h.kind == kind}
    if len(doers) != 1 or next(iter(doers)) not in f.keys:
        return None
    i = doers.pop()
    wrong = [f.keys[j] for j in f.keys if j != i]
    if not f.events:  # pad with objects that are not in the clip at all
        used = {(t.start.color, t.start.shape) for t in f.tracks}
        wrong += [f"{c} {s}" for c, s in f.pairs if (c, s) not in used][:6]
    verb = {"leaves": "leaves the scene", "appears": "appears during the clip"}[kind]
    h = f.tl.of(i, kind)[0]
    why = f"The {f.name(rng, i)} {kind} {f.when(rng, h.frame)}" + (
        f" through the {h.detail} edge." if kind == "leaves" else "."
    )
    return _mc(rng, f"mc_{kind}", f"Which object {verb}?", f.keys[i], wrong, why, f.keys[i])


MULTIPLE_CHOICE = (vmc_direction, vmc_count_moving, vmc_new_color, vmc_which)


# ---------------------------------------------------------------------------------------------
# detailed
# ---------------------------------------------------------------------------------------------

VIDEO_PROMPTS = (
    "Describe what happens in this video in detail.",
    "Give a detailed account of the events in this clip.",
    "What is going on in the video? Describe every object and its motion.",
)
EVENT_PROMPTS = (
    "Describe in detail what moves in this event-camera recording.",
    "The image shows an event stream. What happens in the scene? Give a detailed description.",
    "Explain the motion captured by these events in detail.",
)


def _track_sentence(f: ClipFacts, rng: np.random.Generator, i: int, detail: bool) -> str:
    t = f.tracks[i]
    o = f.tl.states[t.appear][i]
    name = f.name(rng, i) if i in f.keys else f"another {shape_word(rng, t.start.shape)}"
    if not f.events and i in f.keys:
        name = f"{size_word(rng, t.start.size)} {name}"
    where = region_phrase(rng, region(o.x, o.y))
    if t.appear > 0:
        s = f"{cap(f.when(rng, t.appear))}, {a(name)} appears {where}"
    else:
        s = f"{cap(a(name))} starts {where}"
    if t.moving:
        s += f" and moves {direction_phrase(rng, t.direction)} {pick(rng, SPEED_WORDS[t.speed])}"
    elif not f.events or t.appear == 0:
        s += " and stays where it is"
    s += "."
    walls = f.bounces(i)
    if walls and detail:
        s += f" It bounces off the {join(walls)} {'wall' if len(walls) == 1 else 'walls'}."
    for h in f.tl.of(i, "leaves"):
        s += f" It leaves the frame through the {h.detail} edge {f.when(rng, h.frame)}."
    if t.recolor is not None:
        if not f.events:
            s += f" {cap(f.when(rng, t.recolor[0]))}, it turns {t.recolor[1]}."
        elif f.brightness_change(i):
            s += f" {cap(f.when(rng, t.recolor[0]))}, it suddenly becomes {f.brightness_change(i)}."
    return s


def describe_clip(f: ClipFacts, rng: np.random.Generator) -> QA:
    ids = [i for i in range(len(f.tracks)) if f.observable(i)]
    ids.sort(key=lambda i: (f.tracks[i].appear, f.tracks[i].start.x))
    n0 = len(f.start_scene().objects)
    if f.events:
        k = len(ids)
        intro = f"The events show {number(rng, k)} {'shape' if k == 1 else 'shapes'} changing over about {f.clip.duration:.1f} seconds."
        fillers = [
            "Red marks show pixels that became brighter and blue marks pixels that became darker.",
            "Everything that stays still produces no events, so the background is blank.",
            "The camera itself does not move.",
            "Only changes in brightness are recorded, so the colors of the shapes cannot be seen.",
        ]
    else:
        intro = f"The video shows {number(rng, n0)} {'shape' if n0 == 1 else 'shapes'} on {_bg(f)} over {f.n} frames."
        fillers = [
            "The camera itself does not move; only the shapes change.",
            "All of the shapes are flat, with a single solid color each.",
            "There is no text in the video.",
            "The background looks the same in every frame.",
        ]
        n_end = f.end_count()
        if n_end is not None:
            fillers.append(
                f"In the last frame, {number(rng, n_end)} {'object is' if n_end == 1 else 'objects are'} visible."
            )
    body = [_track_sentence(f, rng, i, detail=True) for i in ids]
    words = lambda parts: sum(len(s.split()) for s in parts)
    if words([intro, *body]) > 190:  # long clips: leave out the bounces
        body = [_track_sentence(f, rng, i, detail=False) for i in ids]
    chosen = []
    for s in [fillers[j] for j in rng.permutation(len(fillers))]:
        if words([intro, *body, *chosen]) >= 60:
            break
        if words([intro, *body, *chosen, s]) <= 200:
            chosen.append(s)
    mentions = [f.keys[i] for i in ids if i in f.keys]
    meta = {"qtype": "describe", "answer": None, "answer_kind": None, "objects": mentions}
    return QA(
        pick(rng, EVENT_PROMPTS if f.events else VIDEO_PROMPTS),
        " ".join([intro, *body, *chosen]),
        meta,
    )


def _bg(f: ClipFacts) -> str:
    bg = f.clip.background
    return {
        "plain": f"a plain {bg.tone} background",
        "stripes": f"a {bg.tone} background with {bg.orientation} stripes",
        "checker": f"a {bg.tone} checkerboard background",
        "noise": f"a {bg.tone} background with a mottled texture",
    }[bg.pattern]
