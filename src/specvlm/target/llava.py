"""Target adapter for the LLaVA family (`LlavaForConditionalGeneration`).

The checkpoint is loaded by `transformers` itself; the vision tower and projector run through
its own modules, once per image, at prefill. The language model's decoder layers (Llama,
Mistral, Qwen2/3 style) are driven by `specvlm.layers.decoder_block` with this project's
preallocated KV cache, tree masks and explicit positions: the checkpoint's own Linear, norm and
MLP modules do the arithmetic, so the numbers are the checkpoint's, without the per-token
overhead of `transformers`' cache and mask machinery (docs/benchmarks.md has the measurement).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from specvlm.errors import (
    ImageError,
    InputError,
    ModelFolderError,
    PromptError,
    UnsupportedModelError,
)
from specvlm.hf_quiet import quiet_transformers
from specvlm.kv_cache import KVCache
from specvlm.layers import (
    AttentionShape,
    additive_mask,
    decoder_block,
    inference_kernels,
    prepare_for_inference,
)
from specvlm.media import load_images
from specvlm.target.base import (
    NO_VISUAL,
    Prefill,
    Prompt,
    TargetInfo,
    Verified,
    VisualLayout,
    visual_layout,
)

SUPPORTED_TEXT_MODELS = ("llama", "mistral", "qwen2", "qwen3")


def read_config(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise ModelFolderError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise ModelFolderError(f"not a folder: {folder} (expected a Hugging Face model folder)")
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(
            f"{folder} has no config.json; expected a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer and processor files)"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"cannot read {path}: {e}") from e


class LlavaTarget:
    """A LLaVA checkpoint as a verifier: prepare, prefill, verify a tree, commit a path."""

    ARCHITECTURE = "LlavaForConditionalGeneration"
    FAMILY = "LLaVA"  # in messages

    def __init__(
        self,
        folder: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        aux_layers: tuple[int, ...] = (),
    ):
        from safetensors import SafetensorError
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        folder = Path(folder)
        read_config(folder)
        dtype = dtype or torch.float32
        with quiet_transformers():
            try:
                self.model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
            except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # truncated too
                raise ModelFolderError(f"cannot load the LLaVA weights from {folder}: {e}") from e
            try:
                self.processor = AutoProcessor.from_pretrained(folder)
            except (OSError, ValueError, TypeError) as e:
                raise ModelFolderError(
                    f"cannot load the tokenizer/processor from {folder}: {e}; a LLaVA folder needs "
                    "tokenizer files, preprocessor_config.json and processor_config.json"
                ) from e
        self.tokenizer = self.processor.tokenizer
        self._bind_model(folder, device, dtype, aux_layers)

    def _bind_model(self, folder, device, dtype: torch.dtype, aux_layers: tuple[int, ...]) -> None:
        """The loaded model on `device`, readied for `decoder_block`, its parts bound, and
        `info`; shared by the adapters of this family (`self.ARCHITECTURE`, `self.FAMILY`)."""
        self.model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        cfg = self.model.config
        text = cfg.text_config
        if text.model_type not in SUPPORTED_TEXT_MODELS:
            raise UnsupportedModelError(
                f"{folder}: {self.FAMILY} with a '{text.model_type}' language model is not "
                f"supported; supported: {', '.join(SUPPORTED_TEXT_MODELS)}"
            )
        lm = self.model.model.language_model
        # fused q/k/v and gate/up matmuls, the fused RMSNorm op (every supported family's norm
        # is the plain w * x * rsqrt(mean(x^2) + eps)), and on the CPU in float32 oneDNN's packed
        # linears (or PyTorch's matmul on the fast layout); `transformers`' own forward still
        # runs on the same weights
        prepare_for_inference(
            self.model, plain_rms=(type(lm.norm),), **inference_kernels(self.device, dtype)
        )
        self._embed_tokens = lm.embed_tokens
        self._layers = list(lm.layers)
        self._norm = lm.norm
        self._rotary = lm.rotary_emb
        self._lm_head = self.model.lm_head
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.shape = AttentionShape(
            text.num_attention_heads,
            getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            head_dim,
        )
        self.image_token_id = int(cfg.image_token_id)
        max_context = int(text.max_position_embeddings)
        window = getattr(text, "sliding_window", None)
        if window and getattr(text, "use_sliding_window", True):
            max_context = min(max_context, int(window))  # beyond it the mask would differ
        self.info = TargetInfo(
            architecture=self.ARCHITECTURE,
            text_model_type=text.model_type,
            hidden_size=text.hidden_size,
            vocab_size=text.vocab_size,
            n_layers=len(self._layers),
            max_context=max_context,
            eos_token_ids=self._eos_ids(),
            dtype=dtype,
            fingerprint=self._fingerprint(),
            num_heads=self.shape.n_heads,
            num_kv_heads=self.shape.n_kv_heads,
            head_dim=self.shape.head_dim,
            intermediate_size=text.intermediate_size,
            rms_norm_eps=text.rms_norm_eps,
            rope_theta=float((getattr(text, "rope_parameters", None) or {}).get("rope_theta", 1e4)),
        )
        self.cache: KVCache | None = None
        self.aux_layers: tuple[int, ...] = ()
        self.set_aux_layers(aux_layers)

    def set_aux_layers(self, layers: tuple[int, ...]) -> None:
        """Also return the residual stream after these layers.

        Index i = after i decoder layers: 0 is the input embeddings, n_layers the last layer's
        output BEFORE the final norm (`transformers`' hidden_states[i] for i < n_layers; its last
        entry is after the norm, which is `features`)."""
        bad = [i for i in layers if not 0 <= i <= self.info.n_layers]
        if bad:
            raise InputError(f"aux layers {bad} out of range; accepted: 0..{self.info.n_layers}")
        self.aux_layers = tuple(layers)

    # ---- prompt -------------------------------------------------------------------------
    def prepare(self, prompt: str | list[dict[str, Any]], images: list[Any]) -> Prompt:
        """One user turn (images put first unless the prompt has its own placeholders), or a
        chat so far: [{"role": "user" | "assistant" | "system", "content": str}, ...] ending
        with a user turn, image placeholders inline."""
        if isinstance(prompt, list | tuple):
            return self._prepare_chat(list(prompt), images)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt must be a non-empty string")
        pil = load_images(images)
        image_token = self.processor.image_token
        if prompt.count(image_token) not in (0, len(pil)):
            raise ImageError(
                f"the prompt has {prompt.count(image_token)} '{image_token}' placeholders but "
                f"{len(pil)} images were given; give one image per placeholder, or no "
                "placeholders and they are put before the prompt"
            )
        content: list[dict[str, Any]] = []
        if image_token not in prompt:
            content += [{"type": "image"} for _ in pil]
        content.append({"type": "text", "text": prompt})
        text = self.render_chat([{"role": "user", "content": content}], add_generation_prompt=True)
        if text.count(image_token) != len(pil):
            raise ImageError(
                f"this model's chat template placed {text.count(image_token)} images, but "
                f"{len(pil)} were given; it cannot take images this way"
            )
        return self.tokenize(text, pil)

    def _prepare_chat(self, messages: list[dict[str, Any]], images: list[Any]) -> Prompt:
        roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
        accepted = (
            "a chat prompt must be a list of {'role': 'user'|'assistant'|'system', 'content': "
            "str or a list of {'type': 'text', 'text': ...} / {'type': 'image'} parts} ending "
            "with a user turn"
        )
        if not messages or roles[-1] != "user" or not set(roles) <= {"user", "assistant", "system"}:
            raise PromptError(f"{accepted}; got roles {roles}")
        for i, m in enumerate(messages):
            content = m.get("content")
            parts_ok = isinstance(content, list) and all(
                isinstance(c, dict) and c.get("type") in ("text", "image") for c in content
            )
            if not (isinstance(content, str) or parts_ok):
                raise PromptError(f"{accepted}; message {i} has content {content!r}")
        text = self.render_chat(messages, add_generation_prompt=True)
        return self.tokenize(text, images)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """Messages {"role": "user" | "assistant", "content": str or content items} -> text.

        String content may hold inline image placeholders (LLaVA data style).
        """
        messages = [
            {**m, "content": [{"type": "text", "text": m["content"]}]}
            if isinstance(m["content"], str)
            else m
            for m in messages
        ]
        if self.processor.chat_template or self.tokenizer.chat_template:
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        # a base model without a template: the turns' texts, one after another
        parts = []
        for m in messages:
            for item in m["content"]:
                image = self.processor.image_token + "\n"
                parts.append(image if item["type"] == "image" else item.get("text", ""))
        return "".join(parts)

    def tokenize(self, text: str, images: list[Any]) -> Prompt:
        """Rendered text with one placeholder per image -> ids (placeholders expanded) + pixels."""
        pil = load_images(images)
        placeholders = text.count(self.processor.image_token)
        if placeholders != len(pil):
            raise ImageError(
                f"the text has {placeholders} image placeholders but {len(pil)} images were given"
            )
        # a chat template that writes the BOS itself must not get a second one from the tokenizer
        bos = self.tokenizer.bos_token
        own_bos = bool(bos) and text.startswith(bos)
        enc = self.processor(
            text=text, images=pil or None, return_tensors="pt", add_special_tokens=not own_bos
        )
        input_ids = enc["input_ids"][0]
        if input_ids.shape[0] >= self.info.max_context:
            raise PromptError(
                f"the prompt is {input_ids.shape[0]} tokens (images included) but the model's "
                f"context is {self.info.max_context}; shorten it or use fewer/smaller images"
            )
        pixels = enc.get("pixel_values")
        return Prompt(
            text=text,
            input_ids=input_ids.to(self.device),
            pixel_values=None if pixels is None else pixels.to(self.device, self.info.dtype),
            n_images=len(pil),
        )

    # ---- forward passes -----------------------------------------------------------------
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self._embed_tokens(token_ids)  # (T, d)

    def lm_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._lm_head(features)  # (T, V) in the model's dtype

    @property
    def lm_head_weight(self) -> torch.Tensor | None:
        """(V, d) W with lm_head(x) == x @ W.T exactly (None if the head has a bias): a drafter
        with a reduced vocabulary scores only its rows."""
        return self._lm_head.weight if self._lm_head.bias is None else None

    def visual_grid(self, n_tokens: int) -> tuple[int, int, int]:
        """The (frames, height, width) grid of one image's `n_tokens` visual tokens: LLaVA-1.5's
        (1, side, side) patch grid, side = image_size // patch_size ("default" feature select
        strategy, CLS dropped); a count off the grid (e.g. "full", CLS kept) is one row."""
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return (1, side, side) if n_tokens == side * side else (1, 1, n_tokens)

    def _prompt_embeds(self, prompt: Prompt) -> tuple[torch.Tensor, VisualLayout]:
        """The language model's input (T, d), visual embeddings in the placeholders' rows, and
        where each image's tokens sit."""
        embeds = self.embed(prompt.input_ids)  # (T, d)
        if prompt.pixel_values is None:
            return embeds, NO_VISUAL
        out = self.model.model.get_image_features(
            pixel_values=prompt.pixel_values, return_dict=True
        )
        per_image = list(out.pooler_output)  # n_img x (P, d)
        visual = torch.cat(per_image, dim=0).to(embeds.dtype)  # (n_img * P, d)
        slots = prompt.input_ids == self.image_token_id  # (T,)
        if int(slots.sum()) != visual.shape[0]:
            raise PromptError(
                f"{int(slots.sum())} image placeholder tokens but {visual.shape[0]} visual "
                "tokens; the processor and the model config disagree on the image size"
            )
        embeds = embeds.clone()
        embeds[slots] = visual
        grids = [self.visual_grid(v.shape[0]) for v in per_image]
        return embeds, visual_layout(prompt.input_ids, self.image_token_id, grids)

    def _run(
        self, embeds: torch.Tensor, positions: torch.Tensor, mask
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The language model over new positions.

        Returns the final-norm hidden states (T, d) and the chosen layers' residual streams
        concatenated (T, k*d), or None when no aux layers are chosen.
        """
        assert self.cache is not None
        cos, sin = self._rotary(embeds, positions[None])  # (1, T, hd) each
        rope = (cos[0], sin[0])
        h = embeds
        aux = [h] if 0 in self.aux_layers else []
        for i, layer in enumerate(self._layers):
            h = decoder_block(layer, h, rope, self.shape, self.cache, i, mask)
            if i + 1 in self.aux_layers:
                aux.append(h)
        return self._norm(h), (torch.cat(aux, dim=-1) if aux else None)

    @torch.inference_mode()
    def prefill(self, prompt: Prompt, capacity: int) -> Prefill:
        self.cache = KVCache(
            self.info.n_layers,
            self.shape.n_kv_heads,
            self.shape.head_dim,
            capacity,
            dtype=self.info.dtype,
            device=self.device,
        )
        embeds, visual = self._prompt_embeds(prompt)  # (T, d), the images' spans
        T = embeds.shape[0]
        features, aux = self._run(embeds, torch.arange(T, device=self.device), "causal")
        self.cache.commit(list(range(T)))
        logits = self.lm_head(features[-1:]).float()[0]  # (V,)
        return Prefill(logits=logits, features=features, embeds=embeds, aux=aux, visual=visual)

    @torch.inference_mode()
    def verify(
        self, tokens: torch.Tensor, depths: torch.Tensor, tree_mask: torch.Tensor | None
    ) -> Verified:
        assert self.cache is not None, "prefill first"
        L, N = self.cache.length, tokens.shape[0]
        mask = None
        if N > 1:  # additive (0 = may attend, -inf = may not), built once for all layers
            mask = torch.zeros(N, L + N, dtype=self.info.dtype, device=self.device)  # prefix
            mask[:, L:] = additive_mask(tree_mask.to(self.device), self.info.dtype)  # (N, N)
        features, aux = self._run(
            self.embed(tokens.to(self.device)), L + depths.to(self.device), mask
        )
        return Verified(logits=self.lm_head(features).float(), features=features, aux=aux)

    @torch.inference_mode()
    def commit(self, path: list[int]) -> None:
        assert self.cache is not None
        self.cache.commit(path)

    def truncate(self, length: int) -> None:
        """Drop the committed positions from `length` on (a separate drafter's rollback)."""
        assert self.cache is not None, "prefill first"
        self.cache.truncate(length)

    @property
    def length(self) -> int:
        return 0 if self.cache is None else self.cache.length

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # ---- identity -----------------------------------------------------------------------
    def _eos_ids(self) -> tuple[int, ...]:
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if eos is None:
            eos = self.model.config.text_config.eos_token_id
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)

    def _fingerprint(self) -> dict[str, Any]:
        """What a draft head records about its target: structure (exact) and a weight probe."""
        structure = {
            "architecture": self.ARCHITECTURE,
            "text_model_type": self.model.config.text_config.model_type,
            "hidden_size": self.model.config.text_config.hidden_size,
            "vocab_size": self.model.config.text_config.vocab_size,
            "n_layers": len(self._layers),
        }
        digest = hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:16]
        probe = self._lm_head.weight[:4, :4].float().flatten().tolist()
        return {"structure": digest, **structure, "lm_head_probe": [round(x, 6) for x in probe]}
