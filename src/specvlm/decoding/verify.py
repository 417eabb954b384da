"""Acceptance: which drafted path the target agrees with, and the bonus token after it.

Pure torch; `logits`/`probs` row i is the target's next-token distribution at tree node i.
Both functions return (path, bonus): path = accepted node indices starting with the root (0),
bonus = the token the target chooses after the last accepted node.
"""

from __future__ import annotations

import torch

from specvlm.decoding.sampling import sample
from specvlm.decoding.tree import DraftTree


def greedy_accept(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """Longest root-to-leaf prefix whose every token equals the target argmax at its parent."""
    if tree.size == 1:  # plain decoding
        return [0], int(logits[0].argmax())
    best = logits.argmax(-1)  # (N,) the target's choice after each node
    paths = tree.paths  # (P, D+1)
    child = paths[:, 1:]  # (P, D) node at each depth, -1 = padding
    parent = paths[:, :-1].clamp(min=0)  # (P, D)
    match = (child >= 0) & (tree.tokens[child.clamp(min=0)] == best[parent])  # (P, D)
    n_matches = match.long().cumprod(dim=1).sum(dim=1)  # (P,) accepted draft tokens per path
    row = int(n_matches.argmax())
    n = int(n_matches[row])
    path = paths[row, : n + 1].tolist()
    return path, int(best[path[-1]])


def sampled_accept(
    tree: DraftTree, probs: torch.Tensor, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Lossless acceptance for a deterministic (top-k) draft tree.

    At each accepted node, with p = the target's processed distribution there, visit the
    children in order: accept child x with probability p(x); on rejection set p(x) = 0 and
    renormalise, then try the next child. When every child is rejected (or there is none), the
    bonus token is drawn from what remains of p. Each emitted token is then distributed exactly
    as the target's p (the draft is a point mass q = 1 on x, so min(1, p/q) = p(x) and the
    residual norm(max(p - q, 0)) is p with x removed).
    """
    node, path = 0, [0]
    while True:
        p = probs[node].clone()  # (V,)
        accepted = None
        for child in tree.children(node):
            x = int(tree.tokens[child])
            if float(torch.rand((), generator=generator, device=p.device)) < float(p[x]):
                accepted = child
                break
            # rejected: u >= p(x) with u < 1, so some mass remains to renormalise
            p[x] = 0.0
            p /= p.sum()
        if accepted is None:
            return path, sample(p, generator)
        path.append(accepted)
        node = accepted


def chain_sampled_accept(
    draft_tokens: list[int], q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None
) -> tuple[int, int]:
    """Speculative sampling for a chain whose tokens were SAMPLED from the drafter's q.

    draft_tokens (n,); q (n, V): the drafter's distribution each token was drawn from;
    p (n+1, V): the target's processed distribution before each draft token and after the last.
    Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw the
    token from norm(max(p_i - q_i, 0)) and stop; if all n are accepted, draw a bonus from p_n.
    Returns (number accepted, next token).
    """
    for i, x in enumerate(draft_tokens):
        ratio = float(p[i, x]) / max(float(q[i, x]), 1e-30)
        if float(torch.rand((), generator=generator, device=p.device)) < min(1.0, ratio):
            continue
        residual = (p[i] - q[i]).clamp(min=0.0)
        total = residual.sum()
        # total == 0 only when p == q exactly, where rejection has probability 0
        return i, sample(residual / total if total > 0 else p[i], generator)
    return len(draft_tokens), sample(p[len(draft_tokens)], generator)
