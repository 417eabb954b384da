"""The world video target's starting point: a Video-LLaVA assembled from a world image target.

    assemble_world_video("src/specvlm/assets/world-target", "runs/world-video-init")

A `VideoLlavaForConditionalGeneration` folder whose image tower AND video tower are the world
target's vision tower, whose projector and language model are the world target's own, with its
tokenizer (which already holds `<video>`) and chat template (which already places video items).
A video is `num_frames` frames of the world's 128 px canvas; Video-LLaVA keeps each frame's CLS
token, so 8 frames read as 8 x 65 = 520 visual tokens (an image: 64, CLS dropped, as before).
On images it is the world target, token for token (`tests/test_world_video.py`); on video it
has never been trained: `specvlm world train-target --config video` (issue 23) starts here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers

NUM_FRAMES = 8  # Video-LLaVA's own frame count
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


def assemble_world_video(
    image_target: str | Path, out: str | Path, num_frames: int = NUM_FRAMES
) -> Path:
    """Write the Video-LLaVA folder built from the world LLaVA folder `image_target` to `out`
    (float32 weights; the same result every time) and return `out`."""
    from transformers import (
        LlavaForConditionalGeneration,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
    )

    image_target, out = Path(image_target), Path(out)
    config_file = image_target / "config.json"
    if not config_file.is_file():
        raise InputError(f"{image_target} is not a model folder (no config.json)")
    if "LlavaForConditionalGeneration" not in json.loads(config_file.read_text()).get(
        "architectures", []
    ):
        raise InputError(f"{image_target} is not a LLaVA folder; a world image target is needed")
    if num_frames < 1:
        raise InputError(f"num_frames must be at least 1, got {num_frames}")
    with quiet_transformers():
        llava = LlavaForConditionalGeneration.from_pretrained(image_target, dtype=torch.float32)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(image_target)
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    if video_id is None or video_id == tokenizer.unk_token_id:
        raise InputError(f"{image_target}'s tokenizer has no <video> token")
    cfg = llava.config
    vision = cfg.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    config = VideoLlavaConfig(
        vision_config=vision.to_dict(),
        text_config=cfg.text_config.to_dict(),
        image_token_index=cfg.image_token_id,
        video_token_index=video_id,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        projector_hidden_act=cfg.projector_hidden_act,
        image_seq_length=patches,  # CLS dropped ("default")
        video_seq_length=num_frames * (patches + 1),  # a video keeps each frame's CLS
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    model = VideoLlavaForConditionalGeneration(config).eval()
    parts = {  # Video-LLaVA module <- LLaVA module
        model.model.image_tower: llava.model.vision_tower,
        model.model.video_tower: llava.model.vision_tower,
        model.model.multi_modal_projector: llava.model.multi_modal_projector,
        model.model.language_model: llava.model.language_model,
        model.lm_head: llava.lm_head,
    }
    for mine, theirs in parts.items():
        mine.load_state_dict(theirs.state_dict(), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out)
    for name in _COPIED:
        if (image_target / name).is_file():
            shutil.copy(image_target / name, out / name)
    image_processor = json.loads((image_target / "processor_config.json").read_text())[
        "image_processor"
    ]
    image_processor["image_processor_type"] = "VideoLlavaImageProcessor"
    keys = ("do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize")
    keys += ("image_mean", "image_std", "do_convert_rgb", "resample", "size", "crop_size")
    video_processor = {k: image_processor[k] for k in keys if k in image_processor}
    video_processor |= {
        "default_to_square": False,
        "do_sample_frames": False,
        "num_frames": num_frames,
        "video_processor_type": "VideoLlavaVideoProcessor",
    }
    processor = {
        "processor_class": "VideoLlavaProcessor",
        "image_processor": image_processor,
        "video_processor": video_processor,
        "patch_size": vision.patch_size,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,
        "image_token": "<image>",
        "video_token": "<video>",
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return out
