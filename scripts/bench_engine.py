"""Engine micro-benchmarks on this machine (not a test: timings are noisy by nature).

Prints, for tiny LLaVA targets built in code:
  1. the verify cost curve c(N)/c(1): one target forward over an N-node draft tree vs one token;
  2. plain-decoding tokens/s of this engine vs transformers' generate on the same checkpoint,
     alternating A B A B after a warm-up, same prompts, same number of new tokens;
  3. the per-round overhead of the decoding loop: time per round split into draft / verify /
     accept / commit / catch-up / the rest (the loop itself).

Run:  python scripts/bench_engine.py [--sizes small,world] [--tokens 128] [--repeats 5]

On a trained pair instead (the verify curve in both Linear weight layouts, interleaved, and the
per-round split with the given tree):

      python scripts/bench_engine.py --target runs/world-target5/model --draft runs/world-draft5 \
          --tree 7,2,12 [--world 6]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from specvlm import api
from specvlm.bench.tune import cost_probe_tree
from specvlm.config import TreeConfig
from specvlm.decoding import loop as loop_module
from specvlm.draft.eagle import EagleDrafter
from specvlm.layers import prepare_for_inference
from specvlm.target import load_target
from specvlm.tiny import build_tiny_llava
from specvlm.train.quickfit import fit_head_to_target

SIZES = {
    # what the unit tests use
    "small": dict(num_layers=3, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4),
    # the shape planned for the embedded world target: 12 layers, d = 256
    "world": dict(
        num_layers=12, hidden_size=256, intermediate_size=688, num_heads=4, num_kv_heads=4
    ),
}


def _images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def verify_curve(
    target, prompt, sizes=(1, 4, 8, 16, 32, 64), repeats: int = 30
) -> dict[int, float]:
    """Median seconds of one verify forward over an N-node tree (EAGLE-like shape: k=4 chains).

    The sizes are measured interleaved (1, 4, ..., 64, 1, 4, ...) so drift hits all alike.
    """
    target.prefill(prompt, capacity=prompt.input_ids.shape[0] + max(sizes))
    trees = {n: cost_probe_tree(n) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for rep in range(repeats + 3):
        for n, tree in trees.items():
            t0 = time.perf_counter()
            target.verify(tree.tokens, tree.depths, tree.mask)  # never committed
            if rep >= 3:  # warm-up rounds
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(ts) for n, ts in times.items()}


def plain_vs_hf(folder: Path, prompts, tokens: int, repeats: int) -> dict[str, float]:
    from transformers import LlavaForConditionalGeneration

    engine = api.load(target=folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    target = engine.target

    def ours(text, images):
        t0 = time.perf_counter()
        out = engine.generate(text, images=images, max_new_tokens=tokens, speculative=False)
        return len(out.token_ids), time.perf_counter() - t0

    def hf(text, images):
        p = target.prepare(text, images)
        ids = p.input_ids[None]
        t0 = time.perf_counter()
        with torch.inference_mode():
            seq = model.generate(
                input_ids=ids,
                pixel_values=p.pixel_values,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                do_sample=False,
            )
        return seq.shape[1] - ids.shape[1], time.perf_counter() - t0

    for fn in (ours, hf):  # warm-up
        fn(*prompts[0])
    totals = {"ours": [0, 0.0], "hf": [0, 0.0]}
    for _ in range(repeats):
        for text, images in prompts:  # A B A B
            for name, fn in (("ours", ours), ("hf", hf)):
                n, s = fn(text, images)
                totals[name][0] += n
                totals[name][1] += s
    res = {name: n / s for name, (n, s) in totals.items()}
    res["ratio"] = res["ours"] / res["hf"]
    return res


def set_layout(module: torch.nn.Module, fast: bool) -> None:
    """Linear weights in the engine's fast layout or in the checkpoint's own (contiguous) one."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = m.weight.data.contiguous()
    # fuse again from the now-contiguous weights, in the layout asked for (as the engine does)
    prepare_for_inference(module, fast_layout=fast)


def layout_curves(target, prompt, sizes=(1, 4, 8, 12, 16, 24, 32), rounds: int = 4) -> dict:
    """verify_curve with the checkpoint's layout and the fast one, alternating `rounds` times."""
    times: dict[str, dict[int, list[float]]] = {"checkpoint": {}, "fast": {}}
    for _ in range(rounds):
        for name, fast in (("checkpoint", False), ("fast", True)):
            set_layout(target.model, fast)
            for n, t in verify_curve(target, prompt, sizes, repeats=10).items():
                times[name].setdefault(n, []).append(t)
    set_layout(target.model, True)  # how the engine runs it
    return {name: {n: statistics.median(ts) for n, ts in c.items()} for name, c in times.items()}


def timer(spent: dict[str, float]):
    """timed(name, fn): fn, wrapped to add its wall-clock seconds to spent[name] on each call."""

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    return timed


def round_breakdown(folder: Path, draft: Path, prompts, tokens: int, tree: TreeConfig) -> dict:
    """Per-round time split of speculative and plain decoding (wall clock, seconds per round)."""
    engine = api.load(target=folder, draft=draft, tree=tree)
    target = engine.target
    spent: dict[str, float] = {}
    timed = timer(spent)

    patches = [
        (target, "verify", timed("verify", target.verify)),
        (target, "commit", timed("commit", target.commit)),
        (EagleDrafter, "propose", timed("draft", EagleDrafter.propose)),
        (EagleDrafter, "observe", timed("catch-up", EagleDrafter.observe)),
        (loop_module, "greedy_accept", timed("accept", loop_module.greedy_accept)),
    ]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    result = {}
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        for mode, speculative in (("speculative", True), ("plain", False)):
            engine.generate(*prompts[0], max_new_tokens=8, speculative=speculative)  # warm-up
            spent.clear()
            rounds, decode, accepted = 0, 0.0, 0
            for text, images in prompts:
                out = engine.generate(
                    text, images=images, max_new_tokens=tokens, speculative=speculative
                )
                rounds += out.stats.target_forwards
                decode += out.stats.decode_s
                accepted += sum(out.stats.accept_lengths)
            parts = {k: v / rounds for k, v in spent.items()}
            parts["loop (the rest)"] = decode / rounds - sum(parts.values())
            parts["round"] = decode / rounds
            parts["tau"] = accepted / rounds  # tokens per target forward
            result[mode] = parts
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)
    return result


def print_rounds(br: dict, title: str) -> None:
    """round_breakdown's result as a Markdown table (ms per round)."""
    keys = ["draft", "verify", "accept", "commit", "catch-up", "loop (the rest)", "round"]
    print(f"per-round time (ms), {title}:\n")
    print("| mode | tau | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for mode, parts in br.items():
        cells = " | ".join(f"{parts.get(k, 0.0) * 1000:.3f}" for k in keys)
        print(f"| {mode} | {parts['tau']:.2f} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,world")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--target", help="a trained LLaVA folder: measure it instead of tiny models")
    ap.add_argument("--draft", help="its draft head folder (with --target)")
    ap.add_argument("--tree", default="5,4,16", help="depth,top_k,budget (with --target)")
    ap.add_argument("--world", type=int, default=6, help="world test items (with --target)")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# engine benchmark  {time.strftime('%Y-%m-%d %H:%M')}  commit {commit}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}\n"
    )
    if args.target:
        results = trained_pair(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        return
    results = {}
    work = Path(tempfile.mkdtemp(prefix="specvlm-bench-"))
    texts = ["describe the image in detail.", "how many shapes are there? explain."]
    prompts = [(t, [img]) for t, img in zip(texts, _images(len(texts)), strict=True)]
    for size in args.sizes.split(","):
        folder = build_tiny_llava(work / size, seed=0, with_eos=False, image_size=48, **SIZES[size])
        target = load_target(folder)
        n_params = sum(p.numel() for p in target.model.model.language_model.parameters())
        print(f"## {size}: {SIZES[size]}  ({n_params / 1e6:.1f} M language-model parameters)\n")
        curve = verify_curve(target, target.prepare(*prompts[0]))
        print("| N (tree tokens) | " + " | ".join(map(str, curve)) + " |")
        print("|---|" + "---|" * len(curve))
        print("| c(N)/c(1) | " + " | ".join(f"{v / curve[1]:.2f}" for v in curve.values()) + " |")
        print(f"\nc(1) = {curve[1] * 1000:.2f} ms\n")
        speed = plain_vs_hf(folder, prompts, args.tokens, args.repeats)
        print(
            f"plain decoding, {args.tokens} new tokens x {len(prompts)} prompts x "
            f"{args.repeats} (alternating): this engine {speed['ours']:.1f} tok/s, "
            f"transformers generate {speed['hf']:.1f} tok/s, ratio {speed['ratio']:.2f}x\n"
        )
        draft = fit_head_to_target(
            folder, work / f"{size}-draft", prompts=prompts, new_tokens=args.tokens, steps=300
        )
        del draft
        br = round_breakdown(folder, work / f"{size}-draft", prompts, args.tokens, TreeConfig())
        print_rounds(br, f"draft fitted to these prompts, tree {TreeConfig()}")
        print()
        results[size] = {"verify_curve_s": curve, "plain": speed, "rounds": br}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def trained_pair(args) -> dict:
    from specvlm.bench.suites import load_suite

    items = load_suite("world", n=args.world)
    prompts = [(list(item.messages), list(item.images)) for item in items]
    target = load_target(args.target)
    curves = layout_curves(target, target.prepare(*prompts[0]))
    print("| layout | " + " | ".join(f"c({n}) ms" for n in curves["fast"]) + " |")
    print("|---|" + "---|" * len(curves["fast"]))
    for name, c in curves.items():
        print(f"| {name} | " + " | ".join(f"{v * 1000:.2f}" for v in c.values()) + " |")
    print()
    del target
    tree = TreeConfig.parse(args.tree)
    br = round_breakdown(Path(args.target), Path(args.draft), prompts, args.tokens, tree)
    print_rounds(br, f"{len(prompts)} world test items, tree {tree}")
    return {"layout_curves_s": curves, "rounds": br}


if __name__ == "__main__":
    main()
