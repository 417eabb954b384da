"""Speculative sampling has exactly the target's distribution: chi-square tests that can fail."""

from __future__ import annotations

import pytest
import torch

from specvlm.config import SamplingConfig, TreeConfig
from specvlm.decoding import loop as loop_module
from specvlm.decoding.loop import decode
from specvlm.decoding.sampling import sample
from specvlm.decoding.stats import SpecStats
from specvlm.decoding.verify import chain_sampled_accept
from tests.stubs import StubTarget, StubTreeDrafter, V, exact_joint

N_SAMPLES = 20_000
N_TOKENS = 3


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test (cells with tiny expectation pooled)."""
    expected = probs.flatten().double() * counts.sum()
    observed = counts.flatten().double()
    big = expected >= 5
    stat = (((observed[big] - expected[big]) ** 2) / expected[big]).sum()
    rest_e, rest_o = expected[~big].sum(), observed[~big].sum()
    cells = int(big.sum())
    if rest_e > 0:
        stat += (rest_o - rest_e) ** 2 / rest_e
        cells += 1
    df = cells - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), stat / 2.0))


class StubDraftModel(StubTarget):
    """A separate draft model (the target's Markov chain plus noise: another model, in the
    event drafter's role) as `SeparateDrafter` drives it: prefill, causal feeds, commit, and
    rollback (`truncate`)."""

    def __init__(self, seed: int, noise: float = 0.5) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = self.table + noise * torch.randn(self.table.shape, generator=gen)

    def truncate(self, length: int) -> None:
        self.history = self.history[:length]


def sample_counts(
    cfg: SamplingConfig, speculative: bool, seed: int, separate: bool = False
) -> torch.Tensor:
    from specvlm.draft.separate import SeparateDrafter

    target = StubTarget()
    drafter = StubTreeDrafter(target)
    prompt = target.prepare("abc", [])
    helper = StubDraftModel(seed=7)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros((V,) * N_TOKENS)
    tree = TreeConfig(depth=3, top_k=2, budget=6)
    deep = 0  # rounds that accepted 2+ drafted tokens
    for _ in range(N_SAMPLES):
        stats = SpecStats()
        if separate:  # a fresh one per request, as the engine makes it
            drafter = SeparateDrafter(helper, helper.prepare("abc", []))
        rounds = decode(
            target,
            prompt,
            drafter=drafter if speculative else None,
            max_new_tokens=N_TOKENS + 1,  # the first round drafts tokens 2-3 (depth 2)
            sampling=cfg,
            tree=tree,
            stats=stats,
            generator=gen,
        )
        tokens = [t for new in rounds for t in new]
        deep += sum(n >= 3 for n in stats.accept_lengths)
        counts[tuple(tokens[:N_TOKENS])] += 1
    if speculative:  # the test must exercise multi-token acceptance, not just the bonus
        assert deep > N_SAMPLES // 10, deep
    return counts


CONFIGS = {
    "T=1": SamplingConfig(temperature=1.0),
    "T=0.7,top_p=0.9": SamplingConfig(temperature=0.7, top_p=0.9),
    "T=1,top_k=3,penalty=1.2": SamplingConfig(temperature=1.0, top_k=3, repetition_penalty=1.2),
}


def exact(cfg: SamplingConfig) -> torch.Tensor:
    target = StubTarget()
    return exact_joint(target, target.prepare("abc", []).input_ids.tolist(), N_TOKENS, cfg)


def test_plain_sampling_matches_target_distribution():
    """The reference path: plain sampling through the same loop, no drafter."""
    cfg = CONFIGS["T=1"]
    assert chi_square_p(sample_counts(cfg, speculative=False, seed=1), exact(cfg)) > 1e-3


@pytest.mark.parametrize(
    "name",  # T=1 stays in the quick loop (`-m "not slow"`); CI runs all three
    [n if n == "T=1" else pytest.param(n, marks=pytest.mark.slow) for n in CONFIGS],
)
def test_speculative_sampling_matches_target_distribution(name):
    cfg = CONFIGS[name]
    counts = sample_counts(cfg, speculative=True, seed=0)
    assert chi_square_p(counts, exact(cfg)) > 1e-3


def no_rejection_step(tree, probs, generator):
    """A wrong walk: accept a drafted child with probability p but without the rejection step
    (no renormalisation, bonus from the untouched p); it over-weights drafted tokens."""
    node, path = 0, [0]
    while True:
        for child in tree.children(node):
            if float(torch.rand((), generator=generator)) < float(probs[node, tree.tokens[child]]):
                path.append(child)
                node = child
                break
        else:
            return path, sample(probs[node], generator)


@pytest.mark.slow
def test_a_separate_draft_models_chains_keep_the_target_distribution():
    """The event drafter's path: greedy chains of another model, re-synchronized every round."""
    cfg = CONFIGS["T=1"]
    counts = sample_counts(cfg, speculative=True, seed=2, separate=True)
    assert chi_square_p(counts, exact(cfg)) > 1e-3


def test_wrong_acceptance_rule_fails_the_same_test(monkeypatch):
    monkeypatch.setattr(loop_module, "sampled_accept", no_rejection_step)
    cfg = CONFIGS["T=1"]
    assert chi_square_p(sample_counts(cfg, speculative=True, seed=0), exact(cfg)) < 1e-6


def test_chain_rule_for_sampled_drafts_matches_target():
    """min(1, p/q) acceptance with the residual: the first emitted token is distributed as p."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.6, 0.1, 0.1, 0.1]])
    counts = torch.zeros(V)
    for _ in range(N_SAMPLES):
        x = sample(q[0], gen)  # the drafter samples its proposal
        n_acc, nxt = chain_sampled_accept([x], q, p, gen)
        counts[x if n_acc == 1 else nxt] += 1
    assert chi_square_p(counts, p[0]) > 1e-3
    # accepting every sampled draft token (no ratio test) gives q, and must fail
    wrong = torch.zeros(V)
    for _ in range(N_SAMPLES):
        wrong[sample(q[0], gen)] += 1
    assert chi_square_p(wrong, p[0]) < 1e-6
