"""What a reduced draft vocabulary saves: one EagleVLM draft expansion, full vs N-token vocabulary.

    python scripts/draft_vocab_cost.py [--vocabs 1280,49152] [--ns 1024,4096,8192] [--k 10]
        [--dtype float32] [--threads 2] [--repeats 200]

An EagleHead at SmolLM2-135M's width (d 576, 9 query / 3 KV heads, MLP 1536) with random
weights, a draft KV cache of `--prefix` positions (a prompt), and a random target LM head of V
rows. One expansion is what `EagleDrafter.propose` does per tree level: the head's forward on
k rows (tree attention over the prefix), their log-probabilities over the draft vocabulary and
the top-k of each row. Variants, timed interleaved (median of `--repeats`, ms):
  full:      features @ W.T over all V rows (the head before this change, and N = 0);
  N:         features @ W[d2t].T over the N gathered rows (the drafter given the target's weight);
  N/slice:   the full product, then the N columns (the drafter without the weight: no saving).
The LM-head product alone (k rows) is reported beside the whole expansion. Run it alone: timings
on a shared 2-core box are noisy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from specvlm.draft.eagle import EagleConfig, EagleDrafter, EagleHead
from specvlm.target.base import Prefill

WIDTH = dict(
    hidden_size=576,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
)


def _drafters(V: int, ns: list[int], dtype: torch.dtype, prefix: int, seed: int = 0) -> dict:
    """One drafter per variant, all after the same prompt (same head weights and caches)."""
    g = torch.Generator().manual_seed(seed)
    d = WIDTH["hidden_size"]
    weight = (torch.randn(V, d, generator=g) * 0.02).to(dtype)  # (V, d) the target's LM head
    weight = weight.t().contiguous().t()  # the target's layout on the CPU (fast_linear_layout)
    table = (torch.randn(V, d, generator=g) * 0.02).to(dtype)  # (V, d) embeddings

    def embed(ids: torch.Tensor) -> torch.Tensor:
        return table[ids]  # (T, d)

    def lm_head(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, weight)  # (T, V)

    feats = torch.randn(prefix, d, generator=g).to(dtype)  # (T, d)
    prefill = Prefill(logits=torch.zeros(V), features=feats, embeds=embed(torch.arange(prefix)))
    torch.manual_seed(seed)
    base = EagleHead(EagleConfig(vocab_size=V, **WIDTH)).to(dtype).eval()
    variants = {"full": (base, None)}
    for n in ns:
        if n >= V:
            continue
        d2t = torch.randperm(V, generator=g)[:n].sort().values  # (n,) any n ids cost the same
        head = EagleHead(EagleConfig(vocab_size=V, draft_vocab_size=n, **WIDTH), d2t)
        head.load_state_dict(base.state_dict() | {"d2t": d2t})
        head = head.to(dtype).eval()
        variants[f"N={n}"] = (head, weight)
        variants[f"N={n}/slice"] = (head, None)
    out = {}
    for name, (head, w) in variants.items():
        drafter = EagleDrafter(head, embed, lm_head, lm_head_weight=w)
        drafter.begin(prefill, root=1, capacity=prefix + 64)
        out[name] = drafter
    return out


@torch.inference_mode()
def _expansion(drafter: EagleDrafter, k: int) -> None:
    """One tree level: k rows through the head, log-probabilities, top-k (as in propose)."""
    L = drafter.cache.length
    device = drafter.root_feature.device
    feats = drafter.root_feature.expand(k, -1)  # (k, d) the parents' predicted features
    tokens = torch.arange(k, device=device)  # (k,) draft indices
    mask = torch.ones(k, L + k, dtype=torch.bool, device=device)  # (k, L + k)
    mask[:, L:] = torch.eye(k, dtype=torch.bool, device=device)
    cos, sin = drafter.head.rope(torch.tensor([L], device=device), feats.dtype)  # (1, hd)
    out = drafter.head(
        feats,
        drafter.embed(drafter._target_ids(tokens)),
        None,
        drafter.cache,
        mask,
        start=L,
        rope=(cos.expand(k, -1), sin.expand(k, -1)),
    )
    drafter._logprobs(out).topk(k, dim=-1)


@torch.inference_mode()
def _lm_only(drafter: EagleDrafter, x: torch.Tensor, k: int) -> None:
    drafter._logprobs(x).topk(k, dim=-1)


def _time(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocabs", default="1280,49152")
    p.add_argument("--ns", default="1024,4096,8192")
    p.add_argument("--k", type=int, default=10, help="rows of one expansion (top-k)")
    p.add_argument("--prefix", type=int, default=200, help="draft KV cache length")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=200, help="calls per timing")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is kept")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    ns = [int(n) for n in args.ns.split(",")]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {args.dtype}, k={args.k}, prefix {args.prefix}, d=576"
    )
    print(f"{'V':>6} {'variant':>12} {'expansion ms':>13} {'lm-head ms':>11}")
    for V in (int(v) for v in args.vocabs.split(",")):
        drafters = _drafters(V, ns, dtype, args.prefix)
        x = torch.randn(args.k, WIDTH["hidden_size"]).to(dtype)  # (k, d)
        cache_len = {name: dr.cache.length for name, dr in drafters.items()}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in drafters}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, dr in drafters.items():
                exp = _time(lambda dr=dr: _expansion(dr, args.k), args.repeats)
                lm = _time(lambda dr=dr, x=x: _lm_only(dr, x, args.k), args.repeats)
                times[name].append((exp, lm))
                assert dr.cache.length == cache_len[name]  # scratch slots are never committed
        for name, rows in times.items():
            exp = statistics.median(r[0] for r in rows[1:])
            lm = statistics.median(r[1] for r in rows[1:])
            print(f"{V:>6} {name:>12} {exp:>13.3f} {lm:>11.3f}")


if __name__ == "__main__":
    main()
