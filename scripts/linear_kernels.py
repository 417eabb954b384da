"""One float32 Linear at SmolLM2-135M's shapes, three CPU kernels, M = 1, 4, 16 rows. (Not a test.)

    python scripts/linear_kernels.py [--repeats 30]

Kernels: PyTorch's `F.linear` (MKL) on the plain (out, in) weight, the same on the transposed
storage the engine used before (`layers.fast_linear_layout`), and oneDNN's packed weight
(`layers.PackedLinear`, the engine's choice on the CPU in float32). Prints the median ms per
product, and for each kernel how many output elements of a 16-row product differ when its rows
are computed one at a time (0 = row-invariant: a tree verify then computes each row's linear
bit for bit as plain decoding does). Run it alone: the box's other work moves these numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from specvlm.layers import PackedLinear

SHAPES = {  # (out, in)
    "q/k/v fused": (960, 576),
    "o_proj": (576, 576),
    "gate/up fused": (3072, 576),
    "down_proj": (576, 1536),
    "LM head": (49152, 576),
}
ROWS = (1, 4, 16)


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median ms")
    print("| weight (out, in) | rows | MKL plain | MKL transposed | oneDNN packed |")
    print("|---|---|---|---|---|")
    differing = {"MKL plain": 0, "MKL transposed": 0, "oneDNN packed": 0}
    with torch.inference_mode():
        for name, (out_f, in_f) in SHAPES.items():
            w = torch.randn(out_f, in_f)
            wt = w.t().contiguous().t()  # the same values, strides (1, out)
            kernels = {
                "MKL plain": lambda x, w=w: F.linear(x, w),
                "MKL transposed": lambda x, wt=wt: F.linear(x, wt),
                "oneDNN packed": PackedLinear(w, None),
            }
            x16 = torch.randn(16, in_f)
            for kernel, fn in kernels.items():
                full = fn(x16)
                rows = torch.cat([fn(x16[i : i + 1]) for i in range(16)])
                differing[kernel] += int((rows != full).sum())
            for m in ROWS:
                x = torch.randn(m, in_f)
                cells = [
                    f"{median_ms(lambda fn=fn, x=x: fn(x), args.repeats):.3f}"
                    for fn in kernels.values()
                ]
                print(f"| {name} ({out_f}, {in_f}) | {m} | " + " | ".join(cells) + " |")
    total = sum(o * 16 for o, _ in SHAPES.values())
    for kernel, n in differing.items():
        print(f"{kernel}: {n} of {total} elements of the 16-row products differ row by row")


if __name__ == "__main__":
    main()
