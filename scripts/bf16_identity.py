"""How often bf16 speculative output equals bf16 plain output, and why it differs where it does.

    python scripts/bf16_identity.py --n 100 [--target T --draft D] [--float32-reference]

Greedy, world test items, the embedded pair (or --target/--draft) in bfloat16. For every item
whose speculative tokens differ from the plain ones, the plain path's logits at the first
differing position are recomputed in bf16 (a one-token-at-a-time forward, as plain decoding
runs) and the margin between its top two tokens is printed: a near-tie that the batched tree
forward rounds the other way.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--target", default=None)
    p.add_argument("--draft", default=None)
    p.add_argument(
        "--float32-reference",
        action="store_true",
        help="also decode every item plainly in float32 and count how often bf16 plain and bf16 "
        "speculative output equal it (does speculation move bf16 further from float32?)",
    )
    p.add_argument("--out", default=None, help="write every item's token ids here (JSON lines)")
    args = p.parse_args()

    import specvlm
    from specvlm.bench.suites import load_suite

    engine = specvlm.load(target=args.target, draft=args.draft, dtype="bfloat16")
    ref = None
    if args.float32_reference:
        ref = specvlm.load(target=args.target, draft=args.draft, dtype="float32")  # plain only
    target = engine.target
    items = load_suite("world", n=args.n)
    same, margins = 0, []
    plain_is_ref = spec_is_ref = 0
    log = open(args.out, "w") if args.out else None  # noqa: SIM115
    for i, item in enumerate(items):
        kw = dict(images=list(item.images), max_new_tokens=args.max_new_tokens)
        plain = engine.generate(list(item.messages), speculative=False, **kw).token_ids
        spec = engine.generate(list(item.messages), **kw).token_ids
        row = {"id": item.id, "suite": item.suite, "plain_bf16": plain, "spec_bf16": spec}
        if ref is not None:
            row["plain_fp32"] = ref.generate(list(item.messages), speculative=False, **kw).token_ids
            plain_is_ref += plain == row["plain_fp32"]
            spec_is_ref += spec == row["plain_fp32"]
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
        if plain == spec:
            same += 1
            continue
        k = next(j for j, (a, b) in enumerate(zip(plain, spec, strict=False)) if a != b)
        # the plain path's logits at position k: prefill, then feed plain[:k] one token at a time
        prompt = target.prepare(list(item.messages), list(item.images))
        pre = target.prefill(prompt, capacity=prompt.input_ids.shape[0] + k + 2)
        logits = pre.logits
        for tok in plain[:k]:
            out = target.verify(torch.tensor([tok]), torch.tensor([0]), None)
            target.commit([0])
            logits = out.logits[0]
        top2 = logits.float().topk(2)
        margin = float(top2.values[0] - top2.values[1])
        margins.append(margin)
        a, b = target.decode([plain[k]]), target.decode([spec[k]])
        print(
            f"{item.id}: differs at token {k}: plain {a!r} vs speculative {b!r}; "
            f"plain top-2 margin {margin:.4f}",
            flush=True,
        )
        print(f"\r{i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(
        f"\nbf16: identical on {same}/{len(items)} items; margins at the first difference: "
        f"{', '.join(f'{m:.4f}' for m in sorted(margins)) or 'none'}"
    )
    if log is not None:
        log.close()
    if ref is not None:
        print(
            f"against float32 plain decoding: bf16 plain equal on {plain_is_ref}/{len(items)}, "
            f"bf16 speculative equal on {spec_is_ref}/{len(items)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
