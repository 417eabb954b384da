"""Benchmark methods: each is a named way to answer a BenchItem with the same target.

A method returns a `RunResult`. New methods register a factory in `METHODS`; the runner never
changes. All methods prepare the prompt through the engine's target (same ids, same pixels),
so the only difference between them is how the tokens are decoded.

`eaglevlm` is a draft head reading every visual token; `specvlm` is a draft head with its
elastic visual compressor. One run can compare them (`BenchContext.head`): `specvlm` takes
`BenchContext.compressor_draft` when given, else the engine's draft if it has a compressor;
`eaglevlm` takes the engine's draft if it has none, else `BenchContext.plain_draft` (e.g. the
embedded draft). Both report the draft's own prefill time, its KV cache right after that prefill
(read from the drafter's cache), the image tokens the target read and the compressor gate's
choice (`DraftMeter`), and which draft they ran (`RunResult.draft`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from specvlm.api import CrossParts, Engine
from specvlm.draft.base import Drafter
from specvlm.draft.compressor import CompressorConfig, ElasticCompressor
from specvlm.draft.cross import CrossModalDrafter, is_cross_folder, load_cross
from specvlm.draft.eagle import EagleDrafter, EagleHead, check_pairing
from specvlm.draft.separate import DRAFTER_FILE, DrafterInput, SeparateDrafter
from specvlm.draft.vocab import lm_head_weight
from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.layers import inference_kernels, prepare_for_inference
from specvlm.target import load_target
from specvlm.target.base import Prefill


@dataclass
class RunResult:
    token_ids: list[int]
    text: str
    prefill_s: float  # up to the first new token
    ttft_s: float
    decode_s: float  # first token -> last token
    tau: float | None = None  # mean accepted length; None for methods that do not report it
    accept_histogram: dict[int, int] = field(default_factory=dict)
    target_forwards: int | None = None
    # the draft's own prefill (prompt + images as it reads them) and its KV cache right after it
    draft_prefill_s: float | None = None
    draft_kv_tokens: int | None = None  # committed positions in the draft's cache
    draft_kv_bytes: int | None = None  # bytes of their keys and values, all layers
    visual_tokens: int | None = None  # the target's visual tokens in the prompt, all images
    gate_choice: str | None = None  # the compressor gate's operator (select / mix), or None
    draft: dict[str, Any] | None = None  # which draft ran: `describe_draft`
    # a separate draft model's time in the rounds (reading the true tokens, drafting, rollback):
    # what a free drafter would save, for the bound
    drafting_s: float | None = None

    @property
    def seconds(self) -> float:
        return self.ttft_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, Any]]
    images: list[Path]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    video: Path | None = None  # for a target that reads video
    events: Path | None = None  # the clip's event stream, for an event drafter


class Method(Protocol):
    name: str

    def run(self, req: Request) -> RunResult: ...


@dataclass(frozen=True)
class BenchDraft:
    """A draft head for a method, and the folder it came from (None: built in memory)."""

    head: EagleHead
    folder: Path | None = None


def describe_draft(draft: BenchDraft, forced: CompressorConfig | None = None) -> dict[str, Any]:
    """What a record says of its draft: the folder, its compressor's settings (mode, operators,
    ratios, queries, seed; None = reads every visual token) and, in an ablation, the setting
    forced on that compressor at inference."""
    cfg = draft.head.config.compressor
    out: dict[str, Any] = {
        "folder": None if draft.folder is None else str(draft.folder),
        "compressor": None if cfg is None else cfg.to_dict(),
    }
    if forced is not None:
        out["forced"] = forced.to_dict()
    return out


@dataclass
class BenchContext:
    """What methods are built from.

    The two draft methods resolve their heads from the engine's draft and the folders here
    (`head`): a run can hold a plain draft for `eaglevlm` and a compressor draft for `specvlm`."""

    engine: Engine  # target (+ draft) loaded by specvlm.load
    target_dir: Path | None = None
    draft_dir: Path | None = None  # the folder of engine.draft, for the records
    plain_draft: Path | None = None  # eaglevlm's head when the engine's draft has a compressor
    compressor_draft: Path | None = None  # specvlm's head (else the engine's, if compressed)
    assistant_dir: Path | None = None  # a small separate draft model (same tokenizer)
    events_dir: Path | None = None  # an event drafter (`world train-target --config events`)
    frame_dir: Path | None = None  # `frame`'s own drafter (the same recipe, `--reads frame`)
    question_dir: Path | None = None  # `question`'s own drafter (`--reads text`)
    cross_dir: Path | None = None  # a cross-modal EAGLE head (`world train-target --config cross`)
    lookup_tokens: int = 10
    _hf: Any = None
    _loaded: dict[Path, EagleHead] = field(default_factory=dict, repr=False)

    def hf_model(self):
        """The target checkpoint as `transformers` itself loads it (for the hf-* baselines)."""
        if self._hf is None:
            from transformers import AutoModelForImageTextToText  # LLaVA or Video-LLaVA

            if self.target_dir is None:
                raise InputError("the hf-* methods need the target folder")
            self._hf = _quiet_load(AutoModelForImageTextToText, self.target_dir, self.engine)
        return self._hf

    def _load(self, folder: Path) -> EagleHead:
        if folder not in self._loaded:
            self._loaded[folder] = _load_draft(folder, self.engine)
        return self._loaded[folder]

    def head(self, method: str) -> BenchDraft:
        """The draft of `eaglevlm` (reads every visual token) or `specvlm` (has a compressor);
        InputError, saying what to give, when this context has none."""
        mine = self.engine.draft
        if method == "specvlm":
            if self.compressor_draft is not None:
                head = self._load(self.compressor_draft)
                if head.compressor is None:
                    raise InputError(
                        f"--compressor-draft {self.compressor_draft} has no elastic visual "
                        "compressor (train one with specvlm train-draft --compressor select)"
                    )
                return BenchDraft(head, self.compressor_draft)
            if mine is not None and mine.compressor is not None:
                return BenchDraft(mine, self.draft_dir)
            raise InputError(
                "method 'specvlm' needs a draft head with an elastic visual compressor (train "
                "one with specvlm train-draft --compressor select; give it with "
                "--compressor-draft DIR); the draft given has none"
            )
        if method == "eaglevlm":
            if mine is not None and mine.compressor is None:
                return BenchDraft(mine, self.draft_dir)
            if self.plain_draft is not None:
                head = self._load(self.plain_draft)
                if head.compressor is not None:
                    raise InputError(f"{self.plain_draft} has a compressor; eaglevlm needs none")
                return BenchDraft(head, self.plain_draft)
            if mine is None:
                raise InputError("method 'eaglevlm' needs a draft head (--draft)")
            raise InputError(
                "method 'eaglevlm' reads every visual token, but the draft given has an elastic "
                "visual compressor: give a draft without one with --draft and the compressor "
                "draft with --compressor-draft, or bench only method 'specvlm'"
            )
        raise InputError(f"no draft method {method!r}; accepted: eaglevlm, specvlm")

    def has(self, method: str) -> bool:
        """Whether `head(method)` finds a draft (without saying why not)."""
        try:
            self.head(method)
        except InputError:
            return False
        return True


def default_methods(names: list[str], ctx: BenchContext) -> tuple[list[str], list[str]]:
    """The default method list fitted to the drafts at hand: `specvlm` joins (after `eaglevlm`)
    when a compressor draft is given; `eaglevlm` leaves when no draft reads every token.
    Returns (names, notes saying what changed)."""
    names, notes = list(names), []
    if "specvlm" not in names and ctx.has("specvlm"):
        at = names.index("eaglevlm") + 1 if "eaglevlm" in names else len(names)
        names.insert(at, "specvlm")
    if "eaglevlm" in names and not ctx.has("eaglevlm"):
        names.remove("eaglevlm")
        notes.append("eaglevlm skipped (the draft given has a compressor; no plain draft given)")
    return names, notes


class DraftMeter:
    """A drafter that times its inner drafter's prefill (`begin`) and reads its KV cache then."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prefill_s: float | None = None
        self.kv_tokens: int | None = None
        self.kv_bytes: int | None = None
        self.visual_tokens: int | None = None
        self.choice: str | None = None

    def begin(self, prefill: Prefill, root: int, capacity: int) -> None:
        device = prefill.features.device
        _sync(device)
        start = time.perf_counter()
        self.inner.begin(prefill, root, capacity)
        _sync(device)
        self.prefill_s = time.perf_counter() - start
        cache = self.inner.cache
        self.kv_tokens = cache.length
        self.kv_bytes = sum(t[:, :, : cache.length].nbytes for t in (cache.k, cache.v))
        self.visual_tokens = prefill.visual.n_visual
        self.choice = getattr(self.inner, "choice", None)

    def propose(self, root: int, depth: int, top_k: int, budget: int):
        return self.inner.propose(root, depth, top_k, budget)

    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.inner.observe(features, next_tokens)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _MeteredEngine(Engine):
    """An engine whose drafter of the last request is a `DraftMeter` (`self.meter`), its draft
    reading images through `compressor` when given (an ablation's forced setting)."""

    meter: DraftMeter | None = None
    compressor: ElasticCompressor | None = None

    def _drafter(self) -> Drafter | None:
        if self.draft is None:
            self.meter = None
            return None
        inner = EagleDrafter(
            self.draft,
            self.target.embed,
            self.target.lm_head,
            lm_head_weight(self.target),
            compressor=self.compressor,
        )
        self.meter = DraftMeter(inner)
        return self.meter


class EngineMethod:
    """This project's decoding: `plain` (no draft), `eaglevlm` (draft head, dynamic tree) or
    `specvlm` (draft head with its elastic visual compressor). `draft`: the head to use instead
    of the engine's; `forced`: a setting forced on its compressor (ablations,
    `ElasticCompressor.override`)."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        speculative: bool,
        draft: BenchDraft | None = None,
        forced: CompressorConfig | None = None,
    ) -> None:
        if draft is None and engine.draft is not None:
            draft = BenchDraft(engine.draft)
        if speculative and draft is None:
            raise InputError(f"method {name!r} needs a draft head (--draft)")
        self.name, self.speculative = name, speculative
        head = draft.head if speculative and draft is not None else None
        self.engine = _MeteredEngine(engine.target, head, engine.tree, engine.target_dir)
        if forced is not None:
            if head is None or head.compressor is None:
                raise InputError(f"method {name!r}: a forced setting needs a compressor draft")
            self.engine.compressor = head.compressor.override(forced)
        self.draft_info = None if head is None else describe_draft(draft, forced)

    def run(self, req: Request) -> RunResult:
        media: dict[str, Any] = {} if req.video is None else {"video": req.video}
        engine = self.engine
        if engine.cross is not None or (
            engine.assistant is not None and engine.assistant_input.reads == "events"
        ):
            if req.events is None:
                raise InputError(
                    f"method {self.name!r} drafts from the clip's event stream: bench it on "
                    "items that carry one (the world-events suites)"
                )
            media["events"] = req.events
        out = self.engine.generate(
            req.messages,
            images=req.images,
            **media,
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            speculative=self.speculative,
        )
        s = out.stats
        return RunResult(
            token_ids=out.token_ids,
            text=out.text,
            prefill_s=s.prefill_s,
            ttft_s=s.ttft_s,
            decode_s=s.decode_s,
            tau=s.tau,
            accept_histogram=s.accept_histogram,
            target_forwards=s.target_forwards,
            draft=self.draft_info,
            **_meter_fields(getattr(self.engine, "meter", None) if self.speculative else None),
            **_separate_fields(getattr(self.engine, "last", None)),
        )


class AssistedMethod(EngineMethod):
    """This engine with a separate small draft model instead of a draft head: chains of
    `tree.depth` greedy tokens, re-synchronized every round (`specvlm.draft.separate`);
    `concurrent`: the draft model prefills on a worker thread while the target prefills.
    `reads` (`DrafterInput`): what the draft model reads. "request" (`assisted`): the
    `--assistant` model on the request's prompt and images, the draft model of `hf-assisted`
    in this engine's loop; "events" (`events`): the `--events-drafter` on the clip's event
    stream; "frame" (`frame`) / "text" (`question`): the `--frame-drafter` /
    `--question-drafter` (the event drafter's recipe trained on the middle frame / on nothing),
    else the `--assistant` model, on the video's middle frame / on the question alone."""

    def __init__(
        self, name: str, ctx: BenchContext, concurrent: bool, reads: str = "request"
    ) -> None:
        own = {"events": ctx.events_dir, "frame": ctx.frame_dir, "text": ctx.question_dir}
        folder = own.get(reads) or (None if reads == "events" else ctx.assistant_dir)
        if folder is None:
            what = "an event drafter (--events-drafter DIR)" if reads == "events" else (
                "a small separate draft model (--assistant DIR)"
            )  # fmt: skip
            raise InputError(f"{name} needs {what}")
        target = ctx.engine.target
        device = str(getattr(target, "device", "cpu"))
        helper = load_target(folder, device=device, dtype=target.info.dtype)
        given = DrafterInput.of_folder(folder)
        if reads == "events" and given.reads != "events":
            raise InputError(f"{folder} is not an event drafter (no {DRAFTER_FILE} saying so)")
        self.name, self.speculative = name, True
        self.engine = _MeteredAssistEngine(
            target, None, ctx.engine.tree, ctx.engine.target_dir, helper, concurrent,
            replace(given, reads=reads),
        )  # fmt: skip
        self.draft_info = {
            "assistant": str(folder),
            "reads": reads,
            "chain": ctx.engine.tree.depth,
            "concurrent_prefill": concurrent,
        }


class _MeteredAssistEngine(Engine):
    """An engine that keeps its last request's `SeparateDrafter` (`self.last`) for its times."""

    last: SeparateDrafter | None = None

    def _separate(self, *args: Any) -> SeparateDrafter:
        self.last = super()._separate(*args)
        return self.last


def _separate_fields(drafter: SeparateDrafter | None) -> dict[str, Any]:
    if drafter is None:
        return {}
    return {"draft_prefill_s": drafter.prefill_s, "drafting_s": drafter.drafting_s}


def _meter_fields(meter: DraftMeter | None) -> dict[str, Any]:
    if meter is None or meter.prefill_s is None:  # plain, or a request that ended at once
        return {}
    return {
        "draft_prefill_s": meter.prefill_s,
        "draft_kv_tokens": meter.kv_tokens,
        "draft_kv_bytes": meter.kv_bytes,
        "visual_tokens": meter.visual_tokens,
        "gate_choice": meter.choice,
    }


class CrossMethod(EngineMethod):
    """The cross-modal EAGLE head (`--cross-draft`, `specvlm.draft.cross`): its event model
    reads the clip's event stream and the question as the head's prompt; the head catches up on
    the target's features (`cross`, issue 23's item 4c) or on its event model's (`cross-events`,
    item 4b); `concurrent`: the event model and the head read that prompt on a worker thread
    while the target prefills."""

    def __init__(self, name: str, ctx: BenchContext, catch_up: str, concurrent: bool) -> None:
        folder = ctx.cross_dir
        if folder is None:
            raise InputError(f"{name} needs a cross-modal draft head (--cross-draft DIR)")
        if not is_cross_folder(folder):
            raise InputError(f"--cross-draft {folder} is not a cross-modal draft folder")
        target = ctx.engine.target
        device = str(getattr(target, "device", "cpu"))
        head = _load_draft(Path(folder), ctx.engine)
        align, _, events_dir = load_cross(folder, dtype=target.info.dtype)
        small = load_target(events_dir, device=device, dtype=target.info.dtype)
        parts = CrossParts(small, DrafterInput.of_folder(events_dir), align.to(device), catch_up)
        self.name, self.speculative = name, True
        self.engine = _MeteredCrossEngine(
            target, head, ctx.engine.tree, ctx.engine.target_dir, concurrent_prefill=concurrent,
            cross=parts,
        )  # fmt: skip
        self.draft_info = {
            "cross": str(folder),
            "reads": "events",
            "catch_up": catch_up,
            "concurrent_prefill": concurrent,
        }


class _MeteredCrossEngine(Engine):
    """An engine that keeps its last request's `CrossModalDrafter` (`self.last`) for its times."""

    last: CrossModalDrafter | None = None

    def _cross(self, *args: Any) -> CrossModalDrafter:
        self.last = super()._cross(*args)
        return self.last


def _eaglevlm(ctx: BenchContext) -> EngineMethod:
    return EngineMethod("eaglevlm", ctx.engine, speculative=True, draft=ctx.head("eaglevlm"))


def _specvlm(ctx: BenchContext) -> EngineMethod:
    return EngineMethod("specvlm", ctx.engine, speculative=True, draft=ctx.head("specvlm"))


def _load_draft(folder: Path, engine: Engine) -> EagleHead:
    """A draft head for the engine's target, prepared as `specvlm.load` prepares one."""
    target = engine.target
    device = torch.device(getattr(target, "device", "cpu"))
    head = EagleHead.load(folder, dtype=target.info.dtype).to(device)
    prepare_for_inference(head, **inference_kernels(device, target.info.dtype))
    check_pairing(head.config, target.info, draft_name=f"draft {folder}")
    return head


class _FirstTokenClock:
    """A stopping criterion that never stops: it notes when the first new token exists."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        if self.first is None:
            self.first = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class HFMethod:
    """`transformers` generate on the same checkpoint: plain, assisted, or prompt lookup."""

    def __init__(self, name: str, ctx: BenchContext, **generate_kwargs: Any) -> None:
        self.name, self.ctx, self.kwargs = name, ctx, generate_kwargs
        self.model = ctx.hf_model()

    def run(self, req: Request) -> RunResult:
        from transformers import StoppingCriteriaList

        target = self.ctx.engine.target
        if req.video is None:
            prompt = target.prepare(req.messages, req.images)
        else:
            prompt = target.prepare(req.messages, req.images, video=req.video)
        ids = prompt.input_ids[None]  # (1, T)
        sampling = {"do_sample": False}
        if req.temperature > 0:
            sampling = {
                "do_sample": True,
                "temperature": req.temperature,
                "top_p": req.top_p,
                "top_k": 0,
            }
            torch.manual_seed(req.seed)
        clock = _FirstTokenClock()
        start = time.perf_counter()
        # a text-only prompt passes no pixel_values at all: `transformers` would run the vision
        # tower on None
        pixels = {} if prompt.pixel_values is None else {"pixel_values": prompt.pixel_values}
        videos = getattr(prompt, "pixel_values_videos", None)  # a Video-LLaVA prompt's frames
        if videos is not None:
            pixels["pixel_values_videos"] = videos
        with torch.inference_mode():
            seq = self.model.generate(
                input_ids=ids,
                **pixels,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=req.max_new_tokens,
                stopping_criteria=StoppingCriteriaList([clock]),
                **sampling,
                **self.kwargs,
            )
        end = time.perf_counter()
        new = seq[0, ids.shape[1] :].tolist()
        ttft = (clock.first or end) - start
        return RunResult(
            token_ids=new,
            text=target.decode(new),
            prefill_s=ttft,
            ttft_s=ttft,
            decode_s=end - start - ttft,
        )


def _assistant(ctx: BenchContext):
    from transformers import LlavaForConditionalGeneration

    if ctx.assistant_dir is None:
        raise InputError("hf-assisted needs a small separate draft model (--assistant DIR)")
    return _quiet_load(LlavaForConditionalGeneration, ctx.assistant_dir, ctx.engine)


def _quiet_load(cls, folder, engine):
    """`cls.from_pretrained(folder)` in the engine's dtype, without `transformers`' loading bar
    (it would break the bench's own progress bar)."""
    with quiet_transformers(log=True):  # a bad checkpoint's load report stays visible
        return cls.from_pretrained(folder, dtype=engine.target.info.dtype).eval()


def _lookup(ctx: BenchContext) -> HFMethod:
    """Prompt lookup copies what followed an earlier match of the last tokens; in a LLaVA prompt
    that can be the image placeholders, and `transformers` then fails ("Image features and image
    tokens do not match"). Banning the placeholder token (`bad_words_ids`, the usual workaround)
    makes the lookup crop its candidates before it; the output is unchanged unless the model
    itself would pick the placeholder, which the identical-output check would show."""
    config = ctx.hf_model().config
    banned = [[int(config.image_token_id)]]
    if getattr(config, "video_token_id", None) is not None:  # Video-LLaVA: its placeholder too
        banned.append([int(config.video_token_id)])
    return HFMethod(
        "hf-lookup", ctx, prompt_lookup_num_tokens=ctx.lookup_tokens, bad_words_ids=banned
    )


METHODS: dict[str, Callable[[BenchContext], Method]] = {
    "plain": lambda ctx: EngineMethod("plain", ctx.engine, speculative=False),
    "eaglevlm": _eaglevlm,
    "specvlm": _specvlm,
    "assisted": lambda ctx: AssistedMethod("assisted", ctx, concurrent=False),
    "assisted-concurrent": lambda ctx: AssistedMethod("assisted-concurrent", ctx, True),
    "events": lambda ctx: AssistedMethod("events", ctx, False, "events"),
    "events-concurrent": lambda ctx: AssistedMethod("events-concurrent", ctx, True, "events"),
    "cross": lambda ctx: CrossMethod("cross", ctx, "target", False),
    "cross-concurrent": lambda ctx: CrossMethod("cross-concurrent", ctx, "target", True),
    "cross-events": lambda ctx: CrossMethod("cross-events", ctx, "events", False),
    "cross-events-concurrent": lambda ctx: CrossMethod(
        "cross-events-concurrent", ctx, "events", True
    ),  # fmt: skip
    "frame": lambda ctx: AssistedMethod("frame", ctx, False, "frame"),
    "question": lambda ctx: AssistedMethod("question", ctx, False, "text"),
    "hf-plain": lambda ctx: HFMethod("hf-plain", ctx),
    "hf-assisted": lambda ctx: HFMethod("hf-assisted", ctx, assistant_model=_assistant(ctx)),
    "hf-lookup": _lookup,
}


def build_methods(names: list[str], ctx: BenchContext) -> list[Method]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown methods {unknown}; available: {', '.join(METHODS)}")
    if "plain" not in names:
        names = ["plain", *names]  # the denominator of every speedup
    return [METHODS[n](ctx) for n in names]
