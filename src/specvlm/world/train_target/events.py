"""Train the event drafter: a small world LLaVA that reads a clip's event stream (issue 23).

    specvlm world train-target --config events --teacher runs/world-video/model \\
        --out runs/world-events --minutes 30 [--resume]
    train_events_drafter("runs/x", teacher="runs/world-video/model", steps=400)    # from Python

The drafter drafts for the world video target, so it learns what that target says: for each of
the first `n_clips` train clips and each of the five clip families, the question is the video
target's (the clip record of `make_record(..., kind="video")`), and every answer is the video
target's own greedy answer to it, turn by turn (`teacher_conversations`, batched, cached in
`out/teacher-*.jsonl` as it goes, so a stopped run keeps what it generated). The drafter sees
the clip's simulated event stream (`dataset.clip_events`) as one picture of four time slices
(`events.events_to_tiles`: 128 px, 64 tokens, against the target's 8 x 65), in place of the
video. It starts from the shipped 2-layer world LLaVA (`assets/world-baseline`, --init) and
trains whole (its tower has never seen event pictures). Batches, schedule, atomic checkpoints,
`--resume` and the log are the world recipe's (`loop.train_llava`); the run ends by writing
`out/model/`, a LLaVA folder in fp16 with `specvlm_drafter.json`, which tells
`specvlm.load(assistant=...)` that it reads events and how to draw them.

The same recipe with `reads="frame"` (`--reads frame`) or `reads="text"` trains the fair
baselines: the same start, the same answers, the clip's middle frame or nothing in place of the
events, so what the event stream adds is measured against drafters trained the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from specvlm.draft.separate import DRAFTER_FILE
from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.world.language import FAMILIES, make_record
from specvlm.world.splits import split_seed, world_sample
from specvlm.world.train_target.data import encode_record
from specvlm.world.train_target.recipe import NoAuxLosses, run_recipe, start_recipe
from specvlm.world.train_target.run import on_two_threads


@dataclass(frozen=True)
class EventsTrainConfig(NoAuxLosses):
    """Data and optimisation of one event-drafter run."""

    n_clips: int = 120
    # what the drafter reads in the video's place: "events" (the event drafter), or, for the
    # fair baselines of the same recipe, "frame" (the clip's middle frame) or "text" (nothing)
    reads: str = "events"
    image_size: int = 128  # the event picture's side (the drafter's tower input)
    n_slices: int = 4  # time slices tiled in the picture (a square number)
    sensor: int = 128  # the simulated event camera's side (the world's clip resolution)
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    qa_repeats: int = 1
    seed: int = 0
    bf16: bool = True
    compile: bool = False
    teacher_batch: int = 16  # questions per batched generate of the video target
    teacher_max_new_tokens: int = 256


EVENTS_CONFIGS: dict[str, EventsTrainConfig] = {
    "events": EventsTrainConfig(),
    # for tests: a handful of clips, short teacher answers, seconds
    "events-tiny": EventsTrainConfig(
        n_clips=2,
        batch_size=4,
        warmup_steps=1,
        bf16=False,
        teacher_batch=4,
        teacher_max_new_tokens=6,
    ),  # fmt: skip
}


def drafter_settings(cfg: EventsTrainConfig) -> dict:
    """What `specvlm_drafter.json` says: the input the drafter reads and how it is drawn."""
    if cfg.reads != "events":
        return {"reads": cfg.reads}
    return {
        "reads": "events",
        "picture": "events_to_tiles",
        "size": cfg.image_size,
        "n_slices": cfg.n_slices,
        "sensor": [cfg.sensor, cfg.sensor],  # (height, width) of the camera it was trained on
    }


def clip_frames(split: str, index: int, size: int = 128) -> list:
    """The rendered frames of clip `index` of `split` (all of them; a target samples its own)."""
    from specvlm.world.clips import render_clip

    return render_clip(world_sample(split, index, "video"), size)


def clip_event_picture(split: str, index: int, cfg: EventsTrainConfig, frames=None):
    """The drafter's picture of clip `index`: its simulated events as `events_to_tiles` draws
    them (the same events `specvlm world make --kind events` writes for that clip)."""
    from specvlm.world.dataset import clip_events
    from specvlm.world.events import events_to_tiles

    clip = world_sample(split, index, "video")
    events = clip_events(clip, split_seed(split, index), cfg.sensor, frames)
    return events_to_tiles(events, cfg.sensor, cfg.sensor, cfg.image_size, cfg.n_slices)


def clip_picture(split: str, index: int, cfg: EventsTrainConfig):
    """What the drafter sees of clip `index` (`cfg.reads`): its event picture, its middle
    frame (the frame `DrafterInput("frame")` takes from the request's video), or None."""
    if cfg.reads == "text":
        return None
    if cfg.reads == "frame":
        from specvlm.media import load_video

        return load_video(clip_frames(split, index, cfg.image_size), 2)[-1]
    return clip_event_picture(split, index, cfg)


# ---- the video target's own answers ---------------------------------------------------------
def teacher_conversations(
    teacher: str | Path,
    clips: list[int],
    cache: Path,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    split: str = "train",
    progress: bool = True,
) -> dict[tuple[int, str], list[tuple[str, str]]]:
    """{(clip, family): [(role, text), ...]} for every clip in `clips` and every family: the
    clip record's questions, each answered by the video target `teacher` (greedy, turn by
    turn: a later question follows the target's own earlier answers). Batched `transformers`
    generation with left padding; `cache` (JSONL, one line a clip) keeps finished clips, so a
    stopped run resumes where it was."""
    from transformers import AutoModelForImageTextToText

    from specvlm.target import load_target

    done: dict[tuple[int, str], list[tuple[str, str]]] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a stop: that clip is made again
                continue
            for family, turns in row["families"].items():
                done[(row["clip"], family)] = [tuple(t) for t in turns]
    todo = [c for c in clips if any((c, f) not in done for f in FAMILIES)]
    if not todo:
        return done
    target = load_target(teacher)
    if "video" not in getattr(target, "modalities", ()):
        raise InputError(f"--teacher {teacher} does not read video; give the world video target")
    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(teacher, dtype=torch.float32).eval()
    pad = target.tokenizer.pad_token_id
    eos = target.tokenizer.eos_token_id
    chunk = max(1, 64 // len(FAMILIES))  # clips generated together, then written
    bar = tqdm(total=len(todo), desc="teacher answers", unit="clip", disable=not progress)
    start = time.perf_counter()
    with cache.open("a") as fh:
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            frames = {c: clip_frames(split, c) for c in part}
            convs = {
                (c, f): [
                    ("user" if t["from"] == "human" else "assistant", t["value"])
                    for t in make_record(split, c, f, kind="video")["conversations"]
                ]
                for c in part
                for f in FAMILIES
            }
            n_turns = max(len(t) for t in convs.values())
            for k in range(n_turns):
                asked = [key for key, t in convs.items() if k < len(t) and t[k][0] == "assistant"]
                prompts = {
                    key: target.prepare(
                        [{"role": r, "content": x} for r, x in convs[key][:k]],
                        [],
                        video=frames[key[0]],
                    )
                    for key in asked
                }
                asked.sort(key=lambda key: int(prompts[key].input_ids.shape[0]))
                for b in range(0, len(asked), batch_size):
                    keys = asked[b : b + batch_size]
                    texts = _generate(model, [prompts[key] for key in keys], pad, eos,
                                      max_new_tokens, target.decode)  # fmt: skip
                    for key, text in zip(keys, texts, strict=True):
                        convs[key][k] = ("assistant", text)
            for c in part:
                fams = {f: convs[(c, f)] for f in FAMILIES}
                fh.write(json.dumps({"clip": c, "families": fams}) + "\n")
                fh.flush()
                done.update({(c, f): t for f, t in fams.items()})
            bar.update(len(part))
    bar.close()
    print(f"teacher answers: {len(todo)} clips in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    return done


def teacher_cache(folder: Path, teacher: str | Path, max_new_tokens: int, split: str) -> Path:
    """Where `teacher_conversations` keeps its answers in `folder`: named by what they depend
    on, the same for the events recipe and `write_teacher_data`, so one copy serves both."""
    key = hashlib.sha1(
        json.dumps([str(Path(teacher).resolve()), max_new_tokens, split]).encode()
    ).hexdigest()[:10]
    return Path(folder) / f"teacher-{key}.jsonl"


def write_teacher_data(
    data: str | Path,
    teacher: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: bool = True,
) -> Path:
    """Next to a clip data set (`specvlm world make --kind video`'s data.jsonl), write
    data-teacher.jsonl: the same rows with every answer the video target `teacher`'s own
    (`teacher_conversations`, cached beside it), for `specvlm train-draft` on that target."""
    data = Path(data)
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    if not rows or any(r.get("meta", {}).get("kind") != "video" for r in rows):
        raise InputError(f"{data}: --teacher needs clip rows (world make --kind video)")
    split = rows[0]["meta"]["split"]
    clips = sorted({r["meta"]["index"] for r in rows})
    cache = teacher_cache(data.parent, teacher, max_new_tokens, split)
    answers = teacher_conversations(teacher, clips, cache, batch_size, max_new_tokens, split,
                                    progress)  # fmt: skip
    out = data.parent / "data-teacher.jsonl"
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for r in rows:
            turns = answers[(r["meta"]["index"], r["meta"]["family"])]
            own = [{"from": "human" if role == "user" else "gpt", "value": text}
                   for role, text in turns]  # fmt: skip
            fh.write(json.dumps({**r, "conversations": own}) + "\n")
    os.replace(tmp, out)
    return out


def _generate(model, prompts: list, pad: int, eos: int | None, max_new: int, decode) -> list[str]:
    """Greedy answers to prompts of one video each, in one left-padded `generate` call."""
    T = max(int(p.input_ids.shape[0]) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)  # (B, T) left-padded
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for b, p in enumerate(prompts):
        n = int(p.input_ids.shape[0])
        ids[b, T - n :], mask[b, T - n :] = p.input_ids, 1
    videos = torch.cat([p.pixel_values_videos for p in prompts])  # (B, F, 3, H, W)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values_videos=videos, do_sample=False,
            max_new_tokens=max_new, pad_token_id=pad, eos_token_id=eos,
        )  # fmt: skip
    texts = []
    for row in out[:, T:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(decode([t for t in row if t != pad]).strip())
    return texts


# ---- data and the run ------------------------------------------------------------------------
def build_events_data(
    cfg: EventsTrainConfig, tokenizer, answers: dict, progress: bool = True
) -> dict:
    """Pictures and (ids, mask, clip, family) rows, as `loop.train_llava` reads them: the
    video target's conversations with the event picture (or the middle frame: `cfg.reads`) in
    place of the video; "text": the conversations without it (the picture rows stay blank and
    unread)."""
    if cfg.reads not in ("events", "frame", "text"):
        raise InputError(f"the drafter reads events, frame or text; got {cfg.reads!r}")
    n, size = cfg.n_clips, cfg.image_size
    pictures = np.zeros((n, size, size, 3), dtype=np.uint8)
    n_tokens = (size // 16) ** 2  # the world tower's patches (its CLS dropped)
    kind = "text" if cfg.reads == "text" else "image"
    ids, masks, clip, family = [], [], [], []
    for i in tqdm(range(n), desc=f"{cfg.reads} pictures", disable=not progress, mininterval=5):
        picture = clip_picture("train", i, cfg)
        if picture is not None:
            pictures[i] = np.asarray(picture.convert("RGB").resize((size, size)))
        for f in FAMILIES:
            turns = answers[(i, f)]
            first = turns[0][1].replace("<video>", "<image>", 1)
            conv = [{"from": "human" if r == "user" else "gpt", "value": x}
                    for r, x in [(turns[0][0], first), *turns[1:]]]  # fmt: skip
            a, m = encode_record({"conversations": conv}, tokenizer, n_tokens, kind)
            ids.append(torch.from_numpy(a.astype(np.int16)))
            masks.append(torch.from_numpy(m))
            clip.append(i)
            family.append(f)
    return {
        "images": torch.from_numpy(pictures),  # (N, H, W, 3) uint8
        "patches": torch.zeros((n, 1, 1), dtype=torch.int8),  # no patch-label loss here
        "patch_words": torch.zeros((n, 1, 1), dtype=torch.int8),  # no alignment loss here
        "family": family,
        "ids": ids,
        "masks": masks,
        "scene": torch.tensor(clip),
    }


@on_two_threads
def train_events_drafter(
    out: str | Path,
    config: str | EventsTrainConfig = "events",
    steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    teacher: str | Path | None = None,
    ckpt_minutes: float = 10.0,
    log_every: int = 10,
    progress: bool = True,
    stop_at: int | None = None,
    **overrides,
) -> dict:
    """Train (or continue) the event drafter under `out`; write `out/model/` at the end of the
    budget; return a summary. `teacher`: the world video target whose answers it learns
    (required); `init`: the LLaVA to start from (default: the shipped 2-layer world LLaVA).
    `stop_at` ends this call at that step (`resume=True` continues)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    cfg, out, ckpt = start_recipe(config, EVENTS_CONFIGS, overrides, steps, minutes, out, resume)
    if teacher is None:
        raise InputError("--config events needs --teacher: the world video target's folder")
    if not (Path(teacher) / "config.json").is_file():
        raise InputError(f"--teacher {teacher} is not a model folder (no config.json)")
    if init is None:
        from specvlm.embedded import embedded_baseline

        init = embedded_baseline()
        if init is None:
            raise InputError("no world LLaVA to start from: give --init FOLDER")
    out.mkdir(parents=True, exist_ok=True)

    cache = teacher_cache(out, teacher, cfg.teacher_max_new_tokens, "train")
    answers = teacher_conversations(
        teacher, list(range(cfg.n_clips)), cache, cfg.teacher_batch, cfg.teacher_max_new_tokens,
        progress=progress,
    )  # fmt: skip
    with quiet_transformers():
        model = LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(init)
    teacher_vocab = AutoTokenizer.from_pretrained(teacher).get_vocab()
    if tokenizer.get_vocab() != teacher_vocab:
        raise InputError(
            f"--init {init} and --teacher {teacher} have different tokenizers; a drafter must "
            "share its target's token ids"
        )
    data = build_events_data(cfg, tokenizer, answers, progress)
    result = run_recipe(
        cfg, model, torch.nn.ModuleDict({"model": model}), data, tokenizer,
        name="event drafter", out=out, ckpt=ckpt, init=init, files_from=Path(init),
        steps=steps, minutes=minutes, resume=resume, stop_at=stop_at,
        ckpt_minutes=ckpt_minutes, log_every=log_every, progress=progress,
    )  # fmt: skip
    if result["model"] is not None:
        tmp = out / "model" / (DRAFTER_FILE + ".tmp")
        tmp.write_text(json.dumps(drafter_settings(cfg), indent=1) + "\n")
        os.replace(tmp, out / "model" / DRAFTER_FILE)
    return result
