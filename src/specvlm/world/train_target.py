"""Train the embedded default target: a small LLaVA, from scratch, on the world's image data.

    specvlm world train-target --out runs/world-target --minutes 90            # the shipped model
    specvlm world train-target --out runs/world-target --minutes 90 --resume   # after a stop
    train_target("runs/pilot", config="small", steps=300)                      # from Python

The model is a real `transformers` LlavaForConditionalGeneration: a CLIP-style vision tower
(CLIPVisionConfig), the standard LLaVA MLP projector and a Llama decoder, with the world tokenizer
and its chat template and a LlavaProcessor with a CLIP image processor. `out/model/` loads with
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained` (fp16).

Recipe, in two stages. Stage 1 (`vision_pretrain_steps`, minutes): the vision tower alone learns
per-patch labels from the renderer's ground truth (which colour and shape covers each patch,
whose centre lies in it, and in which ninth of the canvas), so the features the decoder reads
already say what is where; learning that through the answer loss alone was the slow part (a
first run without it stayed near chance on colours after 78 minutes). Stage 2: the whole LLaVA on the answers, with the patch loss kept
on at `aux_weight`, and an alignment loss (`align_weight`) that pulls the projector's output at
each object's centre patch towards the sum of the decoder's own (detached) embeddings of the
words naming it (" red", " star", " small"), plus two fixed codes for its region (row third,
column third; `region_codes`): the decoder then finds objects in the image the way it finds
words earlier in its context, which it learns far sooner than an arbitrary visual code; every
other patch is pulled (at `align_blank_weight`) towards one fixed
vector, the never-input <image> embedding row, so patches without an object read alike.
Conversation and multi-turn records (the densest grounding signal per token) appear
`qa_repeats` times per epoch. Stage 2 runs with eager attention (on this CPU the SDPA backward
was a third of a step) and, with `compile`, a `torch.compile`d forward with dynamic shapes:
about 2x the tokens per second after a compile of a few minutes. The patch heads are dropped
when the model is saved; the alignment adds no parameters.

Stage 2 data: every record of the first `n_scenes` train scenes (all five task families, plus
one training-only drill of `drill_turns` short questions per scene; one sequence per record),
rendered at the model resolution, tokenised with the chat template and cached in
`out/data-*.pt`; every other record gets a second <s> in front, as `processor(text=...)` adds
one to the chat template's own. Loss on assistant answer tokens only (the chat template's generation spans,
each answer's </s> and a lone leading space token included). AdamW (0.9, 0.95), linear warmup then cosine to 10% of the peak;
the cosine runs on the fraction of the budget used, steps or minutes, whichever is further.
Gradient clipping at 1.0, bf16 autocast on CPUs with native bf16 (fp32 elsewhere), batches of similar length. A checkpoint
(weights, optimizer, step, elapsed time) is written atomically to `out/checkpoint.pt` every
`ckpt_minutes` and at the end; `resume=True` continues from it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.world.grammar import REGION_PHRASES, region
from specvlm.world.language import FAMILIES, make_drill, make_record
from specvlm.world.scenes import COLORS, SHAPES, SIZES, Scene, SceneObject, render, visible_masks
from specvlm.world.splits import world_sample

IGNORE = -100  # label of tokens without loss
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN / STD, as CLIPImageProcessor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TrainConfig:
    # Llama decoder
    hidden: int = 256
    layers: int = 12
    heads: int = 4
    intermediate: int = 688
    # CLIP-style vision tower: image_size / patch_size squared image tokens
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    image_size: int = 128
    patch_size: int = 16
    # data and optimisation
    n_scenes: int = 8000
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.05
    clip_norm: float = 1.0
    seed: int = 0
    bf16: bool = True
    tokenizer_samples: int = 600  # train samples in the tokenizer's corpus
    # auxiliary per-patch supervision of the vision tower (dropped from the saved model)
    vision_pretrain_steps: int = 1200  # stage 1: the vision tower alone on patch labels
    vision_batch_size: int = 64
    vision_lr: float = 2e-3
    aux_weight: float = 0.3  # stage 2: weight of the patch-label loss beside the answer loss
    # stage 2: pull the projector's output at an object's centre patch towards the sum of the
    # decoder's (detached) input embeddings of the words naming it (PATCH_WORDS)
    align_weight: float = 1.0
    qa_repeats: int = 2  # conversation and multiturn records appear this many times per epoch
    # plus one training-only "drill" per scene: this many short questions about its image in one
    # conversation (`language.make_drill`; 0 = none): many grounded answers per image read
    drill_turns: int = 8
    # ... and pull every other patch towards one fixed vector (the never-input <image> row)
    align_blank_weight: float = 0.5
    # each region code (`region_codes`) adds this share of the mean norm of the object's word
    # embeddings to its centre patch's target. Run 6 summed the region's own words instead: the
    # projector held them, but colour answers fell from 92% to 64%, colour embeddings lying close
    # to each other. Run 7 took orthonormal codes at 0.6: colour 100%, but the region of one
    # named object among several was read poorly (position answers 33%); run 8 took 1.0 and
    # colour fell again (62%), so run 9 on: 0.6 again.
    region_scale: float = 0.6
    # stage 2: point one attention head (head 0 of decoder layer `pointer_layer`) at the object
    # a closed answer is about: at every token of a colour, shape or position answer, a
    # cross-entropy between that head's attention and the object's centre patch, times
    # `pointer_weight` (0 = off). Run 7 answered "where is the X?" with another object's region
    # 77 times in 80 errors, 47 of them the last object in reading order: the region was in the
    # image tokens and was read, but from the wrong object (docs/world.md, "Run 9").
    pointer_weight: float = 0.2
    pointer_layer: int = 6
    # stage 2 speed: eager attention (faster than SDPA's CPU backward at these sizes) and
    # torch.compile with dynamic shapes (~2x tokens/s on a 2-core CPU after a ~4 min compile)
    compile: bool = True

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


CONFIGS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    # the shipped embedded target
    "small": TrainConfig(hidden=192, intermediate=512, vision_hidden=128),
    # the classic separate draft model (hf-assisted baseline): same tokenizer, two layers
    "baseline": TrainConfig(
        hidden=192, layers=2, intermediate=512, vision_hidden=128, pointer_layer=1
    ),
    # for tests: seconds on a CPU
    "tiny": TrainConfig(
        hidden=64,
        layers=2,
        intermediate=128,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        image_size=32,
        patch_size=8,
        n_scenes=24,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        tokenizer_samples=40,
        bf16=False,
        vision_pretrain_steps=40,
        vision_batch_size=8,
        compile=False,
        drill_turns=3,
        pointer_layer=1,
    ),
}


# ---------------------------------------------------------------------------------------------
# Tokenizer, model and processor
# ---------------------------------------------------------------------------------------------


def world_tokenizer(cfg: TrainConfig, out: Path):
    """The world tokenizer, trained once and kept in `out/tokenizer/`."""
    from transformers import AutoTokenizer

    from specvlm.world.tokenizer import build_world_tokenizer

    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        build_world_tokenizer(folder, n_samples=cfg.tokenizer_samples)
    return AutoTokenizer.from_pretrained(str(folder))


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vocab = 64 * math.ceil(len(tokenizer) / 64)  # rows past len(tokenizer) are never used
    text = LlamaConfig(
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        vocab_size=vocab,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # drop CLS: n_image_tokens patches
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_processor(cfg: TrainConfig, tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def init_weights(model, tokenizer, folder: Path) -> None:
    """Load a trained world target's weights (`folder`, as `save_model` wrote it) into `model`,
    in `model`'s dtype; InputError when its tokenizer or any weight's name or shape differs."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    if AutoTokenizer.from_pretrained(str(folder)).get_vocab() != tokenizer.get_vocab():
        raise InputError(f"--init: {folder} has another tokenizer than this recipe's")
    with quiet_transformers():
        src = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    own, theirs = model.state_dict(), src.state_dict()
    bad = sorted(k for k in own.keys() | theirs.keys() if k not in own or k not in theirs or own[k].shape != theirs[k].shape)  # fmt: skip
    if bad:
        raise InputError(f"--init: {folder} does not fit this config ({len(bad)} weights differ in name or shape, e.g. {bad[0]!r})")  # fmt: skip
    model.load_state_dict(theirs)


def save_model(model, processor, folder: Path) -> None:
    """Save an fp16 copy of `model` (and the processor) so that Auto* classes load it."""
    import copy

    half = copy.deepcopy(model).half().eval()
    tmp = folder.with_name(folder.name + ".tmp")
    with quiet_transformers():
        half.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    _replace_dir(tmp, folder)


def _replace_dir(tmp: Path, folder: Path) -> None:
    import shutil

    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Auxiliary vision supervision: what each image patch shows, from the scene's ground truth
# ---------------------------------------------------------------------------------------------

# Per-patch labels; class 0 is "nothing" in each. "cover_*": the object with the most visible
# pixels in the patch (if it fills at least MIN_COVER of it); "center_*": the object whose centre
# lies in the patch (the front one, if two do). Centre labels make counting a sum over patches.
# "center_region" (which ninth of the canvas holds that centre, as the grammar names it) keeps
# where a patch is in its features: without it the tower's features lost position, and so the
# projector could not say " top left" (run 5: the right region nearest for 12% of objects).
REGIONS: tuple[str, ...] = tuple(REGION_PHRASES)
PATCH_LABELS: dict[str, int] = {
    "cover_color": len(COLORS) + 1,
    "cover_shape": len(SHAPES) + 1,
    "center_color": len(COLORS) + 1,
    "center_shape": len(SHAPES) + 1,
    "center_size": len(SIZES) + 1,
    "center_region": len(REGIONS) + 1,
}
MIN_COVER = 0.1
NOTHING_WEIGHT = 0.2  # loss weight of the "nothing" class
_PATCH_MASK_RES = 8  # mask pixels per patch side


def _centre_patches(scene: Scene, grid: int) -> list[tuple[int, int, SceneObject]]:
    """(row, column, object) of the patch holding each object's centre, back to front (so a
    writer that overwrites keeps the front object where two centres share a patch)."""
    return [(min(int(o.y * grid), grid - 1), min(int(o.x * grid), grid - 1), o) for o in scene.by_depth()]  # fmt: skip


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """(len(PATCH_LABELS), grid * grid) int64 class ids, patches in row-major order."""
    res = grid * _PATCH_MASK_RES
    vis = visible_masks(scene, res)
    colors, shapes, sizes = list(COLORS), list(SHAPES), list(SIZES)
    out = np.zeros((len(PATCH_LABELS), grid, grid), dtype=np.int64)
    if vis:
        # (n_objects, grid, grid) visible pixel fraction of each patch
        cover = (
            np.stack([vis[i] for i in range(len(scene.objects))])
            .reshape(len(scene.objects), grid, _PATCH_MASK_RES, grid, _PATCH_MASK_RES)
            .mean(axis=(2, 4))
        )
        best = cover.argmax(0)  # (grid, grid)
        filled = cover.max(0) >= MIN_COVER
        for i, o in enumerate(scene.objects):
            here = filled & (best == i)
            out[0][here] = colors.index(o.color) + 1
            out[1][here] = shapes.index(o.shape) + 1
    for r, c, o in _centre_patches(scene, grid):
        out[2, r, c] = colors.index(o.color) + 1
        out[3, r, c] = shapes.index(o.shape) + 1
        out[4, r, c] = sizes.index(o.size) + 1
        out[5, r, c] = REGIONS.index(region(o.x, o.y)) + 1
    return out.reshape(len(PATCH_LABELS), grid * grid)


N_PATCH_WORDS = 3  # colour, shape, size: token ids whose embeddings the target sums
N_PATCH_SLOTS = N_PATCH_WORDS + 2  # ... then the region as a row code and a column code
N_REGION_CODES = 6  # row thirds (top, middle, bottom), then column thirds (left, center, right)


def region_thirds(x: float, y: float) -> tuple[int, int]:
    """(row, column) third of the canvas holding the point, 0-2 each: `grammar.region` in
    numbers (row 0 = " top", column 0 = " left", (1, 1) = " center")."""
    return min(max(int(y * 3), 0), 2), min(max(int(x * 3), 0), 2)


def object_slots(o: SceneObject, tid) -> list[int]:
    """The N_PATCH_SLOTS numbers naming object `o` in `patch_words`: the token ids (`tid(word)`)
    of its colour, shape and size words, then 1 + its row third and 4 + its column third (the
    region codes' numbers, 1-6)."""
    row, col = region_thirds(o.x, o.y)
    return [tid(o.color), tid(o.shape), tid(o.size), 1 + row, 4 + col]


def word_id(tokenizer):
    """word -> the token id of " word" (which must be one token)."""

    def tid(word: str) -> int:
        ids = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is not one token of this tokenizer")
        return ids[0]

    return tid


def patch_words(scene: Scene, grid: int, tokenizer) -> np.ndarray:
    """(grid * grid, N_PATCH_SLOTS) what names the object whose centre lies in each patch (the
    front one), as `object_slots`: " red", " star", " small", then its region codes; 0 = none."""
    tid = word_id(tokenizer)
    out = np.zeros((grid, grid, N_PATCH_SLOTS), dtype=np.int64)
    for r, c, o in _centre_patches(scene, grid):
        out[r, c] = object_slots(o, tid)
    return out.reshape(grid * grid, N_PATCH_SLOTS)


@functools.cache
def region_codes(dim: int) -> torch.Tensor:
    """(1 + N_REGION_CODES, dim): row 0 zero (no code), rows 1-6 fixed orthonormal directions
    (the same for every run of a width; not parameters, never saved: the projector learns to
    emit them from the pixels, the decoder to read them)."""
    g = torch.Generator().manual_seed(2026)
    q, _ = torch.linalg.qr(torch.randn(dim, N_REGION_CODES, generator=g, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dim), q.T.float()])


def word_targets(words: torch.Tensor, embed: torch.nn.Embedding, blank_id: int | None = None, region_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """What the projector should output: words (B, P, W) from `patch_words` (W <= N_PATCH_WORDS:
    token ids only; W = N_PATCH_SLOTS: the region codes too; 0 = none) -> (targets (B, P, d):
    the summed (detached) embeddings of each patch's words, plus `region_scale` times their mean
    norm along each of its region codes; or, where a patch has no words and `blank_id` is
    given, that token's embedding row (else zeros); named (B, P) bool: the patch has words)."""
    E = embed.weight.detach()
    ids = words[..., :N_PATCH_WORDS]  # (B, P, w)
    has = ids > 0
    vecs = E[ids] * has[..., None]  # (B, P, w, d)
    target = vecs.sum(2)  # (B, P, d)
    named = has.any(-1)  # (B, P)
    if words.shape[-1] > N_PATCH_WORDS:
        codes = region_codes(E.shape[-1]).to(E.device, E.dtype)[words[..., N_PATCH_WORDS:]].sum(2)  # fmt: skip
        size = vecs.norm(dim=-1).sum(2) / has.sum(2).clamp_min(1)  # (B, P) mean word norm
        target = target + region_scale * size[..., None] * codes
    if blank_id is not None:
        target = torch.where(named[..., None], target, E[blank_id].expand_as(target))
    return target, named


def align_loss(projected: torch.Tensor, words: torch.Tensor, embed: torch.nn.Embedding, blank_id: int | None = None, blank_weight: float = 0.0, region_scale: float = 1.0) -> torch.Tensor:  # fmt: skip
    """projected (B, P, d) projector output; words (B, P, W) as `word_targets` reads them.
    Mean squared distance to `word_targets` (detached) over patches with words,
    relative to the targets' mean squared norm; plus, if `blank_id` is given, `blank_weight`
    times the same distance of every other patch to the (detached) embedding of `blank_id`, so
    that patches holding no object's centre all read alike and are easy to ignore."""
    target, named = word_targets(words, embed, blank_id, region_scale)
    sq = (projected.float() - target.float()).pow(2).sum(-1)  # (B, P)
    norm = target.float().pow(2).sum(-1)  # (B, P)
    loss = projected.sum() * 0.0
    if named.any():
        loss = loss + sq[named].mean() / norm[named].mean().clamp_min(1e-8)
    if blank_id is not None and blank_weight > 0 and (~named).any():
        loss = loss + blank_weight * sq[~named].mean() / norm[~named].mean().clamp_min(1e-8)
    return loss


class PatchHeads(torch.nn.Module):
    """Linear classifiers over the vision features the projector reads (training only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.heads = torch.nn.ModuleDict(
            {k: torch.nn.Linear(dim, n) for k, n in PATCH_LABELS.items()}
        )

    def forward(
        self, feats: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, P, D), labels (B, len(PATCH_LABELS), P) -> (mean CE, per-patch accuracy of
        the occupied patches' labels over all heads)."""
        h = self.norm(feats.float())
        losses, right, count = [], 0, 0
        for k, head in enumerate(self.heads.values()):
            logits = head(h)  # (B, P, n)
            y = labels[:, k]  # (B, P)
            weight = torch.ones(logits.shape[-1], device=logits.device)
            weight[0] = NOTHING_WEIGHT  # most patches show nothing; keep them from dominating
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), weight=weight))  # fmt: skip
            occupied = y > 0
            right += int((logits.argmax(-1) == y)[occupied].sum())
            count += int(occupied.sum())
        return torch.stack(losses).mean(), torch.tensor(right / max(count, 1))


def vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, P, D): the vision tower's features the LLaVA projector reads."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def llava_forward(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, pointer_layer: int | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The LLaVA forward pass spelled out, so training can read its parts without hooks (and be
    compiled): (B, T) ids, (B, 3, H, W) pixels -> logits (B, T, V), vision features (B, P, Dv),
    projector output (B, P, d). Same logits as `model(input_ids=..., pixel_values=...)`.
    With `pointer_layer` (eager attention), also the attention weights of head 0 of that decoder
    layer (B, T, T): query rows, key columns."""
    feats = vision_features(model, pixel_values)  # (B, P, Dv)
    projected = model.model.multi_modal_projector(feats)  # (B, P, d)
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
    image = (input_ids == model.config.image_token_id)[..., None]  # (B, T, 1)
    embeds = embeds.masked_scatter(image, projected.to(embeds.dtype))
    if pointer_layer is None:
        return model(inputs_embeds=embeds).logits, feats, projected
    out = model(inputs_embeds=embeds, output_attentions=True)
    return out.logits, feats, projected, out.attentions[pointer_layer][:, 0]


def pointer_loss(attention: torch.Tensor, pointer: torch.Tensor) -> torch.Tensor:
    """attention (B, T, T) one head's weights, pointer (B, T) key per query (-1: none) -> mean
    cross-entropy -log a[b, t, pointer[b, t]] over the queries that have one (0 if none)."""
    rows = pointer >= 0  # (B, T)
    if not rows.any():
        return attention.sum() * 0.0
    b, t = rows.nonzero(as_tuple=True)
    picked = attention[b, t, pointer[b, t]].float()  # (Q,)
    return -(picked + 1e-6).log().mean()


# ---------------------------------------------------------------------------------------------
# Data: records -> token ids, answer mask, image
# ---------------------------------------------------------------------------------------------


def chat_messages(record: dict, placeholder: str = "<image>\n") -> list[dict]:
    """LLaVA turns as chat messages; the image goes first in the first user message."""
    messages = []
    for k, turn in enumerate(record["conversations"]):
        if turn["from"] == "human":
            text = turn["value"]
            if k == 0:
                text = text.removeprefix(placeholder)
                content = [{"type": "image"}, {"type": "text", "text": text}]
            else:
                content = [{"type": "text", "text": text}]
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["value"]}]})  # fmt: skip
    return messages


def encode_record(record: dict, tokenizer, n_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, answer_mask): the rendered chat with <image> expanded to n_image_tokens
    copies, and True on assistant answer tokens (their </s> included)."""
    enc = tokenizer.apply_chat_template(
        chat_messages(record), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["assistant_masks"], dtype=bool)
    # "ASSISTANT: Yes" can tokenize as ":", " ", "Yes": the lone space belongs to the answer
    # (the generation prompt ends at ":"), so a span starts one token earlier there.
    starts = np.flatnonzero(mask[1:] & ~mask[:-1]) + 1
    for s in starts:
        if tokenizer.decode([int(ids[s - 1])]) == " ":
            mask[s - 1] = True
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    at = np.flatnonzero(ids == image_id)
    if len(at) != 1:
        raise ValueError(f"record {record['id']}: expected one <image>, found {len(at)}")
    i = int(at[0])
    ids = np.concatenate([ids[:i], np.full(n_image_tokens, image_id), ids[i + 1 :]])
    mask = np.concatenate([mask[:i], np.zeros(n_image_tokens, bool), mask[i + 1 :]])
    return ids, mask


def answer_pointers(record: dict, scene: Scene, mask: np.ndarray, grid: int, ids: np.ndarray | None = None, tokenizer=None) -> np.ndarray | None:  # fmt: skip
    """(T,) int16 per token of `encode_record`'s sequence: the patch (row-major, among the
    image tokens) holding the centre of the object its answer is about, or -1.

    Answer spans (runs of `mask`) pair with the record's turns in order; a turn points when its
    meta names one object ("obj": colour, shape and position questions) and that object owns
    its centre patch (no object in front has its centre in the same patch). With `ids` and the
    (byte-level) `tokenizer`, a description's tokens point too: those whose last character lies
    in the sentence about an object (meta "sentences": [start, end, object] in the answer's
    characters) point at that object. None when the answer spans do not pair one to one with
    the turns."""
    out = np.full(len(mask), -1, dtype=np.int16)
    meta = record["meta"]
    turns = meta.get("turns", [meta])
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    ends = np.flatnonzero(mask & ~np.concatenate([mask[1:], [False]])) + 1
    if len(starts) != len(turns):
        return None
    centres = [(r * grid + c, o) for r, c, o in _centre_patches(scene, grid)]
    owner = dict(centres)  # patch -> its object; back to front, so the front one wins

    def patch_of(k: int) -> int:  # scene.objects[k]'s centre patch if it owns it, else -1
        o = scene.objects[k]
        patch = next(p for p, q in centres if q is o)
        return patch if owner[patch] is o else -1

    answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    for turn, answer, a, b in zip(turns, answers, starts, ends, strict=True):
        if turn.get("obj") is not None:
            out[a:b] = patch_of(turn["obj"])
        elif turn.get("sentences") and ids is not None and tokenizer is not None:
            pieces = tokenizer.batch_decode([[int(t)] for t in ids[a:b]])
            at = "".join(pieces).find(answer)
            if at < 0:  # a tokenizer that does not decode token by token: no pointers
                continue
            last = np.cumsum([len(p) for p in pieces]) - 1 - at  # (b - a,) each token's last character, in the answer's  # fmt: skip
            for lo, hi, k in turn["sentences"]:
                out[a:b][(last >= lo) & (last < hi)] = patch_of(k)
    return out


def labels_from_mask(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels for the loss: the token where `mask` is set, IGNORE elsewhere."""
    return torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE))


def build_data(cfg: TrainConfig, tokenizer, split: str = "train", progress: bool = True) -> dict:
    """Images (uint8, N x H x W x 3) and one (ids, mask, scene) entry per record."""
    images = np.zeros((cfg.n_scenes, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    grid = cfg.image_size // cfg.patch_size
    patches = np.zeros((cfg.n_scenes, len(PATCH_LABELS), grid * grid), dtype=np.int8)
    words = np.zeros((cfg.n_scenes, grid * grid, N_PATCH_SLOTS), dtype=np.int16)
    ids, masks, pointers, scene, family = [], [], [], [], []
    unpaired = 0  # records whose answers could not be paired with their turns
    for i in tqdm(range(cfg.n_scenes), desc="world data", unit="scene", disable=not progress, mininterval=5):  # fmt: skip
        sample = world_sample(split, i, "image")
        assert isinstance(sample, Scene)
        images[i] = np.asarray(render(sample, cfg.image_size))
        patches[i] = patch_labels(sample, grid)
        words[i] = patch_words(sample, grid, tokenizer)
        records = [make_record(split, i, f) for f in FAMILIES]
        if cfg.drill_turns > 0:
            records.append(make_drill(split, i, cfg.drill_turns))
        for record in records:
            a, m = encode_record(record, tokenizer, cfg.n_image_tokens)
            ids.append(torch.from_numpy(a.astype(np.int16)))
            masks.append(torch.from_numpy(m))
            ptr = answer_pointers(record, sample, m, grid, a, tokenizer)
            unpaired += ptr is None
            pointers.append(torch.from_numpy(np.full(len(m), -1, np.int16) if ptr is None else ptr))
            scene.append(i)
            family.append(record["meta"]["family"])
    if unpaired:
        print(f"world data: {unpaired} records have answers that do not pair with their turns; "
              "they train without pointers", file=sys.stderr)  # fmt: skip
    return {
        "images": torch.from_numpy(images),  # (N, H, W, 3) uint8
        "patches": torch.from_numpy(patches),  # (N, len(PATCH_LABELS), P) int8
        "patch_words": torch.from_numpy(words),  # (N, P, N_PATCH_SLOTS) int16, as patch_words
        "family": family,  # of each record
        "ids": ids,
        "masks": masks,
        "pointers": pointers,  # (T,) int16 per record, as answer_pointers
        "scene": torch.tensor(scene),
    }


def cached_data(cfg: TrainConfig, tokenizer, out: Path, progress: bool = True) -> dict:
    vocab_hash = hashlib.sha1(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:8]
    drill = f"-drill{cfg.drill_turns}" if cfg.drill_turns else ""
    path = out / f"data-v8-train-{cfg.n_scenes}-{cfg.image_size}px-{cfg.n_image_tokens}tok{drill}-{vocab_hash}.pt"  # fmt: skip
    if path.is_file():
        return torch.load(path)
    data = build_data(cfg, tokenizer, progress=progress)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, repeats: np.ndarray | None = None) -> list[np.ndarray]:  # fmt: skip
    """Shuffled batches of records of similar length (sorted within pools of 32 batches);
    record i appears repeats[i] times (default once)."""
    g = np.random.default_rng([seed, epoch])
    pool_idx = np.arange(len(lengths)) if repeats is None else np.repeat(np.arange(len(lengths)), repeats)  # fmt: skip
    perm = pool_idx[g.permutation(len(pool_idx))]
    pool = 32 * batch_size
    batches = []
    for s in range(0, len(perm), pool):
        chunk = perm[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[k] for k in g.permutation(len(batches))]


def collate(data: dict, idx: np.ndarray, pad_id: int, bos_id: int | None = None, extra_bos: np.ndarray | None = None, image_id: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Right-padded batch. Sequences flagged in `extra_bos` get a second <s> in front: that is
    what `processor(text=apply_chat_template(..., tokenize=False))` gives (the template writes
    <s> and the tokenizer adds one), so the model is trained on both forms of its prompt.
    "pointer" (with `image_id`, the <image> token id): see `answer_pointers`; all -1 without."""
    seqs = [data["ids"][k].long() for k in idx]
    if extra_bos is not None:
        bos = torch.tensor([bos_id])
        seqs = [torch.cat([bos, s]) if e else s for s, e in zip(seqs, extra_bos, strict=True)]
    T = 32 * math.ceil(
        max(len(s) for s in seqs) / 32
    )  # few distinct shapes: kernel caches stay small
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)  # (B, T) answer tokens
    attn = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T) real tokens
    # (B, T) the key position query t must attend to (-1: none): token t + 1's pointer, shifted
    # to the image tokens' place in the sequence, since query t predicts token t + 1
    pointer = torch.full((len(seqs), T), -1, dtype=torch.long)
    for b, k in enumerate(idx):
        n = len(seqs[b])
        input_ids[b, :n] = seqs[b]
        shift = n - len(data["masks"][k])  # a second <s> in front, or none
        mask[b, shift:n] = data["masks"][k]
        attn[b, :n] = 1
        if "pointers" in data and image_id is not None:
            p = data["pointers"][k].long()  # (n - shift,)
            first = int((seqs[b] == image_id).nonzero()[0])
            keys = torch.where(p >= 0, p + first, p)
            pointer[b, shift : n - 1] = keys[1:]
    scenes = data["scene"][torch.as_tensor(idx)]
    img = data["images"][scenes]  # (B, H, W, 3) uint8
    return {
        "patch_labels": data["patches"][scenes].long(),  # (B, len(PATCH_LABELS), P)
        "patch_words": data["patch_words"][scenes].long(),  # (B, P, N_PATCH_SLOTS)
        "input_ids": input_ids,
        "attention_mask": attn,
        "labels": labels_from_mask(input_ids, mask),
        "pointer": pointer,
        "pixel_values": normalize(img),
    }


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> CLIP-normalised float (B, 3, H, W), as the image processor does."""
    x = img.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()  # channels-first memory: 30x faster conv in bf16


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled (answer) tokens."""
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    target = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr_ratio * lr over progress."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def make_optimizer(cfg: TrainConfig, model) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def save_checkpoint(path: Path, model, opt, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


def pretrain_vision(cfg: TrainConfig, model, heads: PatchHeads, data: dict, progress: bool) -> dict:
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
    bar = tqdm(range(cfg.vision_pretrain_steps), desc="vision stage", unit="step", disable=not progress, mininterval=2)  # fmt: skip
    for step in bar:
        frac = step / max(cfg.vision_pretrain_steps, 1)
        lr = (
            cfg.vision_lr
            * min(1.0, (step + 1) / warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        )
        for group in opt.param_groups:
            group["lr"] = lr
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
            print(f"vision step {step + 1} loss {np.mean(losses[-100:]):.4f} "
                  f"patch acc {np.mean(accs[-100:]):.3f}", file=sys.stderr, flush=True)  # fmt: skip
        bar.set_postfix({"loss": f"{loss.item():.3f}", "patch acc": f"{acc.item():.3f}"}, refresh=False)  # fmt: skip
    bar.close()
    tail = accs[-20:]
    return {
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-20:])),
        "patch_accuracy": float(np.mean(tail)),
    }


def train_target(
    out: str | Path,
    config: str | TrainConfig = "default",
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
    `resume=True` continues from). `init`: a trained world target's model folder (same config
    and tokenizer) to start the LLaVA stage from instead of a fresh model; the vision stage is
    skipped (the patch heads, not saved with a model, start fresh).
    bf16 autocast falls back to fp32 on a CPU without native bf16 (oneDNN's check): an AVX2-only
    CPU emulates it, and the vision stage took ~7 s a step instead of ~0.25 (docs/world.md).
    """
    cfg = CONFIGS[config] if isinstance(config, str) else config
    if isinstance(config, str) and config not in CONFIGS:
        raise InputError(f"unknown --config {config!r}; accepted: {', '.join(CONFIGS)}")
    cfg = replace(cfg, **overrides)
    if cfg.bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("train-target: this CPU has no native bf16; training in fp32", file=sys.stderr)
        cfg = replace(cfg, bf16=False)
    if steps is None and minutes is None:
        raise InputError("give --steps or --minutes (or both)")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if minutes is not None and minutes <= 0:
        raise InputError(f"--minutes must be positive, got {minutes}")
    if cfg.pointer_weight > 0 and not 0 <= cfg.pointer_layer < cfg.layers:
        raise InputError(f"pointer_layer {cfg.pointer_layer} is not a layer of a {cfg.layers}-layer decoder; accepted: 0 to {cfg.layers - 1}")  # fmt: skip
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder, but {out} is a file")
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise InputError(f"--resume: no checkpoint at {ckpt_path}")
    if init is not None and not (Path(init) / "config.json").is_file():
        raise InputError(f"--init: {init} is not a model folder (no config.json); give a world target's model/ folder")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    tokenizer = world_tokenizer(cfg, out)
    processor = build_processor(cfg, tokenizer)
    model = build_model(cfg, tokenizer)
    if init is not None and not resume:
        init_weights(model, tokenizer, Path(init))
    model.set_attn_implementation("eager")  # for training; saved with the default (sdpa)
    heads = PatchHeads(cfg.vision_hidden)
    trained = torch.nn.ModuleDict({"model": model, "heads": heads})  # what the optimizer steps
    opt = make_optimizer(cfg, trained)
    state = {"step": 0, "vision_step": 0, "elapsed": 0.0, "tokens": 0, "config": asdict(cfg), "losses": [], "pointer_losses": [], "vision": {}, "init": None}  # fmt: skip
    if init is not None:  # a trained vision tower: no vision stage
        state["vision_step"], state["init"] = cfg.vision_pretrain_steps, str(init)
    if resume:
        ckpt = torch.load(ckpt_path, weights_only=False)
        same = lambda c: {k: v for k, v in c.items() if k != "bf16"}  # noqa: E731  (a machine's choice)
        if same(ckpt["config"]) != same(asdict(cfg)):
            raise InputError(f"--resume: {ckpt_path} was trained with another config")
        try:
            trained.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise InputError(
                f"--resume: {ckpt_path} was written by an older version of this recipe (its "
                f"weights do not fit this model: {str(e).splitlines()[0]}); start a new --out"
            ) from e
        opt.load_state_dict(ckpt["optimizer"])
        state = {k: ckpt.get(k, v) for k, v in state.items()}
    data = cached_data(cfg, tokenizer, out, progress=progress)
    t_start = time.perf_counter() - state["elapsed"]
    if state["vision_step"] < cfg.vision_pretrain_steps:
        # Stage 1 (minutes; not resumable midway: a stop here restarts it from scratch)
        state["vision"] = pretrain_vision(cfg, model, heads, data, progress)
        state["vision_step"] = cfg.vision_pretrain_steps
        state["elapsed"] = time.perf_counter() - t_start
        save_checkpoint(ckpt_path, trained, opt, state)
    lengths = np.array([len(s) for s in data["ids"]])
    qa = np.array([f in ("conversation", "multiturn") for f in data["family"]])
    repeats = np.where(qa, cfg.qa_repeats, 1)
    per_epoch = math.ceil(int(repeats.sum()) / cfg.batch_size)
    budget_s = None if minutes is None else 60.0 * minutes

    def progress_of(step: int, elapsed: float) -> float:
        p = [step / steps] if steps is not None else []
        p += [elapsed / budget_s] if budget_s is not None else []
        return max(p)

    model.train()
    forward = torch.compile(llava_forward, dynamic=True) if cfg.compile else llava_forward
    blank_id = tokenizer.convert_tokens_to_ids("<image>")
    pointer_layer = cfg.pointer_layer if cfg.pointer_weight > 0 else None
    epoch, order = -1, []
    t0 = time.perf_counter() - state["elapsed"]  # wall clock, carried over a resume
    last_ckpt = time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    bar = tqdm(total=steps, initial=state["step"], desc="train-target", unit="step", disable=not progress, mininterval=2)  # fmt: skip
    ema = align_ema = point_ema = None
    while progress_of(state["step"], time.perf_counter() - t0) < 1.0 and state["step"] != stop_at:
        step = state["step"]
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = batch_order(lengths, cfg.batch_size, cfg.seed, epoch, repeats)
        idx = order[step % per_epoch]
        batch = collate(data, idx, tokenizer.pad_token_id, tokenizer.bos_token_id, (idx + epoch) % 2 == 1, blank_id)  # fmt: skip
        lr = lr_at(cfg, step, progress_of(step, time.perf_counter() - t0))
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            # Right padding under a causal mask: real tokens never see the pads, so no padding
            # mask is passed (it would force a slow attention path); pads carry no loss.
            outs = forward(model, batch["input_ids"], batch["pixel_values"], pointer_layer)
            logits, feats, projected = outs[:3]
            answer = answer_loss(logits, batch["labels"])
            loss = answer
            pointed = pointer_layer is not None and bool((batch["pointer"] >= 0).any())
            if pointed:
                point = pointer_loss(outs[3], batch["pointer"])
                loss = loss + cfg.pointer_weight * point
                point_ema = point.item() if point_ema is None else 0.98 * point_ema + 0.02 * point.item()  # fmt: skip
            if cfg.aux_weight > 0:
                aux, _ = heads(feats, batch["patch_labels"])
                loss = loss + cfg.aux_weight * aux
            if cfg.align_weight > 0:
                embed = model.get_input_embeddings()
                align = align_loss(projected, batch["patch_words"], embed, blank_id, cfg.align_blank_weight, cfg.region_scale)  # fmt: skip
                loss = loss + cfg.align_weight * align
                align_ema = align.item() if align_ema is None else 0.98 * align_ema + 0.02 * align.item()  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.clip_norm)
        opt.step()

        n_tok = int(batch["attention_mask"].sum())
        state["step"] += 1
        state["tokens"] += n_tok
        state["elapsed"] = time.perf_counter() - t0
        state["losses"].append(answer.item())  # the answer-token loss alone
        if pointed:  # batches with a pointed answer only
            state["pointer_losses"].append(point.item())
        window_tokens += n_tok
        ema = answer.item() if ema is None else 0.98 * ema + 0.02 * answer.item()
        tok_s = window_tokens / max(time.perf_counter() - window_t, 1e-9)
        post = {"loss": f"{ema:.3f}", "tok/s": f"{tok_s:.0f}", "lr": f"{lr:.1e}"}
        if budget_s is not None:
            post["eta"] = f"{max(budget_s - state['elapsed'], 0) / 60:.1f}m"
        bar.set_postfix(post, refresh=False)
        bar.update(1)
        if state["step"] % log_every == 0:
            align_txt = "" if align_ema is None else f" align {align_ema:.4f}"
            align_txt += "" if point_ema is None else f" pointer {point_ema:.4f}"
            print(f"step {state['step']} loss {ema:.4f}{align_txt} lr {lr:.2e} tok/s {tok_s:.0f} "
                  f"elapsed {state['elapsed'] / 60:.1f}m epoch {state['step'] / per_epoch:.2f}",
                  file=sys.stderr, flush=True)  # fmt: skip
            window_t, window_tokens = time.perf_counter(), 0
        due = (ckpt_every is not None and state["step"] % ckpt_every == 0) or (
            time.perf_counter() - last_ckpt > 60.0 * ckpt_minutes
        )
        if due:
            save_checkpoint(ckpt_path, trained, opt, state)
            last_ckpt = time.perf_counter()
    bar.close()
    save_checkpoint(ckpt_path, trained, opt, state)
    model.set_attn_implementation("sdpa")  # the saved model's default
    save_model(model.eval(), processor, out / "model")
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
