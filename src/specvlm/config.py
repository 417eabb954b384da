"""Typed, frozen configuration objects. Each validates itself and names what is accepted."""

from __future__ import annotations

import math
from dataclasses import dataclass

from specvlm.errors import GenerationArgumentError

MIN_TEMPERATURE = 1e-4  # below this (but above 0) logits / T overflows; use 0 for greedy
SEED_LIMIT = 2**63  # torch generators take seeds in [0, 2**63)


@dataclass(frozen=True)
class TreeConfig:
    """Shape of the EAGLE-2 dynamic draft tree.

    depth: draft levels below the root; top_k: children kept per expansion and frontier width;
    budget: nodes verified per round, root included (the paper uses depth 7, top-k 10, budget 60
    on a GPU; on a CPU verification cost grows steeply with the budget, so the default is smaller).
    """

    depth: int = 5
    top_k: int = 4
    budget: int = 16

    def __post_init__(self) -> None:
        for name in ("depth", "top_k", "budget"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GenerationArgumentError(f"tree {name} must be an integer >= 1, got {value!r}")

    @classmethod
    def parse(cls, value: str) -> TreeConfig:
        """ "DEPTH,TOP_K,BUDGET" (e.g. "5,4,12") -> TreeConfig."""
        try:
            depth, top_k, budget = (int(x) for x in value.split(","))
            return cls(depth=depth, top_k=top_k, budget=budget)
        except (ValueError, GenerationArgumentError) as e:
            raise GenerationArgumentError(
                f"{value!r} is not a tree: give three integers >= 1 as DEPTH,TOP_K,BUDGET, "
                f"e.g. 5,4,12 ({e})"
            ) from None


@dataclass(frozen=True)
class SamplingConfig:
    """How the target's next-token distribution is turned into a choice.

    temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 mean no truncation;
    repetition_penalty 1.0 means none (as in transformers: a logit of a token already in the
    context is divided by it when positive, multiplied when negative; greedy decoding too).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        t = self.temperature
        if not (_is_number(t) and (t == 0 or t >= MIN_TEMPERATURE)):
            raise GenerationArgumentError(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got {t!r}"
            )
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise GenerationArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (
            isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0
        ):
            raise GenerationArgumentError(
                f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}"
            )
        if not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationArgumentError(
                "repetition_penalty must be a finite number > 0 (1.0 = off), "
                f"got {self.repetition_penalty!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool, not inf or nan)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_seed(seed: object) -> None:
    """A sampling seed is None (fresh entropy) or an integer in [0, 2**63)."""
    if seed is None:
        return
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT):
        raise GenerationArgumentError(
            f"seed must be None or an integer in [0, 2**63), got {seed!r}"
        )
