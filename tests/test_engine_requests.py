"""One request at a time, request options, and why decoding stopped (tiny target + fitted draft)."""

from __future__ import annotations

import threading

import pytest

import specvlm
from specvlm import api
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image

PROMPT = "describe the image in detail."


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    draft = tmp_path_factory.mktemp("draft") / "head"
    fit_head_to_target(
        tiny_dir, draft, prompts=[(PROMPT, [noise_image(0)])], new_tokens=48, steps=100
    )
    return api.load(target=tiny_dir, draft=draft)


def test_a_second_stream_is_refused_while_the_first_runs(engine):
    solo_a = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=32).token_ids
    solo_b = engine.generate("what is it?", images=[noise_image(1)], max_new_tokens=32).token_ids
    a = engine.stream(PROMPT, images=[noise_image(0)], max_new_tokens=32)
    b = engine.stream("what is it?", images=[noise_image(1)], max_new_tokens=32)
    first = next(a)  # a holds the engine now
    with pytest.raises(specvlm.EngineBusyError, match="one at a time"):
        next(b)
    with pytest.raises(specvlm.EngineBusyError):
        engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=4)
    rest = [t for piece in a for t in piece.token_ids]
    assert first.token_ids + rest == solo_a  # the refused calls did not disturb a's cache
    # once a is exhausted the engine is free again, and b's output equals its solo run
    again = engine.stream("what is it?", images=[noise_image(1)], max_new_tokens=32)
    assert [t for piece in again for t in piece.token_ids] == solo_b


def test_closing_a_stream_early_frees_the_engine(engine):
    s = engine.stream(PROMPT, images=[noise_image(0)], max_new_tokens=32)
    next(s)
    s.close()
    assert len(engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=8).token_ids) == 8


def test_threads_get_one_answer_or_a_clean_refusal(engine):
    solo = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=24).token_ids

    def race() -> list[object]:
        results: list[object] = []
        go = threading.Barrier(4)

        def worker() -> None:
            go.wait()
            try:
                out = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=24)
                results.append(out.token_ids)
            except specvlm.EngineBusyError as e:
                results.append(e)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    held = engine.stream(PROMPT, images=[noise_image(0)], max_new_tokens=24)
    next(held)  # the engine is busy: every thread is refused, cleanly
    refused = race()
    assert len(refused) == 4 and all(isinstance(r, specvlm.EngineBusyError) for r in refused)
    held.close()
    results = race()  # free again: the threads race for it
    answers = [r for r in results if isinstance(r, list)]
    assert len(results) == 4 and answers  # at least one ran
    assert all(r == solo for r in answers)  # and every answer is the solo one, uncorrupted


def test_bad_input_raises_at_the_call_not_at_the_first_piece(engine):
    with pytest.raises(specvlm.GenerationArgumentError, match="max_new_tokens"):
        engine.stream(PROMPT, images=[noise_image(0)], max_new_tokens=0)
    with pytest.raises(specvlm.GenerationArgumentError, match="unknown generation option"):
        engine.generate(PROMPT, images=[noise_image(0)], max_tokens=5)
    with pytest.raises(specvlm.GenerationArgumentError, match="seed"):
        engine.generate(PROMPT, images=[noise_image(0)], temperature=1.0, seed=2**64)
    for kw in (
        {"temperature": 1e-300},
        {"temperature": float("inf")},
        {"repetition_penalty": float("inf")},
        {"top_p": float("nan")},
    ):
        with pytest.raises(specvlm.GenerationArgumentError):
            engine.generate(PROMPT, images=[noise_image(0)], **kw)
    # nothing above took the engine
    assert len(engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=3).token_ids) == 3


def test_stop_reasons(engine, tiny_dirs):
    out = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=5)
    assert out.stop_reason == out.stats.stop_reason == "max_new_tokens"
    assert out.stats.to_dict()["stop_reason"] == "max_new_tokens"
    # the context: a prompt that leaves room for only a few new tokens
    ctx = engine.target.info.max_context
    T = engine.target.prepare(PROMPT, [noise_image(0)]).input_ids.shape[0]
    room = ctx - T
    for spec in (True, False):
        out = engine.generate(
            PROMPT, images=[noise_image(0)], max_new_tokens=room + 50, speculative=spec
        )
        assert len(out.token_ids) == room and out.stop_reason == "context"
    # EOS: make the first token the target picks an EOS token
    target = engine.target
    first = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=1).token_ids[0]
    saved = target.info
    try:
        target.info = type(saved)(**{**saved.__dict__, "eos_token_ids": (first,)})
        out = engine.generate(PROMPT, images=[noise_image(0)], max_new_tokens=10)
        assert out.token_ids == [first] and out.stop_reason == "eos"
    finally:
        target.info = saved
