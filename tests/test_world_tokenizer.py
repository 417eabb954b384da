"""World tokenizer: special tokens, lossless round trip, AutoTokenizer loading, chat template."""

from __future__ import annotations

import pytest

from specvlm.world.language import FAMILIES, make_record
from specvlm.world.tokenizer import (
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    build_world_tokenizer,
    train_tokenizer,
    world_corpus,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tok")
    build_world_tokenizer(out, vocab_size=1000, n_samples=12)
    return AutoTokenizer.from_pretrained(out)


def test_loads_as_fast_tokenizer_with_fixed_special_ids(tok):
    assert tok.is_fast
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == [0, 1, 2, 3, 4, 5]
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
    )
    assert 300 < len(tok) <= 1000


def test_placeholders_are_single_tokens(tok):
    for text in ("<image>\nWhat is this?", "x<image>y", "USER: <video>\nHi <image>"):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids.count(4) == text.count("<image>") and ids.count(5) == text.count("<video>")
        assert tok.decode(ids) == text


def test_round_trip_is_lossless_on_world_text_and_any_text(tok):
    texts = [
        t["value"]
        for i in range(30, 34)
        for f in FAMILIES
        for k in ("image", "video", "events")
        for t in make_record("val", i, f, k)["conversations"]
    ]
    texts += ["  two  spaces\tand a tab\n\nnewlines ", "Ünïcødé – 😀 中文", "A.B,C;D:E!?"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids


def test_plain_encoding_adds_bos(tok):
    ids = tok.encode("red circle")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_chat_template_llava_style(tok):
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "How many stars?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Two."}]},
        {"role": "user", "content": "Which is red?"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"{SYSTEM_PROMPT} USER: <image>\nHow many stars? ASSISTANT: Two.</s>"
        "USER: Which is red? ASSISTANT:"
    )
    video = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]},
    ]
    assert tok.apply_chat_template(video, tokenize=False, add_generation_prompt=True) == (
        "Be brief. USER: <video>\nWhat moves? ASSISTANT:"
    )
    # the template leaves <s> to the tokenizer, as llava-hf templates do: one <s>
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(4) == 1 and ids.count(tok.eos_token_id) == 1


def test_vocab_size_is_an_upper_bound_and_cross_word_merges_fill_it():
    texts = list(world_corpus(10, kinds=("image",)))
    assert train_tokenizer(texts, vocab_size=400).get_vocab_size() == 400
    words = train_tokenizer(texts, vocab_size=5000).get_vocab_size()
    assert words < 5000  # the world has few distinct words: merges run out
    wide = train_tokenizer(texts, vocab_size=words + 300, merge_across_words=True)
    assert wide.get_vocab_size() == words + 300
