"""The one place where target logits become a next-token distribution.

Plain sampling and speculative acceptance both call `target_probs`, so both sample from exactly
the same processed distribution (temperature, then top-k, then top-p).
"""

from __future__ import annotations

import torch

from specvlm.config import SamplingConfig


def target_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits (N, V) -> probabilities (N, V) float32 after temperature / top-k / top-p."""
    if cfg.greedy:
        raise ValueError("target_probs is for sampling; greedy decoding uses argmax")
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (N, V)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Draw one token from probs (V,)."""
    return int(torch.multinomial(probs, 1, generator=generator))
