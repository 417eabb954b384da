"""Dump the greedy token ids of plain and speculative decoding on world test items (a regression check).

    python scripts/greedy_ids.py --n 200 --out before.jsonl          # at one commit
    python scripts/greedy_ids.py --n 200 --out after.jsonl           # at another
    python scripts/greedy_ids.py --compare before.jsonl after.jsonl  # identical ids?

Each line: the item id and the token ids of `plain` and of `eaglevlm` on the embedded pair (or
--target/--draft), max 128 new tokens, temperature 0. A refactor that must not change a single
output token is checked by comparing two such files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def dump(args: argparse.Namespace) -> None:
    import specvlm.api as api
    from specvlm.bench.suites import load_suite

    engine = api.load(target=args.target, draft=args.draft, dtype=args.dtype)
    items = load_suite("world", n=args.n)
    with open(args.out, "w") as f:
        for i, item in enumerate(items):
            row = {"id": item.id}
            for name, spec in (("plain", False), ("eaglevlm", True)):
                out = engine.generate(
                    list(item.messages),
                    images=list(item.images),
                    max_new_tokens=128,
                    speculative=spec,
                )
                row[name] = out.token_ids
            f.write(json.dumps(row) + "\n")
            print(f"\r{i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def compare(a: Path, b: Path) -> int:
    rows_a = [json.loads(line) for line in a.read_text().splitlines()]
    rows_b = [json.loads(line) for line in b.read_text().splitlines()]
    if [r["id"] for r in rows_a] != [r["id"] for r in rows_b]:
        print("the two files hold different items")
        return 1
    diff = 0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("plain", "eaglevlm"):
            if ra[key] != rb[key]:
                diff += 1
                print(f"{ra['id']} {key}: differs")
    same_pair = sum(r["plain"] == r["eaglevlm"] for r in rows_b)
    print(
        f"{len(rows_a)} items: {diff} differing outputs between the files; "
        f"plain == eaglevlm in the second file on {same_pair}/{len(rows_b)}"
    )
    return 1 if diff else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--out", default="greedy_ids.jsonl")
    p.add_argument("--target", default=None)
    p.add_argument("--draft", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    dump(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
