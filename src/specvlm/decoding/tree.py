"""The draft tree: typed tensors derived from a parent list, and EAGLE-2 dynamic growth.

Pure torch: nothing here knows a model. A tree of N nodes, node 0 the root (the token the target
produced last, not yet in its KV cache), parents listed before children:

    tokens  (N,)    token id of each node
    parents (N,)    parent index, -1 for the root
    depths  (N,)    0 for the root; the target sees node i at position `cache length + depths[i]`
    mask    (N, N)  mask[i, j] = node j is node i or one of its ancestors (who i may attend to)
    paths   (P, D+1) root-to-leaf node indices, one row per leaf, right-padded with -1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

_CPU = torch.device("cpu")
# plain decoding builds the one-node tree every round: on the CPU its constant tensors are shared
_SINGLE_CPU = (torch.tensor([-1]), torch.tensor([0]), torch.tensor([[True]]), torch.tensor([[0]]))


@dataclass(frozen=True)
class DraftTree:
    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    mask: torch.Tensor
    paths: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_parents(
        cls,
        tokens: list[int] | torch.Tensor,
        parents: list[int],
        device: torch.device | str | None = None,
    ) -> DraftTree:
        """device None: the device of `tokens` when a tensor, else the CPU."""
        if device is None:
            device = tokens.device if isinstance(tokens, torch.Tensor) else _CPU
        n = len(parents)
        if n == 0 or parents[0] != -1:
            raise ValueError("node 0 must be the root (parent -1)")
        if any(not 0 <= p < i for i, p in enumerate(parents[1:], start=1)):
            raise ValueError("every parent must come before its child")
        # plain Python lists first, one tensor each at the end: a tree is built every round,
        # and element-wise tensor writes would cost more than the arithmetic
        depths = [0] * n
        lineage: list[list[int]] = [[0]]  # lineage[i]: the nodes from the root down to i
        has_child = [False] * n
        for i in range(1, n):
            p = parents[i]
            depths[i] = depths[p] + 1
            lineage.append(lineage[p] + [i])
            has_child[p] = True
        mask = [[False] * n for _ in range(n)]
        for i, line in enumerate(lineage):
            for j in line:
                mask[i][j] = True  # node i sees itself and its ancestors
        width = max(depths) + 1
        paths = [
            lineage[i] + [-1] * (width - len(lineage[i])) for i in range(n) if not has_child[i]
        ]
        return cls(
            tokens=torch.as_tensor(tokens, dtype=torch.long, device=device).reshape(n),
            parents=torch.tensor(parents, dtype=torch.long, device=device),
            depths=torch.tensor(depths, dtype=torch.long, device=device),
            mask=torch.tensor(mask, dtype=torch.bool, device=device),
            paths=torch.tensor(paths, dtype=torch.long, device=device),
        )

    @classmethod
    def single(cls, root: int, device: torch.device | str | None = None) -> DraftTree:
        """The tree of plain decoding: the root alone."""
        device = torch.device(device or _CPU)
        if device == _CPU:
            parents, depths, mask, paths = _SINGLE_CPU
        else:
            parents, depths, mask, paths = (t.to(device) for t in _SINGLE_CPU)
        tokens = torch.tensor([root], device=device)
        return cls(tokens=tokens, parents=parents, depths=depths, mask=mask, paths=paths)

    def children(self, node: int) -> list[int]:
        """Children of `node` in index order (the order the drafter ranked them)."""
        return (self.parents == node).nonzero().flatten().tolist()


# expand(tokens (k,), parent_rows (k,)) -> log-probabilities (k, V) of each node's children.
# parent_rows index the previous frontier (all zeros for the root's children).
ExpandFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def grow_dynamic_tree(
    root: int,
    root_logprobs: torch.Tensor,
    expand: ExpandFn,
    *,
    top_k: int,
    depth: int,
    budget: int,
) -> DraftTree:
    """EAGLE-2: expand the top-k frontier by cumulative log-probability, then rerank to a budget.

    1. depth 1: the top-k tokens of the draft's distribution at the root, value = log p;
    2. each further depth: expand the frontier once (one draft forward for all k nodes); each node
       proposes its top-k children, value = parent value + log p(child); keep the top-k of the
       k*k children as the next frontier; record every candidate;
    3. keep the budget-1 best candidates by value. A child's value never exceeds its parent's and
       ties keep creation order, so the kept set contains every kept node's parent.
    """
    device = root_logprobs.device  # every tensor of the tree lives with the draft's outputs
    k = min(top_k, root_logprobs.shape[-1])
    values, tokens = root_logprobs.topk(k)  # (k,), (k,)
    root_parents = torch.full((k,), -1, device=device)
    cand_tokens, cand_parents, cand_values = [tokens], [root_parents], [values]
    parent_rows = torch.zeros(k, dtype=torch.long, device=device)  # root's children: row 0
    for level in range(1, depth):
        logp = expand(tokens, parent_rows)  # (k, V): children of each frontier node
        child_values, child_tokens = logp.topk(k, dim=-1)  # (k, k)
        child_values = values[:, None] + child_values  # (k, k) cumulative log-probability
        values, flat = child_values.flatten().topk(k)  # (k,) best k of the k*k children
        parent_rows = flat // k  # row of each new node's parent in the frontier just expanded
        tokens = child_tokens.flatten()[flat]  # (k,)
        cand_tokens.append(tokens)
        cand_parents.append(parent_rows + k * (level - 1))  # candidate index of the parent
        cand_values.append(values)
    return _rerank(root, cand_tokens, cand_parents, cand_values, budget)


def _rerank(
    root: int,
    cand_tokens: list[torch.Tensor],
    cand_parents: list[torch.Tensor],
    cand_values: list[torch.Tensor],
    budget: int,
) -> DraftTree:
    """Keep the budget-1 best candidates (closed under parents), root first, parents first."""
    tokens = torch.cat(cand_tokens)  # (C,) candidates in creation order
    parents = torch.cat(cand_parents)  # (C,) candidate index of the parent, -1 = root
    values = torch.cat(cand_values)  # (C,)
    keep = min(budget - 1, tokens.shape[0])
    # stable sort: on equal values the earlier-created candidate (a parent) wins
    order = torch.sort(-values, stable=True).indices[:keep]
    kept = sorted(order.tolist())  # creation order: parents precede children
    node_of = {c: i + 1 for i, c in enumerate(kept)}  # candidate index -> tree node index
    parent_of = parents.tolist()
    # a KeyError here would mean the kept set is not closed under parents (a bug)
    tree_parents = [-1] + [0 if parent_of[c] < 0 else node_of[parent_of[c]] for c in kept]
    return DraftTree.from_parents([root] + tokens[kept].tolist(), tree_parents, tokens.device)
