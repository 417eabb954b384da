"""A small byte-level BPE tokenizer trained on the world's own language.

    tok = build_world_tokenizer("models/world-tokenizer", vocab_size=4096)
    tok = transformers.AutoTokenizer.from_pretrained("models/world-tokenizer")   # fast tokenizer

Byte-level BPE (as GPT-2): every string encodes, and decode(encode(text)) gives back exactly the
same text; there is no whitespace normalisation, and `clean_up_tokenization_spaces` is off.
Special tokens have fixed ids: <unk> 0, <s> 1 (bos), </s> 2 (eos), <pad> 3, <image> 4,
<video> 5; they are never split, and text around them is kept as is. Encoding plain text adds
<s> in front (as Llama / Vicuna tokenizers do). The chat template does not write <s> (as in
llava-hf checkpoints), so `processor(text=processor.apply_chat_template(...))` gives one <s>.

Chat template, LLaVA-1.5 (Vicuna v1) style:

    {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT:
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from specvlm.errors import InputError
from specvlm.world.language import FAMILIES, KINDS, make_record

SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>")
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Content may be a string or a list of {"type": "image" | "video" | "text"} items; images and
# videos are written first (each as its placeholder and a newline), then the text items.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set system = messages[0]['content'] %}"
    "{% else %}{% set system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '" + SYSTEM_PROMPT.replace("'", "\\'") + "' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{{ system }} "
    "{% for message in loop_messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% if message['content'] is not string %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif item['type'] == 'video' %}{{ '<video>\\n' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ text }} "
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% generation %}{{ text }}{{ eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def world_corpus(
    n_samples: int = 600, kinds: Sequence[str] = KINDS, split: str = "train"
) -> Iterator[str]:
    """Text of the world's records (every family and kind of the first n_samples samples),
    one turn per item, plus the chat template's fixed words."""
    yield SYSTEM_PROMPT + " USER: ASSISTANT:"
    for index in range(n_samples):
        for kind in kinds:
            for family in FAMILIES:
                for turn in make_record(split, index, family, kind)["conversations"]:
                    yield turn["value"]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    merge_across_words: bool = False,
) -> Tokenizer:
    """Byte-level BPE with the special tokens at ids 0-5.

    vocab_size is an upper bound: with merges inside words only (the default, as GPT-2), the
    world's few hundred distinct words are all whole tokens after about 1,200 entries and
    training stops there. merge_across_words=True lets merges span spaces (tokens such as
    " in the top"), which fills any vocab_size.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise InputError(
            f"vocab_size must be above {256 + len(SPECIAL_TOKENS)} (bytes and special tokens), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=not merge_across_words
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def wrap(tok: Tokenizer, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """The `transformers` fast tokenizer around a trained `tokenizers.Tokenizer`."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )


def build_world_tokenizer(
    out_dir: str | Path | None = None,
    vocab_size: int = 4096,
    n_samples: int = 600,
    min_frequency: int = 2,
    merge_across_words: bool = False,
) -> PreTrainedTokenizerFast:
    """Train on the world corpus; save to `out_dir` (loadable with AutoTokenizer) if given."""
    corpus = world_corpus(n_samples)
    fast = wrap(train_tokenizer(corpus, vocab_size, min_frequency, merge_across_words))
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
