"""Train the world video target: the world target taught to read clips (issue 23).

    specvlm world train-target --config video --out runs/world-video --minutes 60
    specvlm world train-target --config video --out runs/world-video --minutes 60 --resume
    train_video_target("runs/x", config="video", steps=400)                   # from Python

The model starts as `world.video_target.assemble_world_video(--init, default the shipped world
target)`: a Video-LLaVA whose image and video towers are the world target's trained tower. The
towers stay frozen by default (they already see the world's shapes and colours in each frame;
`train_tower=True`, `--train-tower`, trains the video tower too, the image tower staying as it
is); the projector and the whole language model train on the answer loss over every record of the first
`n_clips` train clips (all five clip families: `make_record(split, i, family, kind="video")`;
with `drill_turns`, one drill of short questions per clip too),
each clip read as `num_frames` frames sampled uniformly (Video-LLaVA's 8; each frame 64 patch
tokens plus its CLS: 520 visual tokens). Batches, schedule, checkpoints (`checkpoint.pt`,
atomic, every `ckpt_minutes` and at the end; `resume=True` continues) and the log are the world
recipe's (`loop.train_llava`). The run ends by writing `out/model/`, a plain
`VideoLlavaForConditionalGeneration` folder in fp16.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.media import sample_frame_indices
from specvlm.world.clips import render_clip
from specvlm.world.language import ANSWERS_VERSION, FAMILIES, make_drill, make_record
from specvlm.world.splits import world_sample
from specvlm.world.train_target.data import encode_record
from specvlm.world.train_target.losses import MotionHead
from specvlm.world.train_target.patches import MOTION_SPANS, motion_labels
from specvlm.world.train_target.recipe import NoAuxLosses, run_recipe, start_recipe
from specvlm.world.train_target.run import on_two_threads
from specvlm.world.train_target.weights import weigh_answers


@dataclass(frozen=True)
class VideoTrainConfig(NoAuxLosses):
    """Data and optimisation of one world video target run."""

    n_clips: int = 2000
    num_frames: int = 8
    image_size: int = 128
    batch_size: int = 8  # records per step when clips_per_batch is 0
    # > 0: each step reads every record of this many clips and runs each clip's shared prefix
    # (template + frames) once (`shared_prefix_forward`); 0: `batch_size` records, each whole
    clips_per_batch: int = 2
    lr: float = 3e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    qa_repeats: int = 1
    # > 0: one training-only drill per clip besides its five records: up to this many short
    # questions about it in one conversation (fewer where the clip has no more to ask), every
    # third about motion (`language.make_drill`): many grounded answers per clip read, the
    # hardest questions most often
    drill_turns: int = 0
    seed: int = 0
    bf16: bool = True
    compile: bool = False
    # also train the video tower (4 layers of width 128 on 65 tokens a frame: little next to
    # the language model); the image tower, which images go through, stays as it is
    train_tower: bool = False
    # > 0: add this times the motion loss (`losses.MotionHead` on the output of language-model
    # layer `motion_layer` at every frame's patches: how the object there moved since the frame
    # before, or since its first sampled frame with `motion_span` "clip";
    # `patches.motion_labels`), a dense signal for the questions about motion
    motion_weight: float = 0.0
    motion_layer: int = 6
    # what the motion labels measure a patch's motion from: "step", the sampled frame before;
    # "clip", the first sampled frame its object is in (`patches.MOTION_SPANS`)
    motion_span: str = "step"
    # multiple choice: the option letter's weight in the answer loss (v6 gave the right content
    # 52.5% of the time and the right letter 26.2%: the letter is not looked up in the options);
    # every answer's verdict (its words after the last ", so ") weighted `verdict_weight`
    letter_weight: float = 1.0
    verdict_weight: float = 1.0


VIDEO_CONFIGS: dict[str, VideoTrainConfig] = {
    "video": VideoTrainConfig(),
    # for tests: a handful of clips, 2 frames, seconds
    "video-tiny": VideoTrainConfig(
        n_clips=3, num_frames=2, batch_size=4, clips_per_batch=1, warmup_steps=1, bf16=False
    ),
}


def _tower_trains(model) -> bool:
    """Whether the video tower is being trained (some parameter of it wants gradients)."""
    return torch.is_grad_enabled() and any(
        p.requires_grad for p in model.model.video_tower.parameters()
    )


def video_forward(
    model,
    input_ids: torch.Tensor,
    pixel_values_videos: torch.Tensor,
    pointer_layer=None,
    motion_layer: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """The Video-LLaVA forward (the video tower keeps activations only when it trains): (B, T)
    ids, (B, F, 3, H, W) frames -> logits (B, T, V), the tower's features (B * F, 1 + P, Dv)
    and the projector's output (B * F, 1 + P, d); with `motion_layer`, two more: None (no
    pointer) and that layer's output at each frame's patch tokens (B, F, P, d), the frame's CLS
    left out. Same logits as `model(input_ids=..., pixel_values_videos=...)`."""
    B, F = pixel_values_videos.shape[:2]
    with torch.set_grad_enabled(_tower_trains(model)):  # a frozen tower keeps no activations
        out = model.model.video_tower(pixel_values_videos.flatten(0, 1), output_hidden_states=True)
        feats = out.hidden_states[model.config.vision_feature_layer]  # (B * F, 1 + P, Dv)
    projected = model.model.multi_modal_projector(feats)  # (B * F, 1 + P, d)
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
    video = (input_ids == model.config.video_token_id)[..., None]  # (B, T, 1)
    embeds = embeds.masked_scatter(
        video, projected.to(embeds.dtype).reshape(B, -1, embeds.shape[-1])
    )
    want = motion_layer is not None
    out = model(inputs_embeds=embeds, use_cache=False, output_hidden_states=want)
    if not want:
        return out.logits, feats, projected
    states = _patch_states(out.hidden_states[motion_layer], video[..., 0], B, F)
    return out.logits, feats, projected, None, states


def _patch_states(hidden: torch.Tensor, video: torch.Tensor, B: int, F: int) -> torch.Tensor:
    """hidden (B, T, d) and the video-token mask (B, T) -> the states at each frame's patch
    tokens (B, F, P, d): every frame's tokens are its CLS, then its P patches."""
    return hidden[video].reshape(B, F, -1, hidden.shape[-1])[:, :, 1:]


def shared_prefix_forward(
    model,
    input_ids: torch.Tensor,
    pixel_values_videos: torch.Tensor,
    pointer_layer=None,
    motion_layer: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """`video_forward` for batches made of whole clips: consecutive rows with the same frames
    form a group whose rows share every token up to the last video token. Each group's prefix
    (template + frames, P tokens) runs once; its KV cache is copied to the group's rows, whose
    continuations run on it. Logits from position P - 1 on (every position an answer token is
    predicted from) equal `video_forward`'s; earlier ones are returned as zeros. Gradients flow
    through the shared prefix as through the separate rows it replaces, at a fraction of the
    cost (a clip's 520 visual tokens are read once for its five records, not five times).
    `motion_layer`: as in `video_forward` (each row gets its group's patch states)."""
    from transformers import DynamicCache

    B, T = input_ids.shape
    same = [torch.equal(pixel_values_videos[b], pixel_values_videos[b - 1]) for b in range(1, B)]
    group = torch.tensor([0] + same, dtype=torch.long).logical_not().cumsum(0) - 1  # (B,)
    firsts = torch.tensor([0] + [b for b in range(1, B) if not same[b - 1]])  # (G,)
    video = input_ids == model.config.video_token_id  # (B, T)
    P = int(video[0].nonzero().max()) + 1  # through the last video token
    if not bool((input_ids[:, :P] == input_ids[:1, :P]).all()):
        raise ValueError("rows of a shared-prefix batch differ before the end of their video")
    with torch.set_grad_enabled(_tower_trains(model)):  # a frozen tower keeps no activations
        out = model.model.video_tower(
            pixel_values_videos[firsts].flatten(0, 1), output_hidden_states=True
        )
        feats = out.hidden_states[model.config.vision_feature_layer]  # (G * F, 1 + Pv, Dv)
    projected = model.model.multi_modal_projector(feats)  # (G * F, 1 + Pv, d)
    embed = model.get_input_embeddings()
    prefix = embed(input_ids[firsts, :P])  # (G, P, d)
    prefix = prefix.masked_scatter(
        video[firsts, :P, None],
        projected.to(prefix.dtype).reshape(len(firsts), -1, prefix.shape[-1]),
    )
    lm = model.model.language_model
    cache = DynamicCache(config=model.config.text_config)
    want = motion_layer is not None
    with warnings.catch_warnings():  # later 5.x rename `past_key_values`; 5.0 knows only it
        warnings.simplefilter("ignore", FutureWarning)
        head = lm(inputs_embeds=prefix, past_key_values=cache, use_cache=True,
                  output_hidden_states=want)  # fmt: skip
        last = head.last_hidden_state  # (G, P, d)
        cache.batch_select_indices(group)  # (G, ...) -> (B, ...): each row reads its clip's
        rest = lm(inputs_embeds=embed(input_ids[:, P:]), past_key_values=cache, use_cache=True)
    hidden = torch.cat([last[group, -1:], rest.last_hidden_state], dim=1)  # (B, T - P + 1, d)
    logits = model.lm_head(hidden)  # (B, T - P + 1, V)
    full = logits.new_zeros(B, P - 1, logits.shape[-1])
    if not want:
        return torch.cat([full, logits], dim=1), feats, projected
    F = pixel_values_videos.shape[1]
    states = _patch_states(head.hidden_states[motion_layer], video[firsts, :P], len(firsts), F)
    return torch.cat([full, logits], dim=1), feats, projected, None, states[group]


def clip_batches(clip: torch.Tensor, clips_per_batch: int, seed: int, epoch: int) -> list:
    """One epoch's batches for `shared_prefix_forward`: the clips shuffled, `clips_per_batch`
    at a time, each batch every record of its clips, a clip's records next to each other."""
    rows: dict[int, list[int]] = {}
    for k, c in enumerate(clip.tolist()):
        rows.setdefault(c, []).append(k)
    g = np.random.default_rng([seed, epoch])
    order = [list(rows)[k] for k in g.permutation(len(rows))]
    return [
        np.array([k for c in order[s : s + clips_per_batch] for k in rows[c]])
        for s in range(0, len(order), clips_per_batch)
    ]


def build_video_data(cfg: VideoTrainConfig, tokenizer, progress: bool = True) -> dict:
    """Frames and (ids, mask, clip, family) rows, as `loop.train_llava` reads them: every record
    of the first `n_clips` train clips. "images" holds each clip's sampled frames, "motion"
    their patches' motion labels (`patches.motion_labels`)."""
    F, size = cfg.num_frames, cfg.image_size
    frames = np.zeros((cfg.n_clips, F, size, size, 3), dtype=np.uint8)
    grid = size // 16  # the world tower's 16 px patches
    per_frame = grid * grid + 1  # a frame's patches, plus the CLS a video keeps
    motion = np.zeros((cfg.n_clips, F, grid * grid), dtype=np.int8)
    ids, masks, clip, family = [], [], [], []
    for i in tqdm(range(cfg.n_clips), desc="world clips", disable=not progress, mininterval=5):
        sample = world_sample("train", i, "video")
        rendered = render_clip(sample, size)
        picked = sample_frame_indices(len(rendered), F)
        if len(picked) != F:
            raise InputError(f"train clip {i} has {len(rendered)} frames, fewer than {F}")
        frames[i] = np.stack([np.asarray(rendered[k]) for k in picked])
        motion[i] = motion_labels(sample, picked, grid, cfg.motion_span)
        records = [make_record("train", i, f, kind="video") for f in FAMILIES]
        if cfg.drill_turns > 0:
            records.append(make_drill("train", i, cfg.drill_turns, kind="video"))
        for record in records:
            a, m = encode_record(record, tokenizer, F * per_frame, kind="video")
            ids.append(torch.from_numpy(a.astype(np.int16)))
            masks.append(torch.from_numpy(m))
            clip.append(i)
            family.append(record["meta"]["family"])
    n = cfg.n_clips
    return {
        "images": torch.from_numpy(frames),  # (N, F, H, W, 3) uint8
        "patches": torch.zeros((n, 1, 1), dtype=torch.int8),  # no patch-label loss here
        "patch_words": torch.zeros((n, 1, 1), dtype=torch.int8),  # no alignment loss here
        "motion": torch.from_numpy(motion),  # (N, F, P) int8, -1 = unknown
        "family": family,
        "ids": ids,
        "masks": masks,
        "scene": torch.tensor(clip),
    }


def video_data_path(cfg: VideoTrainConfig, out: Path) -> Path:
    """Where `cached_video_data` keeps `cfg`'s data: `out/data-video-*.pt`, under a name that
    changes with every setting that changes the data."""
    what = {k: getattr(cfg, k) for k in ("n_clips", "num_frames", "image_size")}
    # files written before the motion labels lack them; "step" labels keep their files' names
    what["motion"] = 1 if cfg.motion_span == "step" else cfg.motion_span
    if cfg.drill_turns:  # (files without drills keep their names)
        what["drill_turns"] = cfg.drill_turns
    key = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    return out / f"data-video-a{ANSWERS_VERSION}-{cfg.n_clips}-{key}.pt"


def cached_video_data(cfg: VideoTrainConfig, tokenizer, out: Path, progress: bool = True) -> dict:
    """`build_video_data`, kept at `video_data_path(cfg, out)`."""
    path = video_data_path(cfg, out)
    if path.is_file():
        return torch.load(path)
    start = time.perf_counter()
    data = build_video_data(cfg, tokenizer, progress)
    print(f"video data: {len(data['ids'])} records in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)  # fmt: skip
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def _starting_folder(init: Path, out: Path, num_frames: int) -> Path:
    """The Video-LLaVA folder a run starts from: `init` itself when it is one (a video target
    trained before: training continues from its weights, with a fresh optimizer), else the
    Video-LLaVA assembled from the world image target `init`."""
    from specvlm.world.video_target import assemble_world_video

    config = init / "config.json"
    if not config.is_file():
        raise InputError(f"--init {init} is not a model folder (no config.json)")
    if "VideoLlavaForConditionalGeneration" not in json.loads(config.read_text()).get(
        "architectures", []
    ):
        return assemble_world_video(init, out, num_frames=num_frames)
    processor = json.loads((init / "processor_config.json").read_text())
    frames = processor.get("video_processor", {}).get("num_frames")
    if frames is not None and frames != num_frames:
        raise InputError(
            f"--init {init} samples {frames} frames a clip; this run reads {num_frames}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in init.iterdir():
        if name.is_file():
            (out / name.name).write_bytes(name.read_bytes())
    return out


@on_two_threads
def train_video_target(
    out: str | Path,
    config: str | VideoTrainConfig = "video",
    steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    ckpt_minutes: float = 10.0,
    log_every: int = 10,
    progress: bool = True,
    stop_at: int | None = None,
    **overrides,
) -> dict:
    """Train (or continue) the world video target under `out`; write `out/model/` at the end of
    the budget; return a summary. `init`: the world image target to start from (default: the
    shipped one), or a world video target to continue training (its weights, a fresh optimizer).
    `stop_at` ends this call at that step (`resume=True` continues)."""
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

    cfg, out, ckpt = start_recipe(config, VIDEO_CONFIGS, overrides, steps, minutes, out, resume)
    if init is None:
        from specvlm.embedded import embedded_target

        init = embedded_target()
        if init is None:
            raise InputError("no world image target to start from: give --init FOLDER")
    if cfg.drill_turns < 0:
        raise InputError(f"drill_turns must be 0 or more, got {cfg.drill_turns}")
    if cfg.motion_span not in MOTION_SPANS:
        spans = ", ".join(MOTION_SPANS)
        raise InputError(f"motion_span {cfg.motion_span!r}: expected one of {spans}")
    out.mkdir(parents=True, exist_ok=True)

    start = _starting_folder(Path(init), out / "init", cfg.num_frames)
    with quiet_transformers():
        model = VideoLlavaForConditionalGeneration.from_pretrained(start, dtype=torch.float32)
    layers = model.config.text_config.num_hidden_layers
    if cfg.motion_weight > 0 and not 1 <= cfg.motion_layer <= layers:
        raise InputError(
            f"motion_layer {cfg.motion_layer}: the language model has layers 1-{layers}"
        )
    tokenizer = AutoTokenizer.from_pretrained(start)
    data = cached_video_data(cfg, tokenizer, out, progress)
    weigh_answers(data, tokenizer, cfg.letter_weight, cfg.verdict_weight, "video")
    model.requires_grad_(False)
    trained = torch.nn.ModuleDict(
        {"projector": model.model.multi_modal_projector, "lm": model.model.language_model,
         "lm_head": model.lm_head}
    )  # fmt: skip
    if cfg.train_tower:
        trained["video_tower"] = model.model.video_tower
    shared = cfg.clips_per_batch > 0
    forward = shared_prefix_forward if shared else video_forward
    if cfg.motion_weight > 0:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            trained["motion_head"] = MotionHead(model.config.text_config.hidden_size)
        forward = functools.partial(forward, motion_layer=cfg.motion_layer)
    trained.requires_grad_(True)
    return run_recipe(
        cfg, model, trained, data, tokenizer, name="video target", out=out, ckpt=ckpt,
        init=init, files_from=start, steps=steps, minutes=minutes, resume=resume,
        stop_at=stop_at, ckpt_minutes=ckpt_minutes, log_every=log_every, progress=progress,
        forward_fn=forward,
        order_fn=(lambda e: clip_batches(data["scene"], cfg.clips_per_batch, cfg.seed, e))
        if shared else None,
    )  # fmt: skip
