"""A reduced draft vocabulary (as in EAGLE-3): the N target tokens a draft head may propose.

The draft scores only the N tokens the target itself emits most often on the training data,
instead of the target's whole vocabulary: its LM-head product shrinks from V rows to N. The map
from draft index to target id is a sorted int64 tensor `d2t` (N,), stored with the head. Tokens
outside it are never drafted; the target still verifies over its full vocabulary, so the output
is unchanged (only τ can drop, where the target emits a token the draft cannot propose).

    counts = count_tokens(answers, V)   # (V,) how often the target emitted each id
    d2t = top_n_map(counts, N)          # (N,) the N most frequent ids, ascending
    coverage(counts, d2t)               # the share of emitted tokens the draft can propose
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from specvlm.errors import InputError, ModelFolderError


def count_tokens(
    sequences: Iterable[Sequence[int] | torch.Tensor], vocab_size: int
) -> torch.Tensor:
    """How often each target id occurs over `sequences`: (V,) int64."""
    counts = torch.zeros(vocab_size, dtype=torch.long, device="cpu")
    for seq in sequences:
        ids = torch.as_tensor(seq, dtype=torch.long, device="cpu").flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise InputError(f"token ids must lie in [0, {vocab_size}), got {ids.tolist()}")
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def top_n_map(counts: torch.Tensor, n: int) -> torch.Tensor:
    """d2t (n,) int64: the n most frequent ids (ties: the lower id), in ascending id order.

    Ascending order keeps the gathered LM-head rows in memory order, and makes ties in the
    draft's top-k resolve as they would over the full vocabulary (the lower id first). Ids never
    counted fill the map in id order when fewer than n were seen."""
    V = counts.shape[0]
    if not 0 < n < V:
        raise InputError(
            f"a draft vocabulary of {n} tokens: give 1..{V - 1} (the target has {V}), "
            "or 0 for the full vocabulary"
        )
    by_count = torch.sort(-counts.long(), stable=True).indices  # (V,) most frequent first
    return by_count[:n].sort().values  # (n,)


def coverage(counts: torch.Tensor, d2t: torch.Tensor) -> float:
    """The share of the counted tokens that the draft vocabulary contains."""
    total = int(counts.sum())
    return int(counts[d2t.cpu()].sum()) / total if total else 0.0


def check_d2t(d2t: Any, vocab_size: int, n: int, source: str = "d2t") -> None:
    """Refuse a map that is not n distinct target ids in ascending order, as int64."""
    if not isinstance(d2t, torch.Tensor) or d2t.dtype != torch.long or d2t.shape != (n,):
        shape = tuple(d2t.shape) if isinstance(d2t, torch.Tensor) else type(d2t).__name__
        raise ModelFolderError(
            f"{source}: d2t must be an int64 tensor of shape ({n},), got {shape}"
        )
    if n and (int(d2t[0]) < 0 or int(d2t[-1]) >= vocab_size or not bool((d2t.diff() > 0).all())):
        raise ModelFolderError(
            f"{source}: d2t must hold {n} distinct target ids in [0, {vocab_size}), ascending"
        )


def lm_head_weight(target: Any) -> torch.Tensor | None:
    """The target's LM-head weight (V, d) when its logits are exactly features @ W.T, else None
    (callers then slice the full logits). Read from the Target protocol's `lm_head_weight`: the
    draft never looks inside a model family."""
    return getattr(target, "lm_head_weight", None)
