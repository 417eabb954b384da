"""A separate draft model (`SeparateDrafter`): greedy output equals plain decoding, its cache is
re-synchronized to the accepted text after every round, and the concurrent prefill gives the
same output as the sequential one."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from specvlm import api
from specvlm.api import Engine
from specvlm.config import SamplingConfig, TreeConfig
from specvlm.decoding.loop import decode
from specvlm.decoding.stats import SpecStats
from specvlm.draft.separate import SeparateDrafter
from specvlm.errors import InputError
from specvlm.kv_cache import KVCache
from specvlm.target import load_target
from specvlm.tiny import build_tiny_llava
from specvlm.tiny_video import build_tiny_video_llava
from tests.conftest import noise_image

PROMPT = "<image>\ndescribe the image in detail."
NEW = 40


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny target, and an assistant: the target with noise on its LM head, so that it agrees
    with the target often but not always (partial acceptance happens)."""
    root = tmp_path_factory.mktemp("separate")
    target = build_tiny_llava(root / "target", num_layers=3, with_eos=False, seed=4)
    model = LlavaForConditionalGeneration.from_pretrained(target)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = model.lm_head.weight
        w.add_(0.6 * w.std() * torch.randn(w.shape, generator=g))
    assistant = root / "assistant"
    model.save_pretrained(assistant)
    for name in target.iterdir():  # the processor's files: the same tokenizer
        if not name.name.startswith(("model", "config")) and name.is_file():
            shutil.copy(name, assistant / name.name)
    return target, assistant


def plain(target_dir, image, n=NEW) -> list[int]:
    engine = api.load(target=target_dir)
    return engine.generate(PROMPT, images=[image], max_new_tokens=n, speculative=False).token_ids


class CheckedDrafter(SeparateDrafter):
    """After every re-synchronization, compare the cache with a fresh prefill of the prompt
    plus the accepted text the drafter has read."""

    def __init__(self, model, prompt, fresh, **kw):
        super().__init__(model, prompt, **kw)
        self.fresh, self.checks, self.partial = fresh, 0, 0

    def observe(self, features, next_tokens):
        drafted = len(self.speculative) + 1  # the chain's length
        accepted = len(next_tokens) - 1
        self.partial += 0 < accepted < drafted
        super().observe(features, next_tokens)
        length = self.model.length
        assert length == self.prompt_len + self.fed
        self.fresh.prefill(self.prompt, capacity=length + 4)
        text = self.text[: self.fed]
        if text:  # the accepted text, read causally after the prompt
            n = len(text)
            self.fresh.verify(
                torch.tensor(text), torch.arange(n), torch.ones(n, n, dtype=torch.bool).tril()
            )
            self.fresh.commit(list(range(n)))
        got, want = self.model.cache, self.fresh.cache
        assert want.length == length
        torch.testing.assert_close(
            got.k[:, :, :length], want.k[:, :, :length], rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            got.v[:, :, :length], want.v[:, :, :length], rtol=1e-4, atol=1e-5
        )
        self.checks += 1


@pytest.mark.parametrize("tree", [TreeConfig(1, 1, 2), TreeConfig(4, 1, 5), TreeConfig(8, 4, 9)])
def test_output_is_plain_and_the_cache_resyncs_after_partial_acceptance(folders, tree):
    target_dir, assistant_dir = folders
    image = noise_image(1)
    expected = plain(target_dir, image)
    target, assistant = load_target(target_dir), load_target(assistant_dir)
    prompt = target.prepare(PROMPT, [image])
    drafter = CheckedDrafter(
        assistant, assistant.prepare(PROMPT, [image]), load_target(assistant_dir)
    )
    stats = SpecStats()
    rounds = decode(
        target,
        prompt,
        drafter=drafter,
        max_new_tokens=NEW,
        sampling=SamplingConfig(),
        tree=tree,
        stats=stats,
    )
    assert [t for new in rounds for t in new] == expected
    assert drafter.checks == len(stats.accept_lengths) - 1  # every round but the last
    assert max(stats.accept_lengths) >= 2  # the assistant's drafts were accepted ...
    if tree.depth > 1:
        assert drafter.partial >= 1  # ... and some chains only in part


def test_engine_with_an_assistant_concurrent_or_not(folders):
    target_dir, assistant_dir = folders
    images = [noise_image(2)]
    expected = plain(target_dir, images[0])
    for concurrent in (False, True):
        engine = api.load(target=target_dir, assistant=assistant_dir, concurrent_prefill=concurrent)
        for _ in range(2):  # the second request reuses the assistant's adapter
            out = engine.generate(PROMPT, images=images, max_new_tokens=NEW)
            assert out.token_ids == expected, concurrent
            assert out.stats.tau > 1.2
        streamed = engine.stream(PROMPT, images=images, max_new_tokens=NEW)
        first = next(streamed)  # a stream closed after its first piece frees the engine
        streamed.close()
        assert first.token_ids == expected[:1]
        assert engine.generate(PROMPT, images=images, max_new_tokens=NEW).token_ids == expected


def test_the_concurrent_prefill_runs_on_another_thread(folders):
    import threading

    target_dir, assistant_dir = folders
    target, assistant = load_target(target_dir), load_target(assistant_dir)
    image = noise_image(3)
    seen = []
    original = assistant.prefill

    def prefill(prompt, capacity):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(prompt, capacity)

    assistant.prefill = prefill
    outputs = []
    for concurrent in (False, True):
        drafter = SeparateDrafter(
            assistant, assistant.prepare(PROMPT, [image]), concurrent=concurrent
        )
        engine = Engine(target, None)
        rounds = decode(
            engine.target,
            target.prepare(PROMPT, [image]),
            drafter=drafter,
            max_new_tokens=NEW,
            sampling=SamplingConfig(),
            tree=TreeConfig(4, 1, 5),
            stats=SpecStats(),
        )
        outputs.append([t for new in rounds for t in new])
        assert drafter.prefill_s > 0
    assert seen == [True, False]  # sequential on the caller's thread, concurrent on a worker
    assert outputs[0] == outputs[1] == plain(target_dir, image)


def test_bad_assistants_are_refused(folders, tmp_path):
    target_dir, assistant_dir = folders
    other = build_tiny_video_llava(tmp_path / "other", num_layers=1)  # + a <video> token
    with pytest.raises(InputError, match="another tokenizer"):
        api.load(target=target_dir, assistant=other)
    target = load_target(target_dir)
    with pytest.raises(InputError, match="not both"):
        Engine(target, object(), assistant=load_target(assistant_dir))
    with pytest.raises(InputError, match="needs a separate draft model"):
        Engine(target, None, concurrent_prefill=True)


def test_kv_cache_truncate():
    cache = KVCache(1, 1, 1, 8, dtype=torch.float32)
    cache.write(0, torch.ones(1, 5, 1), torch.ones(1, 5, 1))
    cache.commit(list(range(5)))
    cache.truncate(3)
    assert cache.length == 3
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="cannot truncate"):
            cache.truncate(bad)
