"""Train the cross-modal EAGLE head (issue 23, items 4b and 4c) online against the video target.

    specvlm world train-target --config cross --teacher runs/world-video/model \\
        --init runs/world-events/model --out runs/world-cross --minutes 20 [--resume]
    train_cross_draft("runs/x", teacher=VIDEO_TARGET, events_model=EVENT_DRAFTER, steps=300)

The head and its alignment layer (`specvlm.draft.cross`) learn from the frozen video target,
which runs inside every step (online distillation: nothing is precomputed but the target's own
answers, the same cached `teacher-*.jsonl` as the events recipe's). For each clip conversation:

- the target reads the clip's 8 frames and the conversation: its features f and, through its
  LM head, its logits at every answer position;
- the event drafter E (frozen) reads the clip's event picture and the same conversation: its
  last hidden states h (the two token sequences differ only in the visual span);
- the head reads rows (x_i, e_{i+1}) on E's positions: x_i = align(h_i) on the prompt, and
  after it (the answers, later turns) the target's f at the same token, or, for a fraction
  `events_rows` of the sequences, align(h) there too (so one head serves both catch-ups:
  "target", item 4c, and "events", item 4b);
- loss at every row whose next token is an answer token: soft cross-entropy against the
  target's logits + Smooth L1 against the target's next feature (as `specvlm train-draft`),
  plus Smooth L1 between align(h_i) and f at every text position (the alignment).

The head can start from an EagleVLM head of the same target (`init_head`, e.g. `specvlm
train-draft`'s on clip data). Checkpoints (`checkpoint.pt`, atomic, every `ckpt_minutes` and at
the end) and `resume=True` as in the other recipes; the run ends by writing `out/model/`, a
cross-modal draft folder (`specvlm.load(target=..., draft=out/model)`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from specvlm.draft.cross import CrossConfig, EventAlign, event_rows, save_cross
from specvlm.draft.eagle import EagleConfig, EagleHead, check_pairing
from specvlm.draft.separate import DrafterInput
from specvlm.errors import InputError
from specvlm.kv_cache import KVCache
from specvlm.world.language import FAMILIES
from specvlm.world.train_target.recipe import start_recipe
from specvlm.world.train_target.run import on_two_threads


@dataclass(frozen=True)
class CrossTrainConfig:
    n_clips: int = 120
    batch_size: int = 8  # conversations per step
    lr: float = 1e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    clip_norm: float = 0.5
    w_logit: float = 0.1
    w_feat: float = 1.0
    w_align: float = 1.0
    events_rows: float = 0.5  # the fraction of sequences whose rows after the prompt are E's
    seed: int = 0
    teacher_batch: int = 16
    teacher_max_new_tokens: int = 256
    bf16: bool = False  # the head trains in float32 (the recipes' start-up check reads this)


CROSS_CONFIGS: dict[str, CrossTrainConfig] = {
    "cross": CrossTrainConfig(),
    "cross-tiny": CrossTrainConfig(
        n_clips=2, batch_size=2, warmup_steps=1, teacher_batch=4, teacher_max_new_tokens=6
    ),  # fmt: skip
}


def _visual(prefill) -> tuple[int, int]:
    """(start, end) of a prompt's one picture or video (all its spans: a video's frames)."""
    spans = prefill.visual.spans
    if not spans:
        raise InputError("a cross-modal training row needs the clip (target) and its picture (E)")
    return spans[0].start, spans[-1].end


def _spans_match(a: torch.Tensor, b: torch.Tensor, span_a, span_b) -> bool:
    """The two sequences equal outside their visual spans (before and after)."""
    return torch.equal(a[: span_a[0]], b[: span_b[0]]) and torch.equal(
        a[span_a[1] :], b[span_b[1] :]
    )


def sequence_rows(target, events_model, align, conv_target, conv_events, use_events: bool):
    """One conversation's training rows: (inputs (S, d), embeds (S, d), want (S, d) the target's
    feature at each of E's positions (zeros in the picture), text (S,) bool, answer (S,) bool).
    E's positions; the target's rows are mapped onto them by the offset of the visual spans."""
    from specvlm.train.data import encode

    enc_t = encode(target, conv_target)
    with torch.no_grad():
        pre_t = target.prefill(enc_t.prompt, capacity=enc_t.prompt.input_ids.shape[0])
        enc_e = encode(events_model, conv_events)
        pre_e = events_model.prefill(enc_e.prompt, capacity=enc_e.prompt.input_ids.shape[0])
    span_t, span_e = _visual(pre_t), _visual(pre_e)
    ids_t, ids_e = enc_t.prompt.input_ids, enc_e.prompt.input_ids
    if not _spans_match(ids_t, ids_e, span_t, span_e):
        raise InputError(
            "the event drafter's conversation differs from the target's outside the visual "
            "span: their chat templates must render the same text around the picture / video"
        )
    S = ids_e.shape[0]
    shift = span_t[1] - span_e[1]  # target position = E position + shift, after the span
    index = torch.arange(S)
    index = torch.where(index >= span_e[1], index + shift, index)
    text = torch.ones(S, dtype=torch.bool)
    text[span_e[0] : span_e[1]] = False
    target_features = pre_t.features.clone()  # out of inference mode: autograd may save it
    want = target_features[index.clamp(max=target_features.shape[0] - 1)]  # (S, d)
    want[~text] = 0
    answer = enc_e.answer_mask.clone()
    assert torch.equal(answer[text], enc_t.answer_mask[index[text]]), "answer masks differ"
    pre_e = replace(pre_e, features=pre_e.features.clone(), embeds=pre_e.embeds.clone())
    features, embeds = event_rows(align, target.embed, ids_e, pre_e)  # (S, d) each, with grad
    first = int(answer.nonzero()[0]) if answer.any() else S
    inputs = features
    if not use_events:  # the target's own features from the first answer token on
        inputs = torch.cat([features[:first], want[first:]])
    return inputs, embeds, want, text, answer, features


def cross_loss(head, target, cfg: CrossTrainConfig, rows) -> tuple[torch.Tensor, float, int]:
    """Teacher-forced loss on one sequence's rows (see the module docstring)."""
    inputs, embeds, want, text, answer, aligned = rows
    S = inputs.shape[0]
    c = head.config
    cache = KVCache(1, c.num_key_value_heads, c.head_dim, S, dtype=inputs.dtype)
    pred = head(inputs[:-1], embeds[1:], torch.arange(S - 1), cache, "causal")  # (S-1, d)
    rows_ = answer[1:]  # row i predicts position i + 1
    goal = want[1:][rows_]  # (n, d)
    mine = pred[rows_]
    with torch.no_grad():
        p = torch.softmax(target.lm_head(goal).float(), -1)  # (n, V)
    logq = torch.log_softmax(target.lm_head(mine).float(), -1)
    ce = -(p * logq).sum(-1).mean()
    feat = F.smooth_l1_loss(mine.float(), goal.float())
    align = F.smooth_l1_loss(aligned[text].float(), want[text].float())
    loss = cfg.w_logit * ce + cfg.w_feat * feat + cfg.w_align * align
    agree = (logq.argmax(-1) == p.argmax(-1)).float().mean().item()
    return loss, agree, int(rows_.sum())


def _conversations(answers: dict, clip: int, family: str, frames, picture):
    """The target's and E's Conversation of one clip record (the target's own answers)."""
    from specvlm.train.data import Conversation

    turns = answers[(clip, family)]
    first = turns[0][1]
    if "<video>" not in first:
        first = "<video>\n" + first
    conv_t = Conversation(f"{clip}-{family}", [(turns[0][0], first), *turns[1:]], video=frames)
    conv_e = Conversation(
        f"{clip}-{family}",
        [(turns[0][0], first.replace("<video>", "<image>", 1)), *turns[1:]],
        images=[picture],
    )
    return conv_t, conv_e


@on_two_threads
def train_cross_draft(
    out: str | Path,
    config: str | CrossTrainConfig = "cross",
    steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    teacher: str | Path | None = None,
    events_model: str | Path | None = None,
    init_head: str | Path | None = None,
    ckpt_minutes: float = 10.0,
    log_every: int = 10,
    progress: bool = True,
    stop_at: int | None = None,
    **overrides,
) -> dict:
    """Train (or continue) the cross-modal head under `out`; write `out/model/` at the end of
    the budget; return a summary (steps, losses, elapsed_s, final_loss, model)."""
    from specvlm.target import load_target
    from specvlm.world.train_target.events import (
        EventsTrainConfig,
        clip_event_picture,
        clip_frames,
        teacher_cache,
        teacher_conversations,
    )

    cfg, out, ckpt = start_recipe(config, CROSS_CONFIGS, overrides, steps, minutes, out, resume)
    if teacher is None or not (Path(teacher) / "config.json").is_file():
        raise InputError("--config cross needs --teacher: the world video target's folder")
    if events_model is None:
        from specvlm.embedded import embedded_events_drafter

        events_model = embedded_events_drafter()
    if events_model is None or not (Path(events_model) / "config.json").is_file():
        raise InputError("--config cross needs --init: the event drafter's model folder")
    out.mkdir(parents=True, exist_ok=True)

    cache = teacher_cache(out, teacher, cfg.teacher_max_new_tokens, "train")
    answers = teacher_conversations(teacher, list(range(cfg.n_clips)), cache, cfg.teacher_batch,
                                    cfg.teacher_max_new_tokens, progress=progress)  # fmt: skip
    target = load_target(teacher)
    small = load_target(events_model)
    reads = DrafterInput.of_folder(events_model)
    if reads.reads != "events":
        raise InputError(f"--init {events_model} is not an event drafter")
    picture_cfg = EventsTrainConfig(image_size=reads.size, n_slices=reads.n_slices,
                                    sensor=reads.sensor[0])  # fmt: skip
    torch.manual_seed(cfg.seed)
    if init_head is not None:
        head = EagleHead.load(init_head)
        check_pairing(head.config, target.info, draft_name=f"--init-head {init_head}")
        if head.config.draft_vocab_size or head.compressor is not None:
            raise InputError(
                f"--init-head {init_head}: give a full-vocabulary head without a compressor"
            )
    else:
        head = EagleHead(EagleConfig.for_target(target.info))
    d_e = int(small.info.hidden_size)
    align = EventAlign(d_e, target.info.hidden_size)
    head.train()
    params = [*head.parameters(), *align.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    records = [(c, f) for c in range(cfg.n_clips) for f in FAMILIES]
    step, losses, elapsed0 = 0, [], 0.0
    if resume:
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != asdict(cfg):
            raise InputError(f"--resume: {ckpt} was trained with other settings")
        head.load_state_dict(state["head"])
        align.load_state_dict(state["align"])
        opt.load_state_dict(state["opt"])
        step, losses, elapsed0 = state["step"], state["losses"], state["elapsed_s"]
    steps_per_epoch = max(1, len(records) // cfg.batch_size)
    start = time.perf_counter()
    last_ckpt = start
    media: dict[int, tuple] = {}

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - start

    def total_steps() -> int:  # the schedule's length: --steps, or as many as the minutes allow
        if steps is not None:
            return steps
        done = max(step, 1)
        return max(done + 1, int(done * minutes * 60 / max(elapsed(), 1e-6)))

    def lr_at(s: int) -> float:
        if s < cfg.warmup_steps:
            return cfg.lr * (s + 1) / cfg.warmup_steps
        t = min(1.0, (s - cfg.warmup_steps) / max(1, total_steps() - cfg.warmup_steps))
        return cfg.lr * (
            cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        )

    def save_checkpoint() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"config": asdict(cfg), "head": head.state_dict(), "align": align.state_dict(),
                    "opt": opt.state_dict(), "step": step, "losses": losses,
                    "elapsed_s": elapsed()}, tmp)  # fmt: skip
        os.replace(tmp, ckpt)

    log = (out / "log.jsonl").open("a")
    while True:
        if steps is not None and step >= steps:
            break
        if minutes is not None and elapsed() >= minutes * 60:
            break
        if stop_at is not None and step >= stop_at:
            break
        epoch, b = divmod(step, steps_per_epoch)
        order = torch.randperm(
            len(records), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        )
        batch = [records[int(k)] for k in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        t0, loss_sum, agree_sum = time.perf_counter(), 0.0, 0.0
        for j, (clip, family) in enumerate(batch):
            if clip not in media:
                media[clip] = (
                    clip_frames("train", clip),
                    clip_event_picture("train", clip, picture_cfg),
                )
            conv_t, conv_e = _conversations(answers, clip, family, *media[clip])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + j)
            use_events = bool(torch.rand((), generator=gen) < cfg.events_rows)
            rows = sequence_rows(target, small, align, conv_t, conv_e, use_events)
            loss, agree, _ = cross_loss(head, target, cfg, rows)
            (loss / len(batch)).backward()
            loss_sum += loss.item()
            agree_sum += agree
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss_sum / len(batch))
        if step % log_every == 0 or step == 1:
            rec = {"step": step, "loss": losses[-1], "agree": agree_sum / len(batch),
                   "lr": lr_at(step - 1), "s_per_step": time.perf_counter() - t0,
                   "elapsed_min": elapsed() / 60}  # fmt: skip
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"step {step} loss {rec['loss']:.4f} agree {rec['agree']:.3f} "
                  f"elapsed {rec['elapsed_min']:.1f}m", file=sys.stderr, flush=True)  # fmt: skip
        if time.perf_counter() - last_ckpt > ckpt_minutes * 60:
            save_checkpoint()
            last_ckpt = time.perf_counter()
    log.close()
    save_checkpoint()
    finished = stop_at is None or step < stop_at
    model = None
    if finished:
        model = out / "model"
        head.eval()
        save_cross(model, head, align,
                   CrossConfig(d_e, target.info.hidden_size, catch_up="target"),
                   Path(events_model))  # fmt: skip
    return {"steps": step, "losses": losses, "elapsed_s": elapsed(),
            "final_loss": losses[-1] if losses else float("nan"), "model": model}  # fmt: skip
