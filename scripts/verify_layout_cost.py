"""One target forward over N tree tokens, float32, with the Linears run three ways: oneDNN's
packed weights (`layers.PackedLinear`, the engine's choice), PyTorch's matmul on the transposed
layout (`layers.fast_linear_layout`, the choice before it) and on the plain one (issue 20's probe).

    python scripts/verify_layout_cost.py [--delta src/specvlm/assets/world-smol] [--repeats 12]

The world-smol target (assembled from the wheel and `--delta`, or the base with `--delta ''`) is
loaded three times, once per kernel; for each repeat each prefills the same image + question and verify
trees of N = 1, 4, 8, 12, 16 nodes (`bench.tune.cost_probe_tree`, never committed), interleaved.
Prints the median ms per N. Run it alone: the box's other work moves these numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import specvlm
import specvlm.target.llava as llava
from specvlm.bench.tune import cost_probe_tree
from specvlm.smol import trained_world_smol_folder, world_smol_folder
from specvlm.world.scenes import render
from specvlm.world.splits import world_sample

SIZES = (1, 4, 8, 12, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delta", default="src/specvlm/assets/world-smol")
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    folder = trained_world_smol_folder(args.delta) if args.delta else world_smol_folder()
    image = render(world_sample("test", 0), size=128)
    engines = {}
    chosen = llava.inference_kernels
    kernels = {
        "onednn packed": {"packed": True, "fast_layout": False},
        "mkl transposed": {"packed": False, "fast_layout": True},
        "mkl plain": {"packed": False, "fast_layout": False},
    }
    try:
        for name, kw in kernels.items():
            llava.inference_kernels = lambda *_, kw=kw: kw
            engines[name] = specvlm.load(target=folder, dtype=torch.float32)
    finally:
        llava.inference_kernels = chosen
    trees = {n: cost_probe_tree(n) for n in SIZES}
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in SIZES} for name in engines}
    for rep in range(args.repeats + 2):
        for name, engine in engines.items():
            target = engine.target
            prompt = target.prepare("Describe the image in detail, naming every shape.", [image])
            target.prefill(prompt, capacity=prompt.input_ids.shape[0] + max(SIZES) + 8)
            for n in SIZES:
                tree = trees[n]
                t0 = time.perf_counter()
                target.verify(tree.tokens, tree.depths, tree.mask)
                if rep >= 2:  # warm-up
                    times[name][n].append(time.perf_counter() - t0)
    print(f"# {folder}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    for name, per_n in times.items():
        cells = " ".join(f"N={n}: {1e3 * statistics.median(t):.1f} ms" for n, t in per_n.items())
        print(f"{name:>14}  {cells}")


if __name__ == "__main__":
    main()
