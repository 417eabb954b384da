"""Tiny Video-LLaVA checkpoints built in code, for tests (`specvlm.tiny` does the same for LLaVA).

`build_tiny_video_llava(folder, ...)` writes a real Hugging Face `VideoLlavaForConditionalGeneration`
folder: config, safetensors, the byte-level BPE tokenizer of `specvlm.tiny` with `<video>` added
as one more special token, a chat template that places `<image>` and `<video>` items, and a
`processor_config.json` in the layout `VideoLlavaProcessor.save_pretrained` writes (its image
processor's and video processor's settings nested in it). `transformers`' video processor needs
torchvision, which this project does not install, so the processor's files are written here as
JSON rather than by `VideoLlavaProcessor` itself; with torchvision, `AutoProcessor` loads them.
The weights are random, with a wide spread so that greedy decoding has no near-ties.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from specvlm.hf_quiet import quiet_transformers

VIDEO_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'video' %}<video>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_video_tokenizer():
    """`specvlm.tiny`'s tokenizer plus `<video>` (one special token, the last id)."""
    from tokenizers import AddedToken

    from specvlm.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(
        [AddedToken("<video>", special=True, normalized=False)], special_tokens=True
    )
    tokenizer.chat_template = VIDEO_CHAT_TEMPLATE
    return tokenizer


def build_tiny_video_llava(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 4,
    intermediate_size: int = 128,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    vision_feature_layer: int = -2,
    num_frames: int = 4,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 1024,
    with_eos: bool = True,
    init_std: float = 0.2,
    head_std: float = 0.5,
) -> Path:
    """Write a tiny random VideoLlavaForConditionalGeneration folder and return its path.

    num_frames: the frames a video is sampled to (the video processor's `num_frames`; the real
    Video-LLaVA checkpoints leave it unset, and 8 is used). init_std 0.2 (LLaVA's tiny: 0.1):
    at 0.1 this model's greedy answers settle into repeating one token within a few steps."""
    from transformers import (
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
    )

    from specvlm.tiny import init_tiny_head, tiny_configs

    folder = Path(folder)
    tokenizer = tiny_video_tokenizer()
    text_config, vision_config = tiny_configs(
        tokenizer, "llama", hidden_size, num_layers, num_heads, num_kv_heads,
        intermediate_size, vision_hidden_size, vision_layers, image_size, patch_size,
        tie_word_embeddings, max_position_embeddings, with_eos, init_std,
    )  # fmt: skip
    patches = (image_size // patch_size) ** 2
    config = VideoLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        image_seq_length=patches,  # CLS dropped ("default")
        video_seq_length=num_frames * (patches + 1),  # a video keeps each frame's CLS
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).eval()
    init_tiny_head(model, tokenizer, head_std)
    pixels = {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
    }
    with quiet_transformers():
        image_processor = VideoLlavaImageProcessor(**pixels).to_dict()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    image_processor.pop("processor_class", None)
    video_processor = {  # VideoLlavaVideoProcessor's own settings, at this size
        **{k: image_processor[k] for k in ("do_resize", "do_center_crop", "do_rescale")},
        **{k: image_processor[k] for k in ("rescale_factor", "do_normalize", "image_mean")},
        **{k: image_processor[k] for k in ("image_std", "do_convert_rgb", "resample")},
        **pixels,
        "default_to_square": False,
        "do_sample_frames": False,
        "num_frames": num_frames,
        "video_processor_type": "VideoLlavaVideoProcessor",
    }
    processor = {
        "processor_class": "VideoLlavaProcessor",
        "image_processor": image_processor,
        "video_processor": video_processor,
        "patch_size": patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "image_token": "<image>",
        "video_token": "<video>",
    }
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(VIDEO_CHAT_TEMPLATE)
    return folder
