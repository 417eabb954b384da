"""Does `torch.compile` make the draft's step cheaper on this CPU? (Not a test.)

One expansion of the embedded draft head, written as one pure function (input norm and fc,
the decoder layer with its KV-cache write, the target's LM head, log-softmax and top-k, k = 4
rows), timed eager and compiled (inductor, dynamic shapes) over cache lengths 150-349 (plus
8 scratch slots),
alternating eager / compiled twice after the compile. Prints the median ms of each pass and
the largest difference between the two outputs.

Run:  python scripts/compile_draft_step.py [--cpp-wrapper]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from specvlm import api
from specvlm.layers import _mlp, _norm, _qkv, apply_rope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpp-wrapper", action="store_true", help="inductor's C++ wrapper")
    args = ap.parse_args()
    drafter = api.load()._drafter()
    head, lm_head = drafter.head, drafter.lm_head
    cfg, block = head.config, head.midlayer
    H, Hkv, hd, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
    k, cap = 4, 600

    def step(feats, embeds, cos, sin, kc, vc, mask, slots):
        x = head.fc(head.input_norm(torch.cat([feats, embeds], dim=-1)))  # (k, d)
        heads = _qkv(block.self_attn, _norm(block.input_layernorm, x))
        heads = heads.view(k, H + 2 * Hkv, hd).transpose(0, 1)  # (H + 2 Hkv, k, hd)
        qk = apply_rope(heads[: H + Hkv], cos, sin)
        kc.index_copy_(1, slots, qk[H:])  # the cache write
        vc.index_copy_(1, slots, heads[H + Hkv :])
        S = mask.shape[1]
        att = F.scaled_dot_product_attention(
            qk[None, :H],
            kc[None, :, :S],
            vc[None, :, :S],
            attn_mask=mask[None, None],
            scale=hd**-0.5,
        )
        h = x + block.self_attn.o_proj(att[0].transpose(0, 1).reshape(k, H * hd))
        y = h + _mlp(block.mlp, _norm(block.post_attention_layernorm, h))
        logp = torch.log_softmax(lm_head(y).float(), dim=-1)  # (k, V)
        return y, logp, logp.topk(k, dim=-1).indices

    kc, vc = torch.randn(Hkv, cap, hd), torch.randn(Hkv, cap, hd)

    def inputs(length: int):
        S = length + 8
        return (
            torch.randn(k, d),
            torch.randn(k, d),
            torch.randn(k, hd),
            torch.randn(k, hd),
            kc,
            vc,
            torch.zeros(k, S),
            torch.arange(S - k, S),
        )

    if args.cpp_wrapper:
        import torch._inductor.config as inductor_config

        inductor_config.cpp_wrapper = True
    compiled = torch.compile(step, dynamic=True)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for length in (150, 151, 230):
            compiled(*inputs(length))
        print(f"compile (3 calls): {time.perf_counter() - t0:.1f} s")
        for name, fn in (("eager", step), ("compiled", compiled)) * 2:
            times = []
            for length in range(150, 350):
                a = inputs(length)
                t0 = time.perf_counter()
                fn(*a)
                times.append(time.perf_counter() - t0)
            print(f"{name}: median {1e3 * statistics.median(times):.3f} ms")
        a = inputs(200)
        want, got = step(*a), compiled(*a)
        diff = max((w - g).abs().max().item() for w, g in zip(want[:2], got[:2], strict=True))
        print(f"largest difference {diff:.2e}; same top-k: {torch.equal(want[2], got[2])}")


if __name__ == "__main__":
    main()
