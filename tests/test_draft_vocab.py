"""A reduced draft vocabulary (EAGLE-3's d2t): the map, its files, exactness, old folders, training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from specvlm import api
from specvlm.cli import main
from specvlm.draft.eagle import EagleConfig, EagleDrafter, EagleHead
from specvlm.draft.vocab import check_d2t, count_tokens, coverage, lm_head_weight, top_n_map
from specvlm.embedded import ASSETS
from specvlm.errors import InputError, ModelFolderError
from specvlm.target import load_target
from specvlm.train.data import Conversation, read_conversations
from specvlm.train.distill import (
    TrainConfig,
    answer_token_counts,
    distill_loss,
    target_sequence,
    train_draft,
)
from specvlm.train.quickfit import fit_head_to_target
from specvlm.world.dataset import make_dataset
from tests.conftest import CONFIGS, noise_image
from tests.test_device_follow import FactoryAudit

PROMPT = "describe the image in detail."


# ---- the map ---------------------------------------------------------------------------------
def test_count_and_top_n_on_a_hand_written_corpus():
    corpus = [[5, 3, 5, 9], torch.tensor([3, 5, 2]), [7], []]
    counts = count_tokens(corpus, 10)
    assert counts.tolist() == [0, 0, 1, 2, 0, 3, 0, 1, 0, 1]
    assert top_n_map(counts, 1).tolist() == [5]
    assert top_n_map(counts, 2).tolist() == [3, 5]  # ascending ids, not by count
    assert top_n_map(counts, 3).tolist() == [2, 3, 5]  # a tie of 2, 7, 9 (once each): lowest id
    # fewer than n ids were seen: the unseen fill in id order
    assert top_n_map(counts, 8).tolist() == [0, 1, 2, 3, 4, 5, 7, 9]
    assert top_n_map(counts, 2).dtype == torch.long
    assert coverage(counts, top_n_map(counts, 2)) == pytest.approx(5 / 8)
    assert coverage(counts, top_n_map(counts, 5)) == 1.0
    for n in (0, 10, 11):
        with pytest.raises(InputError, match="0 for the full vocabulary"):
            top_n_map(counts, n)
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        count_tokens([[3, 10]], 10)


def test_a_bad_map_is_refused():
    check_d2t(torch.tensor([0, 4, 9]), 10, 3)
    bad = [
        torch.tensor([0, 4, 9], dtype=torch.float32),  # not int64
        torch.tensor([0, 4]),  # wrong length
        torch.tensor([4, 0, 9]),  # not ascending
        torch.tensor([0, 4, 4]),  # repeated: two draft rows, one target token
        torch.tensor([0, 4, 10]),  # out of the vocabulary
        torch.tensor([-1, 4, 9]),
    ]
    for d2t in bad:
        with pytest.raises(ModelFolderError, match="d2t"):
            check_d2t(d2t, 10, 3)


# ---- files -----------------------------------------------------------------------------------
def _config(n: int = 0) -> EagleConfig:
    return EagleConfig(
        hidden_size=32,
        vocab_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        draft_vocab_size=n,
    )


def test_d2t_round_trip_through_save_and_load(tmp_path):
    d2t = torch.tensor([1, 2, 3, 5, 8, 13, 21, 34, 55])
    torch.manual_seed(0)
    head = EagleHead(_config(9), d2t)
    head.save(tmp_path / "r")
    data = json.loads((tmp_path / "r" / "config.json").read_text())
    assert data["draft_vocab_size"] == 9
    stored = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert stored["d2t"].dtype == torch.int64 and stored["d2t"].tolist() == d2t.tolist()
    assert stored["fc.weight"].dtype == torch.float16  # the weights as before
    loaded = EagleHead.load(tmp_path / "r")
    assert loaded.d2t.dtype == torch.long and torch.equal(loaded.d2t, d2t)
    assert loaded.config == head.config
    # a full-vocabulary head writes the config it always wrote: no new key, no map
    EagleHead(_config()).save(tmp_path / "f")
    assert "draft_vocab_size" not in json.loads((tmp_path / "f" / "config.json").read_text())
    assert "d2t" not in load_file(str(tmp_path / "f" / "model.safetensors"))
    assert EagleHead.load(tmp_path / "f").d2t is None


def test_a_folder_with_a_bad_map_is_refused(tmp_path):
    EagleHead(_config(4), torch.tensor([0, 1, 2, 3])).save(tmp_path / "r")
    weights = tmp_path / "r" / "model.safetensors"
    state = load_file(str(weights))
    for bad, match in (
        (torch.tensor([3, 2, 1, 0]), "ascending"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), "int64"),
    ):
        save_file({**state, "d2t": bad}, str(weights))
        with pytest.raises(ModelFolderError, match=match):
            EagleHead.load(tmp_path / "r")
    save_file({k: v for k, v in state.items() if k != "d2t"}, str(weights))
    with pytest.raises(ModelFolderError, match="does not match its config.json"):
        EagleHead.load(tmp_path / "r")
    cfg = tmp_path / "r" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "draft_vocab_size": 64}))
    with pytest.raises(ModelFolderError, match="draft_vocab_size must be 0"):
        EagleHead.load(tmp_path / "r")


# ---- an old folder -----------------------------------------------------------------------------
# The shipped world pair decoded by the commit before the reduced vocabulary (42edb97):
# (prompt, has an image, token ids, target forwards)
HEAD_OUTPUTS = [
    (
        "<image>\ndescribe the image in detail.",
        True,
        [332, 342, 591, 450, 515, 345, 265, 797, 844, 498, 19, 332, 498, 294, 265, 695, 696, 1138]
        + [19, 334, 632, 434, 310, 294, 302, 264, 636, 317, 418, 19, 332, 434, 310, 294, 264]
        + [873, 393, 302, 264, 342, 17, 489, 264, 945, 293, 264, 844, 498],
        9,
    ),
    ("<image>\nwhat is left of the red circle?", True, [332, 423, 520, 294, 453, 19, 2], 2),
    ("how many circles are there?", False, [573, 294, 450, 520, 19, 2], 1),
]
SHIPPED_SHA256 = {
    "world-draft-eaglevlm/config.json": "2d623da8556d0b6b2aa265e3e00eb48ee4af70ee84015f2c3c750f72c2776e92",
    "world-draft-eaglevlm/model.safetensors": (
        "6f861ddca50102bfe91adb16e5c14d92fd2cfe2b14426af35044871bcf13dcce"
    ),
    "world-target/model.safetensors": (
        "00e9a081db80bbf4ddb9f775ae5a366a26846c51e59a837bbdff595a25a9b8d0"
    ),
}


def test_a_draft_folder_from_before_loads_and_decodes_as_before():
    import numpy as np

    from specvlm.world.scenes import render, sample_scene

    draft = ASSETS / "world-draft-eaglevlm"  # shipped before the draft vocabulary existed
    if not (draft / "model.safetensors").is_file():
        pytest.skip("the world pair is not shipped here")
    assert "draft_vocab_size" not in json.loads((draft / "config.json").read_text())
    engine = api.load(target=ASSETS / "world-target", draft=draft)
    assert engine.draft.d2t is None and engine.draft.config.draft_vocab_size == 0
    same_files = all(
        hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest
        for name, digest in SHIPPED_SHA256.items()
    )
    for i, (prompt, has_image, ids, forwards) in enumerate(HEAD_OUTPUTS):
        images = [render(sample_scene(np.random.default_rng(i)))] if has_image else []
        out = engine.generate(prompt, images=images, max_new_tokens=48)
        plain = engine.generate(prompt, images=images, max_new_tokens=48, speculative=False)
        assert out.token_ids == plain.token_ids
        if same_files:  # the same files give the same tokens and the same drafts
            assert (out.token_ids, out.stats.target_forwards) == (ids, forwards), prompt


# ---- decoding ------------------------------------------------------------------------------------
def _recording_drafter(engine, with_weight: bool, trees: list):
    """Engine._drafter's drafter (given the target's weight or not), recording every tree."""
    t = engine.target
    weight = lm_head_weight(t) if with_weight else None
    drafter = EagleDrafter(engine.draft, t.embed, t.lm_head, lm_head_weight=weight)
    propose = drafter.propose

    def recorded(*args, **kwargs):
        tree = propose(*args, **kwargs)
        trees.append(tree)
        return tree

    drafter.propose = recorded
    return drafter


def test_the_draft_embeds_and_proposes_target_ids():
    """Tree tokens and the ids the head embeds are target ids (d2t far from draft indices)."""
    from specvlm.target.base import Prefill

    torch.manual_seed(0)
    d2t = torch.arange(40, 64)  # (24,) draft index i -> target id 40 + i
    head = EagleHead(_config(24), d2t).eval()
    table, weight = torch.randn(64, 32), torch.randn(64, 32)  # (V, d) each
    embedded: list[int] = []

    def embed(ids: torch.Tensor) -> torch.Tensor:
        embedded.extend(ids.flatten().tolist())
        return table[ids]

    drafter = EagleDrafter(head, embed, lambda x: x @ weight.T, lm_head_weight=weight)
    prefill = Prefill(logits=torch.zeros(64), features=torch.randn(6, 32), embeds=table[:6])
    drafter.begin(prefill, root=3, capacity=64)
    assert drafter.root_logprobs.shape == (24,)
    embedded.clear()
    tree = drafter.propose(3, depth=4, top_k=3, budget=10)
    assert tree.tokens[0] == 3 and tree.size == 10
    assert set(tree.tokens[1:].tolist()) <= set(d2t.tolist())
    assert embedded and set(embedded) <= set(d2t.tolist())  # the expansions' inputs


# tiny targets whose greedy answer to PROMPT on noise_image(2) uses 29 and 9 distinct tokens
@pytest.mark.parametrize(
    ("name", "n"), [("qwen2-gqa-untied-vfl2-32px", 12), ("llama-mha-untied-vfl1-32px", 6)]
)
def test_reduced_vocab_is_exact_and_proposes_only_its_tokens(
    name, n, tiny_dirs, tmp_path, monkeypatch
):
    folder, image = tiny_dirs[name], noise_image(2)
    head = fit_head_to_target(
        folder, tmp_path / "d", prompts=[(PROMPT, [image])], new_tokens=64, steps=80, draft_vocab=n
    )
    assert head.d2t is not None and head.d2t.shape == (n,)
    engine = api.load(target=folder, draft=tmp_path / "d")
    d2t = set(engine.draft.d2t.tolist())
    plain = engine.generate(PROMPT, [image], max_new_tokens=64, speculative=False)
    emitted = set(plain.token_ids)
    assert len(emitted) > n and emitted - d2t, "some emitted tokens must not be proposable"
    for with_weight in (False, True):  # the full product sliced, then the gathered rows only
        trees: list = []
        monkeypatch.setattr(
            engine,
            "_drafter",
            lambda w=with_weight, trees=trees: _recording_drafter(engine, w, trees),
        )
        spec = engine.generate(PROMPT, [image], max_new_tokens=64)
        assert spec.token_ids == plain.token_ids, with_weight
        assert spec.stats.tau > 1.2, spec.stats.to_dict()  # the fitted draft is accepted often
        sampled = engine.generate(PROMPT, [image], max_new_tokens=24, temperature=1.0, seed=0)
        assert len(sampled.token_ids) == 24
        assert trees and all(t.size > 1 for t in trees)
        for tree in trees:  # every drafted node (the root is the target's own token)
            assert set(tree.tokens[1:].tolist()) <= d2t


@pytest.mark.parametrize("name", ["llama-gqa-tied-vfl2-48px", "mistral-mha-tied-vfl1-48px"])
def test_tied_heads_score_the_same_rows_either_way(name, tiny_dirs, monkeypatch):
    """Tied embeddings: the gathered rows come from the shared table; exact all the same."""
    target = load_target(tiny_dirs[name])
    weight = lm_head_weight(target)
    assert weight is not None and weight.shape[0] == target.info.vocab_size
    assert weight.data_ptr() == target.model.get_input_embeddings().weight.data_ptr()
    d2t = torch.arange(1, target.info.vocab_size, 2)  # (N,) every odd id
    torch.manual_seed(0)
    config = EagleConfig.for_target(target.info, draft_vocab_size=d2t.shape[0])
    head = EagleHead(config, d2t).eval()
    fast = EagleDrafter(head, target.embed, target.lm_head, weight)
    slow = EagleDrafter(head, target.embed, target.lm_head)
    x = torch.randn(5, target.info.hidden_size)  # (5, d)
    with torch.inference_mode():
        torch.testing.assert_close(fast._logprobs(x), slow._logprobs(x), atol=1e-5, rtol=1e-5)
    assert fast._logprobs(x).shape == (5, d2t.shape[0])
    engine = api.Engine(target, head)
    plain = engine.generate(PROMPT, [noise_image(3)], max_new_tokens=32, speculative=False)
    monkeypatch.setattr(engine, "_drafter", lambda: fast)
    assert engine.generate(PROMPT, [noise_image(3)], max_new_tokens=32).token_ids == plain.token_ids


def test_the_reduced_drafter_names_its_devices(tiny_dir, tmp_path, monkeypatch):
    fit_head_to_target(
        tiny_dir, tmp_path / "d", prompts=[("hi", [noise_image(0)])], new_tokens=16, steps=10,
        draft_vocab=10,
    )  # fmt: skip
    engine = api.load(target=tiny_dir, draft=tmp_path / "d")
    monkeypatch.setattr(engine, "_drafter", lambda: _recording_drafter(engine, True, []))
    with FactoryAudit() as audit:
        for temperature in (0.0, 1.0):
            engine.generate("describe it.", [noise_image(0)], max_new_tokens=12,
                            temperature=temperature, seed=0)  # fmt: skip
    assert audit.calls > 0 and audit.undevice == []


# ---- training --------------------------------------------------------------------------------------
def test_the_loss_is_the_target_renormalised_on_the_draft_vocabulary(tiny_dir, tmp_path):
    noise_image(0).save(tmp_path / "a.png")
    conv = Conversation(
        "x",
        [("user", "<image>\nwhat is it?"), ("assistant", "a red circle.")],
        [tmp_path / "a.png"],
    )
    target = load_target(tiny_dir)
    features, embeds, mask = target_sequence(target, conv)
    d2t = torch.arange(0, target.info.vocab_size, 3)  # (N,) every third token
    torch.manual_seed(0)
    config = EagleConfig.for_target(target.info, draft_vocab_size=d2t.shape[0])
    head = EagleHead(config, d2t)
    cfg = TrainConfig(w_feat=0.0, w_logit=1.0)
    loss, agree, rows = distill_loss(head, target, features, embeds, mask, cfg)
    # by hand: the draft's prediction scored on d2t's rows against softmax(target logits[d2t])
    cache_cfg = (config.num_key_value_heads, config.head_dim, features.shape[0])
    from specvlm.kv_cache import KVCache

    cache = KVCache(1, *cache_cfg, dtype=features.dtype)
    S = features.shape[0]
    pred = head(features[:-1], embeds[1:], torch.arange(S - 1), cache, "causal")[mask[1:]]
    with torch.no_grad():
        full_t = target.lm_head(features[1:][mask[1:]])  # (n, V)
        full_d = target.lm_head(pred)  # (n, V)
    p = torch.softmax(full_t[:, d2t], -1)
    expected = -(p * torch.log_softmax(full_d[:, d2t], -1)).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert agree == (d2t[full_d[:, d2t].argmax(-1)] == full_t.argmax(-1)).float().mean().item()
    assert rows == int(mask[1:].sum())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    return make_dataset(
        "train", 4, out, families=["conversation", "reasoning"], resolution=64, progress=False
    )


def test_training_with_draft_vocab_counts_the_data_and_saves_the_map(tiny_dir, data, tmp_path):
    out = tmp_path / "cli"
    args = ["train-draft", "--target", str(tiny_dir), "--data", str(data), "--out", str(out)]
    rc = main([*args, "--batch-size", "2", "--draft-vocab", "24", "--no-progress"])
    assert rc == 0
    target = load_target(tiny_dir)
    convs = read_conversations(data)[0]
    expected = top_n_map(answer_token_counts(target, convs), 24)
    head = EagleHead.load(out)
    assert head.config.draft_vocab_size == 24 and torch.equal(head.d2t, expected)
    assert json.loads((out / "config.json").read_text())["draft_vocab_size"] == 24
    step = (out / "checkpoints" / "latest").read_text()
    stored = load_file(str(out / "checkpoints" / step / "head.safetensors"))["d2t"]
    assert stored.dtype == torch.int64 and torch.equal(stored, expected)
    spec = api.load(target=tiny_dir, draft=out).generate(
        PROMPT, [noise_image(1)], max_new_tokens=24
    )
    plain = api.load(target=tiny_dir).generate(PROMPT, [noise_image(1)], max_new_tokens=24)
    assert spec.token_ids == plain.token_ids
    # the map is a setting of the run: resuming with another is refused
    rc = main([*args, "--batch-size", "2", "--draft-vocab", "12", "--resume", "--no-progress"])
    assert rc == 2
    assert main([*args, "--batch-size", "2", "--draft-vocab", "9999", "--no-progress"]) == 2


def test_regenerated_training_counts_the_targets_own_answers(tiny_dir, data, tmp_path):
    cfg = TrainConfig(
        epochs=1, batch_size=2, checkpoint_every=100, regenerate_max_new_tokens=24, draft_vocab=16
    )
    head = train_draft(
        tiny_dir, data, tmp_path / "d", cfg, regenerate=True, progress=False, log=lambda *_: None
    )
    target = load_target(tiny_dir)
    regenerated = read_conversations(tmp_path / "d" / "regenerated.jsonl", "/")[0]
    expected = top_n_map(answer_token_counts(target, regenerated), 16)
    original = top_n_map(answer_token_counts(target, read_conversations(data)[0]), 16)
    assert torch.equal(head.d2t, expected) and not torch.equal(expected, original)
    assert torch.equal(EagleHead.load(tmp_path / "d").d2t, expected)


def test_init_starts_from_a_trained_head_for_a_new_target_version(tiny_dir, data, tmp_path, capsys):
    """--init: the head of target v1 is where the head of v2 starts; the map is counted on the
    run's data (no weight depends on it) and the folder written pairs with v2. A head of another
    shape, or a resume from another start, is refused before any step."""
    from specvlm.tiny import build_tiny_llava
    from specvlm.train.distill import initial_head

    first = tmp_path / "v1-draft"
    base = ["--data", str(data), "--batch-size", "2", "--no-progress"]
    assert main(["train-draft", "--target", str(tiny_dir), "--out", str(first), *base,
                 "--draft-vocab", "24"]) == 0  # fmt: skip
    v1 = EagleHead.load(first)
    # "version 2": the same shape, other weights (check_pairing refuses v1's head on it)
    shape = {**CONFIGS["llama-mha-untied-vfl1-32px"], "seed": 7}
    v2 = build_tiny_llava(tmp_path / "v2", num_layers=3, with_eos=False, **shape)
    target = load_target(v2)
    start = initial_head(first, EagleConfig.for_target(target.info, draft_vocab_size=16))
    for name, tensor in v1.state_dict().items():
        assert torch.equal(start.state_dict()[name], tensor), name

    # a fake step: train_draft's first weights are init's (lr ~ 0 keeps them)
    second = tmp_path / "v2-draft"
    args = ["train-draft", "--target", str(v2), "--out", str(second), *base]
    assert main([*args, "--draft-vocab", "16", "--init", str(first), "--lr", "1e-30"]) == 0
    head = EagleHead.load(second)
    expected = top_n_map(answer_token_counts(target, read_conversations(data)[0]), 16)
    assert torch.equal(head.d2t, expected)  # counted on the data, not v1's 24
    assert head.config.target == target.info.fingerprint  # pairs with v2, not v1
    for name, tensor in v1.state_dict().items():
        if name != "d2t":  # float16 on disk both times: the same numbers
            assert torch.equal(head.state_dict()[name], tensor), name
    plain = api.load(target=v2).generate(PROMPT, [noise_image(2)], max_new_tokens=24)
    spec = api.load(target=v2, draft=second).generate(PROMPT, [noise_image(2)], max_new_tokens=24)
    assert spec.token_ids == plain.token_ids

    other = EagleConfig.for_target(target.info, num_attention_heads=2)
    with pytest.raises(InputError, match=r"num_attention_heads 4 \(this run: 2\)"):
        initial_head(first, other)
    with pytest.raises(InputError, match="not a draft folder"):
        initial_head(tmp_path / "nothing", other)
    # resuming from a checkpoint that started elsewhere (here: from random weights) is refused
    fresh = tmp_path / "fresh"
    assert main([*args[:4], str(fresh), *base]) == 0
    assert main([*args[:4], str(fresh), *base, "--init", str(first), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--init: the checkpoint started from another draft" in err
    # a run started from --init resumes with the same --init, or without it (the checkpoint's
    # weights replace the start either way), not with another
    more = [*base, "--draft-vocab", "16", "--lr", "1e-30"]
    assert main([*args, *more, "--epochs", "2", "--init", str(first), "--resume"]) == 0
    assert main([*args, *more, "--epochs", "3", "--resume"]) == 0
    assert main([*args, *more, "--epochs", "4", "--init", str(fresh), "--resume"]) == 2
    assert "--init: the checkpoint started from another draft" in capsys.readouterr().err
