"""Shared fixtures: tiny LLaVA checkpoints built in code (no downloads), cached per session."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from specvlm.tiny import build_tiny_llava

# Four tiny targets covering the axes the exactness tests must cross.
CONFIGS = {
    "llama-mha-untied-vfl1-32px": dict(
        text_model="llama", num_heads=4, num_kv_heads=4, tie_word_embeddings=False,
        vision_feature_layer=-1, image_size=32, seed=0,
    ),
    "llama-gqa-tied-vfl2-48px": dict(
        text_model="llama", num_heads=4, num_kv_heads=2, tie_word_embeddings=True,
        vision_feature_layer=-2, image_size=48, seed=1,
    ),
    "qwen2-gqa-untied-vfl2-32px": dict(
        text_model="qwen2", num_heads=4, num_kv_heads=1, tie_word_embeddings=False,
        vision_feature_layer=-2, image_size=32, seed=2,
    ),
    "mistral-mha-tied-vfl1-48px": dict(
        text_model="mistral", num_heads=2, num_kv_heads=2, tie_word_embeddings=True,
        vision_feature_layer=-1, image_size=48, seed=3,
    ),
}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests check behaviour, not speed: thousands of tiny ops run fastest on one thread, and
    two threads on a busy 2-core machine thrash (each op waiting a scheduler slice)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """Nothing a user tuned or cached in ~/.cache/specvlm leaks into the tests."""
    os.environ["SPECVLM_CACHE"] = str(tmp_path_factory.mktemp("specvlm-cache"))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {
        name: build_tiny_llava(root / name, num_layers=3, with_eos=False, **cfg)
        for name, cfg in CONFIGS.items()
    }


@pytest.fixture(scope="session")
def tiny_dir(tiny_dirs):
    return tiny_dirs["llama-mha-untied-vfl1-32px"]


def noise_image(seed: int, size: tuple[int, int] = (40, 52)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[0], size[1], 3), dtype=np.uint8))


def clip_inputs(i: int):
    """(frames, event stream) of world test clip i, as the video and event drafters read them."""
    from specvlm.world.dataset import clip_events
    from specvlm.world.splits import split_seed, world_sample
    from specvlm.world.train_target.events import clip_frames

    frames = clip_frames("test", i)
    events = clip_events(world_sample("test", i, "video"), split_seed("test", i), 128)
    return frames, events


def world_video_pair(root):
    """The world video target as assembled from the shipped world target (untrained on video:
    its answers are poor, but it is a real 12-layer Video-LLaVA with the world tokenizer) and
    the shipped 2-layer world LLaVA marked as an event drafter: (target folder, drafter folder)."""
    import json
    import shutil

    from specvlm import embedded
    from specvlm.draft.separate import DRAFTER_FILE
    from specvlm.world.video_target import assemble_world_video

    target = assemble_world_video(embedded.embedded_target(), root / "video")
    drafter = root / "drafter"
    shutil.copytree(embedded.embedded_baseline(), drafter)
    settings = {"reads": "events", "size": 128, "n_slices": 4, "sensor": [128, 128]}
    (drafter / DRAFTER_FILE).write_text(json.dumps(settings))
    return target, drafter
