"""Cross-modal EAGLE drafting (issue 23, items 4b and 4c): an EagleVLM head whose prompt is read
by a cheap model of another modality.

The event drafter E (a small LLaVA that reads the clip's event stream as one picture) reads its
own prompt: the event picture and the question, 64 visual tokens where the video target reads
8 x 65. An alignment layer maps E's last hidden states into the target's feature space (and
E's visual embeddings into the target's embedding space); those rows are the head's prompt, in
place of the target's own features. E's prompt does not depend on the target, so E and the
head read it while the target is still reading its frames (`concurrent=True`: on a worker
thread); after the target's prefill only the root's row is left.

After each verification the head catches up in one of two ways (`CrossConfig.catch_up`):
- "events" (item 4b): E reads the accepted tokens (it only ever reads true tokens, so its cache
  needs no rollback) and its aligned features are the head's new rows; the target's features
  are never read.
- "target" (item 4c, fused): the head's new rows are the target's features at the accepted
  nodes, as EagleVLM's: the events give the prompt, the target everything after it.
Either way the tree is grown by the head (one decoder layer per level, EAGLE-2's dynamic tree),
and the target verifies it: the output is the target's alone.

A cross-modal draft folder is an EagleVLM head folder (config.json, model.safetensors) plus
`cross_modal.json` (`CrossConfig`), `align.safetensors` (`EventAlign`) and `events_model/`, a
copy of the event drafter it was trained with (its `specvlm_drafter.json` says how it reads
events). This module never imports a model family: E is a target adapter like any other.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specvlm.draft.eagle import EagleDrafter, EagleHead
from specvlm.draft.separate import PromptReader
from specvlm.errors import ModelFolderError
from specvlm.kv_cache import KVCache
from specvlm.target.base import Prefill, Prompt, Target

CROSS_FILE = "cross_modal.json"
ALIGN_FILE = "align.safetensors"
EVENTS_MODEL = "events_model"
CATCH_UP = ("events", "target")


@dataclass(frozen=True)
class CrossConfig:
    event_hidden_size: int  # E's width
    hidden_size: int  # the target's width (the head's)
    catch_up: str = "target"  # how the head's rows continue after the prompt (see module doc)
    format_version: int = 1

    def __post_init__(self) -> None:
        if self.catch_up not in CATCH_UP:
            raise ValueError(
                f"catch_up must be one of {', '.join(CATCH_UP)}; got {self.catch_up!r}"
            )


class EventAlign(nn.Module):
    """E's rows into the target's spaces: its last hidden states (features) and its visual
    embeddings (what E's language model read at the picture's positions)."""

    def __init__(self, event_hidden_size: int, hidden_size: int) -> None:
        super().__init__()
        self.feature = nn.Sequential(
            nn.Linear(event_hidden_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.embed = nn.Linear(event_hidden_size, hidden_size)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """(T, dE) E's last hidden states -> (T, d) in the target's feature space."""
        return self.feature(h)


def event_rows(
    align: EventAlign,
    embed: Any,
    input_ids: torch.Tensor,
    prefill: Prefill,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's rows for E's prompt: features, embeds (T, d). input_ids (T,) E's prompt ids;
    text positions embed with the target's table (E shares its tokenizer), picture positions
    take E's visual embeddings through the alignment layer."""
    features = align.features(prefill.features)  # (T, d)
    embeds = embed(input_ids).to(features.dtype).clone()  # (T, d)
    visual = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for span in prefill.visual.spans:
        visual[span.start : span.end] = True
    if visual.any():
        embeds[visual] = align.embed(prefill.embeds[visual].to(features.dtype))
    return features, embeds


class CrossModalDrafter(EagleDrafter):
    """An EagleDrafter whose prompt rows come from E reading its own prompt (`events_prompt`),
    and whose catch-up reads E's or the target's features (`catch_up`). With `concurrent`, E
    and the head read the prompt on a worker thread started before the target's prefill."""

    def __init__(
        self,
        head: EagleHead,
        embed: Any,
        lm_head: Any,
        lm_head_weight: torch.Tensor | None,
        events_model: Target,
        events_prompt: Prompt,
        align: EventAlign,
        catch_up: str = "target",
        concurrent: bool = False,
    ) -> None:
        super().__init__(head, embed, lm_head, lm_head_weight)
        if catch_up not in CATCH_UP:
            raise ValueError(f"catch_up must be one of {', '.join(CATCH_UP)}; got {catch_up!r}")
        self.events_model = events_model
        self.events_prompt = events_prompt
        self.align = align
        self.catch_up = catch_up
        self.prompt_len = int(events_prompt.input_ids.shape[0])
        self._reader = PromptReader(concurrent)
        self._last_row: tuple[torch.Tensor, int] | None = None  # (1, d) feature, its position
        self._root = -1  # the last root: the first token E reads in the next catch-up
        self.prefill_s = 0.0  # E's prefill and the head's, on the worker thread when concurrent
        self.drafting_s = 0.0  # E's catch-up reads (catch_up "events")

    # ---- the prompt: E and the head, before (or while) the target prefills ----------------
    def start(self, new_tokens: int) -> None:
        """Read E's prompt and run the head over all its rows but the last; room for
        `new_tokens` more positions in both caches."""
        self._reader.start(lambda: self._read_prompt(new_tokens))

    @torch.inference_mode()
    def _read_prompt(self, new_tokens: int) -> None:
        start = time.perf_counter()
        T = self.prompt_len
        pre = self.events_model.prefill(self.events_prompt, T + new_tokens)
        device = pre.features.device
        dtype = next(self.head.parameters()).dtype
        features, embeds = event_rows(
            self.align, self.embed, self.events_prompt.input_ids.to(device), pre
        )
        features = features.to(dtype)
        cfg = self.head.config
        self.cache = KVCache(
            1, cfg.num_key_value_heads, cfg.head_dim, T + new_tokens, dtype=dtype, device=device
        )
        if T > 1:  # row i reads (f_i, e_{i+1}); the last row waits for the root
            self.head(features[:-1], embeds[1:], torch.arange(T - 1, device=device), self.cache,
                      "causal")  # fmt: skip
            self.cache.commit(list(range(T - 1)))
        self._last_row = (features[-1:], T - 1)
        self.prefill_s = time.perf_counter() - start

    @torch.inference_mode()
    def begin(self, prefill: Prefill, root: int, capacity: int) -> None:
        """Wait for the prompt (started by `start`, or read now) and add the root's row."""
        self._reader.wait()
        if not self._reader.started:  # the loop did not call start
            self._read_prompt(capacity - int(prefill.features.shape[0]))
        assert self._last_row is not None and self.cache is not None
        feature, position = self._last_row
        self.hidden = int(prefill.features.shape[0]) - self.prompt_len  # Δ (may be negative)
        device = feature.device
        root_embed = self.embed(torch.tensor([root], device=device)).to(feature.dtype)
        out = self.head(feature, root_embed, torch.tensor([position], device=device), self.cache,
                        None)  # fmt: skip
        self.cache.commit([0])
        self._set_root(out)
        self._root = root

    def finish(self) -> None:
        """Wait for a prompt reading still running (a request that ended before `begin`)."""
        self._reader.wait(raise_error=False)

    # ---- catch-up ------------------------------------------------------------------------
    @torch.inference_mode()
    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """features (m+1, d): the target's at the accepted nodes (root first); next_tokens
        (m+1,): the accepted drafts, then the bonus token."""
        if self.catch_up == "events":
            start = time.perf_counter()
            # E reads the accepted nodes' tokens: the root, then the accepted drafts
            tokens = [self._root, *next_tokens[:-1].tolist()]
            n = len(tokens)
            device = self.events_prompt.input_ids.device
            ids = torch.tensor(tokens, dtype=torch.long, device=device)
            causal = torch.ones(n, n, dtype=torch.bool, device=device).tril() if n > 1 else None
            out = self.events_model.verify(ids, torch.arange(n, device=device), causal)
            self.events_model.commit(list(range(n)))
            dtype = next(self.head.parameters()).dtype
            features = self.align.features(out.features.to(dtype)).to(features.device)
            self.drafting_s += time.perf_counter() - start
        super().observe(features, next_tokens)
        self._root = int(next_tokens[-1])


# ---- files ---------------------------------------------------------------------------------
def is_cross_folder(folder: str | Path) -> bool:
    return (Path(folder) / CROSS_FILE).is_file()


def save_cross(
    folder: str | Path, head: EagleHead, align: EventAlign, cfg: CrossConfig, events_model: Path
) -> None:
    """Write a cross-modal draft folder (see the module docstring); `events_model`: E's folder,
    copied in."""
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    head.save(folder)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in align.state_dict().items()}
    save_file(state, str(folder / ALIGN_FILE), metadata={"format": "pt"})
    (folder / CROSS_FILE).write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    dest = folder / EVENTS_MODEL
    if Path(events_model).resolve() != dest.resolve():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(events_model, dest)


def load_cross(
    folder: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[EventAlign, CrossConfig, Path]:
    """(align, config, E's folder) of a cross-modal draft folder (its head: `EagleHead.load`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / CROSS_FILE
    try:
        data = json.loads(path.read_text())
        cfg = CrossConfig(**data)
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelFolderError(
            f"{path} is not a cross-modal draft description this version reads ({e}); expected "
            '{"event_hidden_size": N, "hidden_size": N, "catch_up": "events" | "target"}'
        ) from e
    align = EventAlign(cfg.event_hidden_size, cfg.hidden_size)
    try:
        align.load_state_dict(load_file(str(folder / ALIGN_FILE)))
    except (OSError, RuntimeError) as e:
        raise ModelFolderError(f"cannot read {folder / ALIGN_FILE}: {e}") from e
    events_dir = folder / EVENTS_MODEL
    if not (events_dir / "config.json").is_file():
        raise ModelFolderError(f"{folder}: no event model in {EVENTS_MODEL}/ (a copy of E)")
    return align.to(dtype).eval(), cfg, events_dir
