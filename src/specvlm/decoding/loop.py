"""The one decoding loop: draft -> verify -> accept -> commit -> catch up.

Plain autoregressive decoding is this same loop with no drafter: the "tree" is the root alone,
so every round verifies one token and accepts none.

Invariant between rounds: `root` (the last emitted token) is in neither KV cache, and the
target's cache holds exactly Δ positions more than the draft's, Δ fixed at prefill: the visual
tokens the draft does not read (0 for a draft that reads every prompt token; with an elastic
visual compressor, the image's P tokens minus its m compressed ones). Each side numbers its own
positions; a round appends the same accepted tokens to both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from specvlm.config import SamplingConfig, TreeConfig
from specvlm.decoding.sampling import LogitsProcessor, sample, target_probs
from specvlm.decoding.stats import SpecStats
from specvlm.decoding.tree import DraftTree
from specvlm.decoding.verify import greedy_accept, sampled_accept
from specvlm.draft.base import Drafter
from specvlm.target.base import Prompt, Target


def _choose(logits: torch.Tensor, sampling: SamplingConfig, gen: torch.Generator | None) -> int:
    """The target's own choice from one row of logits (V,)."""
    if sampling.greedy:
        return int(logits.argmax())
    return sample(target_probs(logits[None], sampling)[0], gen)


def _stop_reason(
    token: int, emitted: int, max_new: int, max_new_tokens: int, eos: tuple[int, ...]
) -> str:
    """Why decoding stops after `token` (the emitted-th new token), or "" if it goes on."""
    if token in eos:
        return "eos"
    if emitted >= max_new:
        return "max_new_tokens" if max_new == max_new_tokens else "context"
    return ""


def decode(
    target: Target,
    prompt: Prompt,
    *,
    drafter: Drafter | None,
    max_new_tokens: int,
    sampling: SamplingConfig,
    tree: TreeConfig,
    stats: SpecStats,
    generator: torch.Generator | None = None,
) -> Iterator[list[int]]:
    """Yield the new tokens of each round. Stops on EOS, max_new_tokens or the context limit."""
    start = time.perf_counter()
    T = prompt.input_ids.shape[0]
    device = prompt.input_ids.device  # the target's: every tensor of the loop lives there
    budget = 1 if drafter is None else tree.budget
    max_new = min(max_new_tokens, target.info.max_context - T)  # prompt + new <= context
    stats.prompt_tokens = T

    # a drafter with a prompt of its own (a separate model) starts reading it now: with
    # concurrent prefill, on a worker thread while the target prefills
    start_drafter = getattr(drafter, "start", None)
    if start_drafter is not None:
        start_drafter(new_tokens=max_new + tree.depth * tree.top_k + 1)

    # 1. prefill: the target reads the image(s) and the prompt, and picks the first token
    pre = target.prefill(prompt, capacity=T + max_new + budget)
    process = LogitsProcessor(sampling, prompt.input_ids, pre.logits.shape[-1])
    root = _choose(process(pre.logits[None])[0], sampling, generator)
    process.observe([root])
    stats.prefill_s = stats.ttft_s = time.perf_counter() - start
    emitted = 1
    eos = target.info.eos_token_ids
    stats.stop_reason = _stop_reason(root, emitted, max_new, max_new_tokens, eos)
    done = bool(stats.stop_reason)
    stats.new_tokens = emitted
    yield [root]
    if drafter is not None and not done:
        # the drafter reads the prompt too (pre.visual: where the images' tokens sit, which it
        # may read compressed)
        drafter.begin(pre, root, capacity=T + max_new + tree.depth * tree.top_k + 1)

    while not done:
        remaining = max_new - emitted  # a round emits at most depth + 1 tokens
        # 2. draft a tree rooted at the last token (or just the root, for plain decoding)
        if drafter is None or remaining == 1:
            draft = DraftTree.single(root, device=device)
        else:
            draft = drafter.propose(
                root, depth=min(tree.depth, remaining - 1), top_k=tree.top_k, budget=budget
            )
        # 3. verify the whole tree in one target forward
        out = target.verify(draft.tokens, draft.depths, draft.mask)
        logits = process(out.logits, draft)  # (N, V) each node's logits in its own context
        # 4. accept the longest agreeing path, plus the target's own bonus token after it
        if sampling.greedy:
            path, bonus = greedy_accept(draft, logits)
        else:
            path, bonus = sampled_accept(draft, target_probs(logits, sampling), generator)
        # 5. commit: keep the accepted path's K/V, contiguous after the prefix
        target.commit(path)
        new = draft.tokens[path[1:]].tolist() + [bonus]
        stats.accept_lengths.append(len(path))
        stats.tree_sizes.append(draft.size)
        for i, tok in enumerate(new):  # cut at EOS / the token limit
            stats.stop_reason = _stop_reason(tok, emitted + i + 1, max_new, max_new_tokens, eos)
            if stats.stop_reason:
                new, done = new[: i + 1], True
                break
        emitted += len(new)
        process.observe(new)
        stats.new_tokens = emitted
        stats.decode_s = time.perf_counter() - start - stats.ttft_s
        yield new
        # 6. the drafter catches up on the target's real features at the accepted nodes
        if drafter is not None and not done:
            drafter.observe(out.features[path], torch.tensor(new, device=device))
        root = bonus
    stats.decode_s = time.perf_counter() - start - stats.ttft_s
