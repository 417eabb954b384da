"""The verifier's contract. Everything that knows a model family lives behind it.

A target holds the KV cache of ONE request (batch 1). The decoding loop drives it:

    prompt = target.prepare(text, images)      # tokenizer, chat template, image processor
    pre = target.prefill(prompt, capacity)     # vision tower + projector once, then the prompt
    out = target.verify(tokens, depths, mask)  # one forward over a whole draft tree
    target.commit(path)                        # keep the accepted path's K/V, drop the rest
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


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


@dataclass
class Prefill:
    logits: torch.Tensor  # (V,) float32, next-token logits after the prompt
    features: torch.Tensor  # (T, d) last hidden state (post final norm) at each prompt position
    embeds: torch.Tensor  # (T, d) what the language model read: token or visual embeddings
    aux: torch.Tensor | None = None  # (T, k*d) residual stream after the chosen layers, or None


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

    def prefill(self, prompt: Prompt, capacity: int) -> Prefill: ...

    def verify(
        self, tokens: torch.Tensor, depths: torch.Tensor, tree_mask: torch.Tensor | None
    ) -> Verified: ...

    def commit(self, path: list[int]) -> None: ...

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
