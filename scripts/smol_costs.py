"""Forward costs of the world-smol LLaVA (SmolLM2-135M inside) on this machine (issue 20).

    python scripts/smol_costs.py [--dtypes float32,bfloat16] [--tokens 64] [--repeats 3]

For each dtype:
  1. plain decoding, one world image + a question, `--tokens` new tokens, whole requests
     (prefill included), this engine (`engine.generate(..., speculative=False)`) vs
     `transformers`' `generate(do_sample=False)` on the same folder, alternating A B A B after a
     warm-up; tokens/s over all requests, and this engine's decode-only ms per token;
  2. the cost of verifying N tokens in one forward (N = 1, 8, 16, 32; an EAGLE-shaped tree from
     `cost_probe_tree`) on a KV cache of ~200 positions (image + text prompt): this engine's
     `target.verify`, and `transformers`' own forward of N new tokens (causal) on a DynamicCache
     of the same length, median and min of `--verify-repeats`, interleaved.
Timings are noisy on a shared 2-core box: run it alone.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

QUESTION = "Describe the image in detail, naming every shape, its colour and where it is."
LONG = (
    "Look carefully at the picture. Then describe every object you can see: its shape, its "
    "colour, its size and where it lies in the picture, left or right, top or bottom, and which "
    "objects are next to each other or overlap. Say how many objects there are in total, and "
    "whether any two of them share a colour or a shape. Finally describe the background, and "
    "answer in full sentences, one object per sentence, from the largest to the smallest one. "
    "Keep the answer short and precise, and do not invent objects that are not in the image."
)


def plain_decoding(engine, model, image, tokens: int, repeats: int) -> dict[str, float]:
    target = engine.target

    def ours():
        t0 = time.perf_counter()
        out = engine.generate(QUESTION, images=[image], max_new_tokens=tokens, speculative=False)
        return len(out.token_ids), time.perf_counter() - t0, out.stats.decode_s

    def hf():
        p = target.prepare(QUESTION, [image])
        ids = p.input_ids[None]  # (1, T)
        t0 = time.perf_counter()
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, pixel_values=p.pixel_values,
                                 attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 do_sample=False)  # fmt: skip
        return seq.shape[1] - ids.shape[1], time.perf_counter() - t0, 0.0

    ours(), hf()  # warm-up
    totals = {"ours": [0, 0.0, 0.0], "hf": [0, 0.0, 0.0]}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("hf", hf)):
            n, s, d = fn()
            totals[name][0] += n
            totals[name][1] += s
            totals[name][2] += d
    (n_o, s_o, d_o), (n_h, s_h, _) = totals["ours"], totals["hf"]
    return {"ours_tok_s": n_o / s_o, "hf_tok_s": n_h / s_h, "ratio": (n_o / s_o) / (n_h / s_h),
            "ours_decode_ms_per_token": 1e3 * d_o / n_o, "tokens_per_request": n_o / repeats}  # fmt: skip


def verify_costs(engine, model, image, sizes, repeats: int) -> dict[str, dict[int, tuple]]:
    from transformers import DynamicCache

    from specvlm.bench.tune import cost_probe_tree

    target = engine.target
    prompt = target.prepare(LONG, [image])
    L = prompt.input_ids.shape[0]
    target.prefill(prompt, capacity=L + max(sizes))
    trees = {n: cost_probe_tree(n) for n in sizes}
    # transformers: the same prompt in a DynamicCache, cropped back to L after every probe
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=prompt.input_ids[None], pixel_values=prompt.pixel_values,
              cache=cache, use_cache=True)  # fmt: skip
    vocab_ids = torch.arange(1000, 1000 + max(sizes))[None]  # (1, N) plain text tokens

    def ours(n):
        tree = trees[n]
        target.verify(tree.tokens, tree.depths, tree.mask)  # never committed

    def hf(n):
        with torch.inference_mode():
            model(input_ids=vocab_ids[:, :n], cache=cache, use_cache=True)
        cache.crop(-n)  # remove the n probe tokens again

    times = {"ours": {n: [] for n in sizes}, "hf": {n: [] for n in sizes}}
    for rep in range(repeats + 2):
        for n in sizes:
            for name, fn in (("ours", ours), ("hf", hf)):
                t0 = time.perf_counter()
                fn(n)
                if rep >= 2:  # warm-up
                    times[name][n].append(time.perf_counter() - t0)
    out = {name: {n: (1e3 * statistics.median(t), 1e3 * min(t)) for n, t in c.items()}
           for name, c in times.items()}  # fmt: skip
    out["kv_length"] = L
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--verify-repeats", type=int, default=10)
    ap.add_argument("--sizes", default="1,8,16,32")
    ap.add_argument("--gguf", default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from transformers import AutoModelForImageTextToText

    import specvlm
    from specvlm.hf_quiet import quiet_transformers
    from specvlm.smol import world_smol_folder
    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    folder = world_smol_folder(args.gguf)
    image = render(world_sample("test", 0), size=128)
    print(f"# {folder}\n# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        engine = specvlm.load(target=folder, dtype=dtype)
        with quiet_transformers():
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).eval()
        p = plain_decoding(engine, model, image, args.tokens, args.repeats)
        print(f"\n## {name}\nplain decoding, 1 image, {args.tokens} new tokens "
              f"({p['tokens_per_request']:.0f} generated), whole requests x{args.repeats}: "
              f"engine {p['ours_tok_s']:.1f} tok/s, transformers generate {p['hf_tok_s']:.1f} "
              f"tok/s, ratio {p['ratio']:.2f}; engine decode-only "
              f"{p['ours_decode_ms_per_token']:.1f} ms/token")  # fmt: skip
        v = verify_costs(engine, model, image, sizes, args.verify_repeats)
        print(f"verify N tokens in one forward, KV cache {v['kv_length']} "
              f"(ms, median / min of {args.verify_repeats}):")  # fmt: skip
        print("| N | " + " | ".join(str(n) for n in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for who in ("ours", "hf"):
            label = "engine verify" if who == "ours" else "transformers forward"
            cells = " | ".join(f"{v[who][n][0]:.1f} / {v[who][n][1]:.1f}" for n in sizes)
            print(f"| {label} | {cells} |")
        c1 = v["ours"][sizes[0]][0]
        print("engine c(N)/c(1): " + ", ".join(f"{n}: {v['ours'][n][0] / c1:.2f}" for n in sizes))
        del engine, model


if __name__ == "__main__":
    main()
