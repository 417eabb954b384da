"""The proposer's contract: anything that drafts a tree of tokens for the loop to verify."""

from __future__ import annotations

from typing import Protocol

import torch

from specvlm.decoding.tree import DraftTree
from specvlm.target.base import Prefill


class Drafter(Protocol):
    """What the loop calls. A drafter with a prompt of its own (`separate.SeparateDrafter`)
    also has `start(new_tokens)`, called before the target's prefill, and `finish()`, called
    when the request ends; the loop and the engine look them up with getattr."""

    def begin(self, prefill: Prefill, root: int, capacity: int) -> None:
        """Read the prompt (the target's features and inputs) and the first generated token."""

    def propose(self, root: int, depth: int, top_k: int, budget: int) -> DraftTree:
        """A tree rooted at `root` (the last token the target produced) of at most `budget` nodes."""

    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Catch up after verification.

        features (m+1, d): the target's features at the accepted nodes (root first);
        next_tokens (m+1,): the token after each of them (accepted drafts, then the bonus token).
        """
