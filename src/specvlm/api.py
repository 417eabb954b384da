"""The public face: `specvlm.load()` -> `Engine.generate()` / `Engine.stream()`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specvlm.config import SamplingConfig, TreeConfig
from specvlm.decoding.loop import decode
from specvlm.decoding.stats import SpecStats
from specvlm.draft.eagle import EagleDrafter, EagleHead, check_pairing
from specvlm.errors import GenerationArgumentError, InputError
from specvlm.layers import prepare_for_inference
from specvlm.target import Target, load_target


@dataclass
class GenerationOutput:
    text: str  # the new text only
    token_ids: list[int]  # the new tokens only (EOS included when generated)
    stats: SpecStats


@dataclass
class StreamPiece:
    text: str  # new text since the previous piece (may be "" while a character is incomplete)
    token_ids: list[int]  # the tokens that arrived with it


class Engine:
    """A target and (optionally) a draft head, ready to generate. One request at a time."""

    def __init__(
        self,
        target: Target,
        draft: EagleHead | None,
        tree: TreeConfig | None = None,
        target_dir: Path | None = None,
    ):
        self.target = target
        self.draft = draft
        self.tree = tree or TreeConfig()
        self.target_dir = target_dir  # the checkpoint folder, when loaded from one

    def _drafter(self) -> EagleDrafter | None:
        if self.draft is None:
            return None
        return EagleDrafter(self.draft, self.target.embed, self.target.lm_head)

    def _run(
        self,
        prompt: str | list[dict[str, Any]],
        images: Any,
        video: Any,
        events: Any,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | None,
        speculative: bool,
        stats: SpecStats,
    ) -> Iterator[list[int]]:
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise GenerationArgumentError(
                f"max_new_tokens must be a positive integer, got {max_new_tokens!r}"
            )
        if video is not None or events is not None:
            kind = "video" if video is not None else "events"
            raise InputError(
                f"this target ({self.target.info.architecture}) does not read {kind}; "
                "it accepts a prompt and images"
            )
        sampling = SamplingConfig(temperature, top_p, top_k, repetition_penalty)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        prepared = self.target.prepare(prompt, images)
        drafter = self._drafter() if speculative else None
        return decode(
            self.target,
            prepared,
            drafter=drafter,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            tree=self.tree,
            stats=stats,
            generator=generator,
        )

    def generate(
        self,
        prompt: str | list[dict[str, Any]],
        images: Any = None,
        video: Any = None,
        events: Any = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        speculative: bool = True,
    ) -> GenerationOutput:
        stats = SpecStats()
        rounds = self._run(
            prompt, images, video, events, max_new_tokens, temperature, top_p, top_k,
            repetition_penalty, seed, speculative, stats,
        )  # fmt: skip
        ids = [tok for new in rounds for tok in new]
        return GenerationOutput(text=self.target.decode(ids), token_ids=ids, stats=stats)

    def stream(
        self,
        prompt: str | list[dict[str, Any]],
        images: Any = None,
        video: Any = None,
        events: Any = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        speculative: bool = True,
        stats: SpecStats | None = None,
    ) -> Iterator[StreamPiece]:
        """Same arguments as `generate`; yields text pieces with their token ids as they land.

        Pass a `SpecStats` to read the statistics once the stream is exhausted.
        """
        stats = stats if stats is not None else SpecStats()
        rounds = self._run(
            prompt, images, video, events, max_new_tokens, temperature, top_p, top_k,
            repetition_penalty, seed, speculative, stats,
        )  # fmt: skip
        ids: list[int] = []
        shown = ""
        for new in rounds:
            ids += new
            text = self.target.decode(ids)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
                yield StreamPiece("", new)
                continue
            yield StreamPiece(text[len(shown) :], new)
            shown = text


def load(
    target: str | Path | None = None,
    draft: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    tree: TreeConfig | None = None,
) -> Engine:
    """Load a target checkpoint folder and a draft-head folder.

    tree None: the tree `specvlm bench --tune` chose for this target on this machine, if any,
    else `TreeConfig()`.

    target None: the embedded default pair (the world target and its draft; `specvlm.embedded`).
    Where they are not shipped, a tiny random LLaVA built in code (`specvlm.tiny`), with a warning.
    draft None with a target folder: no draft head; generate(speculative=True) then decodes plainly.
    """
    dtype = _dtype(dtype)
    if target is None:
        from specvlm import embedded

        target = embedded.embedded_target()
        if target is not None:
            draft = draft or embedded.embedded_draft()
        else:
            from specvlm import tiny

            warnings.warn(
                "no trained embedded models are shipped yet: using a tiny random LLaVA built in "
                "code with a draft head fitted to it on the spot (outputs are gibberish, speeds "
                "are not representative)",
                stacklevel=2,
            )
            target, fitted = tiny.demo_pair()
            draft = draft or fitted
    tgt = load_target(target, device=device, dtype=dtype)
    head = None
    if draft is not None:
        head = EagleHead.load(draft, dtype=tgt.info.dtype).to(device)
        prepare_for_inference(head, fast_layout=torch.device(device).type == "cpu")
        check_pairing(head.config, tgt.info, draft_name=f"draft {draft}")
    if tree is None:  # a tree tuned for this target on this machine (specvlm bench --tune)
        from specvlm.bench.tune import load_tuned

        tree = load_tuned(tgt.info.fingerprint)
    return Engine(tgt, head, tree, target_dir=Path(target))


def _dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
    if value not in names:
        raise InputError(f"unknown dtype {value!r}; accepted: {', '.join(names)}")
    return names[value]
