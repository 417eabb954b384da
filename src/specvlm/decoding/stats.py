"""What one generation did: accepted lengths, forwards and timings."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpecStats:
    new_tokens: int = 0
    prompt_tokens: int = 0
    accept_lengths: list[int] = field(default_factory=list)  # accepted drafts + 1, per round
    tree_sizes: list[int] = field(default_factory=list)  # tokens verified per round
    prefill_s: float = 0.0  # vision tower + projector + prompt, up to the first token
    ttft_s: float = 0.0  # request start -> first new token ready
    decode_s: float = 0.0  # first token -> last token
    # why decoding stopped: "eos", "max_new_tokens", or "context" (the model's context is full)
    stop_reason: str = ""

    @property
    def target_forwards(self) -> int:
        """Target forwards after prefill (one per verification round)."""
        return len(self.accept_lengths)

    @property
    def tau(self) -> float:
        """Mean accepted length: mean over target forwards of (accepted draft tokens + 1)."""
        return sum(self.accept_lengths) / len(self.accept_lengths) if self.accept_lengths else 0.0

    @property
    def accept_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.accept_lengths).items()))

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first one, per second of decoding."""
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "new_tokens": self.new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "tau": round(self.tau, 4),
            "accept_histogram": self.accept_histogram,
            "target_forwards": self.target_forwards,
            "mean_tree_size": round(sum(self.tree_sizes) / max(1, len(self.tree_sizes)), 2),
            "prefill_s": round(self.prefill_s, 6),
            "ttft_s": round(self.ttft_s, 6),
            "decode_s": round(self.decode_s, 6),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "stop_reason": self.stop_reason,
        }
