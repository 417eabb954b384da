"""How fast could speculative decoding be on this machine with a free draft? (Not a test.)

For each tree, on world test items, the speculative and plain requests alternate (after a
warm-up) and every call into the drafter and the target is timed. From the same requests:

  measured       sum(plain request time) / sum(speculative request time)
  free draft     ... / sum(speculative time - time in the drafter)        (begin, propose,
                 catch-up cost nothing; verification, acceptance and the loop as measured)
  + flat verify  ... / the same, with every tree verification costing what one plain decoding
                 step's forward costs on average (a verify cost curve that does not grow)

A request is timed from the `generate` call to its return: prompt preparation, prefill (the
image and the prompt), decoding. The bounds show what no draft, however good or cheap, can
add at the measured τ: the prefill and the target's own verification forwards stay.

Run:  python scripts/speedup_bound.py [--n 40] [--trees 3,4,8 5,4,12] [--tokens 128]
      [--target FOLDER --draft FOLDER]   (default: the embedded pair) [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch
from bench_engine import timer  # this folder's sibling script

from specvlm import api
from specvlm.bench.suites import load_suite
from specvlm.config import TreeConfig
from specvlm.draft.eagle import EagleDrafter

DRAFTER_CALLS = ("begin", "propose", "observe")


def measure(engine, items, tokens: int) -> dict[str, float]:
    """Alternating plain / speculative requests; seconds summed over the items."""
    target = engine.target
    spent: dict[str, float] = {}
    timed = timer(spent)
    forwards = {"spec": 0, "plain": 0}

    originals = [(EagleDrafter, n, getattr(EagleDrafter, n)) for n in DRAFTER_CALLS]
    originals.append((target, "verify", target.verify))
    totals = {"plain": 0.0, "spec": 0.0, "tau_num": 0, "tau_den": 0}
    try:
        for cls, name, fn in originals[:-1]:
            setattr(cls, name, timed(name, fn))
        first = items[0]
        for speculative in (True, False):  # warm-up
            engine.generate(
                list(first.messages),
                images=list(first.images),
                max_new_tokens=16,
                speculative=speculative,
            )
        spent.clear()  # the warm-up is in no total
        for i, item in enumerate(items):
            order = (True, False) if i % 2 == 0 else (False, True)
            for speculative in order:
                mode = "spec" if speculative else "plain"
                target.verify = timed(f"verify-{mode}", originals[-1][2])
                t0 = time.perf_counter()
                out = engine.generate(
                    list(item.messages),
                    images=list(item.images),
                    max_new_tokens=tokens,
                    speculative=speculative,
                )
                totals[mode] += time.perf_counter() - t0
                forwards[mode] += out.stats.target_forwards
                if speculative:
                    totals["tau_num"] += sum(out.stats.accept_lengths)
                    totals["tau_den"] += len(out.stats.accept_lengths)
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)
    drafting = sum(spent.get(n, 0.0) for n in DRAFTER_CALLS)
    free = totals["spec"] - drafting
    plain_step = spent["verify-plain"] / forwards["plain"]
    flat = free - spent["verify-spec"] + forwards["spec"] * plain_step
    return {
        "measured": totals["plain"] / totals["spec"],
        "free draft": totals["plain"] / free,
        "+ flat verify": totals["plain"] / flat,
        "tau": totals["tau_num"] / max(totals["tau_den"], 1),
        "drafting share": drafting / totals["spec"],
        "plain step ms": 1000 * plain_step,
        "spec verify ms": 1000 * spent["verify-spec"] / forwards["spec"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="world test items (default 40)")
    ap.add_argument("--trees", nargs="+", default=["3,4,8", "5,4,12"], help="DEPTH,TOP_K,BUDGET")
    ap.add_argument("--tokens", type=int, default=128, help="max new tokens (default 128)")
    ap.add_argument("--target", help="target folder (default: the embedded one)")
    ap.add_argument("--draft", help="draft folder (default: the embedded one)")
    ap.add_argument("--dtype", default="float32", help="float32 (default) | bfloat16")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# speedup bounds  {time.strftime('%Y-%m-%d %H:%M')}  commit {commit}  "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{args.dtype}\n"
    )
    items = load_suite("world", n=args.n)
    keys = [
        "tau",
        "measured",
        "free draft",
        "+ flat verify",
        "drafting share",
        "plain step ms",
        "spec verify ms",
    ]
    print("| tree | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for spec in args.trees:
        tree = TreeConfig.parse(spec)
        engine = api.load(target=args.target, draft=args.draft, tree=tree, dtype=args.dtype)
        r = measure(engine, items, args.tokens)
        cells = [f"{r[k]:.2f}" + ("×" if k in keys[1:4] else "") for k in keys]
        print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
