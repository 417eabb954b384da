"""The elastic visual compressor's ablation: one compressor draft, every setting it can run.

    ctx = BenchContext(engine, compressor_draft=Path("drafts/select"), plain_draft=...)
    records = run_ablation(ctx, load_suite("world-multi-4", n=10), ratios=(4, 9, 16, 25))
    print(ablation_table(runner.summarise(records)))

For a draft trained in `select` mode (the gate picks one operator per input), the settings are:

    select          the draft as trained (the gate chooses)
    concat          every non-text operator at its trained setting, one after another (no gate)
    prune@r, prune_norm@r, pool@r    each parameter-free operator forced alone, at each ratio r
    conv@r          the trained conv alone, at its trained ratio (its window is learned)
    resampler@qq    the trained resampler alone, with its trained q queries
    text            no visual tokens at all

plus `eaglevlm` (a draft that reads every visual token, when the context has one) and `plain`
(the denominator of every speedup). A draft trained in `mix` mode runs `mix` instead of
`select`; one trained in `concat` or `fixed` mode runs its own setting and the forced ones.

Every forced row reuses ONE head, trained under the gate's mix of operators: a head trained
with that operator alone would likely do better, so a forced row measures the operator through
this head, not the operator's best. Rows run interleaved per item after a warm-up
(`runner.run_bench`), greedy: every row's output must be plain's, token for token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from specvlm.bench import runner
from specvlm.bench.methods import BenchContext, EngineMethod, Method
from specvlm.draft.compressor import OPERATORS, RATIO_OPERATORS, CompressorConfig
from specvlm.errors import InputError

DEFAULT_RATIOS = (4.0, 9.0, 16.0, 25.0)  # 1/4 .. 1/25 of the tokens; pool windows 2 .. 5
FREE_OPERATORS = ("prune", "prune_norm", "pool")  # no weights: any ratio


@dataclass(frozen=True)
class AblationSetting:
    """One row: a name and the compressor setting the draft runs (None: as trained)."""

    name: str
    forced: CompressorConfig | None = None

    @property
    def method(self) -> str:
        return f"specvlm[{self.name}]"


def parse_ratios(text: str) -> tuple[float, ...]:
    """ "4,9,16,25" -> (4.0, 9.0, 16.0, 25.0); InputError for anything but numbers >= 1."""
    try:
        ratios = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        ratios = ()
    if not ratios or any(not r >= 1 or r == float("inf") for r in ratios):
        raise InputError(f"--ratios {text!r}: give reduction ratios >= 1, e.g. 4,9,16,25")
    return ratios


def ablation_settings(
    trained: CompressorConfig, ratios: Iterable[float] = DEFAULT_RATIOS
) -> list[AblationSetting]:
    """The draft's own setting, concat of its operators (when it has two or more with visual
    tokens and is not concat already), then each operator alone: the parameter-free ones at
    every ratio, conv and the resampler at their trained settings (when trained), text."""
    ratios = tuple(ratios)
    out = [AblationSetting(trained.mode)]  # as trained
    visual = tuple(op for op in trained.operators if op != "text")
    if trained.mode != "concat" and len(visual) >= 2:
        out.append(AblationSetting("concat", _forced(trained, "concat", visual)))
    for op in OPERATORS:
        if op in FREE_OPERATORS:
            for r in ratios:
                out.append(AblationSetting(f"{op}@{r:g}", _forced(trained, "fixed", (op,), r)))
        elif op == "conv" and op in trained.operators:
            r = trained.ratio("conv")
            out.append(AblationSetting(f"conv@{r:g}", _forced(trained, "fixed", ("conv",), r)))
        elif op == "resampler" and op in trained.operators:
            name = f"resampler@{trained.queries}q"
            out.append(AblationSetting(name, _forced(trained, "fixed", ("resampler",))))
        elif op == "text":
            out.append(AblationSetting("text", _forced(trained, "fixed", ("text",))))
    return out


def _forced(
    trained: CompressorConfig, mode: str, ops: tuple[str, ...], ratio: float | None = None
) -> CompressorConfig:
    """A setting forced on the trained compressor: `ratio` for every operator that takes one
    (None: the trained ratios), the trained queries and pruning seed."""
    ratios = {
        op: ratio if ratio is not None else trained.ratio(op) for op in ops if op in RATIO_OPERATORS
    }
    return CompressorConfig(
        mode=mode, operators=ops, ratios=ratios, queries=trained.queries, seed=trained.seed
    )


def ablation_methods(ctx: BenchContext, ratios: Iterable[float] = DEFAULT_RATIOS) -> list[Method]:
    """plain, eaglevlm (when the context has a draft that reads every token) and one method per
    setting of the context's compressor draft (`BenchContext.head("specvlm")`)."""
    draft = ctx.head("specvlm")
    trained = draft.head.config.compressor
    assert trained is not None  # head("specvlm") has one
    methods: list[Method] = [EngineMethod("plain", ctx.engine, speculative=False)]
    if ctx.has("eaglevlm"):
        methods.append(EngineMethod("eaglevlm", ctx.engine, True, draft=ctx.head("eaglevlm")))
    for s in ablation_settings(trained, ratios):
        methods.append(EngineMethod(s.method, ctx.engine, True, draft=draft, forced=s.forced))
    return methods


def run_ablation(
    ctx: BenchContext,
    items: list[Any],
    *,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    max_new_tokens: int = 128,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One JSONL record per (item, setting), greedy, interleaved per item (`runner.run_bench`);
    each record says its draft and the forced setting (`record["draft"]["forced"]`)."""
    methods = ablation_methods(ctx, ratios)
    return runner.run_bench(
        methods,
        items,
        temperatures=(0.0,),
        max_new_tokens=max_new_tokens,
        seed=seed,
        config=config,
        progress=progress,
    )


def not_identical(rows: list[dict[str, Any]]) -> list[str]:
    """The rows (suite / method) whose greedy output was not plain's on every item, or failed."""
    return [
        f"{r['suite']} / {r['method']}"
        for r in rows
        if r["method"] != "plain" and ("error" in r or r.get("identical") != 1.0)
    ]


def ablation_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per (suite, setting): τ, speedup over plain, the draft's prefill ms and
    KV cache (tokens, bytes: means per item, read from its cache), greedy identity to plain and
    the gate's choices. The 'all' rows are left out (with several suites they would mix
    visual-token counts)."""
    keep = [r for r in rows if r["temperature"] == 0 and r["suite"] != "all"]
    lines = [
        "| suite | setting | compressor | τ | speedup | draft prefill ms | draft KV tokens | "
        "draft KV bytes | identical | gate choices |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in keep:
        if "error" in r:
            lines.append(f"| {r['suite']} | {r['method']} | failed: {r['error'][:80]} |" + " |" * 7)
            continue
        same = "—" if r.get("identical") is None else f"{100 * r['identical']:.0f}%"
        setting = r["method"].removeprefix("specvlm[").removesuffix("]")
        lines.append(
            f"| {r['suite']} | {setting} | {runner.compressor_text(r)} | "
            f"{runner.fmt(r.get('tau'), '.2f')} | {runner.fmt(r.get('speedup'), '.2f')} | "
            f"{runner.fmt(r.get('draft_prefill_ms'), '.2f')} | "
            f"{runner.fmt(r.get('draft_kv_tokens'), '.0f')} | "
            f"{runner.fmt(r.get('draft_kv_bytes'), ',.0f')} | {same} | {runner.gate_text(r)} |"
        )
    return "\n".join(lines)


def pivot_table(rows: list[dict[str, Any]], field: str = "speedup") -> str:
    """One row per setting, one column per suite (e.g. visual-token count): `field` of each.
    Suites are ordered by their visual tokens. Empty with fewer than two suites."""
    rows = [r for r in rows if r["temperature"] == 0 and r["suite"] != "all"]
    counts: dict[str, float] = {}
    for r in rows:
        if r.get("visual_tokens") is not None:
            counts.setdefault(r["suite"], r["visual_tokens"])
    suites = sorted({r["suite"] for r in rows}, key=lambda s: (counts.get(s, 0), s))
    if len(suites) < 2:
        return ""
    cell = {(r["suite"], r["method"]): r.get(field) for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "plain"))
    head = [f"{s} ({counts[s]:.0f} visual)" if s in counts else s for s in suites]
    lines = [
        f"| {field} | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(suites),
    ]
    for m in methods:
        values = [runner.fmt(cell.get((s, m)), ".2f") for s in suites]
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    return "\n".join(lines)
