"""Run methods side by side on benchmark items and summarise honestly.

Measurement protocol: a warm-up of every method, then for each item the methods run one after
another (A B C, A B C, ...; the order reverses on every other item so that drift and cache
effects hit all alike). At temperature 0 every method's tokens are compared with `plain`'s; at
temperature > 0 each item is sampled `samples` times with fixed seeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from specvlm.bench.methods import Method, Request, RunResult
from specvlm.errors import InputError


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    omp = os.environ.get("OMP_WAIT_POLICY")  # changes CPU timings a lot (timing_warning)
    wait = f", OMP_WAIT_POLICY={omp}" if omp else ""
    return f"{cpu}, {torch.get_num_threads()} threads{wait}, {gpu}, torch {torch.__version__}"


def timing_warning(device: str | torch.device = "cpu") -> str | None:
    """Why CPU timings taken now would mislead, or None. With `OMP_WAIT_POLICY=PASSIVE` the
    OpenMP threads sleep between ops and every op pays a wake-up; decoding is thousands of small
    ops, and speculative decoding (draft steps, tree bookkeeping) pays more of them per token than
    plain decoding. Measured on a 2-core AVX2 box (docs/benchmarks.md, "Timing on a CPU"): bench
    1.41x -> 1.01x, plain 151 -> 89 tok/s. Training, with its large ops, barely notices."""
    if torch.device(device).type != "cpu":
        return None
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        return (
            "warning: OMP_WAIT_POLICY=PASSIVE is set; it slows CPU decoding, speculative "
            "decoding most, so these timings understate the speedup. Unset it for "
            "benchmarks (it is meant for sharing the cores with a training job)."
        )
    return None


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    return out.stdout.strip() or "unknown"


DRAFT_FIELDS = (
    "draft_prefill_ms", "draft_kv_tokens", "draft_kv_bytes", "visual_tokens", "drafting_ms"
)  # fmt: skip


def _video(item: Any) -> Path | None:
    """An item's video (a `BenchItem` may carry one; other item types need not)."""
    return getattr(item, "video", None)


def _events(item: Any) -> Path | None:
    """An item's event stream (world-events items carry one)."""
    return getattr(item, "events", None)


def run_bench(
    methods: list[Method],
    items: list[Any],
    *,
    temperatures: Iterable[float] = (0.0,),
    samples: int = 1,
    max_new_tokens: int = 128,
    top_p: float = 1.0,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One record per (item, method, temperature, sample).

    Fields: machine, commit, config, method, suite, item, temperature, sample; then either
    error (the method failed on this item) or tokens, seconds, prefill_s, ttft_s, decode_s,
    tokens_per_s, tau, accept_histogram, target_forwards, and with a `plain` method in the run,
    speedup (tokens/s over plain's on the same item) and, at temperature 0, identical. Methods
    with a draft head also give draft (its folder and compressor settings: `describe_draft`),
    a separate draft model's drafting_ms (its time in the rounds: the free-draft bound's
    share), draft_prefill_ms, draft_kv_tokens and draft_kv_bytes (its own prefill, and its KV cache
    right after it, read from the cache), visual_tokens (the target's, all images of the
    prompt) and gate_choice (the compressor gate's operator, or None).
    """
    temperatures = list(temperatures)
    base = {"machine": machine(), "commit": commit(), "config": config or {}}
    if items:  # warm-up: every method once, short
        first = items[0]
        for m in methods:
            # a method that fails here fails again below, where the error is recorded per item
            with contextlib.suppress(Exception):
                m.run(
                    Request(
                        list(first.messages),
                        list(first.images),
                        8,
                        0.0,
                        1.0,
                        seed,
                        _video(first),
                        _events(first),
                    )  # fmt: skip
                )
    total = len(items) * len(methods) * sum(samples if t > 0 else 1 for t in temperatures)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench", unit="run", dynamic_ncols=True)
    records: list[dict[str, Any]] = []
    for temperature in temperatures:
        for i, item in enumerate(items):
            order = methods if i % 2 == 0 else methods[::-1]
            for s in range(samples if temperature > 0 else 1):
                req = Request(
                    list(item.messages),
                    list(item.images),
                    max_new_tokens,
                    temperature,
                    top_p,
                    seed + s,
                    _video(item),
                    _events(item),
                )
                results: dict[str, RunResult | str] = {}
                for m in order:
                    try:
                        results[m.name] = m.run(req)
                    except Exception as e:  # a baseline that breaks is reported, not fatal
                        results[m.name] = f"{type(e).__name__}: {e}"[:300]
                    if bar is not None:
                        bar.update(1)
                plain = results.get("plain")
                for m in methods:
                    res = results[m.name]
                    rec = {
                        **base,
                        "method": m.name,
                        "suite": item.suite,
                        "item": item.id,
                        "temperature": temperature,
                        "sample": s,
                    }
                    if isinstance(res, str):
                        records.append({**rec, "error": res})
                        continue
                    rec.update(
                        tokens=len(res.token_ids),
                        seconds=round(res.seconds, 6),
                        prefill_s=round(res.prefill_s, 6),
                        ttft_s=round(res.ttft_s, 6),
                        decode_s=round(res.decode_s, 6),
                        tokens_per_s=round(res.tokens_per_s, 3),
                        tau=res.tau,
                        accept_histogram={str(k): v for k, v in res.accept_histogram.items()},
                        target_forwards=res.target_forwards,
                    )
                    if res.draft is not None:
                        rec["draft"] = res.draft
                    if res.drafting_s is not None:
                        rec["drafting_ms"] = round(1000 * res.drafting_s, 3)
                    if res.draft_prefill_s is not None:
                        rec.update(
                            draft_prefill_ms=round(1000 * res.draft_prefill_s, 3),
                            draft_kv_tokens=res.draft_kv_tokens,
                            draft_kv_bytes=res.draft_kv_bytes,
                            visual_tokens=res.visual_tokens,
                            gate_choice=res.gate_choice,
                        )
                    if isinstance(plain, RunResult):
                        rec["speedup"] = round(res.tokens_per_s / plain.tokens_per_s, 4)
                        if temperature == 0:
                            rec["identical"] = res.token_ids == plain.token_ids
                    records.append(rec)
    if bar is not None:
        bar.close()
    return records


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per (suite, method, temperature), plus an 'all' suite per (method, temperature)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        for suite in (r["suite"], "all"):
            groups[(suite, r["method"], r["temperature"])].append(r)

    def key(r: dict[str, Any]) -> tuple:  # ids are unique within a suite, not across suites
        return r["suite"], r["item"], r["temperature"], r.get("sample", 0)

    plain_of = {key(r): r for r in records if r["method"] == "plain" and "error" not in r}
    rows = []
    for (suite, method, temp), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][2], kv[0][0] != "all", kv[0][0])
    ):
        ok = [r for r in rs if "error" not in r]
        row: dict[str, Any] = {
            "suite": suite,
            "method": method,
            "temperature": temp,
            "runs": len(rs),
            "errors": len(rs) - len(ok),
        }
        if ok:
            tokens, seconds = sum(r["tokens"] for r in ok), sum(r["seconds"] for r in ok)
            speedups = [r["speedup"] for r in ok if "speedup" in r]
            # speedup: throughput over the whole group against plain on the same items (the
            # wall-clock ratio of the workload at T = 0); sd: the spread of per-item speedups
            pairs = [(r, plain_of[key(r)]) for r in ok if key(r) in plain_of]
            speedup = None
            mine = [sum(r[f] for r, _ in pairs) for f in ("tokens", "seconds")]
            base = [sum(p[f] for _, p in pairs) for f in ("tokens", "seconds")]
            if pairs and "speedup" in pairs[0][0] and all(mine) and all(base):
                speedup = (mine[0] / mine[1]) / (base[0] / base[1])
            # tau: accepted tokens per target forward over all rounds of the group
            hists = [r["accept_histogram"] for r in ok if r.get("tau") is not None]
            rounds = sum(n for h in hists for n in h.values())
            accepted = sum(int(k) * n for h in hists for k, n in h.items())
            same = [r["identical"] for r in ok if "identical" in r]
            row.update(
                tokens_per_s=tokens / seconds if seconds else 0.0,
                speedup=speedup,
                speedup_sd=statistics.pstdev(speedups) if len(speedups) > 1 else 0.0,
                tau=accepted / rounds if rounds else None,
                identical=sum(same) / len(same) if same else None,
                ttft_s=statistics.mean(r["ttft_s"] for r in ok),
            )
            drafted = [r for r in ok if "draft_prefill_ms" in r]
            if drafted:  # means over the runs: the draft's prefill and its prompt KV cache
                for f in DRAFT_FIELDS:
                    values = [r[f] for r in drafted if r.get(f) is not None]
                    if values:
                        row[f] = statistics.mean(values)
                choices = Counter(r["gate_choice"] for r in drafted if r.get("gate_choice"))
                if choices:  # how often the gate chose each operator
                    row["gate_choices"] = dict(sorted(choices.items()))
            drafts = {json.dumps(r["draft"], sort_keys=True) for r in ok if r.get("draft")}
            if len(drafts) == 1:
                row["draft"] = json.loads(drafts.pop())
        else:
            row["error"] = rs[0]["error"]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| suite | method | T | speedup (± sd) | τ | tokens/s | TTFT ms | identical | runs |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['suite']} | {r['method']} | {r['temperature']:g} | failed: "
                f"{r['error'][:80]} | | | | | {r['runs']} |"
            )
            continue
        sp = "—" if r["speedup"] is None else f"{r['speedup']:.2f}× ± {r['speedup_sd']:.2f}"
        tau = "—" if r["tau"] is None else f"{r['tau']:.2f}"
        same = "—" if r["identical"] is None else f"{100 * r['identical']:.0f}%"
        err = f" ({r['errors']} failed)" if r["errors"] else ""
        lines.append(
            f"| {r['suite']} | {r['method']} | {r['temperature']:g} | {sp} | {tau} | "
            f"{r['tokens_per_s']:.1f} | {1000 * r['ttft_s']:.0f} | {same} | "
            f"{r['runs']}{err} |"
        )
    return "\n".join(lines)


def fmt(value: float | None, spec: str) -> str:
    """A number for a table, "—" for None."""
    return "—" if value is None else format(value, spec)


def gate_text(row: dict[str, Any]) -> str:
    """The gate's choices of a summary row: "prune 3, pool 1", or "—"."""
    return ", ".join(f"{op} {n}" for op, n in (row.get("gate_choices") or {}).items()) or "—"


def compressor_text(row: dict[str, Any]) -> str:
    """A draft's compressor in a few words: mode, operators and ratios (or the forced one)."""
    draft = row.get("draft") or {}
    if "cross" in draft:  # a cross-modal head: its prompt is its event model's
        return f"cross-modal head, prompt from events, catch-up on {draft['catch_up']}"
    if "assistant" in draft:  # a separate draft model: it reads its own input, whole
        return f"separate model, reads {draft.get('reads', 'request')}"
    cfg = draft.get("forced") or draft.get("compressor")
    if not cfg:
        return "none (reads every visual token)" if draft else "—"
    ops = []
    for op in cfg["operators"]:
        r = cfg["ratios"].get(op)
        q = cfg["queries"] if op == "resampler" else None
        ops.append(f"{op} {r:g}x" if r else f"{op} {q}q" if q else op)
    forced = "forced " if draft.get("forced") else ""
    return f"{forced}{cfg['mode']}: {', '.join(ops)}"


def draft_table(rows: list[dict[str, Any]]) -> str:
    """The draft methods' costs per suite: τ, speedup, the draft's prefill and KV cache (tokens
    and bytes, means per run), the target's visual tokens, the compressor and the gate's
    choices (operator: runs). Empty when no row has a draft."""
    drafted = [r for r in rows if "draft_prefill_ms" in r]
    if not drafted:
        return ""
    lines = [
        "| suite | method | visual tokens | τ | speedup | draft prefill ms | draft KV tokens | "
        "draft KV bytes | identical | compressor | gate choices |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in drafted:
        same = "—" if r.get("identical") is None else f"{100 * r['identical']:.0f}%"
        lines.append(
            f"| {r['suite']} | {r['method']} | {fmt(r.get('visual_tokens'), '.0f')} | "
            f"{fmt(r.get('tau'), '.2f')} | {fmt(r.get('speedup'), '.2f')} | "
            f"{fmt(r.get('draft_prefill_ms'), '.2f')} | {fmt(r.get('draft_kv_tokens'), '.0f')} | "
            f"{fmt(r.get('draft_kv_bytes'), ',.0f')} | {same} | {compressor_text(r)} | {gate_text(r)} |"
        )
    return "\n".join(lines)


def sweep_rows(
    rows: list[dict[str, Any]], base: str = "eaglevlm", method: str = "specvlm"
) -> list[dict[str, Any]]:
    """The compressor's gain per visual-token count: for each suite (a count, e.g.
    world-multi-N) with both methods at T = 0, their speedups over plain, gain = method's /
    base's, and their draft KV caches and prefills; ordered by visual tokens."""
    by = {(r["suite"], r["method"]): r for r in rows if r["temperature"] == 0 and "error" not in r}
    out = []
    for (suite, name), b in by.items():
        m = by.get((suite, method))
        if name != base or suite == "all" or m is None:
            continue
        gain = None
        if m.get("speedup") and b.get("speedup"):
            gain = m["speedup"] / b["speedup"]
        out.append(
            {
                "suite": suite,
                "visual_tokens": m.get("visual_tokens", b.get("visual_tokens")),
                "base": base,
                "method": method,
                "base_speedup": b.get("speedup"),
                "speedup": m.get("speedup"),
                "gain": gain,
                "base_tau": b.get("tau"),
                "tau": m.get("tau"),
                "base_kv_tokens": b.get("draft_kv_tokens"),
                "kv_tokens": m.get("draft_kv_tokens"),
                "base_prefill_ms": b.get("draft_prefill_ms"),
                "prefill_ms": m.get("draft_prefill_ms"),
            }
        )
    return sorted(out, key=lambda r: (r["visual_tokens"] or 0, r["suite"]))


def sweep_table(sweep: list[dict[str, Any]]) -> str:
    """`sweep_rows` as Markdown: one row per visual-token count."""
    if not sweep:
        return ""
    b, m = sweep[0]["base"], sweep[0]["method"]
    lines = [
        f"| suite | visual tokens | {b} speedup | {m} speedup | gain ({m} / {b}) | τ {b} → {m} | "
        f"draft KV tokens {b} → {m} | draft prefill ms {b} → {m} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sweep:
        lines.append(
            f"| {r['suite']} | {fmt(r['visual_tokens'], '.0f')} | "
            f"{fmt(r['base_speedup'], '.2f')} | {fmt(r['speedup'], '.2f')} | "
            f"{fmt(r['gain'], '.2f')} | {fmt(r['base_tau'], '.2f')} → {fmt(r['tau'], '.2f')} | "
            f"{fmt(r['base_kv_tokens'], '.0f')} → {fmt(r['kv_tokens'], '.0f')} | "
            f"{fmt(r['base_prefill_ms'], '.2f')} → {fmt(r['prefill_ms'], '.2f')} |"
        )
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise InputError, saying how to install it, when matplotlib (for `plot`) is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise InputError(
            "plots need matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'specvlm[bench]'), or leave out --plots"
        )


def plot(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """speedup.png (per suite and method) and accept_lengths.png (speculative methods)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        r for r in summarise(records) if r.get("speedup") is not None and r["method"] != "plain"
    ]
    paths = []
    temps = sorted({r["temperature"] for r in rows})
    fig, axes = plt.subplots(
        1, max(1, len(temps)), figsize=(6 * max(1, len(temps)), 4), squeeze=False
    )
    for ax, temp in zip(axes[0], temps, strict=False):
        sub = [r for r in rows if r["temperature"] == temp]
        suites = sorted({r["suite"] for r in sub}, key=lambda s: (s == "all", s))
        methods = sorted({r["method"] for r in sub})
        width = 0.8 / max(1, len(methods))
        for j, m in enumerate(methods):
            vals = [
                next((r["speedup"] for r in sub if r["suite"] == s and r["method"] == m), 0)
                for s in suites
            ]
            errs = [
                next((r["speedup_sd"] for r in sub if r["suite"] == s and r["method"] == m), 0)
                for s in suites
            ]
            ax.bar(
                [i + j * width for i in range(len(suites))],
                vals,
                width,
                yerr=errs,
                label=m,
                capsize=2,
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(suites))])
        ax.set_xticklabels(suites, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speedup over plain (tokens/s ratio)")
        ax.set_title(f"temperature {temp:g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "speedup.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        for k, v in (r.get("accept_histogram") or {}).items():
            if r["method"] != "plain":
                hist[f"{r['method']} T={r['temperature']:g}"][int(k)] += v
    if hist:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, h in hist.items():
            total = sum(h.values())
            ks = sorted(h)
            ax.plot(ks, [h[k] / total for k in ks], marker="o", label=label)
        ax.set_xlabel("accepted length per target forward (drafts + 1)")
        ax.set_ylabel("fraction of rounds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "accept_lengths.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def report_header(records: list[dict[str, Any]], command: str) -> str:
    r = records[0] if records else {}
    dtype = (r.get("config") or {}).get("dtype")
    return (
        f"Command: `{command}`  \nMachine: {r.get('machine', machine())}"
        f"{f', {dtype}' if dtype else ''}  \n"
        f"Commit: {r.get('commit', commit())}, {time.strftime('%Y-%m-%d')}"
    )
