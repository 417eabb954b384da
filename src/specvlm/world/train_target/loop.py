"""The training loop: stage 1 (the vision tower alone), stage 2 (the whole LLaVA), the run.

Stage 1 (`pretrain_vision`) trains the vision tower alone on the patch labels. Stage 2
(`train_llava`) trains the whole LLaVA, one `train_step` per batch, on the answer loss plus the
auxiliary losses, until the step or time budget is used. `train_target` runs both, writing a
checkpoint (`run.Run.save`) every `ckpt_minutes` (or `ckpt_every` steps) and at the end.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from specvlm.world.train_target.config import TargetTrainConfig
from specvlm.world.train_target.data import batch_order, cached_data, collate
from specvlm.world.train_target.lora import adapters_off
from specvlm.world.train_target.losses import (
    PatchHeads,
    align_loss,
    answer_kl,
    pointer_loss,
    weighted_answer_loss,
)
from specvlm.world.train_target.model import (
    build_processor,
    llava_forward,
    normalize,
    save_model,
    vision_features,
    world_tokenizer,
)
from specvlm.world.train_target.run import (
    Run,
    check_arguments,
    on_two_threads,
    resolve_config,
    start_run,
)


def lr_at(cfg: TargetTrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr_ratio * lr over progress."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group follows the schedule's `lr`, times its own `lr_scale` where it has one."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ---------------------------------------------------------------------------------------------
# Stage 1: the vision tower alone
# ---------------------------------------------------------------------------------------------


def pretrain_vision(
    cfg: TargetTrainConfig, model, heads: PatchHeads, data: dict, progress: bool
) -> dict:
    """Stage 1: train the vision tower (and the patch heads) alone on the patch labels, so the
    features the decoder will read already say which colour and shape sits where. Returns the
    first and last loss and the patch accuracy of the last 20 steps."""
    params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(
        params, lr=cfg.vision_lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(data["images"])
    warmup = max(1, cfg.vision_pretrain_steps // 20)
    losses, accs = [], []
    bar = tqdm(
        range(cfg.vision_pretrain_steps),
        desc="vision stage",
        unit="step",
        disable=not progress,
        mininterval=2,
    )
    for step in bar:
        frac = step / max(cfg.vision_pretrain_steps, 1)
        lr = (
            cfg.vision_lr
            * min(1.0, (step + 1) / warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        )
        _set_lr(opt, lr)
        idx = torch.randint(n, (cfg.vision_batch_size,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            feats = vision_features(model, normalize(data["images"][idx]))
            loss, acc = heads(feats, data["patches"][idx].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        losses.append(loss.item())
        accs.append(acc.item())
        if (step + 1) % 100 == 0:
            print(
                f"vision step {step + 1} loss {np.mean(losses[-100:]):.4f} "
                f"patch acc {np.mean(accs[-100:]):.3f}",
                file=sys.stderr,
                flush=True,
            )
        postfix = {"loss": f"{loss.item():.3f}", "patch acc": f"{acc.item():.3f}"}
        bar.set_postfix(postfix, refresh=False)
    bar.close()
    tail = accs[-20:]
    return {
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-20:])),
        "patch_accuracy": float(np.mean(tail)),
    }


# ---------------------------------------------------------------------------------------------
# Stage 2: the whole LLaVA
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """When training ends: after `steps` or `minutes`, whichever is reached first."""

    steps: int | None
    minutes: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.minutes is None else 60.0 * self.minutes

    def progress(self, step: int, elapsed: float) -> float:
        """The fraction of the budget used (of steps or of time, whichever is further)."""
        p = [step / self.steps] if self.steps is not None else []
        p += [elapsed / self.seconds] if self.seconds is not None else []
        return max(p)


def train_step(run: Run, batch: dict, forward, blank_id: int, pointer_layer: int | None) -> dict:
    """One optimizer step of stage 2 on `batch`: answer loss plus the weighted auxiliary losses.
    Returns the losses as floats ("pointer", "align", "text_kl", "motion" and "motion_acc" None
    when not computed)."""
    cfg, model = run.cfg, run.model
    point = align = motion = motion_acc = kl = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        # Right padding under a causal mask: real tokens never see the pads, so no padding
        # mask is passed (it would force a slow attention path); pads carry no loss.
        outs = forward(model, batch["input_ids"], batch["pixel_values"], pointer_layer)
        logits, feats, projected = outs[:3]
        loss, answer = weighted_answer_loss(logits, batch["labels"], batch.get("weights"))
        if pointer_layer is not None and bool((batch["pointer"] >= 0).any()):
            point = pointer_loss(outs[3], batch["pointer"])
            loss = loss + cfg.pointer_weight * point
        if cfg.aux_weight > 0:
            aux, _ = run.heads(feats, batch["patch_labels"])
            loss = loss + cfg.aux_weight * aux
        if cfg.align_weight > 0 and projected is not None:
            embed = model.get_input_embeddings()
            rows = (batch["input_ids"] == blank_id).any(1)  # (B,) the rows `projected` holds
            align = align_loss(
                projected,
                batch["patch_words"][rows],
                embed,
                blank_id,
                cfg.align_blank_weight,
                cfg.region_scale,
                getattr(cfg, "region_words", False),  # the smol recipe's words for the region
                getattr(cfg, "band_scale", None),
            )
            loss = loss + cfg.align_weight * align
        if getattr(cfg, "text_kl", 0.0) > 0:  # the smol recipe's: text rows stay the base's
            text = ~(batch["input_ids"] == blank_id).any(1)  # (B,) rows without an image
            if bool(text.any()):
                with torch.no_grad(), adapters_off(model):
                    base = model(input_ids=batch["input_ids"][text], use_cache=False).logits
                kl = answer_kl(logits[text], base, batch["labels"][text])
                loss = loss + cfg.text_kl * kl
        if getattr(cfg, "motion_weight", 0.0) > 0:  # the video recipe's (outs[4]: its states)
            motion, motion_acc = run.trained["motion_head"](outs[4], batch["motion"])
            loss = loss + cfg.motion_weight * motion
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.trained.parameters(), cfg.clip_norm)
    run.opt.step()
    return {
        "answer": answer.item(),
        "pointer": None if point is None else point.item(),
        "align": None if align is None else align.item(),
        "motion": None if motion is None else motion.item(),
        "text_kl": None if kl is None else kl.item(),
        "motion_acc": None if motion_acc is None or motion_acc.isnan() else motion_acc.item(),
    }


class Meter:
    """Moving averages (0.98) of the losses and tokens per second since the last log line."""

    def __init__(self) -> None:
        self.ema: dict[str, float] = {}
        self.window_t, self.window_tokens = time.perf_counter(), 0

    def update(self, losses: dict, n_tok: int) -> None:
        for name, value in losses.items():
            if value is not None:
                old = self.ema.get(name)
                self.ema[name] = value if old is None else 0.98 * old + 0.02 * value
        self.window_tokens += n_tok

    def tokens_per_s(self) -> float:
        return self.window_tokens / max(time.perf_counter() - self.window_t, 1e-9)

    def log_line(self, state: dict, lr: float, per_epoch: int) -> str:
        """The periodic stderr line; starts a new tokens-per-second window."""
        extra = "" if "align" not in self.ema else f" align {self.ema['align']:.4f}"
        extra += "" if "pointer" not in self.ema else f" pointer {self.ema['pointer']:.4f}"
        extra += "" if "text_kl" not in self.ema else f" text_kl {self.ema['text_kl']:.4f}"
        if "motion" in self.ema:
            extra += f" motion {self.ema['motion']:.4f} acc {self.ema.get('motion_acc', 0):.3f}"
        line = (
            f"step {state['step']} loss {self.ema['answer']:.4f}{extra} lr {lr:.2e} "
            f"tok/s {self.tokens_per_s():.0f} elapsed {state['elapsed'] / 60:.1f}m "
            f"epoch {state['step'] / per_epoch:.2f}"
        )
        self.window_t, self.window_tokens = time.perf_counter(), 0
        return line


def _record_step(state: dict, losses: dict, n_tok: int, elapsed: float) -> None:
    state["step"] += 1
    state["tokens"] += n_tok
    state["elapsed"] = elapsed
    state["losses"].append(losses["answer"])  # the answer-token loss alone
    if losses["pointer"] is not None:  # batches with a pointed answer only
        state["pointer_losses"].append(losses["pointer"])
    if losses.get("motion") is not None:
        state.setdefault("motion_losses", []).append(losses["motion"])
    if losses.get("text_kl") is not None:  # batches with a text-only row only
        state.setdefault("text_kl_losses", []).append(losses["text_kl"])


def record_repeats(families: list[str], cfg) -> np.ndarray:
    """(N,) how many times each record comes per epoch: conversation records `cfg.qa_repeats`,
    multiturn ones `cfg.qa_repeats` times `cfg.multiturn_repeats`, multiple-choice ones
    `cfg.mc_repeats` and reasoning ones `cfg.reasoning_repeats` (1 in recipes without them)."""
    per_family = {
        "conversation": cfg.qa_repeats,
        "multiturn": cfg.qa_repeats * getattr(cfg, "multiturn_repeats", 1),
        "multiple_choice": getattr(cfg, "mc_repeats", 1),
        "reasoning": getattr(cfg, "reasoning_repeats", 1),
    }
    return np.array([per_family.get(f, 1) for f in families], dtype=np.int64)


def train_llava(
    run: Run,
    data: dict,
    tokenizer,
    budget: Budget,
    stop_at: int | None,
    ckpt_minutes: float,
    ckpt_every: int | None,
    log_every: int,
    progress: bool,
    forward_fn=llava_forward,
    double_bos: bool = True,
    show_eta: bool = False,
    order_fn=None,
) -> None:
    """Stage 2: the whole LLaVA on the answers, in batches of similar length, until `budget`
    is used or the step is `stop_at`; conversation and multiturn records come `qa_repeats`
    times per epoch, multiple-choice and reasoning ones `mc_repeats` / `reasoning_repeats`
    times (recipes that have them: `smol`); a
    batch's "weights" (from the data's "token_weights", see `data.collate`) weight the answer loss.
    Other recipes (`smol`) pass their own `forward_fn` (same signature as
    `llava_forward`), `double_bos=False` (no second <s> in front of every other record) and
    `show_eta` (the log line ends with the time left). `order_fn(epoch)` -> the epoch's batches
    (arrays of record indices) replaces the default length-grouped `batch_order`."""
    cfg, state = run.cfg, run.state
    lengths = np.array([len(s) for s in data["ids"]])
    repeats = record_repeats(data["family"], cfg)
    if order_fn is None:

        def order_fn(epoch: int) -> list[np.ndarray]:
            return batch_order(lengths, cfg.batch_size, cfg.seed, epoch, repeats)

    per_epoch = len(order_fn(0))
    run.model.train()
    forward = torch.compile(forward_fn, dynamic=True) if cfg.compile else forward_fn
    blank_id = tokenizer.convert_tokens_to_ids("<image>")
    pointer_layer = cfg.pointer_layer if cfg.pointer_weight > 0 else None
    epoch, order = -1, []
    t0 = time.perf_counter() - state["elapsed"]  # wall clock, carried over a resume

    def elapsed() -> float:
        return time.perf_counter() - t0

    last_ckpt = time.perf_counter()
    meter = Meter()
    bar = tqdm(
        total=budget.steps,
        initial=state["step"],
        desc="train-target",
        unit="step",
        disable=not progress,
        mininterval=2,
    )
    while budget.progress(state["step"], elapsed()) < 1.0 and state["step"] != stop_at:
        step = state["step"]
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = order_fn(epoch)
        idx = order[step % per_epoch]
        extra_bos = (idx + epoch) % 2 == 1 if double_bos else None
        pad_id, bos_id = tokenizer.pad_token_id, tokenizer.bos_token_id
        batch = collate(data, idx, pad_id, bos_id, extra_bos, blank_id)
        lr = lr_at(cfg, step, budget.progress(step, elapsed()))
        _set_lr(run.opt, lr)
        losses = train_step(run, batch, forward, blank_id, pointer_layer)
        n_tok = int(batch["attention_mask"].sum())
        _record_step(state, losses, n_tok, elapsed())
        meter.update(losses, n_tok)
        _show(bar, meter, lr, budget, state)
        if state["step"] % log_every == 0:
            line = meter.log_line(state, lr, per_epoch)
            if show_eta:
                line += f" eta {_eta(budget, state) / 60:.1f}m"
            print(line, file=sys.stderr, flush=True)
        due = ckpt_every is not None and state["step"] % ckpt_every == 0
        if due or time.perf_counter() - last_ckpt > 60.0 * ckpt_minutes:
            run.save()
            last_ckpt = time.perf_counter()
    bar.close()


def _eta(budget: Budget, state: dict) -> float:
    """Seconds left of `budget` at the run's mean step time so far."""
    used = budget.progress(state["step"], state["elapsed"])
    return state["elapsed"] * (1 - used) / max(used, 1e-9)


def _show(bar: tqdm, meter: Meter, lr: float, budget: Budget, state: dict) -> None:
    post = {
        "loss": f"{meter.ema['answer']:.3f}",
        "tok/s": f"{meter.tokens_per_s():.0f}",
        "lr": f"{lr:.1e}",
    }
    if budget.seconds is not None:
        post["eta"] = f"{max(budget.seconds - state['elapsed'], 0) / 60:.1f}m"
    bar.set_postfix(post, refresh=False)
    bar.update(1)


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------


@on_two_threads
def train_target(
    out: str | Path,
    config: str | TargetTrainConfig = "default",
    steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    ckpt_minutes: float = 10.0,
    ckpt_every: int | None = None,
    log_every: int = 50,
    progress: bool = True,
    stop_at: int | None = None,
    init: str | Path | None = None,
    **overrides,
) -> dict:
    """Train (or continue) a world target under `out`; return a summary dict.

    Stops after `steps` optimizer steps or `minutes` of training (whichever comes first; at least
    one must be given). Writes `out/model/` (fp16, loadable by Auto* classes) at the end.
    `stop_at` ends this call at that step without changing the schedule (an interruption that
    `resume=True` continues from; a resume must ask for the checkpoint's config).
    `init`: a trained world target's model folder (same config and tokenizer) to start the LLaVA
    stage from instead of a fresh model; the vision stage is skipped (the patch heads, not saved
    with a model, start fresh). bf16 autocast falls back to fp32 on a CPU without native bf16
    (oneDNN's check): an AVX2-only CPU emulates it, and the vision stage took ~7 s a step
    instead of ~0.25 (docs/world.md, "Which CPU").
    """
    cfg = resolve_config(config, overrides)
    out = Path(out)
    check_arguments(cfg, out, steps, minutes, resume, init)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = world_tokenizer(cfg, out)
    processor = build_processor(cfg, tokenizer)
    run = start_run(cfg, tokenizer, out, resume, init)
    data = cached_data(cfg, tokenizer, out, progress=progress)
    if run.state["vision_step"] < cfg.vision_pretrain_steps:
        # Stage 1 (minutes; not resumable midway: a stop here restarts it from scratch)
        t_start = time.perf_counter() - run.state["elapsed"]
        run.state["vision"] = pretrain_vision(cfg, run.model, run.heads, data, progress)
        run.state["vision_step"] = cfg.vision_pretrain_steps
        run.state["elapsed"] = time.perf_counter() - t_start
        run.save()
    budget = Budget(steps, minutes)
    train_llava(
        run, data, tokenizer, budget, stop_at, ckpt_minutes, ckpt_every, log_every, progress
    )
    run.save()
    run.model.set_attn_implementation("sdpa")  # the saved model's default
    save_model(run.model.eval(), processor, out / "model")
    return summary(run.state, out)


def summary(state: dict, out: Path) -> dict:
    """Steps, time, tokens and losses of a finished run (the final loss: its last tenth, up to
    50 steps)."""
    losses = state["losses"]
    tail = losses[-max(1, min(50, len(losses) // 10)) :]
    return {
        "steps": state["step"],
        "elapsed_s": state["elapsed"],
        "tokens": state["tokens"],
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "model": str(out / "model"),
        "vision": state["vision"],
    }
