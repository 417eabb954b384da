"""How the engine readies frozen modules: the CPU weight layout (same values, transposed storage,
tied rows kept), fused q/k/v and gate/up matmuls and the fused RMSNorm (the same numbers, bit for
bit, as the modules they replace)."""

from __future__ import annotations

import torch
from torch import nn

from specvlm.kv_cache import KVCache
from specvlm.layers import (
    AttentionShape,
    DecoderBlock,
    DefaultRope,
    decoder_block,
    fast_linear_layout,
    prepare_for_inference,
)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 5, bias=False)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight  # a tied LM head


def test_fast_layout_keeps_values_and_transposes_storage():
    torch.manual_seed(0)
    m = Tied()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 6)
    y = m.proj(x)
    assert fast_linear_layout(m) == 1  # proj only: the head shares the embedding table
    assert m.proj.weight.shape == (5, 6) and m.proj.weight.stride() == (1, 5)
    assert m.head.weight.stride() == (6, 1) and m.embed.weight.is_contiguous()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(m.proj(x), y, rtol=1e-6, atol=1e-6)
    assert fast_linear_layout(m) == 0  # idempotent


def test_target_loads_with_the_fast_layout_and_tied_head_kept(tiny_dirs):
    from specvlm.target import load_target

    for name, tied in (("llama-mha-untied-vfl1-32px", False), ("llama-gqa-tied-vfl2-48px", True)):
        target = load_target(tiny_dirs[name])
        attn = target.model.model.language_model.layers[0].self_attn
        fused, _ = attn.fused_qkv  # (H hd + 2 Hkv hd, d), the CPU's fast layout
        assert fused.stride() == (1, fused.shape[0]), name
        q = attn.q_proj.weight  # a view of the fused weight: no memory added
        assert q.data_ptr() == fused.data_ptr() and q.stride() == (1, fused.shape[0]), name
        head = target.model.lm_head.weight
        assert head.is_contiguous() == tied, name  # a tied head keeps the table's row layout


def _run_block(block, shape, x, positions, mask):
    cache = KVCache(1, shape.n_kv_heads, shape.head_dim, 32, dtype=torch.float32)
    rope = DefaultRope(shape.head_dim, 10000.0)(positions, torch.float32)
    return decoder_block(block, x, rope, shape, cache, 0, mask), cache


def test_prepared_block_gives_bitwise_the_same_numbers():
    torch.manual_seed(0)
    shape = AttentionShape(4, 2, 8)
    block = DecoderBlock(32, shape, 48, 1e-6).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    x, positions = torch.randn(7, 32), torch.arange(7)
    with torch.no_grad():
        ref, ref_cache = _run_block(block, shape, x, positions, "causal")
        prepare_for_inference(block, fast_layout=True)
        assert block.self_attn.fused_qkv[0].shape == (4 * 8 + 2 * 2 * 8, 32)
        assert block.mlp.fused_gate_up[0].shape == (2 * 48, 32)
        out, cache = _run_block(block, shape, x, positions, "causal")
    assert torch.equal(out, ref)
    assert torch.equal(cache.k, ref_cache.k) and torch.equal(cache.v, ref_cache.v)


def test_plain_rms_norm_matches_transformers_llama_norm_bitwise():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from specvlm.layers import _norm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-6)
    norm.weight.data.normal_(1, 0.3)
    xs = [torch.randn(t, 48) * s for t in (1, 5, 13) for s in (0.01, 1.0, 30.0)]
    refs = [norm(x) for x in xs]
    prepare_for_inference(norm, fast_layout=False, plain_rms=(LlamaRMSNorm,))
    assert norm.plain_rms[1] == 1e-6
    for x, ref in zip(xs, refs, strict=True):
        assert torch.equal(_norm(norm, x), ref)


def test_fused_biases_are_views_and_transformers_forward_still_runs(tiny_dirs):
    """Qwen2 has q/k/v biases: fused too; the model's own forward still runs on the same values
    (strided weight views may round the last bit differently inside `transformers`' matmuls)."""
    from transformers import LlavaForConditionalGeneration

    folder = tiny_dirs["qwen2-gqa-untied-vfl2-32px"]
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    ids = torch.tensor([[1, 7, 9, 12, 5]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        prepare_for_inference(model, fast_layout=True)
        attn = model.model.language_model.layers[0].self_attn
        weight, bias = attn.fused_qkv
        assert (
            bias is not None
            and attn.k_proj.bias.data_ptr() == bias[attn.q_proj.out_features :].data_ptr()
        )
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)


def test_additive_mask_gives_bitwise_the_same_attention_as_the_bool_mask():
    from specvlm.layers import additive_mask

    torch.manual_seed(0)
    shape = AttentionShape(4, 2, 8)
    block = DecoderBlock(32, shape, 48, 1e-6).eval()
    x, positions = torch.randn(6, 32), torch.arange(6)
    allowed = torch.rand(6, 6) < 0.5
    allowed |= torch.eye(6, dtype=torch.bool)  # every node sees itself
    with torch.no_grad():
        ref, _ = _run_block(block, shape, x, positions, allowed)
        out, _ = _run_block(block, shape, x, positions, additive_mask(allowed, torch.float32))
    assert torch.equal(out, ref)
    assert additive_mask(allowed, torch.float32)[~allowed].eq(float("-inf")).all()


def test_quiet_transformers_restores_what_it_found():
    from transformers.utils import logging as hf_logging

    from specvlm.hf_quiet import quiet_transformers

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    hf_logging.set_verbosity_warning()
    try:
        with quiet_transformers():
            with quiet_transformers():  # nested: the inner exit must not turn the bar back on
                pass
            assert not hf_logging.is_progress_bar_enabled()
            assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.WARNING
        with quiet_transformers(log=True):  # the bar off, the log as it was
            assert not hf_logging.is_progress_bar_enabled()
            assert hf_logging.get_verbosity() == hf_logging.WARNING
    finally:
        if not was_on:
            hf_logging.disable_progress_bar()
