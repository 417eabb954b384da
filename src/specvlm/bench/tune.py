"""Pick the draft tree (depth, top-k, budget) that maximises tokens/s on THIS machine.

1. Cost model from measurements: c_verify(N), one target forward over an N-node tree, and
   c_draft(k), one draft expansion of a k-wide frontier (plus the catch-up, counted with it).
2. Acceptance from measurements: τ(depth, top_k, budget) from real greedy speculative decoding
   of a few prompts with each candidate tree (output is identical whatever the tree).
3. Estimated tokens/s = τ / (c_verify(budget) + (depth - 1) · c_draft(top_k) + c_catchup);
   the best candidate is written where `specvlm.load` finds it (per target, per machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from specvlm.api import Engine
from specvlm.config import TreeConfig
from specvlm.decoding.tree import DraftTree
from specvlm.draft.eagle import EagleDrafter

PAPER_DEFAULT = TreeConfig(depth=7, top_k=10, budget=60)
GRID = {"depth": (3, 5, 7), "top_k": (2, 4, 8, 10), "budget": (8, 16, 32, 60)}


def machine_key() -> str:
    device = torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else "cpu"
    return f"{platform.machine()}-{os.cpu_count()}cores-{torch.get_num_threads()}threads-{device}"


def tuning_path(fingerprint: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("SPECVLM_CACHE", Path.home() / ".cache" / "specvlm"))
    weights = json.dumps(fingerprint.get("lm_head_probe", [])).encode()
    key = f"{fingerprint.get('structure', 'unknown')}-{hashlib.sha256(weights).hexdigest()[:8]}"
    return root / "tuning" / f"{key}-{machine_key()}.json"


def load_tuned(
    fingerprint: dict[str, Any], cache_dir: str | Path | None = None
) -> TreeConfig | None:
    path = tuning_path(fingerprint, cache_dir)
    if not path.is_file():
        return None
    return TreeConfig(**json.loads(path.read_text())["tree"])


def cost_probe_tree(n: int) -> DraftTree:
    """An n-node tree shaped like an EAGLE tree (4 interleaved chains), for timing verify."""
    return DraftTree.from_parents(list(range(n)), [-1] + [max(0, i - 4) for i in range(1, n)])


def _median_time(fn, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        fn()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_costs(engine: Engine, prompt: tuple[Any, list], repeats: int = 10) -> dict[str, Any]:
    """c_verify(N) for every grid budget and c_draft(k) for every grid top-k, in seconds."""
    target = engine.target
    prepared = target.prepare(*prompt)
    budgets = sorted({1, *GRID["budget"]})
    pre = target.prefill(prepared, capacity=prepared.input_ids.shape[0] + max(budgets) + 80)
    verify = {}
    for n in budgets:
        tree = cost_probe_tree(n)
        verify[n] = _median_time(lambda t=tree: target.verify(t.tokens, t.depths, t.mask), repeats)
    drafter = EagleDrafter(engine.draft, target.embed, target.lm_head)
    root = int(pre.logits.argmax())
    drafter.begin(pre, root, capacity=prepared.input_ids.shape[0] + 200)
    draft = {}
    for k in GRID["top_k"]:
        one = _median_time(
            lambda k=k: drafter.propose(root, depth=1, top_k=k, budget=k + 1), repeats
        )
        two = _median_time(
            lambda k=k: drafter.propose(root, depth=2, top_k=k, budget=k + 1), repeats
        )
        draft[k] = max(two - one, 1e-6)  # one expansion of a k-wide frontier
    feats = pre.features[-4:]
    catchup = _median_time(lambda: _catchup(drafter, feats), repeats)
    return {"verify": verify, "draft": draft, "catchup": catchup}


def _catchup(drafter: EagleDrafter, feats: torch.Tensor) -> None:
    """Time a 4-token catch-up without keeping it (the cache length is restored)."""
    length = drafter.cache.length
    drafter.observe(feats, torch.zeros(feats.shape[0], dtype=torch.long))
    drafter.cache.length = length


def measure_tau(
    engine: Engine, prompts: list[tuple[Any, list]], tree: TreeConfig, max_new: int
) -> float:
    saved = engine.tree
    engine.tree = tree
    try:
        accepted, rounds = 0, 0
        for text, images in prompts:
            stats = engine.generate(text, images=images, max_new_tokens=max_new).stats
            accepted += sum(stats.accept_lengths)
            rounds += stats.target_forwards
        return accepted / max(1, rounds)
    finally:
        engine.tree = saved


def tune(
    engine: Engine,
    prompts: list[tuple[Any, list]],
    *,
    max_new_tokens: int = 64,
    write: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure, estimate, choose; returns the choice, the paper default's estimate and the grid."""
    costs = measure_costs(engine, prompts[0])
    candidates = [TreeConfig(d, k, b) for d in GRID["depth"] for k in GRID["top_k"]
                  for b in GRID["budget"] if b <= 1 + d * k]  # fmt: skip
    if PAPER_DEFAULT not in candidates:
        candidates.append(PAPER_DEFAULT)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(candidates), desc="tune", unit="tree")
    grid = []
    for tree in candidates:
        tau = measure_tau(engine, prompts, tree, max_new_tokens)
        seconds = costs["verify"][tree.budget] + (tree.depth - 1) * costs["draft"][tree.top_k]
        seconds += costs["catchup"]
        grid.append({"tree": asdict(tree), "tau": tau, "est_tokens_per_s": tau / seconds})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    best = max(grid, key=lambda g: g["est_tokens_per_s"])
    paper = next(g for g in grid if TreeConfig(**g["tree"]) == PAPER_DEFAULT)
    result = {
        "tree": best["tree"],
        "est_tokens_per_s": best["est_tokens_per_s"],
        "tau": best["tau"],
        "paper_default": paper,
        "gain_over_paper_default": best["est_tokens_per_s"] / paper["est_tokens_per_s"],
        "plain_est_tokens_per_s": 1.0 / costs["verify"][1],
        "costs_s": {
            k: {str(n): v for n, v in c.items()} if isinstance(c, dict) else c
            for k, c in costs.items()
        },  # fmt: skip
        "machine": machine_key(),
        "grid": grid,
    }
    if write:
        path = tuning_path(engine.target.info.fingerprint, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)
        result["path"] = str(path)
    return result
