"""The preallocated cache: commit of a tree path, then one more forward == recompute from scratch."""

from __future__ import annotations

import pytest
import torch

import specvlm
from specvlm.decoding.tree import DraftTree
from specvlm.kv_cache import KVCache
from specvlm.target import load_target
from specvlm.target.base import Prompt
from tests.conftest import noise_image


def test_commit_moves_path_slots_in_place():
    cache = KVCache(2, 1, 2, 5, dtype=torch.float32)  # 2 layers, 1 head, hd 2, 5 slots
    k = torch.arange(5 * 2, dtype=torch.float32).view(1, 5, 2)
    for layer in range(2):
        cache.write(layer, k + layer, -k)
    cache.commit([0, 2, 4])
    assert cache.length == 3
    assert cache.k[0, 0, :3].tolist() == [[0, 1], [4, 5], [8, 9]]
    assert cache.k[1, 0, :3].tolist() == [[1, 2], [5, 6], [9, 10]]
    assert cache.v[0, 0, :3].tolist() == [[0, -1], [-4, -5], [-8, -9]]


def test_overflow_is_an_error_not_a_silent_write():
    cache = KVCache(1, 1, 2, 3, dtype=torch.float32)
    try:
        cache.write(0, torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))
    except RuntimeError as e:
        assert "overflow" in str(e)
    else:
        raise AssertionError("expected an overflow error")


def test_tree_commit_then_forward_equals_recompute(tiny_dir):
    target = load_target(tiny_dir)
    prompt = target.prepare("describe the image.", [noise_image(0)])
    pre = target.prefill(prompt, capacity=200)
    root = int(pre.logits.argmax())
    # a hand-drawn tree below the root; accept the middle branch 0 -> 2 -> 4
    tree = DraftTree.from_parents([root, 21, 22, 23, 24], [-1, 0, 0, 1, 2])
    target.verify(tree.tokens, tree.depths, tree.mask)
    target.commit([0, 2, 4])
    nxt = target.verify(torch.tensor([25]), torch.tensor([0]), None)

    fresh = load_target(tiny_dir)
    ids = torch.cat([prompt.input_ids, torch.tensor([root, 22, 24, 25])])
    full = fresh.prefill(Prompt(prompt.text, ids, prompt.pixel_values, 1), capacity=200)
    torch.testing.assert_close(nxt.features[0], full.features[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt.logits[0], full.logits, atol=1e-4, rtol=1e-5)


def test_prefill_and_verify_return_chosen_layers_like_transformers(tiny_dir):
    from transformers import LlavaForConditionalGeneration

    target = load_target(tiny_dir)
    target.set_aux_layers((0, 2, 3))
    prompt = target.prepare("describe the image.", [noise_image(0)])
    pre = target.prefill(prompt, capacity=100)
    out = target.verify(torch.tensor([7]), torch.tensor([0]), None)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_dir).eval()
    ids = torch.cat([prompt.input_ids, torch.tensor([7])])[None]
    with torch.no_grad():
        hf = model(input_ids=ids, pixel_values=prompt.pixel_values, output_hidden_states=True)
    want = torch.cat([hf.hidden_states[i][0] for i in (0, 2)], dim=-1)  # (T+1, 2d)
    d = target.info.hidden_size
    torch.testing.assert_close(pre.aux[:, : 2 * d], want[:-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.aux[:, : 2 * d], want[-1:], atol=1e-5, rtol=1e-5)
    # the last hidden state after the final norm is the feature the draft reads
    torch.testing.assert_close(out.features, hf.hidden_states[-1][0, -1:], atol=1e-5, rtol=1e-5)
    assert pre.aux.shape == (prompt.input_ids.shape[0], 3 * d)
    with pytest.raises(specvlm.InputError, match="accepted: 0..3"):
        target.set_aux_layers((4,))
