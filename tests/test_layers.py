"""How the engine readies frozen modules: the CPU weight layout (same values, transposed storage,
tied rows kept), fused q/k/v and gate/up matmuls and the fused RMSNorm (the same numbers, bit for
bit, as the modules they replace)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specvlm import dtype_probe
from specvlm.kv_cache import KVCache
from specvlm.layers import (
    CPU_LINEAR_ENV,
    AttentionShape,
    DecoderBlock,
    DefaultRope,
    PackedLinear,
    decoder_block,
    describe_linears,
    fast_linear_layout,
    inference_kernels,
    one_row_kernel,
    packed_linear_available,
    prepare_for_inference,
    wants_packed_linear,
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


def test_target_loads_with_the_fast_layout_and_tied_head_kept(tiny_dirs, monkeypatch):
    """SPECVLM_CPU_LINEAR=mkl: PyTorch's matmul on the transposed layout (the choice before the
    packed linears, kept for A/B runs)."""
    from specvlm.target import load_target

    monkeypatch.setenv(CPU_LINEAR_ENV, "mkl")
    for name, tied in (("llama-mha-untied-vfl1-32px", False), ("llama-gqa-tied-vfl2-48px", True)):
        target = load_target(tiny_dirs[name])
        attn = target.model.model.language_model.layers[0].self_attn
        assert getattr(attn, "packed_qkv", None) is None, name
        fused, _ = attn.fused_qkv  # (H hd + 2 Hkv hd, d), the CPU's fast layout
        assert fused.stride() == (1, fused.shape[0]), name
        q = attn.q_proj.weight  # a view of the fused weight: no memory added
        assert q.data_ptr() == fused.data_ptr() and q.stride() == (1, fused.shape[0]), name
        head = target.model.lm_head.weight
        assert head.is_contiguous() == tied, name  # a tied head keeps the table's row layout


@pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch has no oneDNN linear")
def test_target_loads_with_packed_linears_by_default(tiny_dirs, monkeypatch):
    """CPU float32: Linears of PACK_MIN_ELEMENTS weights or more (lowered here: the tiny
    models' are all smaller, and stay on PyTorch's matmul by default) run as PackedLinear: the
    fused matmuls, the LM head, the o/down projections; the dense weights stay as they were,
    the fused groups' own Linears are not packed a second time."""
    import specvlm.layers as layers
    from specvlm.target import load_target

    monkeypatch.delenv(CPU_LINEAR_ENV, raising=False)
    small = load_target(tiny_dirs["llama-gqa-tied-vfl2-48px"])
    assert not any(
        "forward" in vars(m) or hasattr(m, "packed_qkv") for m in small.model.modules()
    )  # the tiny world pair decodes as before (measured faster on PyTorch's matmul)
    monkeypatch.setattr(layers, "PACK_MIN_ELEMENTS", 0)
    target = load_target(tiny_dirs["llama-gqa-tied-vfl2-48px"])
    lm = target.model.model.language_model
    attn, mlp = lm.layers[0].self_attn, lm.layers[0].mlp
    assert isinstance(attn.packed_qkv, PackedLinear) and attn.packed_qkv.dense is attn.fused_qkv[0]
    assert isinstance(mlp.packed_gate_up, PackedLinear)
    assert isinstance(attn.o_proj.forward, PackedLinear)
    assert isinstance(mlp.down_proj.forward, PackedLinear)
    assert isinstance(target.model.lm_head.forward, PackedLinear)
    assert "forward" not in vars(attn.q_proj) and "forward" not in vars(mlp.up_proj)
    head = target.model.lm_head.weight
    assert head.data_ptr() == lm.embed_tokens.weight.data_ptr()  # still tied, rows unchanged
    assert target.model.lm_head.forward.dense is head


def test_packed_linear_values_rows_and_fallbacks():
    """oneDNN's product equals F.linear up to float32 rounding; each row's result is the same bits
    whether computed alone or among others (what lets a tree verify compute its linears exactly
    as plain decoding does); gradients, autocast and other dtypes take F.linear on the dense
    weight (the oneDNN op has no backward)."""
    if not packed_linear_available():
        pytest.skip("this PyTorch has no oneDNN linear")
    torch.manual_seed(0)
    for out_f, in_f, bias in ((1536, 576, False), (576, 1536, False), (40, 24, True)):
        w = torch.randn(out_f, in_f)
        b = torch.randn(out_f) if bias else None
        lin = PackedLinear(w, b)
        x = torch.randn(16, in_f)
        with torch.inference_mode():
            full = lin(x)  # (16, out)
            torch.testing.assert_close(full, F.linear(x, w, b), rtol=1e-4, atol=1e-4)
            for m in (1, 2, 3, 5, 8):
                for i in range(0, 16 - m + 1, m):
                    assert torch.equal(lin(x[i : i + m]), full[i : i + m]), (out_f, m, i)
            assert lin(x[None]).shape == (1, 16, out_f)
    # one row computed as the first of two (what a machine whose oneDNN computes single rows
    # by another kernel gets): the same bits and shapes as among others
    lin = PackedLinear(torch.randn(576, 1536), None)
    lin.pad_single = True
    x = torch.randn(4, 1536)
    with torch.inference_mode():
        full = lin(x)
        for i in range(4):
            assert torch.equal(lin(x[i : i + 1]), full[i : i + 1])
            assert torch.equal(lin(x[None, None, i]), full[None, i : i + 1])
    lin = PackedLinear(torch.randn(8, 4), None)
    x = torch.randn(3, 4, requires_grad=True)
    lin(x).sum().backward()
    torch.testing.assert_close(x.grad, lin.dense.sum(0).expand(3, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(torch.randn(3, 4)).dtype == torch.bfloat16


def test_cpu_linear_choice_and_its_environment_variable(monkeypatch):
    monkeypatch.delenv(CPU_LINEAR_ENV, raising=False)
    packed = packed_linear_available()
    assert inference_kernels("cpu", torch.float32) == {"packed": packed, "fast_layout": True}
    assert inference_kernels("cpu", torch.bfloat16) == {"packed": False, "fast_layout": False}
    assert inference_kernels("cuda", torch.float32) == {"packed": False, "fast_layout": False}
    monkeypatch.setenv(CPU_LINEAR_ENV, "MKL")
    assert inference_kernels("cpu", torch.float32) == {"packed": False, "fast_layout": True}
    monkeypatch.setenv(CPU_LINEAR_ENV, "blas")
    with pytest.raises(ValueError, match="'auto', 'onednn', 'mkl'"):
        wants_packed_linear("cpu", torch.float32)
    monkeypatch.setenv(CPU_LINEAR_ENV, "onednn")  # every row count on oneDNN, probe not asked
    monkeypatch.setattr(dtype_probe, "one_row_kernel", lambda *a, **k: pytest.fail("asked"))
    assert one_row_kernel(torch.empty(576, 576)) == "packed"
    assert inference_kernels("cpu", torch.float32) == {"packed": packed, "fast_layout": True}
    monkeypatch.setenv(CPU_LINEAR_ENV, "auto")
    monkeypatch.setattr(
        dtype_probe,
        "one_row_kernel",
        lambda o, i, cache, transposed: "dense" if o > i else "packed",
    )
    assert one_row_kernel(torch.empty(960, 576)) == "dense"
    assert one_row_kernel(torch.empty(576, 1536)) == "packed"


@pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch has no oneDNN linear")
def test_packed_linear_one_row_on_the_dense_weight():
    """one_row="dense": a single row is F.linear's on the dense weight, bit for bit (what plain
    decoding computes with SPECVLM_CPU_LINEAR=mkl); two rows or more are oneDNN's, the same
    bits as the all-packed PackedLinear's."""
    torch.manual_seed(0)
    w = torch.randn(1536, 576).t().contiguous().t()  # the engine's fast layout
    b = torch.randn(1536)
    dense, packed = PackedLinear(w, b, "dense"), PackedLinear(w, b)
    x = torch.randn(6, 576)
    with torch.inference_mode():
        for i in range(6):
            assert torch.equal(dense(x[i : i + 1]), F.linear(x[i : i + 1], w, b))
            assert torch.equal(dense(x[i]), F.linear(x[i], w, b))  # (in,)
            assert torch.equal(dense(x[None, None, i]), F.linear(x[None, None, i], w, b))
        for m in (2, 3, 6):
            assert torch.equal(dense(x[:m]), packed(x[:m]))
    with pytest.raises(ValueError, match="accepted values"):
        PackedLinear(w, b, "mkl")


@pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch has no oneDNN linear")
def test_prepare_for_inference_gives_every_packed_linear_the_one_row_kernel(monkeypatch):
    """prepare_for_inference(packed=True, one_row=...) hands its one-row kernel to every
    PackedLinear (fused and single); without it each weight asks `one_row_kernel`, which
    sees the tied head's row layout apart from the transposed ones; a prepared block's one
    row is the unpacked block's bit for bit on the dense kernel."""
    import specvlm.layers as layers

    monkeypatch.setattr(layers, "PACK_MIN_ELEMENTS", 0)
    shape, block, x, positions = _random_block()
    _, plain, _, _ = _random_block()  # the same weights
    prepare_for_inference(block, fast_layout=True, packed=True, one_row="dense")
    prepare_for_inference(plain, fast_layout=True)
    assert describe_linears(block) == {"onednn": 0, "one row dense": 4, "matmul": 0}
    assert describe_linears(plain) == {"onednn": 0, "one row dense": 0, "matmul": 4}
    with torch.inference_mode():
        one, _ = _run_block(block, shape, x[:1], positions[:1], None)
        ref, _ = _run_block(plain, shape, x[:1], positions[:1], None)
    assert torch.equal(one, ref)
    asked = []
    monkeypatch.setattr(
        layers, "one_row_kernel", lambda w: asked.append(w.stride(0) == 1) or "packed"
    )
    m = Tied()
    prepare_for_inference(m, fast_layout=True, packed=True)
    assert sorted(asked) == [False, True]  # the tied head (rows), proj (transposed)
    assert describe_linears(m) == {"onednn": 2, "one row dense": 0, "matmul": 0}


def test_one_row_probe_times_each_shape_once_per_machine(tmp_path, monkeypatch):
    """Each weight shape is timed once (both kernels), the choice kept in the cache: a second
    ask, or a new process reading the file, measures nothing; "dense" only where it takes at
    most ONE_ROW_MARGIN of oneDNN's time; an unreadable file is measured again."""
    monkeypatch.setattr(dtype_probe, "_one_row_memo", {})
    real = dtype_probe.measure_one_row
    timed = []

    def fake(o, i, transposed=True):
        timed.append((o, i) if transposed else (o, i, "rows"))
        return {"packed": 1.0, "dense": 0.85 if o == 960 else 0.95}

    monkeypatch.setattr(dtype_probe, "measure_one_row", fake)
    assert dtype_probe.one_row_kernel(960, 576, tmp_path) == "dense"
    assert dtype_probe.one_row_kernel(576, 576, tmp_path) == "packed"
    assert dtype_probe.one_row_kernel(960, 576, tmp_path) == "dense"
    assert dtype_probe.one_row_kernel(960, 576, tmp_path, transposed=False) == "dense"
    assert timed == [(960, 576), (576, 576), (960, 576, "rows")]  # a tied head's layout apart
    record = dtype_probe.one_row_record(tmp_path)
    assert set(record["shapes"]) == {"960x576", "576x576", "960x576 rows"}
    assert record["threads"] == torch.get_num_threads()
    dtype_probe._one_row_memo.clear()  # a new process: read from the file
    assert dtype_probe.one_row_kernel(576, 576, tmp_path) == "packed"
    assert len(timed) == 3
    # another process writes while this one measures: what it wrote is kept, and its times
    # win for the shape both measured, so that both processes choose alike
    path = dtype_probe.one_row_path(tmp_path)

    def measured_while_another_writes(o, i, transposed=True):
        other = json.loads(path.read_text())
        other["shapes"] |= {
            "64x64": {"packed": 1.0, "dense": 0.5},
            f"{o}x{i}": {"packed": 1.0, "dense": 0.5},
        }
        path.write_text(json.dumps(other))
        return {"packed": 1.0, "dense": 2.0}

    monkeypatch.setattr(dtype_probe, "measure_one_row", measured_while_another_writes)
    assert dtype_probe.one_row_kernel(128, 64, tmp_path) == "dense"  # the file's, not "packed"
    assert set(json.loads(path.read_text())["shapes"]) >= {"960x576", "64x64", "128x64"}
    monkeypatch.setattr(dtype_probe, "measure_one_row", fake)
    path.write_text("{not json")
    dtype_probe._one_row_memo.clear()
    assert dtype_probe.one_row_kernel(576, 576, tmp_path) == "packed"
    assert len(timed) == 4
    if not packed_linear_available():
        return
    times = real(64, 32, repeats=2)  # the real timing, tiny
    assert set(times) == {"packed", "dense"} and all(t > 0 for t in times.values())


def _run_block(block, shape, x, positions, mask):
    cache = KVCache(1, shape.n_kv_heads, shape.head_dim, 32, dtype=torch.float32)
    rope = DefaultRope(shape.head_dim, 10000.0)(positions, torch.float32)
    return decoder_block(block, x, rope, shape, cache, 0, mask), cache


def _random_block():
    """A 32-wide block with weights of some size, and 7 input rows."""
    torch.manual_seed(0)
    shape = AttentionShape(4, 2, 8)
    block = DecoderBlock(32, shape, 48, 1e-6).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    return shape, block, torch.randn(7, 32), torch.arange(7)


def test_prepared_block_gives_bitwise_the_same_numbers():
    shape, block, x, positions = _random_block()
    with torch.no_grad():
        ref, ref_cache = _run_block(block, shape, x, positions, "causal")
        prepare_for_inference(block, fast_layout=True)
        assert block.self_attn.fused_qkv[0].shape == (4 * 8 + 2 * 2 * 8, 32)
        assert block.mlp.fused_gate_up[0].shape == (2 * 48, 32)
        out, cache = _run_block(block, shape, x, positions, "causal")
    assert torch.equal(out, ref)
    assert torch.equal(cache.k, ref_cache.k) and torch.equal(cache.v, ref_cache.v)


@pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch has no oneDNN linear")
def test_packed_block_gives_the_same_numbers_up_to_rounding(monkeypatch):
    import specvlm.layers as layers

    monkeypatch.setattr(layers, "PACK_MIN_ELEMENTS", 0)
    shape, block, x, positions = _random_block()
    with torch.no_grad():
        ref, _ = _run_block(block, shape, x, positions, "causal")
        prepare_for_inference(block, fast_layout=False, packed=True)
        assert isinstance(block.self_attn.packed_qkv, PackedLinear)
        out, _ = _run_block(block, shape, x, positions, "causal")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


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
