"""ATen calls and wall time of one target forward (1 and N tree nodes) and one draft proposal.

An A/B tool for engine changes: run it against two checkouts, alternating, on an idle machine:

    PYTHONPATH=/path/to/old/src python scripts/engine_ops.py TARGET DRAFT
    PYTHONPATH=src python scripts/engine_ops.py TARGET DRAFT

The op counts are exact (the PyTorch profiler); the times are medians of 50 calls, as noisy as
the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from specvlm.api import load
from specvlm.config import TreeConfig
from specvlm.decoding.tree import DraftTree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target")
    ap.add_argument("draft")
    ap.add_argument("--tree", default="5,4,12", help="depth,top_k,budget of the proposal")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tree_cfg = TreeConfig.parse(args.tree)
    engine = load(args.target, args.draft)
    target = engine.target
    pixels = (np.random.RandomState(0).rand(128, 128, 3) * 255).astype("uint8")
    prompt = target.prepare("Describe the image in detail.", [Image.fromarray(pixels)])
    capacity = prompt.input_ids.shape[0] + 64
    drafter = engine._drafter()
    drafter.begin(target.prefill(prompt, capacity=capacity), 5, capacity=capacity)
    spec = dict(depth=tree_cfg.depth, top_k=tree_cfg.top_k, budget=tree_cfg.budget)
    one, tree = DraftTree.single(5), drafter.propose(5, **spec)
    calls = {
        "verify(1)": lambda: target.verify(one.tokens, one.depths, one.mask),
        f"verify({tree.size})": lambda: target.verify(tree.tokens, tree.depths, tree.mask),
        f"propose({args.tree})": lambda: drafter.propose(5, **spec),
    }
    print("| call | ATen calls (all) | top-level | median ms | min ms |\n|---|---|---|---|---|")
    for name, fn in calls.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.events()
        top = sum(1 for e in events if e.cpu_parent is None)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        times.sort()
        print(f"| {name} | {len(events)} | {top} | {1e3 * times[25]:.2f} | {1e3 * times[0]:.2f} |")


if __name__ == "__main__":
    main()
