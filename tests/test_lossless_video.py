"""Lossless sampling on the video target (issue 23): the test of test_lossless_embedded.py, on the
shipped world video target with the drafters that read a clip's event stream.

- the event drafter (item 4a, shipped): a separate 2-layer model drafting greedy chains from the
  events and the question, re-synchronized every round;
- the cross-modal EAGLE head (items 4b, 4c): a head whose prompt rows come from that event
  model, trained here for a few steps (no head is shipped), with both catch-ups. Its proposals
  are rarely right, so it checks that its trees and catch-ups leave the target's distribution
  alone; the acceptance path is exercised by the event drafter (and by the image pair's test).

Each sample is a request's first two tokens past an uncertain prefix of a clip's answer: the
first from the target's prefill (run once, its cache reused), the second from a speculative
round that verifies the drafter's proposal (an accepted drafted token, or the bonus drawn from
the target's residual after a rejection). Their counts are compared with the target's own
probabilities by a chi-square test. Whatever proposes, the target's verification decides, so
each drafter must pass; with the event drafter the test also checks that drafted tokens were
really accepted, so that the acceptance path, not only the residual one, is exercised.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from specvlm import api, embedded
from specvlm.config import SamplingConfig
from specvlm.decoding.loop import decode
from specvlm.decoding.stats import SpecStats
from tests.conftest import clip_inputs
from tests.test_lossless_embedded import (
    PrefillOnce,
    exact_first_two,
    p_value,
    speculative_counts,
    uncertain_prefix,
)

pytestmark = [
    pytest.mark.skipif(
        embedded.embedded_video_target() is None or embedded.embedded_events_drafter() is None,
        reason="the embedded world video target and its event drafter are not shipped here",
    ),
    pytest.mark.slow,
]

N_SAMPLES = 3_000
T1 = SamplingConfig(temperature=1.0)
QUESTION = "Describe the video in detail."
CLIP = 5  # a test clip
CROSS_STEPS = 3


@pytest.fixture(scope="module")
def clip_prompt():
    """(the event drafter's engine, the target's prompt: the clip, the question and an uncertain
    prefix of its greedy answer, frames, events)."""
    frames, events = clip_inputs(CLIP)
    engine = api.load(
        target=embedded.embedded_video_target(), assistant=embedded.embedded_events_drafter()
    )
    prompt = engine.target.prepare(QUESTION, None, video=frames)
    prompt, second_entropy = uncertain_prefix(engine, prompt)
    assert second_entropy > 0.3  # the round really has choices to get wrong
    return engine, prompt, frames, events


def _check(engine, prompt, make_drafter) -> int:
    """Assert the chi-square test passes; return how many rounds accepted a drafted token."""
    joint = exact_first_two(engine, prompt, T1)
    assert len(joint) > 5  # the two tokens really vary
    counts, multi = speculative_counts(engine, prompt, T1, N_SAMPLES, 1, make_drafter)
    p = p_value(counts, joint)
    assert p > 1e-3, p
    return multi


def _answer_ids(engine, prompt, frames):
    """(k,) the answer tokens the prompt ends with (its uncertain prefix)."""
    n = engine.target.prepare(QUESTION, None, video=frames).input_ids.shape[0]
    return prompt.input_ids[n:]


def _own_prompt(reads, model, frames, events, answer_ids):
    """The drafter's own prompt (events and question, its template), followed by the same answer
    tokens as the target's: it drafts at the same point of the answer."""
    own = reads.prompt(model, QUESTION, None, events, frames)
    return replace(own, input_ids=torch.cat([own.input_ids, answer_ids]))


def test_the_event_drafters_chains_keep_the_video_targets_distribution(clip_prompt):
    from specvlm.draft.separate import SeparateDrafter

    engine, prompt, frames, events = clip_prompt
    own = _own_prompt(engine.assistant_input, engine.assistant, frames, events,
                      _answer_ids(engine, prompt, frames))  # fmt: skip
    multi = _check(engine, prompt, lambda: SeparateDrafter(engine.assistant, own))
    assert multi > N_SAMPLES // 10, multi  # drafted tokens were accepted, not only bonuses drawn


@pytest.fixture(scope="module")
def cross_folder(tmp_path_factory):
    """A cross-modal head for the shipped video target and event drafter, trained briefly."""
    from specvlm.world.train_target.cross import train_cross_draft

    root = tmp_path_factory.mktemp("cross-sampling")
    r = train_cross_draft(root / "run", "cross-tiny", steps=CROSS_STEPS,
                          teacher=embedded.embedded_video_target(),
                          events_model=embedded.embedded_events_drafter(), progress=False)  # fmt: skip
    return r["model"]


@pytest.mark.parametrize("catch_up", ["target", "events"])
def test_the_cross_modal_heads_trees_keep_the_video_targets_distribution(
    clip_prompt, cross_folder, catch_up
):
    _, prompt, frames, events = clip_prompt
    engine = api.load(target=embedded.embedded_video_target(), draft=cross_folder,
                      cross_catch_up=catch_up)  # fmt: skip
    c = engine.cross
    own = _own_prompt(c.reads, c.events_model, frames, events, _answer_ids(engine, prompt, frames))
    t = engine.target

    def make_drafter():
        return engine._cross_reading(own)

    _check(engine, prompt, make_drafter)
    # the briefly trained head's proposals are rarely right at this uncertain point (the
    # acceptance path is exercised by the event drafter above); check that it did draft trees
    stats = SpecStats()
    rounds = list(decode(PrefillOnce(t), prompt, drafter=make_drafter(), max_new_tokens=4,
                         sampling=T1, tree=engine.tree, stats=stats,
                         generator=torch.Generator().manual_seed(0)))  # fmt: skip
    assert sum(map(len, rounds)) == 4 and max(stats.tree_sizes) > 1
