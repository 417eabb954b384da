"""World language: record format, determinism, and answers that are true of the scene.

The truth checks re-derive each closed answer from the question text and the symbolic scene
(or clip) with code of their own, independent of the generators.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from specvlm.errors import InputError
from specvlm.world.clips import Clip, timeline
from specvlm.world.evaluate import mc_content
from specvlm.world.grammar import (
    SHAPE_WORDS,
    check_answer,
    conclusion,
    mentions,
    option_letter,
    option_letter_at,
)
from specvlm.world.language import FAMILIES, PLACEHOLDERS, make_record
from specvlm.world.scenes import COLORS, HELD_OUT_PAIRS, Scene, SceneObject

WORD_SHAPE = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
WORD_SHAPE.update({"crosses": "cross", "plus signs": "cross", "rhombuses": "diamond"})
WORD_SHAPE.update({w + "s": s for w, s in list(WORD_SHAPE.items()) if not w.endswith("s")})
SHAPE_RE = "|".join(sorted(map(re.escape, WORD_SHAPE), key=len, reverse=True))
COLOR_RE = "|".join(COLORS)
OBJ_RE = re.compile(rf"\b({COLOR_RE}) (?:[a-z-]+ )?({SHAPE_RE})\b")  # "red circle"


def records(kinds=("image", "video", "events"), splits=("train", "hard"), n=30):
    for split in splits:
        for kind in kinds:
            for i in range(n):
                for fam in FAMILIES:
                    yield make_record(split, i, fam, kind)


def turns(rec):
    metas = rec["meta"]["turns"] if rec["meta"]["family"] == "multiturn" else [rec["meta"]]
    conv = rec["conversations"]
    for k, meta in enumerate(metas):
        q = conv[2 * k]["value"].replace(PLACEHOLDERS[rec["meta"]["kind"]] + "\n", "")
        yield q, conv[2 * k + 1]["value"], meta


# ---------------------------------------------------------------------------------------------
# format and determinism
# ---------------------------------------------------------------------------------------------


def test_record_format():
    for kind, key in (("image", "image"), ("video", "video"), ("events", "events")):
        for fam in FAMILIES:
            rec = make_record("val", 3, fam, kind, media={key: "x"})
            assert rec[key] == "x" and rec["id"] == f"val-000000003-{kind}-{fam}"
            conv = rec["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].startswith(PLACEHOLDERS[kind] + "\n")
            assert sum(t["value"].count("<image>") + t["value"].count("<video>") for t in conv) == 1
            assert rec["meta"]["family"] == fam and rec["meta"]["split"] == "val"
            if fam == "multiturn":
                assert 2 <= len(conv) // 2 <= 4 and len(rec["meta"]["turns"]) == len(conv) // 2
    assert PLACEHOLDERS == {"image": "<image>", "video": "<video>", "events": "<image>"}


def test_same_seed_same_text_and_variation_across_seeds():
    a = [make_record("test", i, "conversation") for i in range(20)]
    assert a == [make_record("test", i, "conversation") for i in range(20)]
    questions = {r["conversations"][0]["value"] for r in a}
    assert len(questions) >= 12  # real variation between samples


def test_unknown_family_or_kind_is_an_input_error():
    with pytest.raises(InputError, match="accepted"):
        make_record("train", 0, "poems")
    with pytest.raises(InputError, match="accepted"):
        make_record("train", 0, "detailed", kind="audio")


def test_descriptions_are_long_and_name_every_object():
    for rec in records(n=25):
        if rec["meta"]["family"] != "detailed":
            continue
        text = rec["conversations"][1]["value"]
        assert 55 <= len(text.split()) <= 210, (rec["id"], len(text.split()))
        for name in rec["meta"]["objects"]:
            *mods, shape = name.split()
            color = mods[-1] if mods and mods[-1] in COLORS else None
            assert mentions(text, color, shape), (rec["id"], name)


def test_image_descriptions_name_objects_in_reading_order():
    """Top band to bottom band (eighths of the canvas), left to right within a band: the order
    of the objects among a LLaVA's image tokens."""
    checked = 0
    for i in range(40):
        rec = make_record("train", i, "detailed", "image")
        text = rec["conversations"][1]["value"]
        objs = rec["meta"]["scene"]["objects"]
        # where each object is first named (in its own sentence: summaries come after them)
        first = {}
        for o in objs:
            own = "|".join(re.escape(w) for w, sh in WORD_SHAPE.items() if sh == o["shape"])
            m = re.search(rf"\b{o['color']} (?:{own})\b", text)
            assert m, (rec["id"], o)
            first[(o["color"], o["shape"])] = m.start()
        told = sorted(objs, key=lambda o: first[(o["color"], o["shape"])])
        assert told == sorted(objs, key=lambda o: (min(int(o["y"] * 8), 7), o["x"])), rec["id"]
        checked += len(objs) > 1
    assert checked >= 20


def test_event_records_never_name_object_colors():
    # Events carry no colour: objects are named by shape (and size); only the polarity
    # explanation ("red marks ... blue marks") may use colour words.
    for rec in records(kinds=("events",), n=20):
        for t in rec["conversations"]:
            text = t["value"].lower().replace("red marks", "").replace("blue marks", "")
            assert not re.search(rf"\b({COLOR_RE})\b", text), (rec["id"], t["value"])


def test_hard_pairs_never_leak_into_regular_split_text():
    held = [f"{c} {w}" for c, s in HELD_OUT_PAIRS for w in SHAPE_WORDS[s]]
    for rec in records(kinds=("image", "video"), splits=("train", "val"), n=20):
        for t in rec["conversations"]:
            assert not any(h in t["value"] for h in held), (rec["id"], t["value"])


def test_every_generated_answer_passes_check_answer():
    n_closed = 0
    for rec in records(n=20):
        for _, answer, meta in turns(rec):
            ok = check_answer(meta, answer)
            assert ok is not False, (rec["id"], meta, answer)
            n_closed += ok is True
    assert n_closed > 300


def test_reasoning_answers_give_their_facts_before_their_verdict():
    seen = set()
    for i in range(200):
        rec = make_record("train", i, "reasoning")
        q, answer, meta = next(turns(rec))
        if not meta.get("conclusion"):
            assert meta["qtype"] == "occlusion", meta  # its cause is its answer: it comes first
            continue
        seen.add(meta["qtype"])
        head, _, last = answer.rpartition(", so ")
        assert head and check_answer(meta, last), (q, answer, meta)
        # the verdict is read after the facts, not from the first thing the answer names
        assert check_answer(meta, answer) and conclusion(answer) == last
    assert seen == {"compare_size", "closest", "extreme", "compare_count", "arithmetic", "edge"}


def test_where_and_how_many_answers_give_facts_that_decide_them():
    """ANSWERS_VERSION 5: relation answers state both objects' bands along the asked axis (and
    are asked only when those differ), corner answers where every object is, "how many objects"
    answers name each object, and the edge answer's band is never the middle one. 7: relation
    and corner answers then say what the facts give (the true relation; the corner's object or
    "nothing"), and the verdict closes the answer alone; a corner answer's middle is the same for
    both polarities of its question."""
    from specvlm.world.grammar import CORNERS, REGION_PHRASES
    from specvlm.world.qa_image import AXIS_BANDS

    seen, verdicts = set(), {"relation": set(), "corner": set()}
    for i in range(150):
        for family in ("conversation", "multiturn", "reasoning"):
            rec = make_record("train", i, family)
            n_objects = len(rec["meta"]["scene"]["objects"])
            for q, answer, meta in turns(rec):
                qt = meta.get("qtype")
                if qt not in ("relation", "corner", "count", "edge"):
                    continue
                if qt == "count" and not meta.get("conclusion"):
                    continue  # "how many stars": the short answer
                seen.add(qt)
                assert meta.get("conclusion"), (q, answer)
                head, _, last = answer.rpartition(", so ")
                assert head and check_answer(meta, last), (q, answer, meta)
                if qt in verdicts:
                    assert last == f"{meta['answer']}.", answer  # the verdict alone
                    verdicts[qt].add(meta["answer"])
                    head, _, derived = head.rpartition(", so ")
                    assert head and "yes" not in derived and "no " not in derived, answer
                if qt == "relation":
                    axis = "x" if any(w in q for w in ("left", "right")) else "y"
                    said = [b for b in AXIS_BANDS[axis] if b in head]
                    assert len(said) == 2, (q, answer)  # two bands, never the same one
                    first, second = sorted(said, key=head.index)
                    rank = AXIS_BANDS[axis].index
                    lower = rank(first) < rank(second)  # the first object is further left / up
                    n1 = q.removeprefix("Is the ").rstrip("?")
                    n2 = derived.removeprefix("the ").replace(" is ", " ", 1)
                    assert derived.startswith("the ") and n1.split()[:2] == n2.split()[:2], answer
                    assert any(w in derived for w in (("left", "above", "over", "higher")
                               if lower else ("right", "below", "beneath", "lower"))), answer  # fmt: skip
                    # a "yes" repeats the question's words; a "no" says the opposite
                    assert (meta["answer"] == "yes") == (n2 == n1), (q, answer)
                elif qt == "corner":
                    assert head.count(" is ") == n_objects, (q, answer)
                    plain = [phrases[0] for phrases in REGION_PHRASES.values()]
                    for part in head.split(", "):  # each object in its region's plain words
                        assert any(part.endswith(w) for w in plain), (part, answer)
                    corner = next(c for c in CORNERS if c in q)
                    place = f" is in the {corner} corner"
                    assert derived.endswith(place), answer
                    held = derived != f"nothing{place}"
                    # a held corner's object is one the facts put there
                    assert not held or derived in head.lower(), answer
                    assert held == (f"the {corner} corner" in head), answer
                    empty_q = q.endswith("empty?")
                    assert (meta["answer"] == "yes") == (held != empty_q), (q, answer)
                elif qt == "count":
                    assert head.count(", ") + head.count(" and ") + 1 == n_objects, answer
                elif qt == "edge":
                    assert "in the middle" not in head, answer
    assert seen == {"relation", "corner", "count", "edge"}
    assert verdicts == {"relation": {"yes", "no"}, "corner": {"yes", "no"}}


def test_band_words_are_no_regions_words():
    """ANSWERS_VERSION 6: an object's band along an axis and its 3 x 3 region are said in
    different words (v5's "near the left edge" was both, for different places)."""
    from specvlm.world.grammar import REGION_PHRASES
    from specvlm.world.qa_image import AXIS_BANDS

    bands = [b for axis in AXIS_BANDS.values() for b in axis]
    regions = [r for phrases in REGION_PHRASES.values() for r in phrases]
    assert len(set(bands)) == 10
    for b in bands:
        for r in regions:
            assert b != r and (b not in r or b == "halfway down"), (b, r)  # y's middle either way
            assert r not in b, (b, r)


@pytest.mark.parametrize("kind", ["video", "events"])
def test_clip_counts_list_their_objects_or_bounces_first(kind):
    seen = set()
    for i in range(120):
        for family in ("conversation", "reasoning"):
            rec = make_record("train", i, family, kind)
            for q, answer, meta in turns(rec):
                if meta.get("qtype") not in ("count_moving", "bounces"):
                    continue
                if meta["qtype"] == "count_moving" and not meta.get("conclusion"):
                    continue  # an object that cannot be named: the older answer
                seen.add(meta["qtype"])
                head, _, last = answer.rpartition(", so ")
                assert head and check_answer(meta, last), (q, answer, meta)
                if meta["qtype"] == "bounces" and meta["answer"] != "0":
                    assert head.count(" wall ") == int(meta["answer"]), answer
    assert seen == {"count_moving", "bounces"}


def test_check_answer_rejects_wrong_answers():
    assert check_answer({"answer": "3", "answer_kind": "number"}, "There are three.")
    assert not check_answer({"answer": "3", "answer_kind": "number"}, "There are 2 circles.")
    assert not check_answer({"answer": "yes", "answer_kind": "yesno"}, "No, it is not.")
    assert not check_answer({"answer": "B", "answer_kind": "letter"}, "A. Because ...")
    assert not check_answer(
        {"answer": "top left", "answer_kind": "region"}, "It is at the top right."
    )
    assert not check_answer({"answer": "red circle", "answer_kind": "object"}, "The blue circle.")
    assert check_answer(
        {"answer": "up-left", "answer_kind": "direction"}, "It moves up and to the left."
    )
    assert check_answer({"answer": "describe", "answer_kind": None}, "anything") is None


# ---------------------------------------------------------------------------------------------
# truth: closed answers re-derived from the symbolic scene
# ---------------------------------------------------------------------------------------------


def regions(o: SceneObject) -> str:
    row = "top" if o.y < 1 / 3 else "bottom" if o.y >= 2 / 3 else ""
    col = "left" if o.x < 1 / 3 else "right" if o.x >= 2 / 3 else ""
    return " ".join(w for w in (row, col) if w) or "center"


def find(scene_objs, color, shape_word):
    (o,) = [o for o in scene_objs if o.color == color and o.shape == WORD_SHAPE[shape_word]]
    return o


def image_truth(q: str, scene: Scene, meta: dict) -> str | None:
    """The expected short answer, derived here; None for question types not re-derived."""
    objs, qt = scene.objects, meta["qtype"]
    named = [
        find(objs, c, s) if (c, WORD_SHAPE[s]) in {o.pair for o in objs} else (c, WORD_SHAPE[s])
        for c, s in OBJ_RE.findall(q.lower())
    ]
    if qt == "count":
        color = re.search(rf"\b({COLOR_RE})\b", q)
        shape = re.search(rf"\b({SHAPE_RE})\b", q)
        if color:
            return str(sum(o.color == color.group(1) for o in objs))
        if shape:
            return str(sum(o.shape == WORD_SHAPE[shape.group(1)] for o in objs))
        return str(len(objs))
    if qt == "color":
        shape = WORD_SHAPE[re.search(rf"\b({SHAPE_RE})\b", q).group(1)]
        (o,) = [o for o in objs if o.shape == shape]
        return o.color
    if qt == "shape":
        color = re.search(rf"\b({COLOR_RE})\b", q).group(1)
        (o,) = [o for o in objs if o.color == color]
        return o.shape
    if qt == "position":
        return regions(named[0])
    if qt == "exists":
        return "yes" if isinstance(named[0], SceneObject) else "no"
    if qt == "relation":
        p, o = named
        if " left of " in q or "left side of" in q:
            return "yes" if p.x < o.x else "no"
        if " right of " in q or "right side of" in q:
            return "yes" if p.x > o.x else "no"
        if any(w in q for w in (" above ", " higher up than ", " over ")):
            return "yes" if p.y < o.y else "no"
        return "yes" if p.y > o.y else "no"
    if qt == "corner":
        corner = re.search(r"(top|bottom) (left|right) corner", q).group(0)[: -len(" corner")]
        occupied = any(regions(o) == corner for o in objs)
        return ("no" if occupied else "yes") if "empty" in q else ("yes" if occupied else "no")
    if qt == "closest":
        ref = named[0]
        others = sorted(
            (o for o in objs if o is not ref), key=lambda o: np.hypot(o.x - ref.x, o.y - ref.y)
        )
        return others[0].name
    if qt == "extreme":
        key = {
            "left": lambda o: o.x,
            "right": lambda o: -o.x,
            "top": lambda o: o.y,
            "highest": lambda o: o.y,
            "bottom": lambda o: -o.y,
            "lowest": lambda o: -o.y,
        }
        side = next(k for k in key if k in q)
        return min(objs, key=key[side]).name
    if qt == "occlusion":
        (back,) = named
        return meta["answer"] if find(objs, *meta["answer"].split()).z > back.z else "WRONG"
    if qt == "compare_count":
        words = re.findall(
            rf"more ((?:{COLOR_RE}) objects|{SHAPE_RE}) than ((?:{COLOR_RE}) objects|{SHAPE_RE})", q
        )[0]
        counts = [
            sum(o.color == w.split()[0] for o in objs)
            if w.endswith(" objects")
            else sum(o.shape == WORD_SHAPE[w] for o in objs)
            for w in words
        ]
        return "yes" if counts[0] > counts[1] else "no"
    if qt == "arithmetic":
        if "removed" in q:
            return str(len(objs) - 1)
        shape = WORD_SHAPE[re.search(rf"one more ({SHAPE_RE})", q).group(1)]
        return str(sum(o.shape == shape for o in objs) + 1)
    if qt == "edge":
        o = named[0]
        if "left edge" in q:
            return "left" if o.x < 0.5 else "right"
        return "top" if o.y < 0.5 else "bottom"
    if qt == "mc_color":
        return image_truth(q, scene, dict(meta, qtype="color"))
    if qt == "mc_shape":
        return image_truth(q, scene, dict(meta, qtype="shape"))
    if qt == "mc_position":
        return regions(named[0])
    if qt in ("mc_present", "mc_absent"):
        present = meta["answer_text"] in {o.name for o in objs}
        return meta["answer_text"] if present == (qt == "mc_present") else "WRONG"
    if qt == "mc_count":
        shape = WORD_SHAPE[re.search(rf"How many ({SHAPE_RE})", q).group(1)]
        return str(sum(o.shape == shape for o in objs))
    return None


def test_image_answers_are_true():
    checked: set[str] = set()
    for rec in records(kinds=("image",), n=40):
        scene = Scene.from_dict(rec["meta"]["scene"])
        for q, answer, meta in turns(rec):
            if meta.get("answer") is None:
                continue
            expected = image_truth(q, scene, meta)
            if expected is None:
                continue
            got = meta.get("answer_text", meta["answer"])
            assert got == expected, (rec["id"], q, answer, meta, expected)
            checked.add(meta["qtype"])
    assert len(checked) >= 18, checked


def test_multiple_choice_letter_points_at_the_true_option():
    for rec in records(kinds=("image", "video"), n=30):
        if rec["meta"]["family"] != "multiple_choice":
            continue
        q, answer, meta = next(turns(rec))
        options = dict(re.findall(r"(?:^|\n|\()([A-D])[.)] ([^\n(]+)", q))
        assert set(options) == set("ABCD"), q
        text = options[meta["answer"]].strip()
        if meta.get("conclusion"):  # the facts first, then what they give, then the letter
            assert meta["qtype"] in ("mc_absent", "mc_count_moving"), meta
            head = answer[: option_letter_at(answer)[1]]
            assert mc_content(meta, answer), (answer, meta)
            if meta["qtype"] == "mc_absent":
                assert head.startswith("The image shows") and f"but there is no {text}" in head
        else:  # the right option's text first, then its letter
            assert answer.lower().startswith(text.lower()), (answer, text)
        assert option_letter(answer) == meta["answer"]
        short = meta["answer_text"]
        assert text == short or text.replace(" and to the ", "-").replace("to the ", "") == short, (
            q,
            meta,
        )
        assert len(set(options.values())) == 4


def clip_track(clip: Clip, phrase: str, events: bool):
    """The track a question's object phrase refers to, or None when the phrase is ambiguous."""
    m = re.search(
        rf"\b(?:({'|'.join(['small', 'little', 'medium-sized', 'mid-sized', 'medium', 'large', 'big'])}) )?(?:({COLOR_RE}) )?({SHAPE_RE})\b",
        phrase,
    )
    size = {"little": "small", "medium-sized": "medium", "mid-sized": "medium", "big": "large"}.get(
        m.group(1), m.group(1)
    )
    found = [
        i
        for i, t in enumerate(clip.tracks)
        if t.start.shape == WORD_SHAPE[m.group(3)]
        and (m.group(2) is None or t.start.color == m.group(2))
        and (size is None or t.start.size == size)
        and (not events or t.moving or t.appear or t.leaves or t.recolor)
    ]
    return found[0] if len(found) == 1 else None


def clip_truth(q: str, clip: Clip, meta: dict, events: bool) -> str | None:
    tl, qt = timeline(clip), meta["qtype"]
    i = clip_track(clip, q, events) if re.search(rf"\b({SHAPE_RE})\b", q) else None
    if qt == "count":
        return str(sum(o is not None for o in tl.states[0]))
    if qt in ("count_moving", "mc_count_moving"):
        return str(sum(t.moving for t in clip.tracks))
    if qt == "appears":
        return "yes" if any(t.appear for t in clip.tracks) else "no"
    if qt == "still":
        return "yes" if not all(t.moving for t in clip.tracks) else "no"
    if qt == "end_count":
        return str(sum(o is not None for o in tl.states[-1]))
    if i is None:
        return None
    t = clip.tracks[i]
    if qt in ("direction", "mc_direction"):
        return t.direction
    if qt == "moving":
        return ("yes" if t.moving else "no") if "moving" in q else ("no" if t.moving else "yes")
    if qt == "leaves":
        return "yes" if tl.of(i, "leaves") else "no"
    if qt in ("new_color", "mc_new_color"):
        return t.recolor[1]
    if qt == "changes_color":
        return "yes" if t.recolor else "no"
    if qt == "bounces":
        return str(len(tl.of(i, "bounces")))
    if qt == "why_turn":
        return tl.of(i, "bounces")[0].detail
    if qt == "why_gone":
        return tl.of(i, "leaves")[0].detail
    if qt == "faster":
        pair = [
            clip_track(clip, m.group(0), events)
            for m in re.finditer(
                rf"\b[a-z- ]*?({SHAPE_RE})\b", q.split("faster")[-1].split("quicker")[-1]
            )
        ]
        if None in pair or len(pair) != 2:
            return None
        fast = [k for k in pair if clip.tracks[k].speed == "fast"]
        slow = [k for k in pair if clip.tracks[k].speed == "slow"]
        assert len(fast) == 1 and len(slow) == 1
        return meta["answer"] if clip_track(clip, meta["answer"], events) == fast[0] else "WRONG"
    return None


@pytest.mark.parametrize("kind", ["video", "events"])
def test_clip_answers_are_true(kind):
    checked: set[str] = set()
    for rec in records(kinds=(kind,), n=40):
        clip = Clip.from_dict(rec["meta"]["clip"])
        for q, answer, meta in turns(rec):
            if meta.get("answer") is None:
                continue
            expected = clip_truth(q, clip, meta, kind == "events")
            if expected is None:
                continue
            got = meta.get("answer_text", meta["answer"])
            assert got == expected, (rec["id"], q, answer, meta, expected)
            checked.add(meta["qtype"])
    assert len(checked) >= (10 if kind == "events" else 16), checked
