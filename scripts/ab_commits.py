"""Plain and speculative speed of two checkouts, interleaved in one run (an A/B of a refactor).

    python scripts/ab_commits.py OLD_CHECKOUT NEW_CHECKOUT --n 40
    python scripts/ab_commits.py . . --env-old SPECVLM_CPU_LINEAR=mkl --model smol --tree 5,4,16

Starts one worker process per checkout (each imports `specvlm` from its own `src/`, with its own
extra environment variables, and loads its own embedded pair, `--model`, in `--dtype`), then
sends them the same world test items in alternating order (ABBA...), so both see the same machine
load. Each worker decodes every item plainly and speculatively (greedy, 128 new tokens, the tree
given) and reports tokens and seconds; this prints tokens/s per checkout and method over the
whole set, the new/old ratios, whether the token ids agree between the checkouts, and within
each checkout between plain and speculative decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time
import specvlm.api as api
from specvlm.config import TreeConfig
tree = TreeConfig(*json.loads(sys.argv[1]))
engine = api.load(tree=tree, model=json.loads(sys.argv[2]), dtype=sys.argv[3])
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    out = {}
    for name, spec in (("plain", False), ("eaglevlm", True)):
        start = time.perf_counter()
        r = engine.generate(req["messages"], images=req["images"], max_new_tokens=128,
                            speculative=spec)
        out[name] = {"ids": r.token_ids, "s": time.perf_counter() - start}
    print(json.dumps(out), flush=True)
"""


def start(
    checkout: Path, tree: list[int], model: str | None, dtype: str, extra_env: list[str]
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve() / "src")}
    for pair in extra_env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env-old / --env-new take KEY=VALUE, got {pair!r}")
        env[key] = value
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(tree), json.dumps(model), dtype],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert json.loads(proc.stdout.readline())["ready"]
    return proc


def ask(proc: subprocess.Popen, req: dict) -> dict:
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--tree", default="3,4,8")
    p.add_argument(
        "--model", default=None, help="the embedded pair (tiny, smol); default: load()'s"
    )
    p.add_argument("--dtype", default="float32")
    p.add_argument("--env-old", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--env-new", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    from specvlm.bench.suites import load_suite

    items = load_suite("world", n=args.n)
    tree = [int(x) for x in args.tree.split(",")]
    workers = {
        "old": start(args.old, tree, args.model, args.dtype, args.env_old),
        "new": start(args.new, tree, args.model, args.dtype, args.env_new),
    }
    warm = {"messages": list(items[0].messages), "images": [str(x) for x in items[0].images]}
    for w in workers.values():
        ask(w, warm)
    totals = {(c, m): [0, 0.0] for c in workers for m in ("plain", "eaglevlm")}
    same = 0
    lossless = {c: 0 for c in workers}
    for i, item in enumerate(items):
        req = {"messages": list(item.messages), "images": [str(x) for x in item.images]}
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        res = {c: ask(workers[c], req) for c in order}
        for c in workers:
            for m in ("plain", "eaglevlm"):
                totals[c, m][0] += len(res[c][m]["ids"])
                totals[c, m][1] += res[c][m]["s"]
        same += all(res["old"][m]["ids"] == res["new"][m]["ids"] for m in ("plain", "eaglevlm"))
        for c in workers:
            lossless[c] += res[c]["eaglevlm"]["ids"] == res[c]["plain"]["ids"]
        print(f"\r{i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    for m in ("plain", "eaglevlm"):
        print(
            f"{m}: old {rate['old', m]:.1f} tok/s, new {rate['new', m]:.1f} tok/s, "
            f"new/old {rate['new', m] / rate['old', m]:.3f}"
        )
    for c in workers:
        print(
            f"{c}: speculative over plain {rate[c, 'eaglevlm'] / rate[c, 'plain']:.2f}x, "
            f"speculative ids identical to plain on {lossless[c]}/{len(items)} items"
        )
    print(f"token ids identical between the checkouts on {same}/{len(items)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
