"""The cross-modal EAGLE head (issue 23, items 4b and 4c): its recipe, its rows, exactness of
decoding with it under both catch-ups and concurrent prefill, and its event model's cache."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from specvlm import api, embedded
from specvlm.draft.cross import CROSS_FILE, is_cross_folder
from specvlm.draft.separate import DRAFTER_FILE, DrafterInput
from specvlm.errors import InputError
from tests.conftest import clip_inputs, world_video_pair

shipped = pytest.mark.skipif(
    embedded.embedded_target() is None or embedded.embedded_baseline() is None,
    reason="the embedded world models are not shipped here",
)


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory):
    """The world video target as assembled, the shipped 2-layer world LLaVA marked as an event
    drafter, and a cross-modal head trained on them for a few steps."""
    from specvlm.world.train_target.cross import train_cross_draft

    root = tmp_path_factory.mktemp("cross")
    target, drafter = world_video_pair(root)
    threads = torch.get_num_threads()
    r = train_cross_draft(root / "run", "cross-tiny", steps=3, teacher=target,
                          events_model=drafter, progress=False)  # fmt: skip
    assert torch.get_num_threads() == threads
    return target, drafter, r


@shipped
def test_the_recipe_writes_a_cross_modal_folder_and_both_catch_ups_are_lossless(cross_run):
    target, _, r = cross_run
    assert r["steps"] == 3 and all(np.isfinite(r["losses"]))
    folder = r["model"]
    assert is_cross_folder(folder) and (folder / "events_model" / DRAFTER_FILE).is_file()
    plain_engine = api.load(target=target)
    for i in range(2):
        frames, events = clip_inputs(i)
        for prompt in ("<video>\nWhat moves?", "Describe the video."):
            plain = plain_engine.generate(prompt, video=frames, max_new_tokens=20)
            for catch_up in ("target", "events"):
                for concurrent in (False, True):
                    engine = api.load(target=target, draft=folder, cross_catch_up=catch_up,
                                      concurrent_prefill=concurrent)  # fmt: skip
                    fast = engine.generate(prompt, video=frames, events=events, max_new_tokens=20)
                    assert fast.token_ids == plain.token_ids, (catch_up, concurrent)
                    assert max(fast.stats.tree_sizes) > 1  # the head drafted trees
    engine = api.load(target=target, draft=folder)
    with pytest.raises(InputError, match="drafts from an event stream"):
        engine.generate("What moves?", video=frames, max_new_tokens=4)
    assert engine.generate("What moves?", video=frames, max_new_tokens=4, speculative=False)
    with pytest.raises(InputError, match="cross_catch_up"):
        api.load(target=target, draft=folder, cross_catch_up="frames")
    good = (folder / CROSS_FILE).read_text()
    (folder / CROSS_FILE).write_text('{"catch_up": 3}')
    try:
        with pytest.raises(Exception, match="not a cross-modal draft description"):
            api.load(target=target, draft=folder)
    finally:
        (folder / CROSS_FILE).write_text(good)


@shipped
def test_with_events_catch_up_the_event_model_reads_exactly_the_accepted_text(cross_run):
    """After a request, the event model's cache holds its prompt and the first L generated
    tokens, with the same numbers as a fresh prefill of that text; the head's cache is as long."""
    from specvlm.bench.methods import BenchContext, build_methods
    from specvlm.bench.runner import run_bench
    from specvlm.bench.suites import load_suite

    target, _, r = cross_run
    engine = api.load(target=target)
    ctx = BenchContext(engine=engine, target_dir=target, cross_dir=r["model"])
    methods = {m.name: m for m in build_methods(["cross-events", "cross"], ctx)}
    frames, events = clip_inputs(3)
    method = methods["cross-events"]
    out = method.engine.generate("<video>\nWhat happens?", video=frames, events=events,
                                 max_new_tokens=24)  # fmt: skip
    drafter = method.engine.last
    small = drafter.events_model
    L = small.length - drafter.prompt_len
    assert 0 < L < len(out.token_ids) and drafter.cache.length == small.length
    nxt = torch.tensor([out.token_ids[L]])
    live = small.verify(nxt, torch.zeros(1, dtype=torch.long), None).logits[-1]
    prompt = drafter.events_prompt
    ids = torch.cat([prompt.input_ids, torch.tensor(out.token_ids[: L + 1])])
    fresh = small.prefill(replace(prompt, input_ids=ids), ids.shape[0]).logits
    torch.testing.assert_close(live, fresh, rtol=1e-4, atol=1e-4)
    # the bench runs both on world-events items, identical to plain, and refuses items without
    items = load_suite("world-events", n=2, cache_dir=target.parent / "suites")
    records = run_bench(list(methods.values()), items, max_new_tokens=12, progress=False)
    assert all("error" not in x for x in records), [x.get("error") for x in records]
    assert all(x["identical"] for x in records if x["method"] != "plain")
    assert {x["draft"]["catch_up"] for x in records if x.get("draft")} == {"events", "target"}


@shipped
def test_the_event_models_training_prompt_is_the_one_it_reads_when_drafting(cross_run):
    from specvlm.target import load_target
    from specvlm.train.data import encode
    from specvlm.world.language import make_record
    from specvlm.world.train_target.cross import _conversations
    from specvlm.world.train_target.events import EventsTrainConfig, clip_event_picture

    _, drafter, _ = cross_run
    small = load_target(drafter)
    turns = make_record("test", 0, "conversation", kind="video")["conversations"]
    answers = {(0, "conversation"): [("user" if t["from"] == "human" else "assistant", t["value"])
                                     for t in turns]}  # fmt: skip
    frames, events = clip_inputs(0)
    picture = clip_event_picture("test", 0, EventsTrainConfig())
    _, conv_e = _conversations(answers, 0, "conversation", frames, picture)
    trained = encode(small, conv_e).prompt
    question = answers[(0, "conversation")][0][1]
    given = DrafterInput.of_folder(drafter).prompt(
        small, [{"role": "user", "content": question}], [], events, frames
    )
    n = given.input_ids.shape[0]
    assert torch.equal(trained.input_ids[:n], given.input_ids)
    torch.testing.assert_close(trained.pixel_values, given.pixel_values)


@shipped
def test_a_stopped_cross_run_resumes_to_the_same_numbers(cross_run, tmp_path):
    from specvlm.world.train_target.cross import train_cross_draft

    target, drafter, r = cross_run
    run = tmp_path / "run"
    run.mkdir()
    for f in r["model"].parent.glob("teacher-*.jsonl"):  # the same teacher answers
        shutil.copy(f, run / f.name)
    first = train_cross_draft(run, "cross-tiny", steps=3, teacher=target, events_model=drafter,
                              progress=False, stop_at=2)  # fmt: skip
    assert first["steps"] == 2 and first["model"] is None
    with pytest.raises(InputError, match="holds a run already"):
        train_cross_draft(run, "cross-tiny", steps=3, teacher=target, events_model=drafter)
    rest = train_cross_draft(run, "cross-tiny", steps=3, teacher=target, events_model=drafter,
                             progress=False, resume=True)  # fmt: skip
    assert rest["steps"] == 3 and rest["model"] is not None
    np.testing.assert_allclose(rest["losses"], r["losses"], rtol=1e-5)
