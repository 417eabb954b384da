"""Greedy speculative output == transformers' own generate(do_sample=False), token for token."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from specvlm.api import Engine
from specvlm.config import TreeConfig
from specvlm.draft.compressor import CompressorConfig
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.target import load_target
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import CONFIGS, noise_image

NEW_TOKENS = 72
PROMPT = "describe the image in detail."


def hf_greedy(folder, prompt) -> tuple[list[int], float]:
    """transformers' greedy tokens, and the smallest top-1/top-2 logit gap along the way."""
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    ids = prompt.input_ids[None]
    out = model.generate(
        input_ids=ids,
        pixel_values=prompt.pixel_values,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    gaps = [float(s[0].topk(2).values.diff().abs()) for s in out.scores]
    return out.sequences[0, ids.shape[1] :].tolist(), min(gaps)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_speculative_greedy_equals_transformers(name, tiny_dirs, tmp_path):
    folder = tiny_dirs[name]
    target = load_target(folder)
    image = noise_image(CONFIGS[name]["seed"])
    prompt = target.prepare(PROMPT, [image])
    expected, min_gap = hf_greedy(folder, prompt)
    assert len(expected) == NEW_TOKENS
    assert min_gap > 1e-3, "the tiny target has a near-tie; exactness would be luck"

    plain = Engine(target, None).generate(
        PROMPT, [image], max_new_tokens=NEW_TOKENS, speculative=False
    )
    assert plain.token_ids == expected
    assert plain.stats.target_forwards == NEW_TOKENS - 1 and plain.stats.tau == 1.0

    torch.manual_seed(0)
    random_head = EagleHead(EagleConfig.for_target(target.info, num_attention_heads=2)).eval()
    spec = Engine(target, random_head).generate(PROMPT, [image], max_new_tokens=NEW_TOKENS)
    assert spec.token_ids == expected

    fitted = fit_head_to_target(
        folder, tmp_path / "draft", prompts=[(PROMPT, [image])], new_tokens=NEW_TOKENS, steps=200
    )
    for tree in (TreeConfig(), TreeConfig(depth=7, top_k=10, budget=60), TreeConfig(2, 2, 3)):
        spec = Engine(target, fitted, tree).generate(PROMPT, [image], max_new_tokens=NEW_TOKENS)
        assert spec.token_ids == expected, tree
        # the fitted draft must really exercise multi-token acceptance and the KV commit
        assert spec.stats.tau > 1.5, (tree, spec.stats.to_dict())
        assert max(spec.stats.accept_lengths) >= 3
        assert sum(spec.stats.accept_lengths) == spec.stats.new_tokens - 1


def test_two_images_in_one_prompt_equal_transformers(tiny_dirs):
    folder = tiny_dirs["llama-gqa-tied-vfl2-48px"]
    target = load_target(folder)
    images = [noise_image(10), noise_image(11, (30, 30))]
    text = "compare <image> with <image> please."
    prompt = target.prepare(text, images)
    assert prompt.n_images == 2
    expected, _ = hf_greedy(folder, prompt)
    # the adapter says where each image's 6 x 6 patch grid (48 px / 8 px patches) sits
    visual = target.prefill(prompt, capacity=prompt.input_ids.shape[0]).visual
    ids = prompt.input_ids
    assert [s.grid for s in visual.spans] == [(1, 6, 6)] * 2
    for span in visual.spans:
        assert (ids[span.start : span.end] == target.image_token_id).all()
    assert int((ids == target.image_token_id).sum()) == visual.n_visual == 72
    torch.manual_seed(1)
    for compressor in (None, CompressorConfig(ratios={"pool": 4}), CompressorConfig(mode="concat")):
        info = target.info
        head = EagleHead(EagleConfig.for_target(info, compressor=compressor)).eval()
        out = Engine(target, head).generate(text, images, max_new_tokens=NEW_TOKENS)
        assert out.token_ids == expected, compressor


def test_eos_stops_generation_and_is_returned(tmp_path):
    import json

    from specvlm.tiny import build_tiny_llava

    folder = build_tiny_llava(tmp_path / "eos", seed=4, num_layers=2, with_eos=False)
    image = noise_image(3)
    prompt = load_target(folder).prepare(PROMPT, [image])
    free_run, _ = hf_greedy(folder, prompt)
    # declare the 11th generated token to be EOS: both must stop right there and keep it
    eos = free_run[10]
    stop_at = free_run.index(eos)
    gen_cfg = json.loads((folder / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = eos
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg))
    expected, _ = hf_greedy(folder, prompt)
    assert expected == free_run[: stop_at + 1]
    target = load_target(folder)
    assert target.info.eos_token_ids == (eos,)
    torch.manual_seed(0)
    head = EagleHead(EagleConfig.for_target(target.info)).eval()
    for engine in (Engine(target, None), Engine(target, head)):
        assert engine.generate(PROMPT, [image], max_new_tokens=NEW_TOKENS).token_ids == expected


def test_repetition_penalty_equals_transformers(tiny_dirs, tmp_path):
    folder = tiny_dirs["qwen2-gqa-untied-vfl2-32px"]
    target = load_target(folder)
    image = noise_image(5)
    prompt = target.prepare(PROMPT, [image])
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    ids = prompt.input_ids[None]
    expected = model.generate(
        input_ids=ids,
        pixel_values=prompt.pixel_values,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        repetition_penalty=1.3,
    )[0, ids.shape[1] :].tolist()
    unpenalised, _ = hf_greedy(folder, prompt)
    assert expected != unpenalised  # the penalty really changes this output
    fitted = fit_head_to_target(folder, tmp_path / "d", prompts=[(PROMPT, [image])], steps=150)
    for draft in (None, fitted):
        out = Engine(target, draft).generate(
            PROMPT, [image], max_new_tokens=NEW_TOKENS, repetition_penalty=1.3
        )
        assert out.token_ids == expected


@pytest.mark.parametrize("one_row", ["packed", "dense"])
def test_packed_linears_keep_greedy_output_equal_to_transformers(
    tiny_dirs, tmp_path, monkeypatch, one_row
):
    """Every Linear on oneDNN's packed weights (the engine's choice for large float32 weights
    on the CPU; the threshold lowered so that the tiny target's qualify), a single row on
    oneDNN too or on the dense weight (the probe's two choices): plain and speculative output
    still equal `transformers`' own greedy output."""
    import specvlm.layers as layers

    if not layers.packed_linear_available():
        pytest.skip("this PyTorch has no oneDNN linear")
    monkeypatch.delenv(layers.CPU_LINEAR_ENV, raising=False)
    monkeypatch.setattr(layers, "PACK_MIN_ELEMENTS", 0)
    monkeypatch.setattr(layers, "one_row_kernel", lambda weight: one_row)
    name = "llama-gqa-tied-vfl2-48px"
    folder = tiny_dirs[name]
    target = load_target(folder)
    lm = target.model.model.language_model
    assert isinstance(lm.layers[0].self_attn.packed_qkv, layers.PackedLinear)
    assert isinstance(target.model.lm_head.forward, layers.PackedLinear)
    assert target.model.lm_head.forward.one_row == one_row
    assert (
        layers.describe_linears(target.model)["onednn" if one_row == "packed" else "one row dense"]
        > 0
    )
    image = noise_image(CONFIGS[name]["seed"])
    prompt = target.prepare(PROMPT, [image])
    expected, min_gap = hf_greedy(folder, prompt)
    assert min_gap > 1e-3, "the tiny target has a near-tie; exactness would be luck"
    plain = Engine(target, None).generate(
        PROMPT, [image], max_new_tokens=NEW_TOKENS, speculative=False
    )
    assert plain.token_ids == expected
    fitted = fit_head_to_target(
        folder, tmp_path / "draft", prompts=[(PROMPT, [image])], new_tokens=NEW_TOKENS, steps=200
    )
    spec = Engine(target, fitted, TreeConfig()).generate(PROMPT, [image], max_new_tokens=NEW_TOKENS)
    assert spec.token_ids == expected
    assert spec.stats.tau > 1.5, spec.stats.to_dict()
