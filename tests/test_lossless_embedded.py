"""Lossless sampling on the embedded pair (real target, real trained draft), first two tokens.

The stub-target tests (test_lossless_sampling.py) check the rules on a 5-token vocabulary; this
one checks the whole engine on the shipped world target and its shipped draft (since 2026-12-02
the compressor draft): 10,000 speculative samples of the first two answer tokens against the
target's own probabilities, at T = 1 and at T = 0.7 / top-p 0.9.
The prompt is prefilled once and its KV cache reused (pending slots are rewritten by each
forward), so a sample costs one drafter start and one speculative round: the first token comes
from the prefill, the second from a round that verifies it with its drafted children (accepted
child, or the bonus after all were rejected). About 30 ms a sample on one thread of the 2-core
AVX2 boxes (12 ms on the bf16 Xeon ones): 20,000 per setting made this one file 25 minutes of
a CI run there, hence 10,000.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from specvlm import embedded
from specvlm.config import SamplingConfig, TreeConfig
from specvlm.decoding import loop as loop_module
from specvlm.decoding.loop import decode
from specvlm.decoding.sampling import LogitsProcessor, target_probs
from specvlm.decoding.stats import SpecStats
from specvlm.target.base import Prompt
from tests.test_lossless_sampling import chi_square_p, no_rejection_step

pytestmark = [
    pytest.mark.skipif(
        embedded.embedded_target() is None or embedded.embedded_draft() is None,
        reason="the embedded world pair is not in this checkout",
    ),
    pytest.mark.slow,  # about 12 minutes: `pytest -m "not slow"` leaves it out
]

N_SAMPLES = 10_000
QUESTION = "Describe the image in detail."
TREE = TreeConfig(depth=3, top_k=4, budget=8)
CONFIGS = {
    "T=1": SamplingConfig(temperature=1.0),
    "T=0.7 top-p 0.9": SamplingConfig(temperature=0.7, top_p=0.9),
}


class PrefillOnce:
    """A target whose prefill runs once; later prefills reset the cache to the prompt."""

    def __init__(self, target) -> None:
        self.target = target
        self.saved = None

    def __getattr__(self, name):
        return getattr(self.target, name)

    def prefill(self, prompt, capacity):
        if self.saved is None:
            self.saved = (self.target.prefill(prompt, capacity), self.target.cache.length)
        self.target.cache.length = self.saved[1]  # slots past the prompt are only scratch
        return self.saved[0]


@pytest.fixture(scope="module")
def pair():
    from specvlm import api
    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    engine = api.load()
    image = render(world_sample("test", 0, "image"), 128)
    prompt, second_entropy = uncertain_prefix(engine, engine.target.prepare(QUESTION, [image]))
    assert second_entropy > 0.3  # the speculative round really has choices to get wrong
    return engine, prompt


def uncertain_prefix(engine, prompt: Prompt, n: int = 48) -> tuple[Prompt, float]:
    """The prompt plus the first k tokens of the greedy answer, k chosen where the next two
    tokens are least certain (largest summed entropy at T = 1); also the second one's entropy."""
    rounds = decode(
        engine.target,
        prompt,
        drafter=None,
        max_new_tokens=n,
        sampling=SamplingConfig(),
        tree=TREE,
        stats=SpecStats(),
    )
    ids = [t for new in rounds for t in new]
    full = replace(prompt, input_ids=torch.cat([prompt.input_ids, torch.tensor(ids[:-1])]))
    pre = engine.target.prefill(full, capacity=full.input_ids.shape[0])
    T0 = prompt.input_ids.shape[0]
    logp = torch.log_softmax(engine.target.lm_head(pre.features[T0 - 1 :]).float(), dim=-1)
    H = -(logp.exp() * logp).sum(-1)  # (len(ids),) entropy of answer token j given tokens < j
    k = int((H[:-1] + H[1:]).argmax())
    prefix = replace(prompt, input_ids=torch.cat([prompt.input_ids, torch.tensor(ids[:k])]))
    return prefix, float(H[k + 1])


def exact_first_two(engine, prompt, cfg: SamplingConfig, min_p: float = 1e-6):
    """{(t1, t2): probability} for every t1 with p(t1) >= min_p, from target forwards."""
    target = engine.target
    pre = target.prefill(prompt, capacity=prompt.input_ids.shape[0] + 4)
    V = pre.logits.shape[-1]
    p1 = target_probs(LogitsProcessor(cfg, prompt.input_ids, V)(pre.logits[None]), cfg)[0]
    joint = {}
    for t1 in (p1 >= min_p).nonzero().flatten().tolist():
        out = target.verify(torch.tensor([t1]), torch.tensor([0]), None)  # never committed
        process = LogitsProcessor(cfg, prompt.input_ids, V)
        process.observe([t1])
        p2 = target_probs(process(out.logits), cfg)[0]
        for t2 in (p2 > 0).nonzero().flatten().tolist():
            joint[(t1, t2)] = float(p1[t1] * p2[t2])
    return joint


def speculative_counts(engine, prompt, cfg: SamplingConfig, n: int, seed: int, make_drafter=None):
    """Counts of the first two tokens of `n` speculative requests; `make_drafter` gives each
    request's drafter (default: the engine's draft head)."""
    make_drafter = make_drafter or engine._drafter
    target = PrefillOnce(engine.target)
    gen = torch.Generator().manual_seed(seed)
    counts: dict[tuple[int, int], int] = {}
    multi = 0  # rounds that accepted at least one drafted token
    for _ in range(n):
        stats = SpecStats()
        # max_new_tokens=3: the first round drafts (a tree of depth 1 under the first token)
        rounds = decode(
            target,
            prompt,
            drafter=make_drafter(),
            max_new_tokens=3,
            sampling=cfg,
            tree=TREE,
            stats=stats,
            generator=gen,
        )
        tokens: list[int] = []
        for new in rounds:  # stop once two tokens are out: no further round is run
            tokens += new
            if len(tokens) >= 2:
                break
        tokens = tuple(tokens[:2])
        multi += sum(a >= 2 for a in stats.accept_lengths)
        counts[tokens] = counts.get(tokens, 0) + 1
    return counts, multi


def p_value(counts: dict, joint: dict) -> float:
    cells = sorted(joint)
    probs = torch.tensor([joint[c] for c in cells] + [max(0.0, 1.0 - sum(joint.values()))])
    observed = torch.tensor([counts.get(c, 0) for c in cells] + [0.0])
    observed[-1] = sum(v for c, v in counts.items() if c not in joint)  # outside the table
    return chi_square_p(observed, probs)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_embedded_pair_samples_the_target_distribution(pair, name):
    engine, prompt = pair
    cfg = CONFIGS[name]
    joint = exact_first_two(engine, prompt, cfg)
    counts, multi = speculative_counts(engine, prompt, cfg, N_SAMPLES, seed=1)
    assert multi > N_SAMPLES // 10, multi  # drafted tokens were really accepted, not just bonuses
    assert len(joint) > 5  # the first two tokens really vary
    p = p_value(counts, joint)
    assert p > 1e-3, p


def test_embedded_pair_wrong_rule_fails(pair, monkeypatch):
    """The walk without its rejection step (see test_lossless_sampling) must fail the same test."""
    engine, prompt = pair
    cfg = CONFIGS["T=1"]
    monkeypatch.setattr(loop_module, "sampled_accept", no_rejection_step)
    joint = exact_first_two(engine, prompt, cfg)
    counts, _ = speculative_counts(engine, prompt, cfg, 4_000, seed=2)
    assert p_value(counts, joint) < 1e-6
