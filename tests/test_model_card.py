"""The shipped targets follow the conventions users copy from llava-hf model cards.

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    model.generate(**inputs, do_sample=False)

gives the same ids as this engine's prompt (one BOS: the chat template does not write it, the
tokenizer adds it), and `transformers`' greedy output equals the engine's speculative output.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from specvlm import api
from specvlm.bench.suites import load_suite
from specvlm.embedded import embedded_baseline, embedded_draft, embedded_target

pytestmark = pytest.mark.skipif(
    embedded_target() is None, reason="the embedded world pair is not in this checkout"
)


def model_card_inputs(folder, question: str, image: Image.Image) -> dict:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=prompt, return_tensors="pt")


@pytest.mark.parametrize(
    "folder", [embedded_target(), embedded_baseline()], ids=["target", "baseline"]
)
def test_the_model_card_snippet_builds_the_engines_ids(folder):
    engine = api.load(target=folder)
    image = Image.open(load_suite("world", n=1)[0].images[0]).convert("RGB")
    ids = model_card_inputs(folder, "How many shapes are there?", image)["input_ids"][0]
    mine = engine.target.prepare("How many shapes are there?", [image]).input_ids
    bos = engine.target.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos
    assert torch.equal(ids, mine)


def test_transformers_generate_from_the_snippet_equals_the_engine():
    from transformers import LlavaForConditionalGeneration

    engine = api.load(target=embedded_target(), draft=embedded_draft())
    model = LlavaForConditionalGeneration.from_pretrained(embedded_target()).eval()
    items = [it for it in load_suite("world-conversation", n=4)]
    for item in items:
        question = item.messages[-1]["content"].replace("<image>\n", "")
        image = Image.open(item.images[0]).convert("RGB")
        inputs = model_card_inputs(embedded_target(), question, image)
        with torch.inference_mode():
            seq = model.generate(**inputs, do_sample=False, max_new_tokens=32)
        theirs = seq[0, inputs["input_ids"].shape[1] :].tolist()
        ours = engine.generate(question, images=[image], max_new_tokens=32).token_ids
        assert ours == theirs[: len(ours)] and len(ours) in (len(theirs), 32)
