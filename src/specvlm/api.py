"""The public face: `specvlm.load()` -> `Engine.generate()` / `Engine.stream()`."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from specvlm.config import SamplingConfig, TreeConfig, check_seed
from specvlm.decoding.loop import decode
from specvlm.decoding.stats import SpecStats
from specvlm.draft.base import Drafter
from specvlm.draft.cross import CrossModalDrafter, EventAlign, is_cross_folder, load_cross
from specvlm.draft.eagle import EagleDrafter, EagleHead, check_pairing
from specvlm.draft.separate import DrafterInput, SeparateDrafter, check_same_vocabulary
from specvlm.draft.vocab import lm_head_weight
from specvlm.errors import EngineBusyError, GenerationArgumentError, InputError
from specvlm.layers import inference_kernels, prepare_for_inference
from specvlm.target import Target, load_target, modalities
from specvlm.target.base import Prompt


@dataclass(frozen=True)
class GenerationRequest:
    """The options of one request: the keyword arguments of `Engine.generate` / `Engine.stream`.

    Sampling is greedy at temperature 0; top_k 0 and top_p 1.0 mean no truncation;
    repetition_penalty 1.0 means none. `seed` (None or an int in [0, 2**63)) seeds the sampler.
    `speculative=False` decodes plainly, through the same loop, with no draft.
    """

    video: Any = None
    events: Any = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    speculative: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> GenerationRequest:
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise GenerationArgumentError(
                f"unknown generation option(s) {', '.join(unknown)}; accepted: "
                + ", ".join(f.name for f in fields(cls))
            )
        request = cls(**options)
        m = request.max_new_tokens
        if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
            raise GenerationArgumentError(f"max_new_tokens must be a positive integer, got {m!r}")
        check_seed(request.seed)
        return request

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.top_k, self.repetition_penalty)


@dataclass(frozen=True)
class CrossParts:
    """A cross-modal draft head's other parts (`specvlm.draft.cross`): the event model E that
    reads each request's events, what it reads, the alignment layer, how the head catches up."""

    events_model: Target
    reads: DrafterInput
    align: EventAlign
    catch_up: str


@dataclass
class GenerationOutput:
    text: str  # the new text only
    token_ids: list[int]  # the new tokens only (EOS included when generated)
    stats: SpecStats  # stats.stop_reason: "eos", "max_new_tokens" or "context"

    @property
    def stop_reason(self) -> str:
        return self.stats.stop_reason


@dataclass
class StreamPiece:
    text: str  # new text since the previous piece (may be "" while a character is incomplete)
    token_ids: list[int]  # the tokens that arrived with it (one verification round's)


class Engine:
    """A target and (optionally) a draft head, ready to generate.

    One request at a time: the engine owns one KV cache, so a `generate` or `stream` that starts
    while another request is decoding raises `EngineBusyError` (from any thread; a stream holds
    the engine from its first piece until it is exhausted or closed). Servers queue requests in
    front of an engine.
    """

    def __init__(
        self,
        target: Target,
        draft: EagleHead | None,
        tree: TreeConfig | None = None,
        target_dir: Path | None = None,
        assistant: Target | None = None,
        concurrent_prefill: bool = False,
        assistant_input: DrafterInput | None = None,
        cross: CrossParts | None = None,
    ):
        """assistant: a separate draft model with the target's tokenizer (`SeparateDrafter`:
        it drafts chains of `tree.depth` tokens, re-synchronized every round) instead of a draft
        head; concurrent_prefill: it (or a cross-modal head's event model) reads its prompt on
        a worker thread while the target prefills; assistant_input: what it reads (default: the
        request's prompt and images; an event drafter: the request's `events`). cross: the
        draft head is a cross-modal one (`CrossModalDrafter`): its event model and alignment."""
        if assistant is not None:
            if draft is not None:
                raise InputError(
                    "give a draft head or a separate draft model (assistant), not both"
                )
            check_same_vocabulary(target, assistant, "the assistant")
        elif concurrent_prefill and cross is None:
            raise InputError(
                "concurrent_prefill needs a separate draft model (assistant) or a cross-modal "
                "draft head"
            )
        if cross is not None:
            if draft is None:
                raise InputError("a cross-modal draft needs its head")
            check_same_vocabulary(target, cross.events_model, "the cross-modal draft's event model")
        self.target = target
        self.draft = draft
        self.tree = tree or TreeConfig()
        self.target_dir = target_dir  # the checkpoint folder, when loaded from one
        self.assistant = assistant
        self.concurrent_prefill = concurrent_prefill
        self.assistant_input = assistant_input or DrafterInput()
        self.cross = cross
        self._busy = threading.Lock()

    def _drafter(self) -> EagleDrafter | None:
        if self.draft is None:
            return None
        return EagleDrafter(
            self.draft, self.target.embed, self.target.lm_head, lm_head_weight(self.target)
        )

    def _start(
        self,
        prompt: str | list[dict[str, Any]],
        images: Any,
        options: dict[str, Any],
        stats: SpecStats,
    ) -> Iterator[list[int]]:
        """Check the request now (bad input raises here, before anything runs); decode lazily."""
        request = GenerationRequest.from_options(options)
        reads = modalities(self.target)
        if (self.assistant is not None and self.assistant_input.reads == "events") or (
            self.cross is not None
        ):
            reads = (*reads, "events")  # read by the draft model, not the target
        for kind in ("video", "events"):
            if getattr(request, kind) is not None and kind not in reads:
                takes = (
                    "a prompt, images and a video" if "video" in reads else "a prompt and images"
                )
                raise InputError(
                    f"this target ({self.target.info.architecture}) does not read {kind}; "
                    f"it accepts {takes}"
                )
        sampling = request.sampling
        if request.video is not None:
            prepared = self.target.prepare(prompt, images, video=request.video)
        else:
            prepared = self.target.prepare(prompt, images)
        drafter = None
        if request.speculative:
            if self.cross is not None:
                drafter = self._cross(prompt, images, request.events, request.video)
            elif self.assistant is None:
                drafter = self._drafter()
            else:
                drafter = self._separate(prompt, images, request.events, request.video)
        return self._rounds(prepared, request, sampling, stats, drafter)

    def _separate(
        self, prompt: str | list[dict[str, Any]], images: Any, events: Any, video: Any
    ) -> SeparateDrafter:
        """The assistant's drafter for this request: what it reads (`assistant_input`: the same
        prompt and images, or the event stream), through its own template and processor."""
        assert self.assistant is not None
        own = self.assistant_input.prompt(self.assistant, prompt, images, events, video)
        return SeparateDrafter(self.assistant, own, concurrent=self.concurrent_prefill)

    def _cross(
        self, prompt: str | list[dict[str, Any]], images: Any, events: Any, video: Any
    ) -> CrossModalDrafter:
        """The cross-modal head's drafter for this request: its event model reads the request's
        events (with the question) through its own template and processor."""
        c = self.cross
        assert c is not None
        return self._cross_reading(c.reads.prompt(c.events_model, prompt, images, events, video))

    def _cross_reading(self, own: Prompt) -> CrossModalDrafter:
        """The cross-modal head's drafter whose event model reads `own` (its prepared prompt)."""
        c = self.cross
        assert c is not None and self.draft is not None
        return CrossModalDrafter(
            self.draft, self.target.embed, self.target.lm_head, lm_head_weight(self.target),
            c.events_model, own, c.align, c.catch_up, concurrent=self.concurrent_prefill,
        )  # fmt: skip

    def _rounds(
        self,
        prepared: Prompt,
        request: GenerationRequest,
        sampling: SamplingConfig,
        stats: SpecStats,
        drafter: Drafter | None,
    ) -> Iterator[list[int]]:
        if not self._busy.acquire(blocking=False):
            raise EngineBusyError(
                "this engine is already decoding a request (one at a time: it owns one KV "
                "cache); finish or close the other stream first, or queue requests"
            )
        try:
            generator = None
            if not sampling.greedy:
                generator = torch.Generator(device=prepared.input_ids.device)
                if request.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(request.seed)
            yield from decode(
                self.target,
                prepared,
                drafter=drafter,
                max_new_tokens=request.max_new_tokens,
                sampling=sampling,
                tree=self.tree,
                stats=stats,
                generator=generator,
            )
        finally:
            finish = getattr(drafter, "finish", None)
            if finish is not None:  # a separate drafter's prefill thread, if still running
                finish()
            self._busy.release()

    def generate(
        self, prompt: str | list[dict[str, Any]], images: Any = None, **options: Any
    ) -> GenerationOutput:
        """Answer a prompt (a string, or a chat: a list of {"role", "content"} messages).

        images: PIL images or paths, one per image placeholder (or put before a string prompt).
        options: the fields of `GenerationRequest` (max_new_tokens=256, temperature=0.0,
        top_p=1.0, top_k=0, repetition_penalty=1.0, seed=None, speculative=True, video, events).

        video (a target that reads video, e.g. Video-LLaVA): a folder of frame images (in name
        order), a list of frames (PIL images or paths), a (frames, height, width, 3) uint8 array,
        or a video file's path (decoded by PyAV: pip install 'specvlm[video]'); sampled
        uniformly to the checkpoint's frame count (Video-LLaVA: 8), shorter clips used whole; at
        its `<video>` placeholder, or before a string prompt. events: an event stream for an engine
        whose separate draft model reads events (`load(assistant=EVENT_DRAFTER)`), or whose draft
        head is a cross-modal one (`load(draft=CROSS_DIR)`): an .npz
        with x, y, t (microseconds), p, a structured array or a dict of them; the target never
        reads it, so the output is the target's alone.
        """
        stats = SpecStats()
        ids = [tok for new in self._start(prompt, images, options, stats) for tok in new]
        return GenerationOutput(text=self.target.decode(ids), token_ids=ids, stats=stats)

    def stream(
        self,
        prompt: str | list[dict[str, Any]],
        images: Any = None,
        stats: SpecStats | None = None,
        **options: Any,
    ) -> Iterator[StreamPiece]:
        """Same arguments as `generate`; yields text pieces with their token ids as they land.

        Bad input raises at the call; decoding starts at the first piece. Pass a `SpecStats`
        to read the statistics once the stream is exhausted.
        """
        rounds = self._start(prompt, images, options, stats if stats is not None else SpecStats())
        return self._pieces(rounds)

    def _pieces(self, rounds: Iterator[list[int]]) -> Iterator[StreamPiece]:
        ids: list[int] = []
        shown = ""
        try:
            for new in rounds:
                ids += new
                text = self.target.decode(ids)
                if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
                    yield StreamPiece("", new)
                    continue
                yield StreamPiece(text[len(shown) :], new)
                shown = text
        finally:
            rounds.close()  # a stream closed early frees the engine at once


def load(
    target: str | Path | None = None,
    draft: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    tree: TreeConfig | None = None,
    model: str | None = None,
    assistant: str | Path | None = None,
    concurrent_prefill: bool = False,
    assistant_reads: str | None = None,
    cross_catch_up: str | None = None,
) -> Engine:
    """Load a target checkpoint folder and a draft-head folder.

    tree None: the tree `specvlm bench --tune` chose for this target on this machine, if any,
    else `TreeConfig()`.

    target None: an embedded pair (`specvlm.embedded`): `model` names it ("tiny": the world
    target and its draft; "smol": the world-smol target and its draft), None the default.
    Where the default is not shipped, a tiny random LLaVA built in code (`specvlm.tiny`), with a
    warning.
    draft None with a target folder: no draft head; generate(speculative=True) then decodes plainly.
    dtype: a torch dtype or its name ("float32", "bfloat16", "float16"); "auto" picks by the
    device (`auto_dtype`: on a CPU bfloat16 where it is native and measured faster, else
    float32); None: float32.
    assistant: instead of a draft head, a separate small model folder with the target's
    tokenizer (e.g. the embedded pair's `world-baseline`), drafting chains of `tree.depth`
    tokens re-synchronized every round (`specvlm.draft.separate`); concurrent_prefill: it reads
    its prompt on a worker thread while the target prefills. An assistant folder with a
    `specvlm_drafter.json` saying it reads events (the event drafter of `specvlm world
    train-target --config events`) drafts from each request's `events` instead.
    assistant_reads: what the assistant reads, overriding its folder: "request" (the prompt
    and images), "events", "frame" (the video's middle frame in its place) or "text" (the
    question alone); see `specvlm.draft.separate.DrafterInput`.
    A draft folder that holds a cross-modal head (`specvlm world train-target --config cross`,
    `specvlm.draft.cross`) brings its event model: each request then needs `events`;
    cross_catch_up: how the head catches up after each verification, overriding its folder:
    "target" (the target's features, item 4c) or "events" (its event model's, item 4b).
    """
    device = _device(device)
    dtype = _dtype(dtype, device)
    if target is not None and model is not None:
        raise InputError("give a target folder or an embedded model name, not both")
    if target is None:
        from specvlm import embedded

        target, shipped_draft = embedded.embedded_pair(model or embedded.DEFAULT_MODEL)
        if target is None and model is not None:
            raise InputError(f"the embedded {model!r} target is not shipped in this release")
        if target is not None:
            draft = draft or (None if assistant is not None else shipped_draft)
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
        prepare_for_inference(head, **inference_kernels(device, tgt.info.dtype))
        check_pairing(head.config, tgt.info, draft_name=f"draft {draft}")
    cross = None
    if draft is not None and is_cross_folder(draft):
        align, ccfg, events_dir = load_cross(draft, dtype=tgt.info.dtype)
        catch_up = cross_catch_up or ccfg.catch_up
        if catch_up not in ("events", "target"):
            raise InputError(f"cross_catch_up must be 'events' or 'target'; got {catch_up!r}")
        small = load_target(events_dir, device=device, dtype=dtype)
        cross = CrossParts(small, DrafterInput.of_folder(events_dir), align.to(device), catch_up)
    elif cross_catch_up is not None:
        raise InputError(f"cross_catch_up needs a cross-modal draft folder; {draft} is not one")
    helper = None if assistant is None else load_target(assistant, device=device, dtype=dtype)
    reads = None
    if assistant is not None:
        reads = DrafterInput.of_folder(assistant)
        if assistant_reads is not None:
            reads = replace(reads, reads=assistant_reads)
    elif assistant_reads is not None:
        raise InputError("assistant_reads needs a separate draft model (assistant)")
    if tree is None:  # a tree tuned for this target on this machine (specvlm bench --tune)
        from specvlm.bench.tune import load_tuned

        tree = load_tuned(tgt.info.fingerprint)
    return Engine(tgt, head, tree, Path(target), helper, concurrent_prefill, reads, cross)


def _device(value: str | torch.device) -> str:
    """A torch device this machine has, e.g. "cpu", "cuda", "cuda:1", "mps"."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {value!r}; accepted: cpu, cuda, cuda:N, mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {value!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {value!r}: MPS is not available on this machine (use cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {value!r} is not supported; accepted: cpu, cuda, cuda:N, mps")
    return str(device)


def _dtype(value: torch.dtype | str | None, device: str = "cpu") -> torch.dtype | None:
    """A torch dtype from its name; "auto": `auto_dtype(device)`; None: the target's default
    (float32)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":
        return auto_dtype(device)
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if value not in names:
        raise InputError(f"unknown dtype {value!r}; accepted: auto, {', '.join(names)}")
    return names[value]


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 / AMX, as oneDNN reports it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def auto_dtype(device: str = "cpu") -> torch.dtype:
    """The dtype by capability and speed: on a CPU without native bf16 float32; with it,
    bfloat16 only where a probe measured it at least 10% faster than float32 for decoding
    (`specvlm.dtype_probe`: once per machine, cached); on a GPU bfloat16 where supported, else
    float16."""
    kind = torch.device(device).type
    if kind == "cpu":
        if not native_bf16():
            return torch.float32
        from specvlm.dtype_probe import cpu_decoding_dtype

        return cpu_decoding_dtype()
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
