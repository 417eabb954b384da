"""The shipped world models, through `transformers` alone (skipped until they are in
`src/specvlm/assets/`, or in the folder `SPECVLM_ASSETS` names)."""

from __future__ import annotations

import json

import pytest
import torch

from specvlm import embedded
from specvlm.world.grammar import check_answer
from specvlm.world.language import make_record
from specvlm.world.scenes import render
from specvlm.world.splits import world_sample

pytestmark = pytest.mark.skipif(
    embedded.embedded_target() is None, reason="no embedded target shipped"
)


def _load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(str(folder))


def _ask(model, processor, question: str, image, **generate) -> str:
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    enc = processor(text=text, images=image, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, **generate)
    new = out[0, enc["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip()


def _closed_questions(n: int):
    """(question, image, meta) of the closed conversation questions of the first n test scenes."""
    for i in range(n):
        rec = make_record("test", i, "conversation")
        if rec["meta"].get("answer") is None:
            continue
        image = render(world_sample("test", i, "image"), 128)
        yield rec["conversations"][0]["value"].removeprefix("<image>\n"), image, rec["meta"]


def test_target_loads_with_auto_classes_and_its_generate_answers_world_questions():
    model, processor = _load(embedded.embedded_target())
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.num_hidden_layers >= 12
    results = [
        bool(check_answer(meta, _ask(model, processor, q, im, do_sample=False)))
        for q, im, meta in _closed_questions(16)
    ]
    # docs/benchmarks.md has the accuracy over 200 test scenes; here: well above guessing
    assert len(results) >= 12 and sum(results) >= 0.7 * len(results), results


def test_target_samples_vary_in_wording_at_temperature_one():
    model, processor = _load(embedded.embedded_target())
    image = render(world_sample("test", 3, "image"), 128)
    torch.manual_seed(0)
    answers = {
        _ask(
            model,
            processor,
            "Describe this image in detail.",
            image,
            do_sample=True,
            temperature=1.0,
        )
        for _ in range(4)
    }
    assert len(answers) >= 3, answers


@pytest.mark.skipif(embedded.embedded_baseline() is None, reason="no embedded baseline shipped")
def test_baseline_is_a_two_layer_llava_with_the_targets_tokenizer():
    model, _ = _load(embedded.embedded_baseline())
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.num_hidden_layers <= 2

    def vocab(folder):
        return json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]

    assert vocab(embedded.embedded_baseline()) == vocab(embedded.embedded_target())


@pytest.mark.skipif(embedded.embedded_draft() is None, reason="no embedded draft shipped")
def test_shipped_pair_is_lossless_and_accepts_on_every_task_family():
    """load() with no arguments: the trained pair; greedy speculative output equals plain
    decoding on world test items of all five families, and the draft really accepts."""
    from specvlm.api import load
    from specvlm.bench.suites import load_suite
    from specvlm.config import TreeConfig

    engine = load(tree=TreeConfig(3, 4, 8))
    assert engine.draft is not None and engine.target_dir == embedded.embedded_target()
    accepted: list[int] = []  # tokens per target forward, every round
    for item in load_suite("world", n=10):  # two items per family
        plain = engine.generate(
            list(item.messages), images=list(item.images), max_new_tokens=64, speculative=False
        )
        spec = engine.generate(list(item.messages), images=list(item.images), max_new_tokens=64)
        assert spec.token_ids == plain.token_ids, item.suite
        accepted += spec.stats.accept_lengths
    assert sum(accepted) / len(accepted) > 2.5  # τ; the shipped draft at this tree: 3.5
