"""`specvlm demo`: the main job, plain and speculative decoding side by side on the same target."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from specvlm.api import Engine, load
from specvlm.bench.runner import timing_warning

DEMO_PROMPTS = 8  # on the embedded pair

STAND_IN_NOTE = (
    "NOTE: no trained embedded models ship yet. This demo runs a TINY RANDOM LLaVA built in code,\n"
    "with a draft head fitted on the spot to the target's own answers to these very prompts.\n"
    "Answers are gibberish and the acceptance is optimistic; what the demo does show is\n"
    "the engine: identical output, accepted lengths and timings, plain vs speculative.\n"
)


def _prompts(out_dir: Path) -> tuple[Engine, list[tuple[Any, list, Path]], str]:
    """The engine, (prompt, images, shown image path) triples, and a header line."""
    from specvlm.embedded import embedded_draft, embedded_target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if embedded_target() and embedded_draft():
            from specvlm.bench.suites import load_suite

            engine = load()
            # item k asks suite k % 5 about scene k // 5: every 6th item is the next family on
            # the next scene, so the 8 prompts cover all five families on 8 different images
            items = load_suite("world", n=6 * DEMO_PROMPTS)[::6][:DEMO_PROMPTS]
            prompts = [(list(it.messages), list(it.images), it.images[0]) for it in items]
            return engine, prompts, "embedded world target + its EagleVLM draft (CPU)"
        from specvlm.tiny import demo_pair, demo_prompts

        print(STAND_IN_NOTE)
        print("building / loading the tiny pair (first run: about half a minute) ...", flush=True)
        target_dir, draft_dir = demo_pair()
        engine = load(target=target_dir, draft=draft_dir)
    prompts = []
    for i, (text, images) in enumerate(demo_prompts()):
        path = out_dir / f"image_{i}.png"
        images[0].save(path)
        prompts.append((text, images, path))
    return engine, prompts, "tiny random stand-in pair"


def _question(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return text.replace("<image>", "").strip().replace("\n", " ")


def run_demo(
    max_new_tokens: int = 96,
    out_dir: str | Path | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
) -> int:
    """Plain and speculative decoding of the same prompts, side by side. At temperature 0 the
    outputs must be identical (exit code 1 otherwise); when sampling they differ by design (the
    two paths draw different random numbers; the distribution is the same, which
    tests/test_lossless_*.py check), and the demo reports τ and speed. Prompt i samples with seed
    `seed + i`. The arguments are checked before anything is loaded."""
    from specvlm.config import SamplingConfig, check_seed
    from specvlm.errors import GenerationArgumentError

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationArgumentError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
    SamplingConfig(temperature, top_p, top_k, repetition_penalty)
    if not isinstance(seed, int):
        raise GenerationArgumentError(f"the demo's seed must be an integer, got {seed!r}")
    check_seed(seed)
    check_seed(seed + DEMO_PROMPTS - 1)  # prompt i samples with seed + i
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="specvlm-demo-"))
    engine, prompts, header = _prompts(out_dir)
    greedy = temperature == 0
    mode = (
        "greedy"
        if greedy
        else f"sampling at T={temperature:g}" + (f", top-p {top_p:g}" if top_p < 1 else "")
    )
    print(f"{header}; tree {engine.tree}; {mode}\n")
    if (warning := timing_warning("cpu")) is not None:
        print(warning + "\n", file=sys.stderr)
    sampling = dict(
        temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty
    )
    first = prompts[0]
    engine.generate(first[0], images=first[1], max_new_tokens=8)  # warm-up, both paths
    engine.generate(first[0], images=first[1], max_new_tokens=8, speculative=False)
    totals = {"plain": [0, 0.0], "spec": [0, 0.0]}  # tokens, seconds (request to last token)
    all_same = True
    for i, (prompt, images, shown) in enumerate(prompts):
        plain = engine.generate(
            prompt,
            images=images,
            max_new_tokens=max_new_tokens,
            speculative=False,
            seed=seed + i,
            **sampling,
        )
        spec = engine.generate(
            prompt, images=images, max_new_tokens=max_new_tokens, seed=seed + i, **sampling
        )
        same = plain.token_ids == spec.token_ids
        all_same &= same or not greedy
        for key, out in (("plain", plain), ("spec", spec)):
            totals[key][0] += out.stats.new_tokens
            totals[key][1] += out.stats.ttft_s + out.stats.decode_s
        p_tps, s_tps = plain.stats.tokens_per_s, spec.stats.tokens_per_s
        check = ("yes" if same else "NO") if greedy else "n/a (sampled)"
        print(f"[{i + 1}/{len(prompts)}] image: {shown}\n  prompt: {_question(prompt)}")
        print(f"  answer: {spec.text[:200]!r}{'...' if len(spec.text) > 200 else ''}")
        print(
            f"  identical to plain: {check} | tokens {spec.stats.new_tokens} | "
            f"tau {spec.stats.tau:.2f} | plain {p_tps:.1f} tok/s | speculative {s_tps:.1f} tok/s"
            f" | speedup {s_tps / p_tps:.2f}x\n"
        )
    plain_tps = totals["plain"][0] / totals["plain"][1]
    spec_tps = totals["spec"][0] / totals["spec"][1]
    identical = ("all" if all_same else "NOT ALL") if greedy else "n/a (sampled)"
    print(
        f"summary: {len(prompts)} prompts, identical output: {identical}, "
        f"whole requests (prefill included): plain {plain_tps:.1f} tok/s, speculative "
        f"{spec_tps:.1f} tok/s, speedup {spec_tps / plain_tps:.2f}x"
    )
    if not all_same:
        print("ERROR: speculative output differed from plain decoding", file=sys.stderr)
        return 1
    return 0
