"""What "identical" means in bfloat16 (README, "The guarantee").

In float32 greedy speculative output equals plain output token for token (tests/test_exactness.py,
tests/test_api.py). In bf16 a tree forward over N tokens and a one-token forward round their
sums differently, so where the target's top two logits are within a rounding step of each other
the two paths can pick different tokens (measured on the shipped pair: 90 of 100 world items
identical, every difference at a top-2 margin of at most 0.0625, docs/benchmarks.md). This test
checks exactly that claim: each item is identical, or its first difference sits at a near-tie
of the plain path.
"""

from __future__ import annotations

import math

import pytest
import torch

from specvlm import api
from specvlm.bench.suites import load_suite
from specvlm.embedded import embedded_target

pytestmark = pytest.mark.skipif(embedded_target() is None, reason="no embedded pair")
# one item whose bf16 outputs differed on the 2-core AMX box (token 21: " three" vs " 3"), and two
# that did not; other CPUs round differently, so each is checked for the claim, not the outcome
IDS = {
    "test-000000009-image-reasoning",
    "test-000000002-image-conversation",
    "test-000000004-image-detailed",
}


def plain_margin(engine, messages, images, plain_ids: list[int], k: int) -> tuple[float, float]:
    """Top-2 logit margin of the plain path before token k, and one bf16 step at its top logit."""
    target = engine.target
    prompt = target.prepare(messages, images)
    pre = target.prefill(prompt, capacity=prompt.input_ids.shape[0] + k + 2)
    logits = pre.logits
    for tok in plain_ids[:k]:  # one token at a time, as plain decoding runs
        logits = target.verify(torch.tensor([tok]), torch.tensor([0]), None).logits[0]
        target.commit([0])
    top = logits.float().topk(2).values
    step = 2.0 ** (math.floor(math.log2(abs(float(top[0])))) - 7)  # bf16 has 8 significant bits
    return float(top[0] - top[1]), step


def test_bf16_differences_are_near_ties():
    engine = api.load(dtype="bfloat16")
    items = [it for it in load_suite("world", n=100) if it.id in IDS]
    for item in items:
        kw = dict(images=list(item.images), max_new_tokens=32)
        plain = engine.generate(list(item.messages), speculative=False, **kw).token_ids
        spec = engine.generate(list(item.messages), **kw).token_ids
        if plain == spec:
            continue
        k = next(i for i, (a, b) in enumerate(zip(plain, spec, strict=False)) if a != b)
        margin, step = plain_margin(engine, list(item.messages), list(item.images), plain, k)
        assert margin <= 2 * step, f"{item.id}: differs at token {k} with margin {margin}"


def test_float32_is_identical_on_the_same_items():
    engine = api.load()
    for item in [it for it in load_suite("world", n=100) if it.id in IDS]:
        kw = dict(images=list(item.images), max_new_tokens=32)
        plain = engine.generate(list(item.messages), speculative=False, **kw).token_ids
        assert engine.generate(list(item.messages), **kw).token_ids == plain
