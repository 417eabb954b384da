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
already say what is where; learning that through the answer loss alone was the slow part.
Stage 2: the whole LLaVA on the answers, with the patch loss kept on at `aux_weight`, and an
alignment loss (`align_weight`) that pulls the projector's output at each object's centre patch
towards the sum of the decoder's own (detached) embeddings of the words naming it (" red",
" star", " small"), plus two fixed codes for its region (row third, column third;
`region_codes`): the decoder then finds objects in the image the way it finds words earlier in
its context, which it learns far sooner than an arbitrary visual code; every other patch is
pulled (at `align_blank_weight`) towards one fixed vector, the never-input <image> embedding
row, so patches without an object read alike. A pointer loss (`pointer_weight`) points one
attention head at the object a closed answer, or a description's sentence, is about.
Conversation and multi-turn records (the densest grounding signal per token) appear
`qa_repeats` times per epoch. Stage 2 runs with eager attention (on this CPU the SDPA backward
was a third of a step) and, with `compile`, a `torch.compile`d forward with dynamic shapes:
about 2x the tokens per second after a compile of a few minutes. The patch heads are dropped
when the model is saved; the alignment adds no parameters.

Stage 2 data: every record of the first `n_scenes` train scenes (all five task families, plus
one training-only drill of `drill_turns` short questions per scene; one sequence per record),
rendered at the model resolution, tokenised with the chat template and cached in
`out/data-*.pt`; every other record gets a second <s> in front, as `processor(text=...)` adds
one to the chat template's own. Loss on assistant answer tokens only (the chat template's
generation spans, each answer's </s> and a lone leading space token included). AdamW (0.9,
0.95), linear warmup then cosine to 10% of the peak; the cosine runs on the fraction of the
budget used, steps or minutes, whichever is further. Gradient clipping at 1.0, bf16 autocast on
CPUs with native bf16 (fp32 elsewhere), batches of similar length. A checkpoint (weights,
optimizer, step, elapsed time) is written atomically to `out/checkpoint.pt` every
`ckpt_minutes` and at the end; `resume=True` continues from it.

Modules, in reading order: `config` (TargetTrainConfig, CONFIGS), `model` (tokenizer, LLaVA,
processor, forward), `patches` (per-patch ground truth), `losses`, `data` (records to batches),
`run` (set-up, checkpoints, resume), `loop` (the two stages and the whole run).
"""

from specvlm.world.train_target.config import CONFIGS, TargetTrainConfig
from specvlm.world.train_target.data import (
    answer_pointers,
    batch_order,
    build_data,
    cached_data,
    chat_messages,
    collate,
    encode_record,
    labels_from_mask,
)
from specvlm.world.train_target.loop import lr_at, pretrain_vision, record_repeats, train_target
from specvlm.world.train_target.losses import (
    IGNORE,
    PatchHeads,
    align_loss,
    answer_loss,
    pointer_loss,
    weighted_answer_loss,
    word_targets,
)
from specvlm.world.train_target.model import (
    CLIP_MEAN,
    CLIP_STD,
    build_model,
    build_processor,
    init_weights,
    llava_forward,
    normalize,
    save_model,
    vision_features,
    world_tokenizer,
)
from specvlm.world.train_target.patches import (
    MIN_COVER,
    N_PATCH_SLOTS,
    N_PATCH_WORDS,
    N_REGION_CODES,
    NOTHING_WEIGHT,
    PATCH_LABELS,
    REGIONS,
    centre_patches,
    object_slots,
    patch_labels,
    patch_words,
    region_codes,
    region_thirds,
    word_id,
)
from specvlm.world.train_target.run import make_optimizer, save_checkpoint

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CONFIGS",
    "IGNORE",
    "MIN_COVER",
    "N_PATCH_SLOTS",
    "N_PATCH_WORDS",
    "N_REGION_CODES",
    "NOTHING_WEIGHT",
    "PATCH_LABELS",
    "REGIONS",
    "PatchHeads",
    "TargetTrainConfig",
    "align_loss",
    "answer_loss",
    "answer_pointers",
    "batch_order",
    "build_data",
    "build_model",
    "build_processor",
    "cached_data",
    "centre_patches",
    "chat_messages",
    "collate",
    "encode_record",
    "init_weights",
    "labels_from_mask",
    "llava_forward",
    "lr_at",
    "make_optimizer",
    "normalize",
    "object_slots",
    "patch_labels",
    "patch_words",
    "pointer_loss",
    "pretrain_vision",
    "record_repeats",
    "region_codes",
    "region_thirds",
    "save_checkpoint",
    "save_model",
    "train_target",
    "vision_features",
    "weighted_answer_loss",
    "word_id",
    "word_targets",
    "world_tokenizer",
]
