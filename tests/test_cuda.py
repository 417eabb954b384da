"""The engine on a CUDA GPU: runs where `torch.cuda.is_available()`, skipped elsewhere.

The same checks as on the CPU: greedy speculative output equals plain output, sampling runs with
a generator on the GPU, and every tensor of a round (tree, logits, acceptance) stays there.
"""

from __future__ import annotations

import pytest
import torch

from specvlm import api
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPT = "describe the image in detail."


@pytest.fixture(scope="module")
def draft(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("draft") / "head"
    fit_head_to_target(
        tiny_dir, folder, prompts=[(PROMPT, [noise_image(0)])], new_tokens=48, steps=100
    )
    return folder


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_speculative_equals_plain_on_cuda(tiny_dir, draft, dtype):
    engine = api.load(target=tiny_dir, draft=draft, device="cuda", dtype=dtype)
    assert next(engine.target.model.parameters()).device.type == "cuda"
    plain = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=40, speculative=False)
    spec = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=40)
    if dtype == "float32":
        assert spec.token_ids == plain.token_ids
    assert spec.stats.target_forwards < plain.stats.target_forwards


def test_sampling_on_cuda_is_seeded_and_stays_on_the_gpu(tiny_dir, draft):
    engine = api.load(target=tiny_dir, draft=draft, device="cuda")
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=0.9, repetition_penalty=1.1, seed=3)
    a = engine.generate(PROMPT, images=[noise_image(0)], **kw)
    b = engine.generate(PROMPT, images=[noise_image(0)], **kw)
    assert a.token_ids == b.token_ids  # the CUDA generator is seeded
    plain = engine.generate(PROMPT, images=[noise_image(0)], speculative=False, **kw)
    assert len(plain.token_ids) == 24


def test_embedded_pair_on_cuda_is_lossless():
    from pathlib import Path

    engine = api.load(device="cuda")
    scene = Path(__file__).parents[1] / "docs" / "images" / "scene.png"
    for prompt in (
        "How many shapes are there?",
        "Describe the image.",
        "What color is the diamond?",
    ):
        plain = engine.generate(prompt, images=[scene], max_new_tokens=64, speculative=False)
        spec = engine.generate(prompt, images=[scene], max_new_tokens=64)
        assert spec.token_ids == plain.token_ids
        assert spec.stats.tau > 1.5
