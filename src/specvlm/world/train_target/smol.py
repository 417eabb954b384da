"""Train the world-smol target: SmolLM2-135M-Instruct taught to see the world (issue 20).

    specvlm world train-target --config smol --out runs/world-smol --minutes 110
    specvlm world train-target --config smol --out runs/world-smol --minutes 110 --resume
    specvlm world train-target --config smol --init runs/world-smol/delta --out runs/next --minutes 60
    train_smol_target("runs/x", config="smol", steps=400)                    # from Python

The model is `specvlm.smol.world_smol_folder()`: SmolLM2 (+ `<image>`), the shipped world
target's vision tower and a fresh projector. SmolLM2's weights stay frozen; so does the vision
tower, unless `train_tower` (v14) trains it too, in both stages, at `tower_lr`.

Stage 1 (`align_steps` steps of `align_batch` images, lr `projector_lr`; a minute or two, not
part of the budget): the projector alone, on the alignment loss only (`losses.align_loss`, as
the world recipe's): its output at the patch holding an object's centre is pulled towards the
sum of SmolLM2's embeddings of the words naming it (" red", " star", " small"; a word of two
tokens by its first) plus its region in SmolLM2's words (" top", " left"; `region_words`, v3: v2
used two fixed codes, which the frozen LM never learned to read) and, with `band_words` (v10),
its band along each axis in the band answers' words (" far" + " left", " above" + " centre"),
and at every other patch towards the
`<image>` embedding. No LM forward is needed (a frozen tower's features are computed once).
Without it the LM barely read the image: a run on the answer loss alone (v1: stage 1 the
projector on the answer loss, 1,200 steps in 104 minutes) answered 47.6% of closed test
questions right. Stage 2 (the whole `--steps` / `--minutes` budget, lr `lr`): LoRA adapters of
rank `lora_rank` on all seven linears of every decoder layer (~4.9 M parameters at r = 16) and
the projector, on the answer loss plus `align_weight` times the alignment loss, over every
record of the first `n_scenes` train scenes (all five
families, plus one `drill_turns`-question drill per scene; multiple-choice records `mc_repeats`
times, their option letter's loss weighted `letter_weight`; reasoning records
`reasoning_repeats` times, multiturn ones `multiturn_repeats` times; every answer's verdict,
after its last ", so ", weighted `verdict_weight`), mixed with `text_share` text-only
rows: `text_prompts` general prompts (`TEXT_PROMPTS`) answered by SmolLM2 itself, greedily,
in at most `text_tokens` tokens, once at data-build time; training on its own answers keeps
its text-only behaviour. Batches, schedule, checkpoints and the log are the world recipe's
(`loop.train_llava`): each stage writes `stage{1,2}.pt` atomically every `ckpt_minutes` and at
its end, and `resume=True` continues from the latest.

A checkpoint and the final output hold only what is trained. The run ends by writing
`out/delta/`: `model.safetensors` (fp16: the projector and the adapters, ~11 MB at r = 16, and
the vision tower, ~1.8 MB, where it was trained or the `--init` delta carried one)
and `delta.json` (rank, alpha, the base it was trained on, the recipe's settings, and `init`:
the delta a `--init` run continued, with its own history nested). `--init DELTA` starts from
that delta (fresh optimizer and schedule) with `refresh_steps` stage-1 steps (default none)
before stage 2: how a later session goes on. `specvlm.smol.
trained_world_smol_folder(delta)` assembles the full target from the wheel's base and it,
merging the adapters into the linears: a plain LlavaForConditionalGeneration.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.world.language import ANSWERS_VERSION, FAMILIES, make_drill, make_record
from specvlm.world.qa_image import AXIS_BANDS, band
from specvlm.world.scenes import Scene, render
from specvlm.world.splits import world_sample
from specvlm.world.train_target.data import encode_record
from specvlm.world.train_target.loop import Budget, _set_lr, lr_at, train_llava
from specvlm.world.train_target.lora import (
    LORA,
    PROJECTOR,
    TARGETS,
    TOWER,
    add_lora,
    delta_tensors,
    round_to_fp16,
)
from specvlm.world.train_target.losses import align_loss
from specvlm.world.train_target.model import normalize, vision_features
from specvlm.world.train_target.patches import N_PATCH_SLOTS, centre_patches, object_slots
from specvlm.world.train_target.run import (
    Run,
    _load_checkpoint,
    make_optimizer,
    on_two_threads,
)
from specvlm.world.train_target.weights import weigh_answers

DELTA_FORMAT = 1


@dataclass(frozen=True)
class SmolTrainConfig:
    """Data, adapters and optimisation of one world-smol training run."""

    n_scenes: int = 2000
    drill_turns: int = 4  # one training-only drill of this many questions per scene (0: none)
    text_share: float = 0.1  # share of text-only rows (SmolLM2's own answers)
    text_prompts: int = 250  # how many of TEXT_PROMPTS (all 250; v2-v6 had the first 100 of 100)
    text_tokens: int = 48  # at most this many answer tokens each
    image_size: int = 128  # the world target's vision tower: 64 patches of 16 px
    n_image_tokens: int = 64
    batch_size: int = 8
    align_steps: int = 2000  # stage 1: the projector on the alignment loss alone
    align_batch: int = 64  # images per stage-1 step
    projector_lr: float = 1e-3
    projector_warmup_steps: int = 20
    align_weight: float = 1.0  # stage 2: the alignment loss beside the answer loss
    align_blank_weight: float = 0.5  # patches without an object's centre -> <image>
    region_scale: float = 0.6  # the region's share of the alignment target
    # the region as SmolLM2's own words (" top", " left", " center", ...) instead of fixed codes
    # that mean nothing to the frozen LM (v2 read position at 24%)
    region_words: bool = True
    # (v10) the object's band along each axis too, in the band answers' own words (" far" +
    # " left", " above" + " centre", ...: `qa_image.AXIS_BANDS`), at `region_scale`: the
    # comparisons of places ("furthest to the left", "to the right of") read fifths, not thirds
    band_words: bool = False
    band_scale: float | None = None  # the band words' share (None: `region_scale`)
    # (v14) train the vision tower too, at this peak learning rate (following each stage's
    # schedule): the frozen tower gives an object's band (fifth) to ~80% only, its thirds to 99%
    # (`scripts/smol_band_probe.py`); the delta then carries the tower
    train_tower: bool = False
    tower_lr: float = 1e-4
    # with `--init`: this many stage-1 steps (the alignment loss alone, projector and a trained
    # tower) from the delta's weights before stage 2, e.g. to teach new alignment targets
    refresh_steps: int = 0
    # > 0: on the text-only rows, add this times KL(SmolLM2 || the model) over their answer
    # tokens, SmolLM2 being the same model with its adapters off: the whole distribution of
    # the base kept, not only its greedy answer (v2-v10 kept only the latter, and lost some of
    # SmolLM2's held-out answers)
    text_kl: float = 0.0
    lr: float = 2e-4  # stage 2
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = TARGETS
    qa_repeats: int = 1
    # multiple choice (v5): its records this many times per epoch, and the answer's option
    # letter weighted this much in the answer loss (v4 wrote the letter first, nearly blindly)
    mc_repeats: int = 1
    letter_weight: float = 1.0
    reasoning_repeats: int = 1  # reasoning records this many times per epoch (v7)
    # multiturn records this many times per epoch (v16): their second and third turns were
    # the families still under 85% in v15
    multiturn_repeats: int = 1
    # every answer's verdict (its tokens after the last ", so ": "the pink star is closest to
    # ...") weighted this much in the answer loss: v9 stated the right facts and then drew the
    # wrong conclusion in 5 of its 14 wrong reasoning answers
    verdict_weight: float = 1.0
    seed: int = 0  # the projector's initialisation (the base folder) and the adapters'
    bf16: bool = True
    compile: bool = False
    # > 0: the smol-assistant recipe (`smol_assistant.py`), the target cut to this many layers
    assistant_layers: int = 0

    # the world recipe's other auxiliary losses (`loop.train_step` reads them): off here
    @property
    def aux_weight(self) -> float:
        return 0.0

    @property
    def pointer_weight(self) -> float:
        return 0.0


SMOL_CONFIGS: dict[str, SmolTrainConfig] = {
    "smol": SmolTrainConfig(),
    # for tests, on the tiny GGUF of tests/test_smol.py: seconds
    "smol-tiny": SmolTrainConfig(
        n_scenes=6,
        drill_turns=2,
        text_share=0.3,
        text_prompts=4,
        text_tokens=6,
        batch_size=4,
        align_steps=6,
        align_batch=4,
        projector_warmup_steps=1,
        warmup_steps=1,
        lr=3e-3,
        projector_lr=1e-3,
        lora_rank=4,
        lora_alpha=8.0,
        bf16=False,
    ),
    # the small assistant of hf-assisted (`smol_assistant.py`): the first 4 layers, fine-tuned
    "smol-assistant": SmolTrainConfig(
        assistant_layers=4, lr=5e-4, warmup_steps=30, align_weight=0.0, weight_decay=0.0
    ),
}
SMOL_CONFIGS["smol-assistant-tiny"] = replace(
    SMOL_CONFIGS["smol-tiny"], assistant_layers=1, align_weight=0.0
)

# General prompts whose SmolLM2 answers are the text-only rows (deterministic, no data files).
_ASK = """
What is the capital of {}? | France; Japan; Italy; Canada; Egypt; Spain; Brazil; Kenya; India; Norway
Explain {} in one sentence. | gravity; photosynthesis; inflation; a rainbow; the internet; a vaccine; democracy; an atom; recycling; a volcano
Give me one tip for {}. | sleeping better; learning a language; saving money; cooking rice; staying focused; running; public speaking; writing an email; studying; gardening
Write a short sentence about {}. | the sea; autumn; a cat; the moon; coffee; friendship; a city at night; mountains; rain; books
What is {}? | 7 plus 5; 12 times 3; half of 50; 100 minus 37; 9 squared; the square root of 81; 15 divided by 3; 2 to the power of 5; a prime number; a triangle
Name three {}. | fruits; colors; planets; musical instruments; countries in Europe; sports; animals that fly; kinds of trees; programming languages; vegetables
Translate '{}' into French. | good morning; thank you; the red apple; where is the station; I like books; see you tomorrow; the blue sky; a cup of tea; my friend; happy birthday
Who was {}? | Albert Einstein; Marie Curie; William Shakespeare; Leonardo da Vinci; Isaac Newton; Ada Lovelace; Charles Darwin; Mozart; Cleopatra; Nelson Mandela
Why {}? | is the sky blue; do leaves change color; do we need sleep; is the ocean salty; do birds migrate; does ice float; do we have seasons; is exercise healthy; does bread rise; do stars twinkle
How do I {}? | boil an egg; tie a tie; make tea; write a haiku; plant a seed; reverse a list in Python; clean a window; fold a paper plane; start a journal; center a div in CSS
What is the opposite of {}? | hot; early; generous; ancient; loud; empty; victory; narrow; arrive; bright
Give an example of {}. | a mammal; a renewable energy source; a noun; a chemical element; a musical genre; a board game; a citrus fruit; a primary color; a verb; a desert
How many {}? | days are in a week; legs does a spider have; continents are there; minutes are in an hour; sides does a hexagon have; months have 31 days; players are on a soccer team; hours are in a day; strings does a violin have; centimeters are in a meter
What is the difference between {}? | weather and climate; a virus and a bacterium; a lake and a river; speed and velocity; a frog and a toad; a city and a village; a poem and a story; a noun and a verb; baking and frying; a moth and a butterfly
List two benefits of {}. | reading; walking; drinking water; learning music; eating vegetables; getting up early; keeping a diary; cycling to work; volunteering; meditation
Write a haiku about {}. | spring; the wind; a candle; snowfall; a train; the desert; a lighthouse; falling leaves; a river; the stars
Suggest a name for {}. | a pet goldfish; a bakery; a robot; a sailing boat; a cat; a coffee shop; a fantasy kingdom; a rock band; a hiking club; a garden
Is {} a fruit or a vegetable? | a tomato; a carrot; an apple; broccoli; a banana; a potato; a cucumber; a strawberry; spinach; a pumpkin
Correct the grammar of this sentence: '{}' | she go to school every day; they was happy; I has two brother; he don't like apples; we is going home; the cats sleeps; me and him went out; she have a red car; there is three books; I seen it yesterday
Convert {}. | 3 kilometers to meters; 2 hours to minutes; 5 meters to centimeters; 1 day to hours; 4 liters to milliliters; 2 kilograms to grams; 90 minutes to hours; 1,000 grams to kilograms; 3 weeks to days; 6 feet to inches
What color is {}? | the sky on a clear day; grass; a banana; snow; a ripe cherry; coal; an orange; a lemon; a fire truck; milk
Describe {} in two sentences. | a forest; a library; a busy market; a thunderstorm; a beach at sunset; a quiet village; a train station; a bakery in the morning; a mountain lake; a classroom
Where does {} live? | a penguin; a camel; a polar bear; a kangaroo; a panda; an octopus; a lion; an owl; a beaver; a koala
What is {} used for? | a thermometer; a compass; a hammer; a microscope; a spreadsheet; a ladder; a calculator; a map; a whisk; a telescope
Finish this sentence: '{}' | The best thing about summer is; A good friend is someone who; When it rains, I like to; The most useful invention is; In the morning, I usually; My favorite meal is; Learning is important because; A library is a place where; The hardest part of a journey is; On weekends, people often
"""  # template | ten subjects
_ROWS = [(q, xs.split("; ")) for q, xs in (line.split(" | ") for line in _ASK.strip().splitlines())]
TEXT_PROMPTS: list[str] = [q.format(xs[k]) for k in range(10) for q, xs in _ROWS]


# ---------------------------------------------------------------------------------------------
# The model and its forward
# ---------------------------------------------------------------------------------------------


def load_base(gguf: str | Path | None = None, cache: str | Path | None = None, seed: int = 0):
    """(folder, model float32, tokenizer) of the untrained world-smol LLaVA."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from specvlm.smol import world_smol_folder

    folder = world_smol_folder(gguf, cache=cache, seed=seed)
    with quiet_transformers():
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return folder, model, tokenizer


def smol_forward(
    model, input_ids: torch.Tensor, pixel_values: torch.Tensor, pointer_layer: int | None = None
) -> tuple[torch.Tensor, ...]:
    """`llava_forward` for batches mixing image and text-only rows, the vision tower run with
    gradients only where it trains (`requires_grad`): (B, T) ids, (B, 3, H, W) pixels -> logits
    (B, T, V), features and projector output of the rows that have an image ((b, P, Dv),
    (b, P, d); None if no row has one)."""
    image = input_ids == model.config.image_token_id  # (B, T)
    has = image.any(dim=1)  # (B,) rows with an image
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
    feats = projected = None
    if bool(has.any()):
        with torch.set_grad_enabled(_tower_trains(model) and torch.is_grad_enabled()):
            feats = vision_features(model, pixel_values[has])  # (b, P, Dv); frozen: no graph
        projected = model.model.multi_modal_projector(feats)  # (b, P, d)
        # row-major fill: the b image rows' P slots take the b projected images in order
        embeds = embeds.masked_scatter(image[..., None], projected.to(embeds.dtype))
    return model(inputs_embeds=embeds, use_cache=False).logits, feats, projected


def _tower_trains(model) -> bool:
    return any(p.requires_grad for p in model.model.vision_tower.parameters())


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def own_answers(
    model, tokenizer, prompts: list[str], max_tokens: int, batch: int = 100
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, answer mask) per prompt: the chat prompt followed by the model's own greedy answer
    (float32, at most `max_tokens` tokens; its <|im_end|> included when it ends in time)."""
    eos = tokenizer.eos_token_id
    rows = []
    for s in range(0, len(prompts), batch):
        prompt_ids = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                return_dict=True,
            )["input_ids"]
            for p in prompts[s : s + batch]
        ]  # fmt: skip
        T = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), T), tokenizer.pad_token_id)  # (b, T) left-padded
        attn = torch.zeros_like(ids)
        for b, p in enumerate(prompt_ids):
            ids[b, T - len(p) :], attn[b, T - len(p) :] = torch.tensor(p), 1
        out = model.generate(
            input_ids=ids, attention_mask=attn, max_new_tokens=max_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        )[:, T:]  # fmt: skip
        for p, answer in zip(prompt_ids, out.tolist(), strict=True):
            if eos in answer:
                answer = answer[: answer.index(eos) + 1]
            ids_ = np.asarray(p + answer, dtype=np.int64)
            mask = np.concatenate([np.zeros(len(p), bool), np.ones(len(answer), bool)])
            rows.append((ids_, mask))
    return rows


PATCH = 16  # pixels per side of one vision-tower patch


ROW_WORDS = ("top", None, "bottom")  # the grammar's regions: "top left", "left", "center", ...
COLUMN_WORDS = ("left", None, "right")


BAND_SLOTS = 4  # two words for the column's band, two for the row's


def band_word_ids(tokenizer) -> dict[str, list[list[int]]]:
    """axis -> per band (0-4) the SmolLM2 ids of the content words of its phrase in
    `qa_image.AXIS_BANDS` ("at the far left" -> " far", " left"; "left of centre" -> " left",
    " centre"), each word by its first token."""
    skip = {"at", "the", "of"}
    out = {
        axis: [
            [tokenizer.encode(" " + w, add_special_tokens=False)[0]
             for w in phrase.split() if w not in skip]
            for phrase in phrases
        ]
        for axis, phrases in AXIS_BANDS.items()
    }  # fmt: skip
    if any(len(ids) != BAND_SLOTS // 2 for bands in out.values() for ids in bands):
        raise ValueError(
            f"each band phrase must have {BAND_SLOTS // 2} content words: {AXIS_BANDS}"
        )
    return out


def smol_patch_words(
    scene: Scene, grid: int, tokenizer, region_words: bool = False, band_words: bool = False
) -> np.ndarray:
    """(grid * grid, N_PATCH_SLOTS) `patches.patch_words` in SmolLM2's ids: a word of several
    tokens (" hexagon" is " hex" + "agon") is named by its first token. `region_words`: the last
    two slots hold the ids of the region's words as the grammar says them (row " top" / " bottom",
    column " left" / " right", the middle " center"; 0 for none) instead of region codes.
    `band_words` (needs `region_words`): BAND_SLOTS more slots (N_PATCH_SLOTS + BAND_SLOTS in
    all) hold the words of the object's column band and row band (`band_word_ids`)."""
    if band_words and not region_words:
        raise InputError("band_words needs region_words (both name places by SmolLM2's words)")

    def tid(word: str) -> int:
        return tokenizer.encode(" " + word, add_special_tokens=False)[0]

    bands = band_word_ids(tokenizer) if band_words else {}
    width = N_PATCH_SLOTS + BAND_SLOTS * band_words
    out = np.zeros((grid, grid, width), dtype=np.int32)
    for r, c, o in centre_patches(scene, grid):
        slots = object_slots(o, tid)
        if region_words:
            row, col = slots[-2] - 1, slots[-1] - 4  # the region codes' thirds
            names = [ROW_WORDS[row], COLUMN_WORDS[col]]
            if names == [None, None]:
                names = ["center", None]
            slots[-2:] = [0 if w is None else tid(w) for w in names]
        if band_words:
            slots += bands["x"][band(o.x)] + bands["y"][band(o.y)]
        out[r, c] = slots
    return out.reshape(grid * grid, width)


def build_smol_data(cfg: SmolTrainConfig, model, tokenizer, progress: bool = True) -> dict:
    """Images and (ids, mask, scene, family) rows, as `loop.train_llava` reads them: every
    record of the first `n_scenes` train scenes, plus the text-only rows repeated to make
    `text_share` of the rows (their scene is 0, an image they never read)."""
    images = np.zeros((cfg.n_scenes, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    grid = cfg.image_size // PATCH  # the tower's patches per side
    if grid * grid != cfg.n_image_tokens:
        raise InputError(
            f"{cfg.image_size} px makes {grid * grid} patches, not {cfg.n_image_tokens}"
        )
    width = N_PATCH_SLOTS + BAND_SLOTS * cfg.band_words
    words = np.zeros((cfg.n_scenes, grid * grid, width), dtype=np.int32)
    ids, masks, scene, family = [], [], [], []
    for i in tqdm(range(cfg.n_scenes), desc="world data", disable=not progress, mininterval=5):
        sample = world_sample("train", i, "image")
        assert isinstance(sample, Scene)
        images[i] = np.asarray(render(sample, cfg.image_size))
        words[i] = smol_patch_words(sample, grid, tokenizer, cfg.region_words, cfg.band_words)
        records = [make_record("train", i, f) for f in FAMILIES]
        if cfg.drill_turns > 0:
            records.append(make_drill("train", i, cfg.drill_turns))
        for record in records:
            a, m = encode_record(record, tokenizer, cfg.n_image_tokens)
            ids.append(torch.from_numpy(a.astype(np.int32)))  # 49,153 ids: int16 is too small
            masks.append(torch.from_numpy(m))
            scene.append(i)
            family.append(record["meta"]["family"])
    start = time.perf_counter()
    text = own_answers(model, tokenizer, TEXT_PROMPTS[: cfg.text_prompts], cfg.text_tokens)
    print(
        f"smol data: {len(text)} text-only answers by the model in "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    n_text = round(cfg.text_share / (1 - cfg.text_share) * len(ids))
    for k in range(n_text):
        a, m = text[k % len(text)]
        ids.append(torch.from_numpy(a.astype(np.int32)))
        masks.append(torch.from_numpy(m))
        scene.append(0)
        family.append("text")
    n = cfg.n_scenes
    return {
        "images": torch.from_numpy(images),  # (N, H, W, 3) uint8
        "patches": torch.zeros((n, 1, 1), dtype=torch.int8),  # no patch-label loss here
        "patch_words": torch.from_numpy(words),  # (N, P, N_PATCH_SLOTS [+ BAND_SLOTS]) int32
        "family": family,
        "ids": ids,
        "masks": masks,
        "scene": torch.tensor(scene),
    }


def cached_smol_data(
    cfg: SmolTrainConfig, model, tokenizer, base: Path, out: Path, progress: bool = True
) -> dict:
    """`build_smol_data`, kept in `out/data-smol-*.pt` under a name that changes with the data's
    settings and the base model folder (its name holds its source's hash)."""
    keys = ("n_scenes", "drill_turns", "text_share", "text_prompts", "text_tokens", "image_size")
    keys += ("region_words",) + ("band_words",) * cfg.band_words  # old runs' names unchanged
    what = {k: getattr(cfg, k) for k in keys} | {"base": base.name, "prompts": TEXT_PROMPTS}
    key = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    path = out / f"data-smol-v3-a{ANSWERS_VERSION}-{cfg.n_scenes}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    data = build_smol_data(cfg, model, tokenizer, progress)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


# ---------------------------------------------------------------------------------------------
# The run: two stages, each a `Run` with its own checkpoint
# ---------------------------------------------------------------------------------------------


def _stage_run(cfg: SmolTrainConfig, model, trained: torch.nn.ModuleDict, path: Path) -> Run:
    """A stage's Run over `trained`; a trained tower (`trained["tower"]`) gets an optimizer
    group of its own whose learning rate is `cfg.tower_lr` at the schedule's peak."""
    others = torch.nn.ModuleDict({k: m for k, m in trained.items() if k != "tower"})
    opt = make_optimizer(cfg, others)
    if "tower" in trained:
        opt.add_param_group({"params": list(trained["tower"].parameters()), "weight_decay": 0.0,
                             "lr_scale": cfg.tower_lr / cfg.lr})  # fmt: skip
    run = Run(cfg, model, None, trained, opt, path)  # no patch heads in this recipe
    run.state = {
        "step": 0, "vision_step": 0, "elapsed": 0.0, "tokens": 0, "config": asdict(cfg),
        "losses": [], "pointer_losses": [], "vision": {}, "init": None,
        "init_tower": False,  # the --init delta carries a vision tower
    }  # fmt: skip
    return run


def align_projector(
    run: Run, data: dict, steps: int, warmup: int, log_every: int, progress: bool
) -> None:
    """Stage 1: `steps` steps (`warmup` of them warming up) of the projector (and a trained
    tower) alone on `align_loss`, over
    random batches of the data's images (seeded by the step: a resumed run draws the same ones).
    A frozen tower's features are computed once; the LM never runs."""
    cfg, model, state = run.cfg, run.model, run.state
    projector = model.model.multi_modal_projector
    embed = model.get_input_embeddings()
    blank = model.config.image_token_id
    tower = _tower_trains(model)
    schedule = replace(cfg, warmup_steps=warmup)
    if tower:
        images = data["images"]
    else:
        with torch.no_grad():
            feats = torch.cat([
                vision_features(model, normalize(data["images"][k : k + 256]))
                for k in range(0, len(data["images"]), 256)
            ])  # (N, P, Dv)  # fmt: skip
    t0 = time.perf_counter() - state["elapsed"]
    bar = tqdm(total=steps, initial=state["step"], desc="align", disable=not progress)
    while state["step"] < steps:
        step = state["step"]
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(data["images"]), (cfg.align_batch,), generator=g)
        _set_lr(run.opt, lr_at(schedule, step, step / steps))
        f = vision_features(model, normalize(images[idx])) if tower else feats[idx]  # (b, P, Dv)
        loss = align_loss(
            projector(f), data["patch_words"][idx].long(), embed, blank,
            cfg.align_blank_weight, cfg.region_scale, cfg.region_words, cfg.band_scale,
        )  # fmt: skip
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.trained.parameters(), cfg.clip_norm)
        run.opt.step()
        state["step"], state["elapsed"] = step + 1, time.perf_counter() - t0
        state["losses"].append(loss.item())
        bar.update(1)
        if state["step"] % log_every == 0 or state["step"] == steps:
            print(f"align step {state['step']} loss {loss.item():.4f}", file=sys.stderr, flush=True)
    bar.close()


@on_two_threads
def train_smol_target(
    out: str | Path,
    config: str | SmolTrainConfig = "smol",
    steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    ckpt_minutes: float = 10.0,
    log_every: int = 10,
    progress: bool = True,
    stop_at: int | None = None,
    gguf: str | Path | None = None,
    cache: str | Path | None = None,
    init: str | Path | None = None,
    **overrides,
) -> dict:
    """Train (or continue) the world-smol target under `out`; write `out/delta/`; return a
    summary. `steps` / `minutes` (at least one) are stage 2's budget (stage 1 is
    `cfg.align_steps` steps, a minute or two). `stop_at` ends this call at that stage-2 step (an interruption
    that `resume=True` continues from). `init` (a delta folder, e.g. the shipped
    `assets/world-smol`) starts from that delta's projector, adapters (and tower, if it has one),
    with a fresh optimizer and schedule, and runs `cfg.refresh_steps` stage-1 steps (default
    none) before stage 2: a later session continues a shipped run. `cfg.train_tower` trains the
    vision tower in both stages (at `cfg.tower_lr`); the delta then carries it.
    Returns the trained model (adapters in place) as "trained_model" too, for tests."""
    if isinstance(config, str) and config not in SMOL_CONFIGS:
        raise InputError(f"unknown --config {config!r}; accepted: {', '.join(SMOL_CONFIGS)}")
    cfg = replace(SMOL_CONFIGS[config] if isinstance(config, str) else config, **overrides)
    if cfg.assistant_layers:
        raise InputError(f"--config {config} is the assistant's recipe (smol_assistant.py)")
    if cfg.bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("train-target: this CPU has no native bf16; training in fp32", file=sys.stderr)
        cfg = replace(cfg, bf16=False)
    if steps is None and minutes is None:
        raise InputError("give --steps or --minutes (or both)")
    if (steps is not None and steps < 2) or (minutes is not None and minutes <= 0):
        raise InputError("--steps must be at least 2 and --minutes positive")
    out = Path(out)
    s1, s2 = out / "stage1.pt", out / "stage2.pt"
    if init is not None and resume:
        raise InputError("--init starts a new run; --resume continues one (its --init is kept)")
    if resume and not s1.is_file():
        raise InputError(f"--resume: no checkpoint at {s1}")
    if not resume and (s1.is_file() or s2.is_file()):
        raise InputError(f"{out} holds a run already: pass --resume, or start a new --out")
    out.mkdir(parents=True, exist_ok=True)

    base, model, tokenizer = load_base(gguf, cache, cfg.seed)
    delta = None if init is None else read_init_delta(Path(init), cfg, base)
    data = cached_smol_data(cfg, model, tokenizer, base, out, progress)
    weigh_answers(data, tokenizer, cfg.letter_weight, cfg.verdict_weight, "smol")
    model.requires_grad_(False)
    projector = model.model.multi_modal_projector
    projector.requires_grad_(True)
    tower = model.model.vision_tower
    tower.requires_grad_(cfg.train_tower)
    stage = {"projector": projector} | ({"tower": tower} if cfg.train_tower else {})
    model.train()
    budget2 = Budget(steps, minutes)
    common = {"ckpt_every": None, "log_every": log_every, "progress": progress}
    common |= {"forward_fn": smol_forward, "double_bos": False, "show_eta": True}

    # Stage 1: the projector alone, on the alignment loss
    cfg1 = replace(cfg, lr=cfg.projector_lr, warmup_steps=cfg.projector_warmup_steps)
    run1 = _stage_run(cfg1, model, torch.nn.ModuleDict(stage), s1)
    if resume:
        _load_checkpoint(run1)
        frozen_carried = run1.state["init_tower"] and not cfg.train_tower  # not checkpointed
        if run1.state["init"] is not None and (not s2.is_file() or frozen_carried):
            delta = read_init_delta(Path(run1.state["init"]), cfg, base)
        if frozen_carried:
            load_delta(delta["tensors"], None, None, tower)
    elif delta is not None:  # the delta's projector and tower, saved at once: a resume keeps them
        load_delta(delta["tensors"], projector, None, tower)
        run1.state["init"] = delta["folder"]
        run1.state["init_tower"] = any(k.startswith(TOWER) for k in delta["tensors"])
        run1.save()
    steps1 = cfg.align_steps if run1.state["init"] is None else cfg.refresh_steps
    if run1.state["step"] < steps1:
        what = "the projector" + (" and the vision tower" if cfg.train_tower else "")
        print(f"smol stage 1: {what} on the alignment loss, {steps1} steps of "
              f"{cfg.align_batch} images", file=sys.stderr, flush=True)  # fmt: skip
        # a short refresh still reaches the peak rate and decays: it warms up for a tenth at most
        warmup = cfg1.warmup_steps if run1.state["init"] is None else min(
            cfg1.warmup_steps, max(1, steps1 // 10))  # fmt: skip
        align_projector(run1, data, steps1, warmup, log_every * 10, progress)
        run1.save()
    # Stage 2: adapters on every decoder linear, and the projector
    adapters = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.seed, cfg.lora_targets)
    trained = torch.nn.ModuleDict(stage | {"lora": adapters})
    run2 = _stage_run(cfg, model, trained, s2)
    if resume and s2.is_file():
        _load_checkpoint(run2)
    elif run1.state["init"] is not None:  # the delta's adapters, saved at once for a resume
        load_delta(delta["tensors"], None, adapters)  # projector, tower: stage 1's
        run2.state["init"] = delta["trained"]
        run2.save()
    n_lora = sum(p.numel() for p in adapters.parameters())
    n_tower = sum(p.numel() for p in tower.parameters()) if cfg.train_tower else 0
    print(
        f"smol stage 2: LoRA r={cfg.lora_rank} ({n_lora / 1e6:.2f} M) + projector"
        + (f" + vision tower ({n_tower / 1e6:.2f} M, lr {cfg.tower_lr:g})" if n_tower else "")
        + f", {_says(budget2)}",
        file=sys.stderr,
        flush=True,
    )
    train_llava(run2, data, tokenizer, budget2, stop_at, ckpt_minutes, **common)
    run2.save()
    done = budget2.progress(run2.state["step"], run2.state["elapsed"]) >= 1.0
    model.eval()
    result = {
        "init": run2.state["init"],
        "steps": run2.state["step"],
        "align_steps": run1.state["step"],
        "elapsed_s": run1.state["elapsed"] + run2.state["elapsed"],
        "tokens": run1.state["tokens"] + run2.state["tokens"],
        "stage1_losses": run1.state["losses"],
        "losses": run2.state["losses"],
        "first_loss": (run2.state["losses"] or [float("nan")])[0],
        "final_loss": _tail_mean(run2.state["losses"]),
        "model": None,
        "trained_model": model,
    }
    if done:
        round_to_fp16(trained)  # the model in memory is now exactly the delta
        tower_too = cfg.train_tower or run1.state["init_tower"]
        result["model"] = str(save_delta(out / "delta", model, adapters, cfg, base, result,
                                         tower=tower_too))  # fmt: skip
    return result


ALIGN_SETTINGS = ("region_words", "band_words", "band_scale", "region_scale", "align_weight")
BEFORE_IT_EXISTED = {"band_words": False}  # what a recipe without the setting was trained with


def read_init_delta(folder: Path, cfg: SmolTrainConfig, base: Path) -> dict:
    """A trained delta to start from (`--init`): its tensors (float32) and how it was trained;
    InputError unless it fits this run's adapters and base model."""
    from safetensors.torch import load_file

    from specvlm.smol import DELTA_WEIGHTS, read_delta_config, read_record, sha256_file

    config = read_delta_config(folder)
    mine = {"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
            "lora_targets": list(cfg.lora_targets)}  # fmt: skip
    theirs = {k: config.get(k) for k in mine}
    if theirs != mine:
        raise InputError(f"--init {folder}: its adapters are {theirs}, this run's {mine}")
    if config["base"] != read_record(base)["source"]:
        raise InputError(
            f"--init {folder} was trained on another base model than {base} (the projector's "
            f"seed is part of the base: it has seed {config.get('seed')}, this run {cfg.seed})"
        )
    recipe = config.get("recipe", {})  # deltas before 2026-12-03 did not record it
    # a setting added after the delta was trained was off then
    theirs = {k: recipe.get(k, BEFORE_IT_EXISTED.get(k)) for k in ALIGN_SETTINGS} if recipe else {}
    mine = {k: getattr(cfg, k) for k in ALIGN_SETTINGS}
    for d in (theirs, mine):  # the band words' scale as used: None is the region's
        if d and d["band_scale"] is None:
            d["band_scale"] = d["region_scale"]
    theirs = {k: v for k, v in theirs.items() if v is not None}
    differ = [k for k in theirs if theirs[k] != mine[k]]
    if differ:
        print(f"--init {folder}: trained with other settings of {', '.join(differ)} "
              f"({ {k: theirs[k] for k in differ} }) than this run", file=sys.stderr)  # fmt: skip
    tensors = {k: v.float() for k, v in load_file(str(folder / DELTA_WEIGHTS)).items()}
    lineage = config.get("trained", {}) | {
        "folder": str(folder.resolve()), "sha256": sha256_file(folder / DELTA_WEIGHTS),
        "from": config.get("init"),
    }  # fmt: skip
    return {"folder": str(folder.resolve()), "tensors": tensors, "trained": lineage}


def load_delta(
    tensors: dict,
    projector: torch.nn.Module | None,
    adapters: torch.nn.ModuleList | None,
    tower: torch.nn.Module | None = None,
) -> None:
    """Put a delta's weights into the (unmerged) training modules given (None: not that part);
    the tower only where the delta carries one (else it stays the base's)."""
    parts = ((PROJECTOR, projector), (LORA, adapters), (TOWER, tower))
    for prefix, module in parts:
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if module is not None and (own or prefix != TOWER):
            module.load_state_dict(own)


def _tail_mean(losses: list[float]) -> float:
    """The mean of the last tenth of `losses` (up to 50), as the world recipe reports it."""
    tail = losses[-max(1, min(50, len(losses) // 10)) :]
    return float(np.mean(tail)) if tail else float("nan")


def _says(budget: Budget) -> str:
    parts = [f"{budget.steps} steps"] if budget.steps is not None else []
    parts += [f"{budget.minutes:.1f} min"] if budget.minutes is not None else []
    return " or ".join(parts)


def save_delta(
    folder: Path, model, adapters: torch.nn.ModuleList, cfg: SmolTrainConfig, base: Path,
    result: dict, tower: bool = False,
) -> Path:  # fmt: skip
    """Write `folder/model.safetensors` (the fp16 delta; with `tower`, the vision tower too) and
    `folder/delta.json`, atomically."""
    from safetensors.torch import save_file

    from specvlm.smol import DELTA_CONFIG, DELTA_WEIGHTS, read_record

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(delta_tensors(model, adapters, tower), str(tmp / DELTA_WEIGHTS))
    config = {
        "format": DELTA_FORMAT,
        "kind": "world-smol-delta",
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_targets": list(cfg.lora_targets),
        "seed": cfg.seed,
        "base": read_record(base)["source"],
        "trained": {
            "steps": result["steps"],
            "align_steps": result["align_steps"],
            "minutes": round(result["elapsed_s"] / 60, 1),
            "final_loss": round(result["final_loss"], 4),
        },
        "init": result.get("init"),  # the delta this run started from: its own "trained", nested
        "recipe": {k: v for k, v in asdict(cfg).items() if k != "lora_targets"},
        "answers_version": ANSWERS_VERSION,  # the wording of the world answers it was trained on
    }
    (tmp / DELTA_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    from specvlm.world.train_target.model import _replace_dir

    _replace_dir(tmp, folder)
    return folder
