"""EagleVLM: an EAGLE-style draft head that reads the target's own features.

Input at position i: the target's last hidden state f_i and the embedding of token i+1 (at image
positions: the target projector's visual embedding) -> LayerNorm over [f_i; e_{i+1}] -> fc 2d->d
-> one decoder layer -> f^_{i+1}, a prediction of the target's next feature. Logits come from the
target's own LM head; the embedding table and LM head are the target's, frozen, never stored here.

A head with a reduced draft vocabulary (`draft_vocab_size` N > 0, `specvlm.draft.vocab`) scores
only N rows of that LM head, d2t (N,) int64 mapping draft index -> target id, stored in its
model.safetensors. Tree tokens, and the token ids the head embeds, are always target ids.

A head with an elastic visual compressor (`compressor`, `specvlm.draft.compressor`) reads each
image as a few compressed tokens paired with target features, on its own positions: its KV cache
holds Δ fewer prompt positions than the target's (Δ = the visual tokens it does not read), and
stays Δ behind it for the whole request. The compressor's weights sit in the same
model.safetensors (`compressor.*`), its settings in config.json (`"compressor": {...}`); a
folder without them is a plain EagleVLM head, as before.

This module never imports a model family: it sees the target only through `embed` / `lm_head`
callables and the dimensions recorded in its config.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specvlm.decoding.tree import DraftTree, grow_dynamic_tree
from specvlm.draft.compressor import CompressorConfig, ElasticCompressor
from specvlm.draft.vocab import check_d2t
from specvlm.errors import DraftMismatchError, InputError, ModelFolderError
from specvlm.kv_cache import KVCache
from specvlm.layers import AttentionShape, DecoderBlock, DefaultRope, decoder_block
from specvlm.target.base import Prefill, TargetInfo

ARCHITECTURE = "EagleVLMHead"
FORMAT_VERSION = 1


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _has_type(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


@dataclass(frozen=True)
class EagleConfig:
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    target: dict[str, Any] = field(default_factory=dict)  # the target's fingerprint
    draft_vocab_size: int = 0  # N > 0: the head scores N target tokens (d2t); 0 = all V
    compressor: CompressorConfig | None = None  # what the draft reads of images; None = all
    architecture: str = ARCHITECTURE
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_target(cls, info: TargetInfo, **overrides: Any) -> EagleConfig:
        """A head whose decoder layer has the shape of one target layer (overridable)."""
        heads = overrides.pop("num_attention_heads", info.num_heads)
        base = dict(
            hidden_size=info.hidden_size,
            vocab_size=info.vocab_size,
            num_attention_heads=heads,
            num_key_value_heads=overrides.pop(
                "num_key_value_heads", info.num_kv_heads if heads == info.num_heads else heads
            ),
            head_dim=overrides.pop("head_dim", info.hidden_size // heads),
            intermediate_size=overrides.pop("intermediate_size", info.intermediate_size),
            rms_norm_eps=info.rms_norm_eps,
            rope_theta=info.rope_theta,
            target=dict(info.fingerprint),
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EagleConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFolderError(f"{source}: unknown keys {unknown}; accepted: {sorted(known)}")
        if data.get("architecture") != ARCHITECTURE:
            raise ModelFolderError(
                f"{source}: architecture {data.get('architecture')!r} is not a SpecVLM draft "
                f"head; accepted: {ARCHITECTURE!r}"
            )
        missing = sorted(f.name for f in fields(cls) if f.name not in data and _required(f))
        if missing:
            raise ModelFolderError(f"{source}: missing keys {missing}")
        for f in fields(cls):
            kind = _FIELD_TYPES[f.name]
            if f.name in data and not _has_type(data[f.name], kind):
                raise ModelFolderError(
                    f"{source}: {f.name} must be {_TYPE_WORDS[kind]}, got {data[f.name]!r}"
                )
        data = dict(data)
        if "compressor" in data:
            try:
                data["compressor"] = CompressorConfig.from_dict(data["compressor"])
            except InputError as e:
                raise ModelFolderError(f"{source}: compressor: {e}") from None
        config = cls(**data)
        if not 0 <= config.draft_vocab_size < config.vocab_size:
            raise ModelFolderError(
                f"{source}: draft_vocab_size must be 0 (full) or 1..{config.vocab_size - 1}, "
                f"got {config.draft_vocab_size}"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        """config.json: a full-vocabulary head omits draft_vocab_size and a head without a
        compressor omits compressor, as before they existed, so its folder stays readable by
        releases that predate them."""
        data = asdict(self)
        if not self.draft_vocab_size:
            del data["draft_vocab_size"]
        if self.compressor is None:
            del data["compressor"]
        else:
            data["compressor"] = self.compressor.to_dict()
        return data

    @property
    def attention(self) -> AttentionShape:
        return AttentionShape(self.num_attention_heads, self.num_key_value_heads, self.head_dim)


_FIELD_TYPES: dict[str, type] = {
    "hidden_size": int, "vocab_size": int, "num_attention_heads": int,
    "num_key_value_heads": int, "head_dim": int, "intermediate_size": int,
    "rms_norm_eps": float, "rope_theta": float, "target": dict, "draft_vocab_size": int,
    "compressor": dict, "architecture": str, "format_version": int,
}  # fmt: skip
_TYPE_WORDS = {int: "an integer", float: "a number", dict: "an object", str: "a string"}


class EagleHead(nn.Module):
    """The trainable part: input norm, fc, one decoder layer (names follow EAGLE checkpoints),
    and the elastic visual compressor when the config has one."""

    def __init__(self, config: EagleConfig, d2t: torch.Tensor | None = None) -> None:
        """d2t (N,): the draft vocabulary when config.draft_vocab_size = N > 0 (a placeholder
        arange(N) when None, e.g. before load_state_dict)."""
        super().__init__()
        d, n = config.hidden_size, config.draft_vocab_size
        self.config = config
        self.input_norm = nn.LayerNorm(2 * d)
        self.fc = nn.Linear(2 * d, d, bias=True)
        self.midlayer = DecoderBlock(
            d, config.attention, config.intermediate_size, config.rms_norm_eps
        )
        self.rope = DefaultRope(config.head_dim, config.rope_theta)
        self.compressor = (
            None if config.compressor is None else ElasticCompressor(config.compressor, d)
        )
        if n:
            d2t = torch.arange(n, device="cpu") if d2t is None else d2t.detach().long().clone()
            check_d2t(d2t.cpu(), config.vocab_size, n)
        else:
            d2t = None
        self.register_buffer("d2t", d2t)  # (N,) draft index -> target id; None = full
        self._rows: tuple | None = None  # (weight, its data_ptr, weight[d2t]): see lm_rows

    def lm_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The target LM head's rows this head scores, weight[d2t] (N, d); gathered once per
        weight (the target is frozen) and kept, in the layout F.linear reads fastest."""
        assert self.d2t is not None, "a full-vocabulary head scores every row"
        c = self._rows
        if c is None or c[0] is not weight or c[1] != weight.data_ptr():
            with torch.inference_mode(False), torch.no_grad():  # usable by training too
                rows = weight.detach()[self.d2t.to(weight.device)]  # (N, d)
                # CPU float32: strides (1, N) as layers.fast_linear_layout, measured 2x faster for
                # k = 10 rows; bfloat16 reads (N, d) rows faster (scripts/draft_vocab_cost.py)
                if rows.device.type == "cpu" and rows.dtype == torch.float32:
                    rows = rows.t().contiguous().t()
            c = self._rows = (weight, weight.data_ptr(), rows)
        return c[2]

    def forward(
        self,
        features: torch.Tensor,
        embeds: torch.Tensor,
        positions: torch.Tensor | None,
        cache: KVCache,
        mask: torch.Tensor | str | None,
        start: int | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """features, embeds (T, d); positions (T,) -> predicted next features (T, d).

        `rope`: the (cos, sin) of `positions` when the caller has them already (positions may
        then be None)."""
        x = self.fc(self.input_norm(torch.cat([features, embeds.to(features.dtype)], dim=-1)))
        if rope is None:
            rope = self.rope(positions, x.dtype)
        return decoder_block(self.midlayer, x, rope, self.config.attention, cache, 0, mask, start)

    # ---- files --------------------------------------------------------------------------
    def save(self, folder: str | Path, dtype: torch.dtype = torch.float16) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous()  # d2t: int64
            for k, v in self.state_dict().items()
        }
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> EagleHead:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"draft folder not found: {folder}")
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise ModelFolderError(
                f"{folder} is not a SpecVLM draft folder: expected config.json and model.safetensors"
            )
        try:
            data = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelFolderError(f"cannot parse {cfg_path}: {e}") from e
        head = cls(EagleConfig.from_dict(data, str(cfg_path)))
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as e:  # truncated, corrupt or not safetensors at all
            raise ModelFolderError(f"cannot read {weights} (truncated or corrupt?): {e}") from e
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise ModelFolderError(f"{weights} does not match its config.json: {e}") from e
        if head.d2t is not None:  # load_state_dict casts: the stored map itself must be int64
            n = head.config.draft_vocab_size
            check_d2t(state["d2t"], head.config.vocab_size, n, str(weights))
        return head.to(dtype).eval()


def check_pairing(config: EagleConfig, info: TargetInfo, draft_name: str = "draft") -> None:
    """Refuse a draft trained for another target: structure must match, weights must agree."""
    mine, theirs = config.target, info.fingerprint
    if config.hidden_size != info.hidden_size or config.vocab_size != info.vocab_size:
        raise DraftMismatchError(
            f"{draft_name} was built for hidden size {config.hidden_size} / vocab "
            f"{config.vocab_size}, but the target has {info.hidden_size} / {info.vocab_size}; "
            "use a draft trained for this target (specvlm train-draft)"
        )
    if mine.get("structure") != theirs.get("structure"):
        raise DraftMismatchError(
            f"{draft_name} was trained for a different target ({_describe(mine)}), not this one "
            f"({_describe(theirs)}); use a draft trained for this target (specvlm train-draft)"
        )
    a = torch.tensor(mine.get("lm_head_probe", []))
    b = torch.tensor(theirs.get("lm_head_probe", []))
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-2, atol=1e-3):
        raise DraftMismatchError(
            f"{draft_name} was trained for a target of the same shape but different weights "
            f"({_describe(theirs)}); use a draft trained for this checkpoint (specvlm train-draft)"
        )


def _describe(fp: dict[str, Any]) -> str:
    keys = ("text_model_type", "hidden_size", "n_layers", "vocab_size")
    return ", ".join(f"{k}={fp.get(k)}" for k in keys)


class EagleDrafter:
    """Drives an EagleHead over one request: catch-up on real features, EAGLE-2 tree growth.

    With a reduced draft vocabulary the head scores N rows: `lm_head_weight` (the target's LM
    head weight, (V, d), `specvlm.draft.vocab.lm_head_weight`) lets it multiply by those rows
    only; without it the full logits are computed and sliced (same values, no saving).

    `compressor`: read images through this one instead of the head's own (ablations: the head's
    compressor forced to another setting, `ElasticCompressor.override`)."""

    def __init__(
        self,
        head: EagleHead,
        embed: Callable[[torch.Tensor], torch.Tensor],
        lm_head: Callable[[torch.Tensor], torch.Tensor],
        lm_head_weight: torch.Tensor | None = None,
        compressor: ElasticCompressor | None = None,
    ) -> None:
        self.head = head
        self.compressor = compressor if compressor is not None else head.compressor
        self.embed = embed
        self.lm_head = lm_head
        self.d2t: torch.Tensor | None = head.d2t  # (N,) draft index -> target id, or None
        self._rows = (
            None if self.d2t is None or lm_head_weight is None else head.lm_rows(lm_head_weight)
        )
        self.cache: KVCache | None = None
        self.root_logprobs: torch.Tensor | None = None  # (N,) draft distribution after the root
        self.root_feature: torch.Tensor | None = None  # (1, d) draft's predicted root feature
        self.hidden = 0  # Δ: prompt positions the target holds and the draft does not read
        self.choice: str | None = None  # the compressor gate's operator for this request

    def _logprobs(self, features: torch.Tensor) -> torch.Tensor:
        """(T, d) -> (T, N) log-probabilities over the draft vocabulary (N = V when full)."""
        if self.d2t is None:
            logits = self.lm_head(features)  # (T, V)
        elif self._rows is not None:
            logits = F.linear(features, self._rows)  # (T, N): only the draft vocabulary's rows
        else:
            logits = self.lm_head(features)[..., self.d2t]  # (T, N), from the full (T, V)
        return torch.log_softmax(logits.float(), dim=-1)

    def _target_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Draft indices -> target ids (the identity for a full-vocabulary head)."""
        return tokens if self.d2t is None else self.d2t[tokens]

    @torch.inference_mode()
    def prompt_rows(self, prefill: Prefill) -> tuple[torch.Tensor, torch.Tensor]:
        """The draft's own prompt rows: features, embeds (T', d), T' = T - Δ.

        Without a compressor (or images: `prefill.visual`, set by the target) they are the
        target's rows as they are (Δ = 0). With one, each image's visual tokens become its
        compressed tokens paired with target features; the gate reads the target's feature at
        the last prompt token."""
        compressor, layout = self.compressor, prefill.visual
        self.choice = None
        if compressor is None or not layout.spans:
            return prefill.features, prefill.embeds
        rows = compressor(
            prefill.embeds, (prefill.features,), layout, gate_feature=prefill.features[-1]
        )
        self.choice = rows.choice
        return rows.features[0], rows.embeds

    @torch.inference_mode()
    def begin(self, prefill: Prefill, root: int, capacity: int) -> None:
        """capacity: the target's positions for the request; the draft needs Δ fewer."""
        cfg = self.head.config
        dtype = next(self.head.parameters()).dtype
        device = prefill.features.device
        features, embeds = self.prompt_rows(prefill)  # (T', d) each
        T = features.shape[0]  # the draft's own positions 0 .. T-1, not the target's
        self.hidden = prefill.features.shape[0] - T  # Δ: the draft stays this far behind
        self.cache = KVCache(
            1,
            cfg.num_key_value_heads,
            cfg.head_dim,
            capacity - self.hidden,
            dtype=dtype,
            device=device,
        )
        root_embed = self.embed(torch.tensor([root], device=device))  # (1, d)
        next_embeds = torch.cat([embeds[1:].to(root_embed.dtype), root_embed])  # (T, d): i+1 at i
        out = self.head(features, next_embeds, torch.arange(T, device=device), self.cache, "causal")
        self.cache.commit(list(range(T)))
        self._set_root(out[-1:])

    def _set_root(self, feature: torch.Tensor) -> None:
        self.root_feature = feature  # (1, d)
        self.root_logprobs = self._logprobs(feature)[0]  # (V,)

    @torch.inference_mode()
    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        assert self.cache is not None
        L, n = self.cache.length, features.shape[0]
        device = features.device
        mask = None
        if n > 1:  # causal among the new rows, full view of the prefix
            mask = torch.ones(n, L + n, dtype=torch.bool, device=device)
            mask[:, L:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        positions = L + torch.arange(n, device=device)
        out = self.head(features, self.embed(next_tokens.to(device)), positions, self.cache, mask)
        self.cache.commit(list(range(n)))
        self._set_root(out[-1:])

    @torch.inference_mode()
    def propose(self, root: int, depth: int, top_k: int, budget: int) -> DraftTree:
        assert self.cache is not None and self.root_logprobs is not None
        L = self.cache.length  # the root's children sit at position L
        device = self.root_feature.device
        k = min(top_k, self.root_logprobs.shape[-1])  # rows of every expansion
        # computed once per tree: level i's nodes sit at position L + i, and may see the whole
        # committed prefix plus their ancestors among the scratch slots [L, L + S)
        levels = torch.arange(L, L + depth - 1, device=device)  # depth - 1 expansions at most
        cos, sin = self.head.rope(levels, self.root_feature.dtype)  # (depth - 1, hd) each
        # (k, L + S_max), S_max = (depth - 1) * k scratch slots: every expansion adds k nodes
        mask = torch.ones(k, L + (depth - 1) * k, dtype=torch.bool, device=device)
        eye = torch.eye(k, dtype=torch.bool, device=device)
        state = {
            "features": self.root_feature,  # (rows, d) draft outputs of the last frontier
            "ancestors": torch.zeros(1, 0, dtype=torch.bool, device=device),  # (rows, S)
            "level": 0,
        }

        def expand(tokens: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
            S, level = state["ancestors"].shape[1], state["level"]
            # (k, S + k): the parent's ancestors, then itself
            ancestors = torch.cat([state["ancestors"][parent_rows], eye], dim=1)
            mask[:, L : L + S + k] = ancestors
            out = self.head(
                state["features"][parent_rows],  # (k, d) the parent's predicted feature
                self.embed(self._target_ids(tokens.to(device))),  # tokens: draft indices
                None,
                self.cache,
                mask[:, : L + S + k],  # (k, L + S + k)
                start=L + S,  # scratch slots past the committed prefix, never committed
                rope=(cos[level].expand(k, -1), sin[level].expand(k, -1)),  # (k, hd) each
            )
            state.update(features=out, ancestors=ancestors, level=level + 1)
            return self._logprobs(out)  # (k, N)

        # grown over draft indices (the root is the target's own token); the tree the loop
        # verifies holds target ids only
        tree = grow_dynamic_tree(
            root, self.root_logprobs, expand, top_k=top_k, depth=depth, budget=budget
        )
        if self.d2t is None:
            return tree
        tokens = torch.cat([tree.tokens[:1], self.d2t[tree.tokens[1:]]])  # (n,) target ids
        return replace(tree, tokens=tokens)
