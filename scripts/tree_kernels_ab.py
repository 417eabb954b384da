"""Trees on PyTorch's matmul instead of oneDNN: does the verify get cheaper? (an A/B, one process)

Two engines on the shipped world-smol pair in float32, both with the default one-row policy.
In B every decoder layer's packed linear (fused q/k/v, o, fused gate/up, down) multiplies every
row count by `F.linear` on its dense, transposed weight (MKL), as the hot-cache micro-benchmark
(`scripts/linear_kernels.py`) suggests is faster at 4-16 rows on an Emerald Rapids Xeon; the LM
head stays on oneDNN in both. Each world test item is decoded speculatively A, B, B, A after a
warm-up; prints the cumulative tokens/s of each and whether their outputs are identical.

    python scripts/tree_kernels_ab.py [N_ITEMS]      # default 10 (2 per family)
"""

from __future__ import annotations

import sys
import time

import torch.nn.functional as F

import specvlm
from specvlm.bench.suites import load_suite
from specvlm.config import TreeConfig
from specvlm.smol import trained_world_smol_folder


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    target = trained_world_smol_folder("src/specvlm/assets/world-smol")
    draft = "src/specvlm/assets/world-smol-draft"
    tree = TreeConfig(depth=5, top_k=4, budget=16)
    engines = {
        name: specvlm.load(target=target, draft=draft, dtype="float32", tree=tree)
        for name in ("A", "B")
    }

    def dense(packed):
        return lambda x: F.linear(x, packed.dense, packed.bias)

    for layer in engines["B"].target.model.model.language_model.layers:
        for module, name in ((layer.self_attn, "packed_qkv"), (layer.mlp, "packed_gate_up")):
            setattr(module, name, dense(getattr(module, name)))
        for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
            lin.forward = dense(vars(lin)["forward"])
    seconds, tokens, same = {"A": 0.0, "B": 0.0}, {"A": 0, "B": 0}, 0
    items = load_suite("world", n=n)
    for k, item in enumerate(items):
        messages, images = list(item.messages), list(item.images)
        engines["A"].generate(messages, images=images, max_new_tokens=8)  # warm-up
        out = {}
        for name in ("A", "B", "B", "A"):
            t0 = time.perf_counter()
            result = engines[name].generate(messages, images=images, max_new_tokens=128)
            seconds[name] += time.perf_counter() - t0
            tokens[name] += len(result.token_ids)
            out[name] = result.token_ids
        same += out["A"] == out["B"]
        print(k, {t: round(tokens[t] / seconds[t], 1) for t in seconds}, file=sys.stderr)
    a, b = (tokens[t] / seconds[t] for t in ("A", "B"))
    print(
        f"trees on oneDNN (A): {a:.1f} tok/s; decoder-layer linears on MKL for trees (B): "
        f"{b:.1f} tok/s; B/A {b / a:.3f}; identical {same}/{len(items)}"
    )


if __name__ == "__main__":
    main()
