"""Online-logit distillation of an EagleVLM draft head (SpecVLM's training protocol).

Every step runs the frozen target on the batch's conversations (images included) and trains the
draft, teacher-forced on the target's real features, to predict the next feature:

    loss = w_logit * CE(softmax(target logits), draft logits) + w_feat * SmoothL1(f^, f)

on rows that predict an answer token. Nothing the target computes is stored.

With an elastic visual compressor (`TrainConfig.compressor`, `specvlm.draft.compressor`) it
trains jointly with the head: each sequence's images become the compressor's tokens, paired with
target features and numbered on the draft's own positions, by the same call the decoder makes
(`draft_rows`); in select mode the gate reads the target's feature at the last prompt token and
picks one operator by Gumbel-softmax (straight-through; the noise seeded by step and row, so
resume is exact), and its choices are logged per task family (`"gate"` in train_log.jsonl).

With a reduced draft vocabulary (`draft_vocab` N > 0, `specvlm.draft.vocab`) the map d2t is
counted first, on the answer tokens of the training data (the target's own greedy answers under
`regenerate`), and the CE runs over those N tokens: the target's distribution restricted to d2t
and renormalised, softmax(target logits[d2t]), as EAGLE-3 does. That is the distribution the
draft can act on: its proposals are always in d2t, so what it must learn is the target's ranking
among them; an explicit bucket for the mass outside d2t would train a class it can never propose.

Runs on one process or under `torchrun --nproc_per_node N` (DistributedDataParallel; gloo on CPU,
nccl on GPU): the global batch is split evenly across ranks and gradients are averaged, so the
result matches a single process with the same global batch.

Before the first step every row is tokenized once with its images, and rows the target cannot
take (an image that cannot be read, a conversation longer than the context) are skipped and
counted like malformed rows, or stop the run naming FILE:LINE under on_bad_row="stop".
`resume=True` continues only with the settings the checkpoint was trained with (the
bookkeeping ones, RESUME_FREE, may change; so may `epochs` under the constant schedule), and the
log is cut back to the checkpoint's step. The finished head is swapped in with its config.json
last, so the folder never pairs a config with other weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from specvlm.config import check_seed
from specvlm.draft.compressor import CompressorConfig
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.draft.vocab import count_tokens, coverage, lm_head_weight, top_n_map
from specvlm.errors import DataError, ImageError, InputError, PromptError
from specvlm.kv_cache import KVCache
from specvlm.target import Target, load_target
from specvlm.target.base import VisualLayout
from specvlm.train.data import (
    Conversation,
    LoadReport,
    check_modalities,
    encode,
    read_conversations,
    tokenize_conversation,
)

# settings that may differ on --resume: they change what is logged and saved, not the weights
RESUME_FREE = frozenset({"checkpoint_every", "eval_every", "eval_n", "eval_max_new_tokens"})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 8  # global: conversations per optimizer step, over all processes
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "cosine"
    warmup_steps: int = 0
    grad_clip: float = 0.5
    w_logit: float = 0.1
    w_feat: float = 1.0
    feature_noise: float = 0.0  # uniform noise U(-a, a) on the input features
    precision: str = "fp32"  # or "bf16" (autocast for the draft)
    checkpoint_every: int = 50
    eval_every: int = 0  # steps; 0 = only at the end (when eval data is given)
    eval_n: int = 16
    eval_max_new_tokens: int = 64
    regenerate_max_new_tokens: int = 256  # per answer, with --regenerate
    draft_vocab: int = 0  # N > 0: the draft scores the target's N most frequent answer tokens
    compressor: CompressorConfig | None = None  # what the draft reads of images; None = all
    seed: int = 0

    def __post_init__(self) -> None:
        positive = (
            "epochs",
            "batch_size",
            "checkpoint_every",
            "eval_n",
            "eval_max_new_tokens",
            "regenerate_max_new_tokens",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for name in (
            "lr",
            "beta1",
            "beta2",
            "weight_decay",
            "grad_clip",
            "w_logit",
            "w_feat",
            "feature_noise",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0 or self.feature_noise < 0 or self.grad_clip < 0:
            raise InputError("lr must be > 0; feature_noise and grad_clip must be >= 0")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise InputError("warmup_steps and eval_every must be >= 0")
        if isinstance(self.draft_vocab, bool) or not isinstance(self.draft_vocab, int):
            raise InputError(f"draft_vocab must be an integer, got {self.draft_vocab!r}")
        if self.draft_vocab < 0:
            raise InputError(
                f"draft_vocab must be >= 0 (0 = full vocabulary), got {self.draft_vocab}"
            )
        if not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        check_seed(self.seed)
        if self.compressor is not None and not isinstance(self.compressor, CompressorConfig):
            raise InputError(f"compressor must be a CompressorConfig, got {self.compressor!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training settings {unknown}; accepted: {sorted(known)}")
        if data.get("compressor") is not None:
            data = {**data, "compressor": CompressorConfig.from_dict(data["compressor"])}
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (train_config.json, checkpoints' state.json)."""
        data = asdict(self)
        data["compressor"] = None if self.compressor is None else self.compressor.to_dict()
        return data


def distill_loss(
    head: torch.nn.Module,
    target: Target,
    features: torch.Tensor,
    embeds: torch.Tensor,
    answer_mask: torch.Tensor,
    cfg: TrainConfig,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Teacher-forced loss on one sequence. features, embeds (S, d); answer_mask (S,).

    Draft row i reads (f_i, e_{i+1}) and predicts f_{i+1}; rows whose next position is an answer
    token count. Returns (loss, top-1 agreement with the target, rows counted).

    With a reduced draft vocabulary the CE is over its N tokens (the target renormalised on
    them), and agreement still compares with the target's top-1 over its whole vocabulary.
    """
    S = features.shape[0]
    bare = head.module if hasattr(head, "module") else head  # under DDP: the EagleHead
    config = bare.config
    cache = KVCache(1, config.num_key_value_heads, config.head_dim, S, dtype=features.dtype)
    inputs = features[:-1] if noise is None else features[:-1] + noise
    pred = head(inputs, embeds[1:], torch.arange(S - 1), cache, "causal")  # (S-1, d)
    rows = answer_mask[1:]  # (S-1,) row i predicts position i+1
    want = features[1:][rows]  # (n, d)
    mine = pred[rows].to(want.dtype)  # (n, d)
    d2t = bare.d2t  # (N,) or None
    with torch.no_grad():
        target_logits = target.lm_head(want).float()  # (n, V)
    if d2t is None:
        p = torch.softmax(target_logits, -1)  # (n, V) target distribution
        logq = torch.log_softmax(target.lm_head(mine).float(), -1)  # (n, V)
        draft_top = logq.argmax(-1)  # (n,) target ids
    else:
        p = torch.softmax(target_logits[:, d2t], -1)  # (n, N) restricted to d2t, renormalised
        weight = lm_head_weight(target)
        if weight is not None:
            logits = F.linear(mine, bare.lm_rows(weight))  # (n, N): the draft vocabulary's rows
        else:  # a target without a plain weight: the full product, sliced
            logits = target.lm_head(mine)[:, d2t]  # (n, N)
        logq = torch.log_softmax(logits.float(), -1)  # (n, N)
        draft_top = d2t[logq.argmax(-1)]  # (n,) target ids
    ce = -(p * logq).sum(-1).mean()
    loss = cfg.w_logit * ce + cfg.w_feat * F.smooth_l1_loss(pred[rows].float(), want.float())
    agree = (draft_top == target_logits.argmax(-1)).float().mean().item()
    return loss, agree, int(rows.sum())


def answer_token_counts(
    target: Target, convs: list[Conversation], rank: int = 0, world: int = 1
) -> torch.Tensor:
    """(V,) int64: how often each target id is an answer token of `convs` (all processes)."""

    def answers():  # each process its share
        for i in range(rank, len(convs), world):
            enc = encode(target, convs[i])
            yield enc.prompt.input_ids[enc.answer_mask]  # (n,) the answer tokens, EOS included

    counts = count_tokens(answers(), target.info.vocab_size)
    if world > 1:
        shared = counts.cuda() if dist.get_backend() == "nccl" else counts  # nccl: GPU only
        dist.all_reduce(shared)
        counts = shared.cpu()
    return counts


def target_sequence(target: Target, conv: Conversation) -> tuple[torch.Tensor, ...]:
    """The frozen target over one conversation: features, input embeddings, answer mask."""
    return target_item(target, conv)[:3]


def target_item(
    target: Target, conv: Conversation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, VisualLayout]:
    """`target_sequence` plus where the conversation's visual tokens sit (the prefill's spans,
    as the decoding loop's drafter gets them)."""
    enc = encode(target, conv)
    pre = target.prefill(enc.prompt, capacity=enc.prompt.input_ids.shape[0])
    mask = enc.answer_mask.to(pre.features.device)
    return pre.features.clone(), pre.embeds.clone(), mask, pre.visual


def draft_rows(
    head: EagleHead,
    features: torch.Tensor,
    embeds: torch.Tensor,
    answer_mask: torch.Tensor,
    layout: VisualLayout,
    gumbel: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]:
    """The draft's rows for one sequence (S, d) -> features, embeds (S', d), answer mask (S',)
    and the gate's choice: the images compressed as `EagleDrafter.begin` does in decoding (the
    gate reads the target's feature at the last prompt token, the one before the first answer
    token). Without a compressor the rows are the target's as they are."""
    if head.compressor is None or not layout.spans:
        return features, embeds, answer_mask, None
    answers = answer_mask.nonzero()
    last_prompt = int(answers[0]) - 1 if answers.numel() else features.shape[0] - 1
    rows = head.compressor(
        embeds, (features,), layout, gate_feature=features[last_prompt], gumbel=gumbel
    )
    source = rows.source  # (S',) prompt position of a text row, -1 for a compressed token
    mask = torch.zeros_like(source, dtype=torch.bool)
    mask[source >= 0] = answer_mask[source[source >= 0]]  # answers are text: kept as they are
    return rows.features[0], rows.embeds, mask, rows.choice


# ---- distributed helpers ------------------------------------------------------------------
def _dist_setup() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ or dist.is_initialized():
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        return rank, world, torch.device("cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = (
        torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        if cuda
        else torch.device("cpu")
    )
    return rank, dist.get_world_size(), device


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- checkpoints --------------------------------------------------------------------------
def _save_checkpoint(out: Path, head: EagleHead, opt, sched, step: int, meta: dict) -> None:
    """Write checkpoints/step-N, then atomically point checkpoints/latest at it."""
    from safetensors.torch import save_file

    root = out / "checkpoints"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        k: (v.float() if v.is_floating_point() else v).detach().contiguous()  # d2t stays int64
        for k, v in head.state_dict().items()
    }
    save_file(state, str(tmp / "head.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    final = root / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _init_weights(init: str | Path) -> Path:
    weights = Path(init) / "model.safetensors"
    if not weights.is_file():
        raise InputError(
            f"--init {init}: not a draft folder (expected config.json and model.safetensors, "
            "as specvlm train-draft writes)"
        )
    return weights


def initial_head(init: str | Path, config: EagleConfig) -> EagleHead:
    """The trained head in `init`, checked to be the head `config` describes. Its target
    fingerprint may differ (starting a new target version from an older one's head is the point),
    and so may its draft vocabulary: the map only picks which rows of the target's LM head are
    scored, no weight depends on it, so each run counts its own."""
    _init_weights(init)
    start = EagleHead.load(init)
    free = ("target", "draft_vocab_size")
    mine, theirs = asdict(start.config), asdict(config)
    diffs = [f"{k} {mine[k]!r} (this run: {theirs[k]!r})" for k in theirs
             if k not in free and mine[k] != theirs[k]]  # fmt: skip
    if diffs:
        raise InputError(
            f"--init {init}: that draft is not the head this run builds: {'; '.join(diffs)}. "
            "Start from a draft of the same shape and compressor, or train without --init"
        )
    return start


def _latest_checkpoint(out: Path) -> Path:
    root = out / "checkpoints"
    if not (root / "latest").is_file():
        raise InputError(f"--resume: no checkpoint in {root}; start without --resume")
    return root / (root / "latest").read_text().strip()


def _checkpoint_state(out: Path) -> dict[str, Any]:
    """state.json of the latest checkpoint: its step and the settings it was trained with."""
    state = json.loads((_latest_checkpoint(out) / "state.json").read_text())
    if "config" not in state and (out / "train_config.json").is_file():  # older checkpoints
        state["config"] = json.loads((out / "train_config.json").read_text())
    return state


def _check_resume(state: dict[str, Any], cfg: TrainConfig, settings: dict[str, Any]) -> None:
    """Refuse to resume with settings other than the checkpoint's, naming what differs."""
    diffs = []
    old_cfg = state.get("config", {})
    if "config" in state:  # a checkpoint from before the compressor read every visual token
        old_cfg = {"compressor": None, **old_cfg}
    for name, new in cfg.to_dict().items():
        if name in RESUME_FREE or name not in old_cfg or old_cfg[name] == new:
            continue
        if name == "epochs" and cfg.schedule == "constant" == old_cfg.get("schedule"):
            continue  # the constant schedule and the data order do not depend on the run length
        diffs.append(f"--{name.replace('_', '-')} {old_cfg[name]} (now {new})")
    for key, new in settings.items():
        if key not in state or state[key] == new or key in ("data", "target"):
            continue  # folders may move: their contents are compared
        if key == "data_sha256":
            diffs.append(f"--data: {state.get('data')} had other contents than {settings['data']}")
        elif key == "target_fingerprint":
            diffs.append(f"--target: {state.get('target')} was another model")
        elif key == "init_sha256":
            diffs.append("--init: the checkpoint started from another draft (or none)")
        else:
            diffs.append(f"{key} {state[key]} (now {new})")
    old_data = state.get("data") if "data_sha256" not in state else None  # before the hash
    if old_data is not None and Path(old_data).resolve() != Path(settings["data"]).resolve():
        diffs.append(f"--data {state['data']} (now {settings['data']})")
    if diffs:
        raise InputError(
            "--resume: the checkpoint was trained with other settings: "
            + "; ".join(diffs)
            + ". Resume with the same settings, or train into a new --out"
        )


def _load_checkpoint(out: Path, head: EagleHead, opt, sched) -> int:
    from safetensors.torch import load_file

    folder = _latest_checkpoint(out)
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    states = torch.load(folder / "optim.pt", weights_only=True)
    opt.load_state_dict(states["optimizer"])
    sched.load_state_dict(states["scheduler"])
    return int(json.loads((folder / "state.json").read_text())["step"])


def _cut_log(path: Path, step: int) -> None:
    """Keep the log's records up to `step` (a killed run logged steps past its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if record.get("step", 0) < step or (
            record.get("step") == step and "final_eval_tau" not in record
        ):
            kept.append(line + "\n")
    _write_atomic(path, "".join(kept))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_final(head: EagleHead, out: Path) -> None:
    """Write the draft folder's model.safetensors and config.json without a torn pair.

    Both are written aside first; config.json goes last, and the old one is removed before the
    weights are swapped in, so a kill at any moment leaves the old pair, a folder that says it
    has no config, or the new pair."""
    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    head.save(tmp)
    (out / "config.json").unlink(missing_ok=True)
    os.replace(tmp / "model.safetensors", out / "model.safetensors")
    os.replace(tmp / "config.json", out / "config.json")
    shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_out(out: Path) -> None:
    """Create the output folder and make sure it can be written, before any work."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(f"cannot write into --out {out}: {e.strerror or e}") from None


def _lr_lambda(cfg: TrainConfig, total: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _gumbel(head: EagleHead, seed: int) -> torch.Tensor | None:
    """Gumbel noise (K,) for a select-mode gate, seeded by step and row (exact resume)."""
    comp = head.compressor
    if comp is None or comp.config.mode != "select":
        return None
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    u = torch.rand(len(comp.config.operators), generator=gen).clamp_(1e-10, 1.0)
    return -torch.log(-torch.log(u))


# ---- rows the target cannot take ------------------------------------------------------------
_ENCODE_PROBLEMS = ((ImageError, "unreadable image"), (PromptError, "longer than the context"))


def drop_unusable_rows(
    target: Target,
    convs: list[Conversation],
    report: LoadReport,
    on_bad_row: str = "skip",
    rank: int = 0,
    world: int = 1,
) -> list[Conversation]:
    """Tokenize every row with its images (each process its share); skip and count in `report`
    the rows the target cannot take, or raise DataError naming FILE:LINE of the first."""
    bad: list[tuple[int, str, str]] = []  # (index, reason, message)
    for i in range(rank, len(convs), world):
        conv = convs[i]
        check_modalities(target, conv)  # a video row for an image target: the wrong target
        try:
            tokenize_conversation(target, conv)
        except InputError as e:
            reason = next((r for kind, r in _ENCODE_PROBLEMS if isinstance(e, kind)), "unusable")
            bad.append((i, reason, str(e)))
    if world > 1:
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, bad)
        bad = sorted(b for shard in shards for b in shard)
    if bad and on_bad_row == "stop":
        i, _, message = bad[0]
        raise DataError(f"{convs[i].source or 'row ' + repr(convs[i].id)}: {message}")
    for _, reason, _ in bad:
        report.skipped[reason] += 1
    dropped = {i for i, _, _ in bad}
    kept = [c for i, c in enumerate(convs) if i not in dropped]
    report.kept = len(kept)
    if not kept:
        raise DataError(f"no usable rows ({report.summary()})")
    return kept


# ---- evaluation ---------------------------------------------------------------------------
def evaluate_tau(target: Target, head: EagleHead, convs: list[Conversation], max_new: int) -> float:
    """Mean τ of real speculative decoding on each conversation's first question (greedy)."""
    from specvlm.api import Engine

    engine = Engine(target, head)
    taus = []
    for conv in convs:
        first = next(text for role, text in conv.turns if role == "user")
        images, video = conv.media(first)
        out = engine.generate(first, images=images, max_new_tokens=max_new, **video)
        taus.append(out.stats.tau)
    return sum(taus) / len(taus)


# ---- regenerated answers ------------------------------------------------------------------
def regenerate_answers(
    target: Target, convs: list[Conversation], max_new_tokens: int = 256, progress: bool = False
) -> list[Conversation]:
    """Replace every answer by the target's own greedy answer, turn by turn."""
    from tqdm import tqdm

    from specvlm.config import SamplingConfig, TreeConfig
    from specvlm.decoding.loop import decode
    from specvlm.decoding.stats import SpecStats

    out = []
    for conv in tqdm(convs, desc="regenerate", unit="conv", disable=not progress, mininterval=2):
        turns = list(conv.turns)
        for k, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            messages = [{"role": r, "content": t} for r, t in turns[:k]]
            text = target.render_chat(messages, add_generation_prompt=True)
            images, video = conv.media(text)
            prompt = target.tokenize(text, images, *video.values())
            ids = [
                t
                for new in decode(
                    target,
                    prompt,
                    drafter=None,
                    max_new_tokens=max_new_tokens,
                    sampling=SamplingConfig(),
                    tree=TreeConfig(),
                    stats=SpecStats(),
                )
                for t in new
            ]
            turns[k] = ("assistant", target.decode(ids).strip())
        out.append(replace(conv, turns=turns))
    return out


def _regenerated(
    target: Target,
    convs: list[Conversation],
    cache: Path,
    rank: int,
    world: int,
    max_new: int,
    progress: bool = False,
):
    """Regenerate once (sharded over processes), cached as LLaVA JSONL in the output folder.

    The cache is reused only for the same target, questions, images and token limit: a key of
    those is stored beside it (`regenerated.key`), and any difference regenerates."""
    key_file = cache.with_suffix(".key")
    key = _regeneration_key(target, convs, max_new)
    fresh = cache.is_file() and key_file.is_file() and key_file.read_text().strip() == key
    if not fresh:
        mine = regenerate_answers(target, convs[rank::world], max_new, progress and rank == 0)
        shards = [mine]
        if world > 1:
            shards = [None] * world
            dist.all_gather_object(shards, mine)
        merged: list[Conversation] = [None] * len(convs)  # type: ignore[list-item]
        for r, shard in enumerate(shards):
            merged[r::world] = shard
        if rank == 0:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            with tmp.open("w") as f:
                for c in merged:
                    row = {
                        "id": c.id,
                        **({"family": c.family} if c.family else {}),
                        "image": [str(p.resolve()) for p in c.images],
                        **({"video": str(c.video.resolve())} if c.video else {}),
                        "conversations": [
                            {
                                "from": "human"
                                if r == "user"
                                else ("gpt" if r == "assistant" else r),
                                "value": t,
                            }
                            for r, t in c.turns
                        ],
                    }
                    f.write(json.dumps(row) + "\n")
            os.replace(tmp, cache)
            key_tmp = key_file.with_suffix(".key.tmp")
            key_tmp.write_text(key + "\n")
            os.replace(key_tmp, key_file)
        _barrier()
    return read_conversations(cache, "/", "stop")[0]


def _regeneration_key(target: Target, convs: list[Conversation], max_new: int) -> str:
    """What regenerated answers depend on: the target, every prompt turn and image, the limit."""
    h = hashlib.sha256()
    h.update(json.dumps(target.info.fingerprint, sort_keys=True).encode())
    h.update(str(max_new).encode())
    for c in convs:
        prompts = [t for r, t in c.turns if r != "assistant"]
        media = [str(p.resolve()) for p in [*c.images, *([c.video] if c.video else [])]]
        h.update(json.dumps([c.id, media, prompts]).encode())
    return h.hexdigest()


# ---- the trainer --------------------------------------------------------------------------
def train_draft(
    target_dir: str | Path,
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    image_folder: str | Path | None = None,
    eval_data: str | Path | None = None,
    resume: bool = False,
    on_bad_row: str = "skip",
    regenerate: bool = False,
    head_overrides: dict[str, Any] | None = None,
    init: str | Path | None = None,
    progress: bool = True,
    log=print,
) -> EagleHead:
    """Train a draft head for the target in `target_dir`; write it to `out` (the draft folder).

    `init`: a trained draft folder to start from instead of random weights (e.g. the head of an
    earlier version of the same target); its shape and compressor must be what this run builds
    (`initial_head`); the draft vocabulary is counted on this run's data as without it.

    Everything is checked before the first step: the settings, the output folder, on resume that
    the checkpoint was trained with the same settings, and every data row."""
    rank, world, device = _dist_setup()
    out, data = Path(out), Path(data)
    if cfg.batch_size % world:
        raise InputError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    if rank == 0:
        _prepare_out(out)
    if not data.is_file():
        raise DataError(f"data file not found: {data} (expected LLaVA-format .json or .jsonl)")
    settings: dict[str, Any] = {
        "data": str(data.resolve()), "data_sha256": _sha256(data),
        "image_folder": None if image_folder is None else str(Path(image_folder).resolve()),
        "regenerate": regenerate, "head_overrides": head_overrides or {},
        "init_sha256": None if init is None else _sha256(_init_weights(init)),
    }  # fmt: skip
    state = _checkpoint_state(out) if resume else {}
    if resume and init is None:  # the checkpoint's weights replace any start: it need not be given
        settings["init_sha256"] = state.get("init_sha256")
    if resume:
        _check_resume(state, cfg, settings)
    target = load_target(target_dir, device=str(device))
    config = EagleConfig.for_target(
        target.info,
        draft_vocab_size=cfg.draft_vocab,
        compressor=cfg.compressor,
        **(head_overrides or {}),
    )
    start = None if init is None else initial_head(init, config)  # checked before any work
    settings["target"] = str(Path(target_dir).resolve())
    settings["target_fingerprint"] = hashlib.sha256(
        json.dumps(target.info.fingerprint, sort_keys=True, default=str).encode()
    ).hexdigest()
    convs, report = read_conversations(data, image_folder, on_bad_row)
    convs = drop_unusable_rows(target, convs, report, on_bad_row, rank, world)
    if rank == 0:
        log(f"data: {report.summary()}")
    if regenerate:
        convs = _regenerated(
            target,
            convs,
            out / "regenerated.jsonl",
            rank,
            world,
            cfg.regenerate_max_new_tokens,
            progress,
        )
        # the target's own answers can be longer: the rows are checked again
        convs = drop_unusable_rows(target, convs, report, on_bad_row, rank, world)
    eval_convs = []
    if eval_data:
        eval_convs = read_conversations(eval_data, None, "skip")[0][: cfg.eval_n]
        eval_convs = drop_unusable_rows(target, eval_convs, LoadReport(), "skip", 0, 1)
    settings["rows"] = len(convs)
    if resume:
        _check_resume(state, cfg, settings)
    steps_per_epoch = len(convs) // cfg.batch_size
    if steps_per_epoch == 0:
        raise InputError(f"{len(convs)} usable rows is less than one batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    if state.get("step", 0) > total:
        raise InputError(
            f"--resume: the checkpoint is at step {state['step']}, past the {total} steps of "
            f"this run (--epochs {cfg.epochs}); give more --epochs or train into a new --out"
        )

    d2t = None
    if cfg.draft_vocab:
        V = target.info.vocab_size
        if cfg.draft_vocab >= V:
            raise InputError(
                f"--draft-vocab {cfg.draft_vocab}: the target has {V} tokens; give 1..{V - 1}, "
                "or 0 for the full vocabulary"
            )
        counts = answer_token_counts(target, convs, rank, world)
        d2t = top_n_map(counts, cfg.draft_vocab)  # (N,) from the data, before any step
        if rank == 0:
            log(
                f"draft vocabulary: {cfg.draft_vocab} of {V} tokens, covering "
                f"{coverage(counts, d2t):.2%} of the {int(counts.sum())} answer tokens "
                f"({int((counts > 0).sum())} distinct)"
            )

    torch.manual_seed(cfg.seed)
    head = EagleHead(config, d2t)
    if start is not None:  # its weights; this run's map, and this target's fingerprint
        weights = {k: v for k, v in start.state_dict().items() if k != "d2t"}
        missing, unexpected = head.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - {"d2t"}:  # initial_head checked the shapes: a bug
            raise RuntimeError(f"--init {init}: weights missing {missing}, unexpected {unexpected}")
    head = head.to(device)
    model: torch.nn.Module = head
    if world > 1:
        # a compressor in select mode runs one branch per row: the others get no gradient
        model = torch.nn.parallel.DistributedDataParallel(
            head, find_unused_parameters=head.compressor is not None
        )
    opt = torch.optim.AdamW(
        head.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    step = _load_checkpoint(out, head, opt, sched) if resume else 0
    if rank == 0:
        _write_atomic(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
        if resume:
            _cut_log(out / "train_log.jsonl", step)
        else:
            (out / "train_log.jsonl").unlink(missing_ok=True)
    meta = {**settings, "world": world, "config": cfg.to_dict()}

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="train-draft", unit="step", dynamic_ncols=True)
    log_file = (out / "train_log.jsonl").open("a") if rank == 0 else None
    gate_totals: dict[str, Counter] = defaultdict(Counter)  # family -> operator -> rows
    head.train()
    while step < total:
        epoch, b = divmod(step, steps_per_epoch)
        order = torch.randperm(
            len(convs), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        )
        batch = order[b * cfg.batch_size : (b + 1) * cfg.batch_size].tolist()
        mine = batch[rank::world]
        t0, tokens, agree_sum, loss_sum = time.perf_counter(), 0, 0.0, 0.0
        gate: dict[str, Counter] = defaultdict(Counter)  # this step's choices, per family
        for j, index in enumerate(mine):
            try:
                features, embeds, mask, layout = target_item(target, convs[index])
            except InputError as e:  # checked before step 1; a template can still refuse
                raise DataError(f"{convs[index].source}: {e}") from e
            seed = (cfg.seed * 1_000_003 + step * 1009 + index) % 2**63  # any --seed fits
            tokens += features.shape[0]
            last = j == len(mine) - 1
            sync = model.no_sync() if (world > 1 and not last) else nullcontext()
            with (
                sync,
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"),
            ):
                gumbel = _gumbel(head, seed)
                features, embeds, mask, choice = draft_rows(
                    head, features, embeds, mask, layout, gumbel
                )
                noise = None
                if cfg.feature_noise > 0:
                    gen = torch.Generator().manual_seed(seed)
                    noise = torch.rand(features[:-1].shape, generator=gen) * 2 - 1
                    noise = (noise * cfg.feature_noise).to(features.device, features.dtype)
                loss, agree, n = distill_loss(model, target, features, embeds, mask, cfg, noise)
                (loss / cfg.batch_size).backward()  # DDP averages ranks: sum/global batch
            if choice is not None:
                gate[convs[index].family or "all"][choice] += 1
            agree_sum += agree
            loss_sum += loss.item()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        record = {
            "step": step,
            "epoch": epoch + 1,
            "loss": loss_sum / len(mine),
            "agree": agree_sum / len(mine),
            "lr": sched.get_last_lr()[0],
            "tokens_per_s": tokens * world / (time.perf_counter() - t0),
        }
        if gate:  # this process's rows: under torchrun, rank 0's share of the batch
            record["gate"] = {fam: dict(sorted(c.items())) for fam, c in sorted(gate.items())}
            for fam, c in gate.items():
                gate_totals[fam].update(c)
        if rank == 0:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}",
                    agree=f"{record['agree']:.2f}",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                )
            if eval_convs and cfg.eval_every and step % cfg.eval_every == 0:
                head.eval()
                record["eval_tau"] = evaluate_tau(target, head, eval_convs, cfg.eval_max_new_tokens)
                head.train()
                log(f"step {step}: eval tau {record['eval_tau']:.3f}")
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if step % cfg.checkpoint_every == 0 or step == total:
            if rank == 0:
                _save_checkpoint(out, head, opt, sched, step, meta)
            _barrier()
    if bar is not None:
        bar.close()
    head.eval()
    if rank == 0:
        _save_final(head, out)
        if eval_convs:
            tau = evaluate_tau(target, head, eval_convs, cfg.eval_max_new_tokens)
            log_file.write(json.dumps({"step": step, "final_eval_tau": tau}) + "\n")
            log(f"final eval tau {tau:.3f}")
        log_file.close()
        if gate_totals:  # rank 0's rows
            summary = "; ".join(
                f"{fam}: " + ", ".join(f"{op} {n}" for op, n in c.most_common())
                for fam, c in sorted(gate_totals.items())
            )
            log(f"compressor gate choices per task family: {summary}")
        log(f"wrote the draft head to {out}")
    _barrier()
    return head
