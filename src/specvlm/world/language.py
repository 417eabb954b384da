"""Instruction / answer records in LLaVA conversation format, about the world's samples.

    >>> rec = make_record("train", 42, "conversation", kind="image", media={"image": "images/000000042.png"})
    >>> rec["conversations"]
    [{'from': 'human', 'value': '<image>\\nHow many circles are there?'},
     {'from': 'gpt', 'value': 'There are two circles.'}]

Task families (FAMILIES): detailed (a 60-200 word description), conversation (one short
question, answered shortly or facts first), reasoning (a comparison or a cause, with an
explanation), multiple_choice (options A-D; the answer names the right option, then its
letter, then why) and multiturn (2-4
question/answer turns). Each family exists for stills (kind "image", placeholder <image>), clips
(kind "video", key "video", a folder of frames, placeholder <video>) and event streams (kind
"events", key "events", an .npz with x, y, t, p, shown as the polarity image of key "image",
placeholder <image>).

Every record carries "meta": family, kind, split, index, seed, the symbolic scene or clip, and for
closed questions the short answer (`qtype`, `answer`, `answer_kind`; per turn under "turns" for
multiturn) so that `grammar.check_answer(meta, model_text)` can score a model. Descriptions list
the objects they must name under meta["objects"].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from specvlm.errors import InputError
from specvlm.world import qa_clip, qa_image
from specvlm.world.clips import Clip
from specvlm.world.qa_image import QA
from specvlm.world.scenes import Scene
from specvlm.world.splits import (
    KINDS,
    SPLITS,
    STREAM_LANGUAGE,
    check_kind,
    rng,
    split_seed,
    split_spec,
    world_sample,
)

FAMILIES: tuple[str, ...] = (
    "detailed",
    "conversation",
    "reasoning",
    "multiple_choice",
    "multiturn",
)
PLACEHOLDERS: dict[str, str] = {"image": "<image>", "video": "<video>", "events": "<image>"}
# The wording of the reference answers: part of every training-data cache's name, so a change of
# wording rebuilds the caches. 2: multiple-choice answers name the option before its letter;
# 3: image reasoning answers, "NOT in the image" and the clips' moving-object and bounce counts
# give their facts first and their verdict last, after ", so "; 4: "which is furthest to the
# left / highest" reads each object's band along that axis (five bands; asked only when they
# decide it), not its region; 5: the conversation's relation, corner and "how many objects"
# answers, and the edge and add / remove answers, give their facts first too (bands, every
# object's place, the objects named); 6: the bands in the axis's own words ("at the far left",
# "left of centre", "halfway across", ...), none a region's, and corner answers place every
# object in its region's plain words, each object under one name; 7: relation and corner
# answers say what their facts give (the true relation; the corner's object or "nothing is in
# the ... corner") before the verdict, which closes the answer alone: ", so yes." / ", so no.".
ANSWERS_VERSION = 7

__all__ = [
    "ANSWERS_VERSION",
    "FAMILIES",
    "KINDS",
    "PLACEHOLDERS",
    "SPLITS",
    "check_families",
    "make_drill",
    "make_record",
    "qa_for",
]

DRILL_STREAM = 100  # language stream of drill records, apart from every family's

QuestionFn = Callable[[object, np.random.Generator], QA | None]  # (facts, rng) -> QA or None


def check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    if not families:
        return FAMILIES
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise InputError(
            f"unknown task family {', '.join(map(repr, bad))}; accepted: {', '.join(FAMILIES)}"
        )
    return tuple(dict.fromkeys(families))


def _first(gens: Sequence[QuestionFn], facts: object, g: np.random.Generator) -> QA:
    """The first question, in a random order of the generators, that fits the sample."""
    qa = _fits(gens, facts, g)
    if qa is None:
        raise RuntimeError(
            "no question generator fits this sample"
        )  # the last-resort ones always do
    return qa


def _fits(gens: Sequence[QuestionFn], facts: object, g: np.random.Generator) -> QA | None:
    """Like `_first`, or None when no generator fits the sample."""
    for k in g.permutation(len(gens)):
        qa = gens[k](facts, g)
        if qa is not None:
            return qa
    return None


def qa_for(
    world: Scene | Clip, family: str, rng_: np.random.Generator, pairs: tuple, events: bool = False
) -> list[QA]:
    """The question/answer turns of one record (one QA, or 2-4 for multiturn).

    Each family's generator list holds at least one question that fits any sample (e.g. counting),
    so `_first` never fails.
    """
    if isinstance(world, Scene):
        facts: object = qa_image.Facts(world, pairs)
        mod = qa_image
        describe: QuestionFn = qa_image.describe
    else:
        facts = qa_clip.ClipFacts(world, pairs, events=events)
        mod = qa_clip
        describe = qa_clip.describe_clip
    if family == "detailed":
        return [describe(facts, rng_)]
    if family == "conversation":
        return [_first(mod.CONVERSATION, facts, rng_)]
    if family == "reasoning":
        return [_first(mod.REASONING, facts, rng_)]
    if family == "multiple_choice":
        return [_first(mod.MULTIPLE_CHOICE, facts, rng_)]
    if family == "multiturn":
        n_turns = int(rng_.integers(2, 5))
        turns: list[QA] = []
        for attempt in range(30):  # mostly short questions, sometimes a reasoning one
            qa = _first(mod.REASONING if rng_.random() < 0.25 else mod.CONVERSATION, facts, rng_)
            new_type = all(qa.meta["qtype"] != t.meta["qtype"] for t in turns) or attempt >= 15
            if new_type and all(qa.question != t.question for t in turns):
                turns.append(qa)
            if len(turns) == n_turns:
                break
        return turns
    raise InputError(f"unknown task family {family!r}; accepted: {', '.join(FAMILIES)}")


def conversations(turns: list[QA], placeholder: str) -> list[dict]:
    """LLaVA turns; the placeholder opens the first human message."""
    out = []
    for k, qa in enumerate(turns):
        value = f"{placeholder}\n{qa.question}" if k == 0 else qa.question
        out += [{"from": "human", "value": value}, {"from": "gpt", "value": qa.answer}]
    return out


def make_record(
    split: str, index: int, family: str, kind: str = "image", media: dict[str, str] | None = None
) -> dict:
    """One LLaVA-format record for sample `index` of `split`.

    media: the relative paths to put in the record ("image", "video", "events"); the files
    themselves are written by `dataset.make_dataset`.
    """
    check_kind(kind)
    seed = split_seed(split, index)
    world = world_sample(split, index, kind)
    g = rng(
        seed,
        STREAM_LANGUAGE,
        FAMILIES.index(family) if family in FAMILIES else 99,
        KINDS.index(kind),
    )
    turns = qa_for(world, family, g, split_spec(split).pairs, events=kind == "events")
    meta: dict = {"family": family, "kind": kind, "split": split, "index": index, "seed": seed}
    if family == "multiturn":
        meta["turns"] = [t.meta for t in turns]
    else:
        meta.update(turns[0].meta)
    meta["scene" if kind == "image" else "clip"] = world.to_dict()
    record = {"id": f"{split}-{index:09d}-{kind}-{family}", **(media or {})}
    record["conversations"] = conversations(turns, PLACEHOLDERS[kind])
    record["meta"] = meta
    return record


def make_drill(split: str, index: int, n_turns: int = 8, kind: str = "image") -> dict:
    """A training-only record for sample `index` (an image, or a clip with `kind` "video"):
    `n_turns` short conversation questions about the same sample (distinct questions; the
    question types as the conversation family draws them), in one multi-turn LLaVA conversation
    of family "drill".

    Each turn is a closed-form question whose answer depends on the sample, so a drill gives a
    model many grounded answers per image (clip) read; it uses its own random stream, so adding
    drills to a training set changes none of the `make_record` records. Every third turn asks
    what is hardest to learn, if a new such question fits: where something is (images), which
    way something moves or whether it moves (clips).
    """
    if n_turns < 1:
        raise InputError(f"n_turns must be at least 1, got {n_turns}")
    if kind not in ("image", "video"):
        raise InputError(f"drills are made for images and video, not {kind!r}")
    seed = split_seed(split, index)
    world = world_sample(split, index, kind)
    g = rng(seed, STREAM_LANGUAGE, DRILL_STREAM, KINDS.index(kind))
    if kind == "image":
        facts: object = qa_image.Facts(world, split_spec(split).pairs)
        hard, usual = qa_image.WHERE, qa_image.CONVERSATION
    else:
        facts = qa_clip.ClipFacts(world, split_spec(split).pairs)
        hard, usual = qa_clip.MOTION, qa_clip.CONVERSATION
    turns: list[QA] = []

    def new(qa: QA | None) -> bool:
        """A question not asked yet; in a clip, also a fact not asked yet: each type once,
        except "which way does it move" and "does it move", once per object (`track`)."""
        if qa is None or any(qa.question == t.question for t in turns):
            return False
        if kind == "image":
            return True
        fact = lambda m: (m["qtype"], m.get("track"))  # noqa: E731
        return fact(qa.meta) not in {fact(t.meta) for t in turns}

    for _ in range(20 * n_turns):
        qa = _fits(hard, facts, g) if len(turns) % 3 == 1 else None
        if not new(qa):
            qa = _first(usual, facts, g)
        if new(qa):
            turns.append(qa)
        if len(turns) == n_turns:
            break
    meta: dict = {"family": "drill", "kind": kind, "split": split, "index": index, "seed": seed}
    meta["turns"] = [t.meta for t in turns]
    meta["scene" if kind == "image" else "clip"] = world.to_dict()
    return {
        "id": f"{split}-{index:09d}-{kind}-drill",
        "conversations": conversations(turns, PLACEHOLDERS[kind]),
        "meta": meta,
    }
