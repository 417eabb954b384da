"""Training-time scaling: tau on the validation split as training goes on.

Reads a `specvlm train-draft` run's train_log.jsonl (its `eval_tau` records, written every
`--eval-every` steps and at the end) and prints a Markdown table; with --png, also a plot.

Run:  python scripts/training_scaling.py runs/world-draft/train_log.jsonl --png docs/scaling.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    points = [(r["step"], r["eval_tau"]) for r in rows if "eval_tau" in r]
    points += [(r["step"], r["final_eval_tau"]) for r in rows if "final_eval_tau" in r]
    points = sorted(dict(points).items())
    per_epoch = args.steps_per_epoch or max(
        (r["step"] for r in rows if r.get("epoch") == 1), default=1
    )
    print("| step | epochs | tau (val) |\n|---|---|---|")
    for step, tau in points:
        print(f"| {step} | {step / per_epoch:.2f} | {tau:.3f} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([s / per_epoch for s, _ in points], [t for _, t in points], marker="o")
        ax.set_xlabel("epochs of draft training")
        ax.set_ylabel("tau on the validation split")
        ax.set_title("training-time scaling")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
