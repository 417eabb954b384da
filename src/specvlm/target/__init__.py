"""Target adapters: one per model family, chosen by the checkpoint's `architectures`."""

from __future__ import annotations

from pathlib import Path

import torch

from specvlm.errors import UnsupportedModelError
from specvlm.target.base import Prefill, Prompt, Target, TargetInfo, Verified
from specvlm.target.llava import LlavaTarget, read_config
from specvlm.target.video_llava import VideoLlavaTarget

ADAPTERS = {
    "LlavaForConditionalGeneration": LlavaTarget,
    "VideoLlavaForConditionalGeneration": VideoLlavaTarget,
}

__all__ = ["Prefill", "Prompt", "Target", "TargetInfo", "Verified", "load_target", "modalities"]


def modalities(target: Target) -> tuple[str, ...]:
    """What a target reads: its `modalities` attribute, else LLaVA's ("text", "image").

    A target that reads "video" takes `prepare(prompt, images, video=...)`."""
    return tuple(getattr(target, "modalities", ("text", "image")))


def load_target(
    folder: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> Target:
    config = read_config(Path(folder))
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in ADAPTERS:
            return ADAPTERS[arch](folder, device=device, dtype=dtype)
    raise UnsupportedModelError(
        f"{folder}: architecture {', '.join(archs) or '(none listed in config.json)'} is not "
        f"supported as a target; supported: {', '.join(ADAPTERS)}"
    )
