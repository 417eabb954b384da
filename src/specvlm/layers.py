"""Model-family-neutral building blocks: rotary embedding, cached attention, a Llama-style block.

The target adapters drive the checkpoint's own modules through `decoder_block`; the draft head
builds its single layer from `DecoderBlock`. Both share one attention implementation, so the
tree mask, positions and KV cache work the same way on both sides.

Shapes: batch is always 1 and is left out; T = new tokens, S = attended slots, H = heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

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
    empty span), or a bool tensor (T, S) with True = may attend, S = start + T.
    """
    T = x.shape[0]
    H, Hkv, hd = shape.n_heads, shape.n_kv_heads, shape.head_dim
    q = attn.q_proj(x).view(T, H, hd).transpose(0, 1)  # (H, T, hd)
    k = attn.k_proj(x).view(T, Hkv, hd).transpose(0, 1)  # (Hkv, T, hd)
    v = attn.v_proj(x).view(T, Hkv, hd).transpose(0, 1)  # (Hkv, T, hd)
    q_norm = getattr(attn, "q_norm", None)  # Qwen3-style per-head norms
    if q_norm is not None:
        q, k = q_norm(q), attn.k_norm(k)
    cos, sin = rope
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys, values = cache.write(layer, k, v, start)  # (Hkv, S, hd)
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
        block.self_attn, block.input_layernorm(x), rope, shape, cache, layer, mask, start
    )
    return h + block.mlp(block.post_attention_layernorm(h))


def fast_linear_layout(module: nn.Module) -> int:
    """Store every Linear weight (out, in) transposed in memory: same values, strides (1, out).

    `F.linear(x, W)` multiplies by W^T; with W^T contiguous, the CPU matmul takes its fast path.
    Measured on the world target with 2 threads (docs/benchmarks.md, "Linear weight layout"):
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
