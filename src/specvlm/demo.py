"""`specvlm demo`: the main job, plain and speculative decoding side by side on the same target."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

from specvlm.api import load


def run_demo(max_new_tokens: int = 96, out_dir: str | Path | None = None) -> int:
    from specvlm.tiny import demo_pair, demo_prompts

    print(
        "NOTE: no trained embedded models ship yet. This demo runs a TINY RANDOM LLaVA built in "
        "code,\nwith a draft head fitted on the spot to the target's own answers to these very "
        "prompts.\nAnswers are gibberish and the acceptance is optimistic; what the demo does show "
        "is\nthe engine: identical output, accepted lengths and timings, plain vs speculative.\n"
    )
    print("building / loading the tiny pair (first run: about half a minute) ...", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target_dir, draft_dir = demo_pair()
        engine = load(target=target_dir, draft=draft_dir)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="specvlm-demo-"))
    prompts = demo_prompts()
    engine.generate(prompts[0][0], images=prompts[0][1], max_new_tokens=8)  # warm-up
    engine.generate(prompts[0][0], images=prompts[0][1], max_new_tokens=8, speculative=False)
    plain_tps, spec_tps, all_same = [], [], True
    for i, (text, images) in enumerate(prompts):
        path = out_dir / f"image_{i}.png"
        images[0].save(path)
        plain = engine.generate(
            text, images=images, max_new_tokens=max_new_tokens, speculative=False
        )
        spec = engine.generate(text, images=images, max_new_tokens=max_new_tokens)
        same = plain.token_ids == spec.token_ids
        all_same &= same
        p_tps, s_tps = plain.stats.tokens_per_s, spec.stats.tokens_per_s
        plain_tps.append(p_tps)
        spec_tps.append(s_tps)
        print(f"\n[{i + 1}/{len(prompts)}] image: {path}\n  prompt: {text}")
        print(f"  answer: {spec.text[:160]!r}{'...' if len(spec.text) > 160 else ''}")
        print(
            f"  identical to plain: {'yes' if same else 'NO'} | tokens {spec.stats.new_tokens} | "
            f"tau {spec.stats.tau:.2f} | plain {p_tps:.1f} tok/s | speculative {s_tps:.1f} tok/s"
            f" | speedup {s_tps / p_tps:.2f}x"
        )
    mean_p, mean_s = sum(plain_tps) / len(plain_tps), sum(spec_tps) / len(spec_tps)
    print(
        f"\nsummary: {len(prompts)} prompts, identical output: {'all' if all_same else 'NOT ALL'}, "
        f"plain {mean_p:.1f} tok/s, speculative {mean_s:.1f} tok/s, speedup {mean_s / mean_p:.2f}x"
    )
    if not all_same:
        print("ERROR: speculative output differed from plain decoding", file=sys.stderr)
        return 1
    return 0
