"""The one place where target logits become a next-token choice or distribution.

Plain decoding and speculative acceptance both go through `LogitsProcessor` and `target_probs`,
so both choose from exactly the same processed distribution: repetition penalty (against the
context each tree node would have), then temperature, top-k and top-p, in `transformers`' order.
"""

from __future__ import annotations

import torch

from specvlm.config import SamplingConfig
from specvlm.decoding.tree import DraftTree


class LogitsProcessor:
    """Context-dependent logit processing (the repetition penalty) for one request."""

    def __init__(self, cfg: SamplingConfig, prompt_ids: torch.Tensor, vocab_size: int) -> None:
        self.cfg = cfg
        self.active = cfg.repetition_penalty != 1.0
        # (V,) tokens in the context, on the prompt's (the target's) device
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=prompt_ids.device)
        if self.active:
            self.seen[prompt_ids] = True

    def observe(self, tokens: list[int]) -> None:
        """Tokens that joined the context (the accepted ones, in order)."""
        if self.active:
            self.seen[tokens] = True

    def __call__(self, logits: torch.Tensor, tree: DraftTree | None = None) -> torch.Tensor:
        """logits (N, V) float32 at each tree node (or (1, V) after the prompt) -> processed."""
        if not self.active:
            return logits
        seen = self.seen.expand(logits.shape[0], -1)  # (N, V)
        if tree is not None:  # node i's context also holds its ancestors and itself
            onehot = torch.zeros(tree.size, logits.shape[-1], device=logits.device)  # (N, V)
            onehot[torch.arange(tree.size, device=logits.device), tree.tokens] = 1.0
            seen = seen | (tree.mask.float() @ onehot).bool()  # (N, N) @ (N, V)
        penalty = self.cfg.repetition_penalty
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        return torch.where(seen, penalised, logits)


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
