"""Tiny LLaVA checkpoints built in code: for tests, and the demo until trained models ship.

`build_tiny_llava(folder, ...)` writes a real Hugging Face LLaVA folder (config, safetensors,
a byte-level BPE tokenizer trained here on a few sentences, a chat template, an image processor)
that `transformers` loads like any other. The weights are random, initialised with a wide spread
so that next-token logits are decisive (no near-ties that would make exactness tests flaky).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from specvlm.hf_quiet import quiet_transformers

CORPUS = [
    "a red circle is left of a blue square on a plain background.",
    "there are three objects: a green triangle, a yellow star and a small purple hexagon.",
    "the large orange cross is in the top right corner, above the cyan diamond.",
    "how many shapes are there? what color is the circle? is there a star next to it?",
    "describe the image in detail. answer with the letter of the correct option and explain.",
    "yes. no. one two three four five six seven eight. left right above below next to.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer with <image> as one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_configs(
    tokenizer, text_model: str, hidden_size: int, num_layers: int, num_heads: int,
    num_kv_heads: int, intermediate_size: int, vision_hidden_size: int, vision_layers: int,
    image_size: int, patch_size: int, tie_word_embeddings: bool, max_position_embeddings: int,
    with_eos: bool, init_std: float,
):  # fmt: skip
    """(text config, CLIP vision config) of a tiny random VLM: shared by the LLaVA and the
    Video-LLaVA builders."""
    from transformers import AutoConfig, CLIPVisionConfig

    text_config = AutoConfig.for_model(
        text_model,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id if with_eos else None,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    return text_config, vision_config


def init_tiny_head(model, tokenizer, head_std: float) -> None:
    """Redraw the LM head (or the tied embedding table) with a wider std, so that a tiny random
    model's greedy answers vary, and set its generation config's eos / pad ids."""
    with torch.no_grad():
        if not model.config.tie_word_embeddings:
            model.lm_head.weight.normal_(0.0, head_std)
        else:
            model.model.language_model.embed_tokens.weight.normal_(0.0, head_std)
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def build_tiny_llava(
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
    vision_feature_layer: int = -1,
    tie_word_embeddings: bool = False,
    text_model: str = "llama",
    max_position_embeddings: int = 1024,
    with_eos: bool = True,
    init_std: float = 0.1,
    head_std: float = 0.5,
) -> Path:
    """Write a tiny random LlavaForConditionalGeneration folder and return its path."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    text_config, vision_config = tiny_configs(
        tokenizer, text_model, hidden_size, num_layers, num_heads, num_kv_heads,
        intermediate_size, vision_hidden_size, vision_layers, image_size, patch_size,
        tie_word_embeddings, max_position_embeddings, with_eos, init_std,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    init_tiny_head(model, tokenizer, head_std)
    with quiet_transformers():
        from transformers import CLIPImageProcessor  # PIL fallback without torchvision: fine

        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
        )
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder


def demo_prompts() -> list[tuple[str, list]]:
    """A few fixed prompts with simple drawn images, shared by the stand-in demo and its draft."""
    from PIL import Image, ImageDraw

    specs = [
        ("describe the image in detail.", "red", "ellipse"),
        ("how many shapes are there?", "blue", "rectangle"),
        ("what color is the circle? answer and explain.", "green", "ellipse"),
        ("is there a star next to the square?", "orange", "rectangle"),
    ]
    prompts = []
    for text, color, shape in specs:
        img = Image.new("RGB", (64, 64), "white")
        getattr(ImageDraw.Draw(img), shape)((14, 14, 50, 50), fill=color)
        prompts.append((text, [img]))
    return prompts


def demo_pair(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The stand-in default pair: a tiny random LLaVA and a draft head fitted to it here.

    The draft is fitted to the target's own answers to `demo_prompts()`, so on those prompts it
    agrees with the target far more than a trained draft would on new inputs. Built once (a few
    seconds) and cached under ~/.cache/specvlm/ (or $SPECVLM_CACHE).
    """
    from specvlm.train.quickfit import fit_head_to_target

    root = Path(cache_dir or os.environ.get("SPECVLM_CACHE", Path.home() / ".cache" / "specvlm"))
    base = root / "tiny-demo-v1"
    target_dir, draft_dir = base / "target", base / "draft"
    if not (draft_dir / "model.safetensors").is_file():
        build_tiny_llava(target_dir, seed=1, num_layers=8, hidden_size=128, intermediate_size=256)
        fit_head_to_target(target_dir, draft_dir, prompts=demo_prompts(), steps=300, seed=0)
    return target_dir, draft_dir
