"""The world target's parts: tokenizer, LLaVA model, processor; loading, saving, the forward.

The model is a real `transformers` LlavaForConditionalGeneration (CLIP-style vision tower,
LLaVA MLP projector, Llama decoder) with the world tokenizer and a LlavaProcessor whose CLIP
image processor `normalize` mirrors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.world.train_target.config import TargetTrainConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN / STD, as CLIPImageProcessor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def world_tokenizer(cfg: TargetTrainConfig, out: Path):
    """The world tokenizer, trained once and kept in `out/tokenizer/`."""
    from transformers import AutoTokenizer

    from specvlm.world.tokenizer import build_world_tokenizer

    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        build_world_tokenizer(folder, n_samples=cfg.tokenizer_samples)
    return AutoTokenizer.from_pretrained(str(folder))


def build_model(cfg: TargetTrainConfig, tokenizer):
    """A freshly initialised LLaVA of `cfg`'s sizes (weights drawn after seeding `cfg.seed`)."""
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


def build_processor(cfg: TargetTrainConfig, tokenizer):
    """The LlavaProcessor saved with the model: CLIP image processing at `cfg.image_size`."""
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


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> CLIP-normalised float (..., 3, H, W), as the image processor
    does: images (B, H, W, 3), or videos (B, F, H, W, 3)."""
    x = img.movedim(-1, -3).float() / 255.0  # (..., 3, H, W)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std).contiguous()  # channels-first memory: 30x faster conv in bf16


def init_weights(model, tokenizer, folder: Path) -> None:
    """Load a trained world target's weights (`folder`, as `save_model` wrote it) into `model`,
    in `model`'s dtype; InputError when its tokenizer or any weight's name or shape differs."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    if AutoTokenizer.from_pretrained(str(folder)).get_vocab() != tokenizer.get_vocab():
        raise InputError(f"--init: {folder} has another tokenizer than this recipe's")
    with quiet_transformers():
        src = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    own, theirs = model.state_dict(), src.state_dict()
    bad = sorted(
        k
        for k in own.keys() | theirs.keys()
        if k not in own or k not in theirs or own[k].shape != theirs[k].shape
    )
    if bad:
        raise InputError(
            f"--init: {folder} does not fit this config ({len(bad)} weights differ in name or "
            f"shape, e.g. {bad[0]!r})"
        )
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


def vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, P, D): the vision tower's features the LLaVA projector reads."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]  # drop CLS


def llava_forward(
    model, input_ids: torch.Tensor, pixel_values: torch.Tensor, pointer_layer: int | None = None
) -> tuple[torch.Tensor, ...]:
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
