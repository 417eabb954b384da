"""The verifier's contract. Everything that knows a model family lives behind it.

A target holds the KV cache of ONE request (batch 1). The decoding loop drives it:

    prompt = target.prepare(text, images)      # tokenizer, chat template, image processor
    pre = target.prefill(prompt, capacity)     # vision tower + projector once, then the prompt
    out = target.verify(tokens, depths, mask)  # one forward over a whole draft tree
    target.commit(path)                        # keep the accepted path's K/V, drop the rest

`pre.visual` says where each image's visual tokens sit in the prompt and on what grid: the
adapter sets it at prefill (it alone knows its family's vision tower), and every reader of a
prefill (the decoding loop's drafter, the trainer, the tree tuner) gets the same spans from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from specvlm.errors import InputError


@dataclass(frozen=True)
class TargetInfo:
    architecture: str  # e.g. "LlavaForConditionalGeneration"
    text_model_type: str  # e.g. "llama"
    hidden_size: int
    vocab_size: int
    n_layers: int
    max_context: int  # longest sequence (prompt + new tokens) the target may see
    eos_token_ids: tuple[int, ...]
    dtype: torch.dtype
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # the shape of one decoder layer, so a draft layer can mirror it
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0


@dataclass
class Prompt:
    """A prompt ready for prefill: token ids with image placeholders, and the pixels."""

    text: str  # the rendered prompt (chat template applied)
    input_ids: torch.Tensor  # (T,)
    pixel_values: torch.Tensor | None = None  # (n_images, 3, H, W)
    n_images: int = 0


@dataclass(frozen=True)
class VisualSpan:
    """One image's visual tokens: prompt positions [start, start + frames * height * width),
    frame-major then row-major on a (frames, height, width) grid."""

    start: int
    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        dims = (self.start, self.frames, self.height, self.width)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in dims):
            raise InputError(f"a visual span takes integers, got {self}")
        if self.start < 0 or min(self.frames, self.height, self.width) < 1:
            raise InputError(f"a visual span needs start >= 0 and a grid of >= 1, got {self}")

    @property
    def length(self) -> int:
        return self.frames * self.height * self.width

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width


@dataclass(frozen=True)
class VisualLayout:
    """Where a prompt's images are: one span per image, in prompt order, not overlapping."""

    spans: tuple[VisualSpan, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "spans", tuple(self.spans))
        for a, b in zip(self.spans, self.spans[1:], strict=False):
            if b.start < a.end:
                raise InputError(f"visual spans must be in prompt order, apart: {a} then {b}")

    @property
    def n_visual(self) -> int:
        """Visual tokens in the prompt, all images."""
        return sum(s.length for s in self.spans)


NO_VISUAL = VisualLayout()


def visual_layout(
    input_ids: torch.Tensor, image_token_id: int, grids: Sequence[tuple[int, int, int]]
) -> VisualLayout:
    """input_ids (T,), each image's placeholder expanded to its tokens -> the images' spans.

    grids: each image's (frames, height, width), in prompt order, as the adapter's vision tower
    lays them out. Each image's tokens must be contiguous (one image may follow another
    directly)."""
    slots = (input_ids == image_token_id).nonzero().flatten().tolist()  # visual positions
    sizes = [math.prod(g) for g in grids]
    if len(slots) != sum(sizes):
        raise InputError(
            f"the prompt has {len(slots)} visual placeholder tokens but its {len(grids)} images "
            f"have {sum(sizes)} ({sizes})"
        )
    spans, at = [], 0
    for k, (grid, P) in enumerate(zip(grids, sizes, strict=True)):
        mine = slots[at : at + P]
        if mine[-1] - mine[0] != P - 1:
            raise InputError(f"image {k}'s {P} visual tokens are not contiguous in the prompt")
        spans.append(VisualSpan(mine[0], *grid))
        at += P
    return VisualLayout(tuple(spans))


@dataclass
class Prefill:
    logits: torch.Tensor  # (V,) float32, next-token logits after the prompt
    features: torch.Tensor  # (T, d) last hidden state (post final norm) at each prompt position
    embeds: torch.Tensor  # (T, d) what the language model read: token or visual embeddings
    aux: torch.Tensor | None = None  # (T, k*d) residual stream after the chosen layers, or None
    # where each image's visual tokens sit among the T positions (set by the adapter; empty for
    # a text-only prompt): a drafter may read them compressed (specvlm.draft.compressor)
    visual: VisualLayout = NO_VISUAL


@dataclass
class Verified:
    logits: torch.Tensor  # (N, V) float32, next-token logits at each tree node
    features: torch.Tensor  # (N, d) last hidden state at each tree node
    aux: torch.Tensor | None = None  # (N, k*d) residual stream after the chosen layers, or None


class Target(Protocol):
    info: TargetInfo

    def prepare(self, prompt: str | list[dict[str, Any]], images: list[Any]) -> Prompt: ...

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str: ...

    def tokenize(self, text: str, images: list[Any]) -> Prompt: ...

    def prefill(self, prompt: Prompt, capacity: int) -> Prefill:
        """Fill the KV cache with the prompt; the Prefill's `visual` names the images' spans."""
        ...

    def verify(
        self, tokens: torch.Tensor, depths: torch.Tensor, tree_mask: torch.Tensor | None
    ) -> Verified: ...

    def commit(self, path: list[int]) -> None: ...

    def truncate(self, length: int) -> None:
        """Drop committed positions from `length` on (when a separate draft model runs on it)."""

    @property
    def length(self) -> int:
        """Committed positions in the KV cache."""
        ...

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor: ...

    def lm_head(self, features: torch.Tensor) -> torch.Tensor: ...

    @property
    def lm_head_weight(self) -> torch.Tensor | None:
        """(V, d) W with lm_head(x) == x @ W.T, or None when the head is not a plain product."""
        ...

    def decode(self, token_ids: list[int]) -> str: ...
