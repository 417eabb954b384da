"""Model-family-neutral building blocks: rotary embedding, cached attention, a Llama-style block.

The target adapters drive the checkpoint's own modules through `decoder_block`; the draft head
builds its single layer from `DecoderBlock`. Both share one attention implementation, so the
tree mask, positions and KV cache work the same way on both sides.

Shapes: batch is always 1 and is left out; T = new tokens, S = attended slots, H = heads.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from specvlm.errors import InputError
from specvlm.kv_cache import KVCache


@dataclass(frozen=True)
class AttentionShape:
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (H, T, hd); cos, sin (T, hd)."""
    return x * cos + rotate_half(x) * sin


class DefaultRope(nn.Module):
    """Plain RoPE (theta only), for modules the project trains itself (the draft layer)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class _AttnLike(Protocol):
    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module


class _BlockLike(Protocol):
    input_layernorm: nn.Module
    post_attention_layernorm: nn.Module
    self_attn: _AttnLike
    mlp: nn.Module


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (T, S), True = may attend -> (T, S) of 0 / -inf, what attention adds to its scores.

    `scaled_dot_product_attention` turns a bool mask into this itself, once per call; a target
    forward over a tree passes it once for all its layers (the same numbers)."""
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _qkv(attn: _AttnLike, x: torch.Tensor) -> torch.Tensor:
    """x (T, d) -> the q, k and v projections side by side (T, (H + 2 Hkv) hd)."""
    packed = getattr(attn, "packed_qkv", None)  # set by `prepare_for_inference(packed=True)`
    if packed is not None:
        return packed(x)
    fused = getattr(attn, "fused_qkv", None)  # set by `prepare_for_inference`
    if fused is not None:
        return F.linear(x, *fused)  # one matmul; the same numbers as three
    return torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)


def cached_attention(
    attn: _AttnLike,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    shape: AttentionShape,
    cache: KVCache,
    layer: int,
    mask: torch.Tensor | str | None,
    start: int | None = None,
) -> torch.Tensor:
    """Self-attention of T new tokens over the cache plus themselves.

    x (T, d). mask: None (each query sees every slot, right for T == 1), "causal" (prefill into an
    empty span), or a tensor (T, S), S = start + T: bool with True = may attend, or additive
    (`additive_mask`).
    """
    T = x.shape[0]
    H, Hkv, hd = shape.n_heads, shape.n_kv_heads, shape.head_dim
    heads = _qkv(attn, x).view(T, H + 2 * Hkv, hd).transpose(0, 1)  # (H + 2 Hkv, T, hd)
    cos, sin = rope
    q_norm = getattr(attn, "q_norm", None)  # Qwen3-style per-head norms
    if q_norm is None:
        qk = apply_rope(heads[: H + Hkv], cos, sin)  # (H + Hkv, T, hd): q and k in one pass
        q, k = qk[:H], qk[H:]
    else:
        q = apply_rope(q_norm(heads[:H]), cos, sin)  # (H, T, hd)
        k = apply_rope(attn.k_norm(heads[H : H + Hkv]), cos, sin)  # (Hkv, T, hd)
    keys, values = cache.write(layer, k, heads[H + Hkv :], start)  # (Hkv, S, hd)
    causal = isinstance(mask, str)
    out = F.scaled_dot_product_attention(
        q[None],  # (1, H, T, hd)
        keys[None],  # (1, Hkv, S, hd)
        values[None],
        attn_mask=None if causal or mask is None else mask[None, None],  # (1, 1, T, S)
        is_causal=causal,
        scale=shape.scale,
        enable_gqa=Hkv != H,
    )  # (1, H, T, hd)
    return attn.o_proj(out[0].transpose(0, 1).reshape(T, H * hd))  # (T, d)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    plain = getattr(norm, "plain_rms", None)  # set by `prepare_for_inference`: (weight, eps)
    if plain is not None and x.dtype == torch.float32:
        return F.rms_norm(x, plain[0].shape, plain[0], plain[1])  # one op, the same numbers
    return norm(x)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    packed = getattr(mlp, "packed_gate_up", None)  # set by `prepare_for_inference(packed=True)`
    fused = getattr(mlp, "fused_gate_up", None)  # set by `prepare_for_inference`
    if fused is None:
        return mlp(x)
    gate_up = packed(x) if packed is not None else F.linear(x, *fused)  # (T, 2 I)
    gate, up = gate_up.chunk(2, dim=-1)  # (T, I) each, strided views
    # the activation on a contiguous copy: its vectorized kernel rounds differently on strided
    # input, and the numbers must be those of the unfused module
    return mlp.down_proj(getattr(mlp, "act_fn", F.silu)(gate.contiguous()) * up)


def decoder_block(
    block: _BlockLike,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    shape: AttentionShape,
    cache: KVCache,
    layer: int,
    mask: torch.Tensor | str | None,
    start: int | None = None,
) -> torch.Tensor:
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.)). x (T, d)."""
    h = x + cached_attention(
        block.self_attn, _norm(block.input_layernorm, x), rope, shape, cache, layer, mask, start
    )
    return h + _mlp(block.mlp, _norm(block.post_attention_layernorm, h))


def fast_linear_layout(module: nn.Module) -> int:
    """Store every Linear weight (out, in) transposed in memory: same values, strides (1, out).

    `F.linear(x, W)` multiplies by W^T; with W^T contiguous, the CPU matmul takes its fast path.
    Measured on the world target with 2 threads (docs/history/benchmarks-history.md, "Linear weight layout"):
    a flatter verify cost curve (a 16-node verify 4.92 ms instead of 5.50 ms).
    Weights shared with an embedding table (tied LM heads) are left as they are, so row lookups
    stay contiguous. Inference only: call it on frozen modules. Returns how many were changed.
    """
    tied = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    changed = 0
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in tied and m.weight.is_contiguous():
            m.weight.data = m.weight.data.t().contiguous().t()  # (out, in), strides (1, out)
            changed += 1
    return changed


class PackedLinear:
    """y = x @ W^T + b by oneDNN, from a copy of W packed once in its blocked layout (CPU).

    Two properties over `F.linear` (MKL) in float32, measured at SmolLM2's shapes on a 2-core
    AVX2 EPYC (docs/benchmarks.md, "Packed linears"): a product of 4-16 rows costs far less
    (the 49,152-row LM head: 5.9 ms for 4 rows where MKL takes 23), and each row's result is
    bit-identical whether computed alone or among other rows (MKL's is not), so a tree verify
    computes every linear exactly as plain decoding does (where oneDNN computes a single row
    by another kernel, seen for one shape on an AVX-512 Xeon, a single row is computed as the
    first of two, which a probe at construction decides). The packed copy is extra memory (the
    module's own weight is kept, so `transformers`' forward and the draft still read it).
    The oneDNN op has no backward and ignores autocast, so where a gradient may be wanted, under
    autocast, or for input that is not float32, the call is `F.linear` on the dense weight (what
    the module did before). Inference only: a weight changed afterwards leaves the copy stale.

    `one_row="dense"`: a single row (a plain decoding step) is computed by `F.linear` on the
    dense weight instead, where that kernel is faster (`one_row_kernel`): on a 2-core Emerald
    Rapids Xeon MKL's one-row products on the transposed layout took half oneDNN's time
    (docs/benchmarks.md, "One row on MKL"). Rows are then no longer computed bit for bit alike
    alone and in a tree: exactness rests on float32 rounding never flipping a greedy choice, as
    it already does for attention inside a tree.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, one_row: str = "packed"
    ) -> None:
        if one_row not in ONE_ROW_KERNELS:
            raise ValueError(f"one_row={one_row!r}: accepted values are {ONE_ROW_KERNELS}")
        self.dense, self.bias = weight, bias  # (out, in), (out,) or None: the fallback's
        self.one_row = one_row
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())
        self.packed_bias = None if bias is None else bias.detach()
        # oneDNN may take another kernel for a single row: on a 2-core AVX-512 Xeon (Emerald
        # Rapids) a 576 x 1536 weight's one-row product differed from the same row among others
        # in the last bits. Where a probe shows that, one row is computed as two.
        probe = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            both = self._product(probe)
            self.pad_single = not torch.equal(self._product(probe[:1]), both[:1])

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.packed_bias, "none", [], "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        grad = torch.is_grad_enabled() and (x.requires_grad or self.dense.requires_grad)
        if grad or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.dense, self.bias)
        single = x.numel() == x.shape[-1]
        if single and self.one_row == "dense":
            return F.linear(x, self.dense, self.bias)
        if single and self.pad_single:  # one row: as the first of two
            row = x.reshape(1, -1)
            return self._product(torch.cat([row, row]))[:1].reshape(*x.shape[:-1], -1)
        return self._product(x)


@functools.cache
def packed_linear_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear ops `PackedLinear` uses (asked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ones(2, 3)
        y = PackedLinear(w, None)(torch.ones(1, 3))
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.equal(y, torch.full((1, 2), 3.0)))


CPU_LINEAR_ENV = "SPECVLM_CPU_LINEAR"
CPU_LINEAR_CHOICES = ("auto", "onednn", "mkl")
ONE_ROW_KERNELS = ("packed", "dense")
# Weights smaller than this (out * in) stay on PyTorch's matmul: oneDNN's call costs ~0.03 ms
# more, which a small product does not win back (a 576 x 576 weight: 0.073 vs 0.044 ms for one
# row; the tiny world pair, every weight <= 1,280 x 192, decoded plainly 21% slower packed),
# while every Linear of SmolLM2-135M (576 x 576 and up) gains in a tree verify
# (scripts/linear_kernels.py, scripts/ab_commits.py; docs/benchmarks.md, "Packed linears").
PACK_MIN_ELEMENTS = 1 << 18


def cpu_linear_choice() -> str:
    """SPECVLM_CPU_LINEAR, checked: "auto" (the default: oneDNN's packed weights for products of
    two rows or more, a single row by whichever kernel a probe finds faster on this machine),
    "onednn" (packed for every row count: each row's result the same bits alone or in a tree)
    or "mkl" (PyTorch's matmul on the transposed layout for everything; for A/B runs)."""
    choice = os.environ.get(CPU_LINEAR_ENV, "auto").strip().lower() or "auto"
    if choice not in CPU_LINEAR_CHOICES:
        accepted = ", ".join(repr(c) for c in CPU_LINEAR_CHOICES)
        raise InputError(f"{CPU_LINEAR_ENV}={choice!r}: accepted values are {accepted}")
    return choice


def wants_packed_linear(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether frozen Linears run as `PackedLinear`: on the CPU in float32 where PyTorch has
    oneDNN, unless SPECVLM_CPU_LINEAR is "mkl". bfloat16 keeps PyTorch's matmul (not measured
    packed: no box here with native bf16 has run it)."""
    choice = cpu_linear_choice()
    if torch.device(device).type != "cpu" or dtype != torch.float32 or choice == "mkl":
        return False
    return packed_linear_available()


def one_row_kernel(weight: torch.Tensor, cache: str | os.PathLike | None = None) -> str:
    """How a `PackedLinear` of this (out, in) weight computes a single row: "packed" (oneDNN, as
    in a tree) or "dense" (`F.linear` on the dense weight, in the layout it has: transposed, or
    a tied head's row layout). SPECVLM_CPU_LINEAR=onednn says "packed"; "auto" asks
    `specvlm.dtype_probe.one_row_kernel` (each shape and layout timed once per machine, then
    cached in `cache`, default $SPECVLM_CACHE)."""
    if cpu_linear_choice() == "onednn":
        return "packed"
    from specvlm.dtype_probe import one_row_kernel as probed

    transposed = weight.dim() == 2 and weight.stride(0) == 1 and weight.shape[1] > 1
    return probed(*weight.shape, cache, transposed=transposed)


def describe_linears(module: nn.Module) -> dict[str, int]:
    """How `module`'s frozen linears multiply, for benchmark records: how many `PackedLinear`s
    compute a single row on oneDNN ("onednn") and on the dense weight ("one row dense"), and
    how many Linears multiply by PyTorch's matmul only ("matmul"; the fused groups' own
    Linears, which only `transformers`' forward calls, not counted)."""
    counts = {"onednn": 0, "one row dense": 0, "matmul": 0}

    def count(lin: object) -> None:
        if not isinstance(lin, PackedLinear):
            counts["matmul"] += 1
        else:
            counts["onednn" if lin.one_row == "packed" else "one row dense"] += 1

    grouped: set[int] = set()
    for m in module.modules():
        for name, names in (("qkv", _QKV), ("gate_up", _GATE_UP)):
            lin = getattr(m, f"packed_{name}", None) or getattr(m, f"fused_{name}", None)
            if lin is not None:
                grouped.update(id(getattr(m, n)) for n in names)
                count(lin)
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) not in grouped:
            count(vars(m).get("forward"))
    return counts


def pack_linears(
    module: nn.Module, skip: set[int] = frozenset(), one_row: str | None = None
) -> int:
    """Run every float32 CPU Linear of `module` with at least PACK_MIN_ELEMENTS weights (but
    those whose id() is in `skip`) as a `PackedLinear`: its `forward` replaced on the instance;
    tied LM heads included (their embedding table keeps its own rows). `one_row`: the
    `PackedLinear` argument for all of them (None: `one_row_kernel` of each weight). Returns
    how many. Inference only."""
    changed = 0
    for m in module.modules():
        if not isinstance(m, nn.Linear) or id(m) in skip:
            continue
        if _packs(m.weight):
            m.forward = PackedLinear(m.weight, m.bias, one_row or one_row_kernel(m.weight))
            changed += 1
    return changed


def _packs(weight: torch.Tensor) -> bool:
    cpu32 = weight.dtype == torch.float32 and weight.device.type == "cpu"
    return cpu32 and weight.numel() >= PACK_MIN_ELEMENTS


def wants_fast_layout(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether `fast_linear_layout` pays: on the CPU in float32. In bfloat16 the CPU's matmul
    reads the plain layout faster (the SmolLM2 target's plain decoding measured ~20% faster
    without it; docs/benchmarks.md)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32


def inference_kernels(device: torch.device | str, dtype: torch.dtype) -> dict[str, bool]:
    """`prepare_for_inference`'s kernel choices for frozen modules on `device` in `dtype`:
    oneDNN's packed linears where they are wanted (the large ones), PyTorch's matmul on the
    fast layout for the rest where that pays."""
    return {
        "packed": wants_packed_linear(device, dtype),
        "fast_layout": wants_fast_layout(device, dtype),
    }


_QKV = ("q_proj", "k_proj", "v_proj")
_GATE_UP = ("gate_proj", "up_proj")


def prepare_for_inference(
    module: nn.Module,
    *,
    fast_layout: bool,
    plain_rms: tuple[type, ...] = (),
    packed: bool = False,
    one_row: str | None = None,
) -> None:
    """Ready frozen modules for `decoder_block` with fewer, larger ops; values never change,
    but for `packed` (4.), whose products differ from PyTorch's by float32 rounding.

    1. Every attention's q/k/v weights (and biases) and every gated MLP's gate/up weights are
       concatenated into one tensor, which `decoder_block` multiplies once (`fused_qkv`,
       `fused_gate_up`); the separate Linears' weights become views of it, so no memory is added
       and the modules still work on their own (e.g. in `transformers`' own forward).
    2. `fast_layout` (for the CPU): `fast_linear_layout` on the fused and the other weights.
    3. Norms of the classes in `plain_rms` (w * x * rsqrt(mean(x^2) + eps), Hugging Face's
       `variance_epsilon`) are computed by the fused `F.rms_norm`, which gives the same float32
       numbers (checked bitwise in tests/test_layers.py).
    4. `packed` (CPU float32, `wants_packed_linear`): the fused matmuls and every other Linear
       of at least PACK_MIN_ELEMENTS weights run as `PackedLinear` (oneDNN), the dense weights
       kept beside them (the fused groups' own Linears, which only `transformers`' forward
       calls, stay as they are). `fast_layout` still applies to the dense weights. A single
       row goes to the kernel `one_row` names (None: `one_row_kernel` of each weight: per
       shape, whichever is faster on this machine).
    Inference only: a module trained afterwards would leave the fused copies stale.
    """
    for m in list(module.modules()):
        qkv = _linears(m, _QKV)
        if qkv is not None:
            m.fused_qkv = _fuse(qkv, fast_layout)
        gate_up = _linears(m, _GATE_UP)
        if gate_up is not None and isinstance(getattr(m, "down_proj", None), nn.Linear):
            m.fused_gate_up = _fuse(gate_up, fast_layout)
        eps = getattr(m, "variance_epsilon", None)
        fp32 = getattr(getattr(m, "weight", None), "dtype", None) == torch.float32
        if plain_rms and isinstance(m, plain_rms) and eps is not None and fp32:
            m.plain_rms = (m.weight, float(eps))
    if fast_layout:
        fast_linear_layout(module)  # the rest; views of the fused weights are left as they are
    if packed:
        in_groups: set[int] = set()
        for m in list(module.modules()):
            for name, names in (("qkv", _QKV), ("gate_up", _GATE_UP)):
                fused = getattr(m, f"fused_{name}", None)
                if fused is not None and _packs(fused[0]):
                    kernel = one_row or one_row_kernel(fused[0])
                    setattr(m, f"packed_{name}", PackedLinear(*fused, kernel))
                    in_groups.update(id(getattr(m, n)) for n in names)
        pack_linears(module, skip=in_groups, one_row=one_row)


def _linears(m: nn.Module, names: tuple[str, ...]) -> list[nn.Linear] | None:
    """The named Linears of `m` if they can share one matmul: same input, dtype, bias or none."""
    lins = [getattr(m, n, None) for n in names]
    if not all(isinstance(lin, nn.Linear) for lin in lins):
        return None
    if (
        len(
            {
                (lin.in_features, lin.weight.dtype, lin.weight.device, lin.bias is None)
                for lin in lins
            }
        )
        != 1
    ):
        return None
    return lins


def _fuse(linears: list[nn.Linear], fast_layout: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum out, in) weight (+ bias) for Linears that read the same input; they become views."""
    weight = torch.cat([lin.weight.data for lin in linears])  # (sum out, in)
    if fast_layout:
        weight = weight.t().contiguous().t()  # strides (1, sum out): see fast_linear_layout
    bias = None if linears[0].bias is None else torch.cat([lin.bias.data for lin in linears])
    row = 0
    for lin in linears:
        n = lin.out_features
        lin.weight.data = weight[row : row + n]
        if bias is not None:
            lin.bias.data = bias[row : row + n]
        row += n
    return weight, bias


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one fused op, the same numbers
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class GatedMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, shape: AttentionShape) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, shape.n_heads * shape.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, shape.n_kv_heads * shape.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, shape.n_kv_heads * shape.head_dim, bias=False)
        self.o_proj = nn.Linear(shape.n_heads * shape.head_dim, dim, bias=False)


class DecoderBlock(nn.Module):
    """A Llama-style decoder layer with the same parameter names as Hugging Face's."""

    def __init__(self, dim: int, shape: AttentionShape, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = SelfAttention(dim, shape)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = GatedMLP(dim, mlp_hidden)
