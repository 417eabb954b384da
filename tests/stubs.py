"""A stub target and stub drafters with hand-written distributions, for exact statistical tests.

The stub target is a second-order Markov chain over a tiny vocabulary: its next-token logits are
a fixed random table indexed by the last two tokens of the context. It implements the `Target`
protocol (prepare / prefill / verify / commit) without any neural network, so thousands of
generations take seconds and the exact probability of any sequence is known. Images are
placeholders only: each adds `image_grid`'s tokens to the prompt (they never change the chain,
which reads the last two tokens) and a span to the prefill's `visual`, as an adapter reports
them.
"""

from __future__ import annotations

import torch

from specvlm.config import SamplingConfig
from specvlm.decoding.sampling import target_probs
from specvlm.decoding.tree import DraftTree, grow_dynamic_tree
from specvlm.target.base import Prefill, Prompt, TargetInfo, Verified, VisualLayout, VisualSpan

V = 5
IMAGE = 4  # the placeholder id an image's tokens have in the prompt


class StubTarget:
    def __init__(
        self, seed: int = 0, sharpness: float = 1.5, image_grid: tuple[int, int, int] = (1, 2, 2)
    ) -> None:
        self.image_grid = image_grid
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V, V, V, generator=gen) * sharpness  # (prev2, prev1) -> logits
        self.info = TargetInfo(
            architecture="Stub",
            text_model_type="stub",
            hidden_size=V,
            vocab_size=V,
            n_layers=1,
            max_context=1000,
            eos_token_ids=(),
            dtype=torch.float32,
        )
        self.history: list[int] = []
        self._pending: list[list[int]] = []

    def logits_after(self, context: list[int]) -> torch.Tensor:
        return self.table[context[-2], context[-1]].clone()  # (V,)

    def prepare(self, prompt: str, images) -> Prompt:
        n = len(images or [])
        P = self.image_grid[0] * self.image_grid[1] * self.image_grid[2]
        ids = torch.tensor([len(prompt) % V, *[IMAGE] * (n * P), 1, 2])
        return Prompt(text=prompt, input_ids=ids, n_images=n)

    def prefill(self, prompt: Prompt, capacity: int) -> Prefill:
        self.history = prompt.input_ids.tolist()
        T = len(self.history)
        P = self.image_grid[0] * self.image_grid[1] * self.image_grid[2]
        spans = tuple(VisualSpan(1 + k * P, *self.image_grid) for k in range(prompt.n_images))
        return Prefill(
            self.logits_after(self.history),
            torch.zeros(T, V),
            torch.zeros(T, V),
            visual=VisualLayout(spans),
        )

    def verify(self, tokens, depths, tree_mask) -> Verified:
        n = tokens.shape[0]
        mask = torch.ones(1, 1, dtype=torch.bool) if tree_mask is None else tree_mask
        contexts = []
        for i in range(n):
            ancestors = mask[i].nonzero().flatten().tolist()  # in index order = depth order
            contexts.append(self.history + tokens[ancestors].tolist())
        self._pending = contexts
        logits = torch.stack([self.logits_after(c) for c in contexts])  # (N, V)
        return Verified(logits=logits, features=torch.zeros(n, V))

    def commit(self, path: list[int]) -> None:
        self.history = self._pending[path[-1]]

    @property
    def length(self) -> int:
        return len(self.history)

    def embed(self, ids):
        return torch.zeros(len(ids), V)

    def lm_head(self, features):
        return torch.zeros(features.shape[0], V)

    def decode(self, ids):
        return " ".join(map(str, ids))


class StubTreeDrafter:
    """Proposes EAGLE-2 trees from its OWN Markov chain: the target's table plus noise, so it
    agrees with the target often but not always (like a trained draft)."""

    def __init__(self, target: StubTarget, seed: int = 1, noise: float = 1.0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = target.table + noise * torch.randn(V, V, V, generator=gen)
        self.history: list[int] = []

    def _logprobs(self, context: list[int]) -> torch.Tensor:
        return torch.log_softmax(self.table[context[-2], context[-1]], -1)

    def begin(self, prefill, root, capacity) -> None:
        self.history = [0, 0, root]

    def observe(self, features, next_tokens) -> None:
        self.history += next_tokens.tolist()

    def propose(self, root: int, depth: int, top_k: int, budget: int) -> DraftTree:
        frontier = [self.history]  # contexts of the current frontier nodes

        def expand(tokens, parent_rows):
            nonlocal frontier
            frontier = [
                frontier[r] + [t]
                for r, t in zip(parent_rows.tolist(), tokens.tolist(), strict=True)
            ]
            return torch.stack([self._logprobs(c) for c in frontier])

        return grow_dynamic_tree(
            root, self._logprobs(self.history), expand, top_k=top_k, depth=depth, budget=budget
        )


def exact_joint(
    target: StubTarget, prompt_ids: list[int], n: int, cfg: SamplingConfig
) -> torch.Tensor:
    """P(first n generated tokens) under plain sampling, as a (V,)*n tensor."""
    joint = torch.ones(())
    contexts = [prompt_ids]
    for _ in range(n):
        rows = []
        for c in contexts:
            logits = target.logits_after(c)
            seen = torch.zeros(V, dtype=torch.bool)
            seen[c] = cfg.repetition_penalty != 1.0
            r = cfg.repetition_penalty
            logits = torch.where(seen, torch.where(logits < 0, logits * r, logits / r), logits)
            rows.append(target_probs(logits[None], cfg)[0])
        step = torch.stack(rows)
        joint = joint.reshape(-1, 1) * step  # (V**k, V)
        contexts = [c + [t] for c in contexts for t in range(V)]
    return joint.reshape((V,) * n)
