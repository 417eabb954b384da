"""Training data: world records -> token ids, answer mask, pointers and image; the cache; batches.

`build_data` renders the first `n_scenes` train scenes and tokenises every record of them (all
five families plus one drill per scene) with the chat template; `cached_data` keeps the result
in `out/data-*.pt`. `batch_order` groups records of similar length; `collate` right-pads a
batch and, for every other record, puts a second <s> in front (see `collate`).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from specvlm.world.language import ANSWERS_VERSION, FAMILIES, make_drill, make_record
from specvlm.world.scenes import Scene, render
from specvlm.world.splits import world_sample
from specvlm.world.train_target.config import TargetTrainConfig
from specvlm.world.train_target.losses import IGNORE
from specvlm.world.train_target.model import normalize
from specvlm.world.train_target.patches import (
    N_PATCH_SLOTS,
    PATCH_LABELS,
    centre_patches,
    patch_labels,
    patch_words,
)


def chat_messages(record: dict, placeholder: str = "<image>\n", kind: str = "image") -> list[dict]:
    """LLaVA turns as chat messages; the image (or the video: `kind`) goes first in the first
    user message; kind "text": no media at all (the placeholder is dropped)."""
    messages = []
    for k, turn in enumerate(record["conversations"]):
        if turn["from"] == "human":
            text = turn["value"]
            if k == 0:
                text = text.removeprefix(placeholder)
                media = [] if kind == "text" else [{"type": kind}]
                content = [*media, {"type": "text", "text": text}]
            else:
                content = [{"type": "text", "text": text}]
            messages.append({"role": "user", "content": content})
        else:
            content = [{"type": "text", "text": turn["value"]}]
            messages.append({"role": "assistant", "content": content})
    return messages


def encode_record(
    record: dict, tokenizer, n_image_tokens: int, kind: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, answer_mask): the rendered chat with <image> (kind "video": <video>) expanded
    to n_image_tokens copies, and True on assistant answer tokens (their </s> included). Kind
    "text": the chat without its picture (the record's leading "<image>\n" is dropped)."""
    token = f"<{kind}>"
    if kind == "text":  # the record's leading placeholder, of either kind, is dropped
        first = record["conversations"][0]["value"]
        token = "<video>" if first.startswith("<video>") else "<image>"
    messages = chat_messages(record, token + "\n", kind)
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["assistant_masks"], dtype=bool)
    bos = tokenizer.bos_token_id
    if bos is not None and (len(ids) == 0 or ids[0] != bos):
        # the template leaves <s> to the tokenizer (as llava-hf templates do), and
        # apply_chat_template(tokenize=True) adds no special tokens: the model reads one <s>
        ids, mask = np.concatenate([[bos], ids]), np.concatenate([[False], mask])
    # "ASSISTANT: Yes" can tokenize as ":", " ", "Yes": the lone space belongs to the answer
    # (the generation prompt ends at ":"), so a span starts one token earlier there.
    starts = np.flatnonzero(mask[1:] & ~mask[:-1]) + 1
    for s in starts:
        if tokenizer.decode([int(ids[s - 1])]) == " ":
            mask[s - 1] = True
    if kind == "text":
        return ids, mask
    image_id = tokenizer.convert_tokens_to_ids(token)
    at = np.flatnonzero(ids == image_id)
    if len(at) != 1:
        raise ValueError(f"record {record['id']}: expected one {token}, found {len(at)}")
    i = int(at[0])
    ids = np.concatenate([ids[:i], np.full(n_image_tokens, image_id), ids[i + 1 :]])
    mask = np.concatenate([mask[:i], np.zeros(n_image_tokens, bool), mask[i + 1 :]])
    return ids, mask


def answer_pointers(
    record: dict,
    scene: Scene,
    mask: np.ndarray,
    grid: int,
    ids: np.ndarray | None = None,
    tokenizer=None,
) -> np.ndarray | None:
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
    centres = [(r * grid + c, o) for r, c, o in centre_patches(scene, grid)]
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
            # (b - a,) the position of each token's last character in the answer
            last = np.cumsum([len(p) for p in pieces]) - 1 - at
            for lo, hi, k in turn["sentences"]:
                out[a:b][(last >= lo) & (last < hi)] = patch_of(k)
    return out


def labels_from_mask(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels for the loss: the token where `mask` is set, IGNORE elsewhere."""
    return torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE))


def build_data(
    cfg: TargetTrainConfig, tokenizer, split: str = "train", progress: bool = True
) -> dict:
    """Images (uint8, N x H x W x 3) and one (ids, mask, scene) entry per record."""
    images = np.zeros((cfg.n_scenes, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    grid = cfg.image_size // cfg.patch_size
    patches = np.zeros((cfg.n_scenes, len(PATCH_LABELS), grid * grid), dtype=np.int8)
    words = np.zeros((cfg.n_scenes, grid * grid, N_PATCH_SLOTS), dtype=np.int16)
    ids, masks, pointers, scene, family = [], [], [], [], []
    unpaired = 0  # records whose answers could not be paired with their turns
    scenes = range(cfg.n_scenes)
    for i in tqdm(scenes, desc="world data", unit="scene", disable=not progress, mininterval=5):
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
        print(
            f"world data: {unpaired} records have answers that do not pair with their turns; "
            "they train without pointers",
            file=sys.stderr,
        )
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


def cached_data(cfg: TargetTrainConfig, tokenizer, out: Path, progress: bool = True) -> dict:
    """`build_data` of the train split, kept in `out/data-*.pt` under a name that changes with
    everything that changes the data (scenes, resolution, drills, tokenizer)."""
    vocab_hash = hashlib.sha1(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:8]
    drill = f"-drill{cfg.drill_turns}" if cfg.drill_turns else ""
    size = f"{cfg.n_scenes}-{cfg.image_size}px-{cfg.n_image_tokens}tok"
    path = out / f"data-v8-a{ANSWERS_VERSION}-train-{size}{drill}-{vocab_hash}.pt"
    if path.is_file():
        return torch.load(path)
    data = build_data(cfg, tokenizer, progress=progress)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def batch_order(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    repeats: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Shuffled batches of records of similar length (sorted within pools of 32 batches);
    record i appears repeats[i] times (default once)."""
    g = np.random.default_rng([seed, epoch])
    pool_idx = np.arange(len(lengths))
    if repeats is not None:
        pool_idx = np.repeat(pool_idx, repeats)
    perm = pool_idx[g.permutation(len(pool_idx))]
    pool = 32 * batch_size
    batches = []
    for s in range(0, len(perm), pool):
        chunk = perm[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[k] for k in g.permutation(len(batches))]


def collate(
    data: dict,
    idx: np.ndarray,
    pad_id: int,
    bos_id: int | None = None,
    extra_bos: np.ndarray | None = None,
    image_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded batch. Sequences flagged in `extra_bos` get a second <s> in front, so the
    model is trained on both forms of its prompt (one <s>, or two as some hand-written pipelines
    give: a template that writes <s> and a tokenizer that adds one).
    "pointer" (with `image_id`, the <image> token id): see `answer_pointers`; all -1 without.
    "weights" (B, T), only when the data has "token_weights" (per row: (L,) float, or None for
    all 1): the answer loss's weight per token, 1 in the padding.
    "motion" (B, F, P), only when the data has it (clips): each row's frames' motion labels."""
    seqs = [data["ids"][k].long() for k in idx]
    if extra_bos is not None:
        bos = torch.tensor([bos_id])
        seqs = [torch.cat([bos, s]) if e else s for s, e in zip(seqs, extra_bos, strict=True)]
    T = 32 * math.ceil(max(len(s) for s in seqs) / 32)  # few distinct shapes: small kernel caches
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)  # (B, T) answer tokens
    attn = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T) real tokens
    # (B, T) the key position query t must attend to (-1: none): token t + 1's pointer, shifted
    # to the image tokens' place in the sequence, since query t predicts token t + 1
    pointer = torch.full((len(seqs), T), -1, dtype=torch.long)
    weights = torch.ones((len(seqs), T)) if "token_weights" in data else None  # (B, T)
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
        if weights is not None and data["token_weights"][k] is not None:
            weights[b, shift:n] = data["token_weights"][k]
    scenes = data["scene"][torch.as_tensor(idx)]
    img = data["images"][scenes]  # (B, H, W, 3) uint8
    extra = {} if weights is None else {"weights": weights}
    if "motion" in data:
        extra["motion"] = data["motion"][scenes].long()  # (B, F, P), -1 = unknown
    return extra | {
        "patch_labels": data["patches"][scenes].long(),  # (B, len(PATCH_LABELS), P)
        "patch_words": data["patch_words"][scenes].long(),  # (B, P, N_PATCH_SLOTS)
        "input_ids": input_ids,
        "attention_mask": attn,
        "labels": labels_from_mask(input_ids, mask),
        "pointer": pointer,
        "pixel_values": normalize(img),
    }
