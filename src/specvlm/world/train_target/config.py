"""The world target recipe's settings: `TargetTrainConfig` and the named `CONFIGS`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetTrainConfig:
    """Model size, data and optimisation of one world-target training run (`train_target`)."""

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
    # embeddings to its centre patch's target. Fixed orthonormal codes, not the region's own
    # words, which blurred the colour (colour embeddings lie close together); a larger share
    # crowds the colour out of what the decoder reads (docs/history/world-runs.md has the measurements).
    region_scale: float = 0.6
    # stage 2: point one attention head (head 0 of decoder layer `pointer_layer`) at the object
    # a closed answer is about: at every token of a colour, shape or position answer, a
    # cross-entropy between that head's attention and the object's centre patch, times
    # `pointer_weight` (0 = off). Without it the decoder read a region from the image tokens,
    # but often from the wrong object, most often the last one in reading order (docs/history/world-runs.md).
    pointer_weight: float = 0.2
    pointer_layer: int = 6
    # stage 2 speed: eager attention (faster than SDPA's CPU backward at these sizes) and
    # torch.compile with dynamic shapes (~2x tokens/s on a 2-core CPU after a ~4 min compile)
    compile: bool = True

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


CONFIGS: dict[str, TargetTrainConfig] = {
    "default": TargetTrainConfig(),
    # the shipped embedded target
    "small": TargetTrainConfig(hidden=192, intermediate=512, vision_hidden=128),
    # the classic separate draft model (hf-assisted baseline): same tokenizer, two layers
    "baseline": TargetTrainConfig(
        hidden=192, layers=2, intermediate=512, vision_hidden=128, pointer_layer=1
    ),
    # for tests: seconds on a CPU
    "tiny": TargetTrainConfig(
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
