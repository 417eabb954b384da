"""DraftTree tensors from hand-drawn trees, and EAGLE-2 growth with stub draft distributions."""

from __future__ import annotations

import math

import torch

from specvlm.decoding.tree import DraftTree, grow_dynamic_tree

#        0 (root, token 10)
#       / \
#  (11) 1   2 (12)
#       |   |
#  (13) 3   4 (14)
FIVE = DraftTree.from_parents([10, 11, 12, 13, 14], [-1, 0, 0, 1, 2])


def test_five_node_tree_tensors():
    assert FIVE.depths.tolist() == [0, 1, 1, 2, 2]
    assert FIVE.mask.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 0, 1, 0, 1],
    ]
    assert FIVE.paths.tolist() == [[0, 1, 3], [0, 2, 4]]
    assert FIVE.children(0) == [1, 2] and FIVE.children(3) == []


def test_unbalanced_tree_pads_paths():
    tree = DraftTree.from_parents([5, 6, 7, 8], [-1, 0, 1, 0])
    assert tree.paths.tolist() == [[0, 1, 2], [0, 3, -1]]


def test_single_root_is_plain_decoding():
    tree = DraftTree.single(42)
    assert tree.size == 1 and tree.paths.tolist() == [[0]] and tree.mask.tolist() == [[True]]


def _stub_expand(vocab: int, calls: list):
    """Child distribution of token t: t+1 with p=0.6, t+2 with 0.25, the rest shared."""

    def expand(tokens: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
        calls.append((tokens.tolist(), parent_rows.tolist()))
        p = torch.full((len(tokens), vocab), 0.15 / (vocab - 2))
        for i, t in enumerate(tokens.tolist()):
            p[i, (t + 1) % vocab] = 0.6
            p[i, (t + 2) % vocab] = 0.25
        return p.log()

    return expand


def test_grow_dynamic_tree_topk_and_rerank():
    vocab = 50
    root_lp = torch.full((vocab,), 0.1 / 48).log()
    root_lp[1], root_lp[2] = math.log(0.6), math.log(0.3)
    calls = []
    tree = grow_dynamic_tree(0, root_lp, _stub_expand(vocab, calls), top_k=2, depth=3, budget=5)
    # two expansions (depth 2 and 3), each over a frontier of 2 nodes
    assert len(calls) == 2
    assert calls[0] == ([1, 2], [0, 0])
    # depth-2 children: 1->2 (.36), 1->3 (.15), 2->3 (.18), 2->4 (.075): keep 1-2 and 2-3
    assert calls[1] == ([2, 3], [0, 1])
    # candidates by value: 1 (.6), 2 (.3), 1-2 (.36), 2-3 (.18), 1-2-3 (.216), 2-3-4 (.108)
    # budget 5 = root + the 4 best: 1 (.6), 1-2 (.36), 2 (.3), 1-2-3 (.216)
    assert tree.tokens.tolist() == [0, 1, 2, 2, 3]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 3]
    assert tree.depths.tolist() == [0, 1, 1, 2, 3]


def test_rerank_is_closed_under_parents_for_any_budget():
    vocab = 30
    torch.manual_seed(0)
    root_lp = torch.log_softmax(torch.randn(vocab) * 3, -1)
    logits = torch.randn(200, vocab) * 3

    def expand(tokens, parent_rows):
        return torch.log_softmax(logits[tokens], -1)

    for budget in range(1, 40):
        tree = grow_dynamic_tree(7, root_lp, expand, top_k=4, depth=5, budget=budget)
        assert tree.size == min(budget, 1 + 4 * 5)
        parents = tree.parents.tolist()
        assert all(parents[i] < i for i in range(1, tree.size))
        # siblings carry distinct tokens (top-k of one distribution)
        for node in range(tree.size):
            kids = tree.tokens[tree.children(node)].tolist()
            assert len(kids) == len(set(kids))


def test_from_parents_matches_walking_up_the_tree_on_random_trees():
    import random

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 40)
        parents = [-1] + [rng.randrange(i) for i in range(1, n)]
        tree = DraftTree.from_parents(list(range(100, 100 + n)), parents)

        def lineage(i, parents=parents):
            out = [i]
            while parents[out[-1]] != -1:
                out.append(parents[out[-1]])
            return out[::-1]  # root first

        leaves = [i for i in range(n) if i not in parents]
        width = max(len(lineage(i)) for i in range(n))
        for i in range(n):
            assert tree.depths[i] == len(lineage(i)) - 1
            assert tree.mask[i].nonzero().flatten().tolist() == sorted(lineage(i))
        assert tree.paths.tolist() == [
            lineage(i) + [-1] * (width - len(lineage(i))) for i in leaves
        ]
