"""Acceptance with hand-written target logits on the hand-drawn five-node tree."""

from __future__ import annotations

import torch

from specvlm.decoding.tree import DraftTree
from specvlm.decoding.verify import greedy_accept, sampled_accept

V = 20
#        0 (10)
#       / \
#  (11) 1   2 (12)
#       |   |
#  (13) 3   4 (14)
TREE = DraftTree.from_parents([10, 11, 12, 13, 14], [-1, 0, 0, 1, 2])


def stub_logits(choices: list[int]) -> torch.Tensor:
    """Target logits whose argmax at node i is choices[i]."""
    logits = torch.zeros(len(choices), V)
    for i, c in enumerate(choices):
        logits[i, c] = 5.0
    return logits


def test_greedy_accept_none():
    path, bonus = greedy_accept(TREE, stub_logits([7, 0, 0, 0, 0]))
    assert path == [0] and bonus == 7


def test_greedy_accept_full_path():
    # target wants 12 after the root, then 14 after node 2, then 3 after node 4
    path, bonus = greedy_accept(TREE, stub_logits([12, 0, 14, 0, 3]))
    assert path == [0, 2, 4] and bonus == 3


def test_greedy_accept_middle_path():
    # root -> 11 accepted, but after node 1 the target wants 9, not 13
    path, bonus = greedy_accept(TREE, stub_logits([11, 9, 14, 13, 0]))
    assert path == [0, 1] and bonus == 9


def probs_of(rows: list[dict[int, float]]) -> torch.Tensor:
    p = torch.zeros(len(rows), V)
    for i, row in enumerate(rows):
        for tok, val in row.items():
            p[i, tok] = val
    return p


def test_sampled_all_children_rejected_bonus_from_remainder():
    # p at the root puts no mass on 11 or 12: both rejected, bonus from what remains
    probs = probs_of([{5: 0.25, 6: 0.75}, {0: 1.0}, {0: 1.0}, {0: 1.0}, {0: 1.0}])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(V)
    for _ in range(4000):
        path, bonus = sampled_accept(TREE, probs, gen)
        assert path == [0]
        counts[bonus] += 1
    assert counts[5] + counts[6] == 4000
    assert abs(counts[5] / 4000 - 0.25) < 0.03


def test_sampled_rejection_renormalises_before_next_child():
    # p(11) = 0.5, p(12) = 0.25, p(7) = 0.25 at the root. First child 11 accepted w.p. 0.5;
    # after rejecting 11 the remainder is {12: .5, 7: .5}: child 12 accepted w.p. 0.5 of that.
    probs = probs_of([{11: 0.5, 12: 0.25, 7: 0.25}, {1: 1.0}, {2: 1.0}, {3: 1.0}, {4: 1.0}])
    gen = torch.Generator().manual_seed(1)
    n = 8000
    first = {}
    for _ in range(n):
        path, bonus = sampled_accept(TREE, probs, gen)
        tok = int(TREE.tokens[path[1]]) if len(path) > 1 else bonus
        first[tok] = first.get(tok, 0) + 1
    # every token's frequency is exactly the target's p
    assert abs(first[11] / n - 0.5) < 0.02
    assert abs(first[12] / n - 0.25) < 0.02
    assert abs(first[7] / n - 0.25) < 0.02


def test_sampled_certain_target_accepts_whole_path():
    probs = probs_of([{12: 1.0}, {0: 1.0}, {14: 1.0}, {0: 1.0}, {9: 1.0}])
    path, bonus = sampled_accept(TREE, probs, torch.Generator().manual_seed(0))
    assert path == [0, 2, 4] and bonus == 9
