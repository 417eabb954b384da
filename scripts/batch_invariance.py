"""Why bf16 speculative output can differ from bf16 plain output: which ops give a row a value
that depends on the rows beside it. (Not a test; prints counts.)

    python scripts/batch_invariance.py

1. A linear layer at SmolLM2's shapes, in bf16: its output for rows [i, i+m) computed alone
   against the same rows inside one 64-row product, for m = 1, 2, 3, 5, 16, 17 (elements
   differing, summed over every block).
2. Attention of a chain of 16 queries over a 150-333 slot cache (9 query / 3 KV heads, head
   size 64, the tree forward's additive mask) against each query alone over its own prefix (the
   plain decoding step), in bf16 and in float32: elements differing per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_rows() -> None:
    print("linear (bf16): elements differing, rows computed in blocks of m vs one 64-row product")
    for k, n in [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152), (576, 1024)]:
        w = torch.randn(n, k).bfloat16()
        x = torch.randn(64, k).bfloat16()
        full = F.linear(x, w)
        res = {}
        for m in (1, 2, 3, 5, 16, 17):
            res[m] = sum(
                int((F.linear(x[i : i + m], w) != full[i : i + m]).sum())
                for i in range(0, 64 - m + 1, m)
            )
        print(f"  in {k:5d} out {n:5d}: {res}")


def attention_rows() -> None:
    H, Hkv, hd, T = 9, 3, 64, 16
    print("attention: elements differing per chain query, tree batch vs the query alone")
    for dtype in (torch.bfloat16, torch.float32):
        for P in (150, 200, 333):
            S = P + T
            q = torch.randn(1, H, T, hd).to(dtype)
            k = torch.randn(1, Hkv, S, hd).to(dtype)
            v = torch.randn(1, Hkv, S, hd).to(dtype)
            allowed = torch.zeros(T, S, dtype=torch.bool)
            for i in range(T):
                allowed[i, : P + i + 1] = True
            mask = torch.zeros((), dtype=dtype).masked_fill(~allowed, float("-inf"))
            kw = {"scale": hd**-0.5, "enable_gqa": True}
            tree = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None], **kw)
            diffs = []
            for i in range(T):
                ks, vs = k[:, :, : P + i + 1], v[:, :, : P + i + 1]
                one = F.scaled_dot_product_attention(q[:, :, i : i + 1], ks, vs, **kw)
                diffs.append(int((one[0, :, 0] != tree[0, :, i]).sum()))
            print(f"  {str(dtype):14s} prefix {P}: {diffs} of {H * hd} each")


if __name__ == "__main__":
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    linear_rows()
    attention_rows()
