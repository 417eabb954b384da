"""Issue 22's bench: eaglevlm and specvlm in one run, the compressor ablation, the visual-token
sweep (world-multi-N) and what their records and tables say; on the tiny target (4 x 4 = 16
visual tokens per image)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specvlm import api
from specvlm.bench import ablation, runner
from specvlm.bench.methods import BenchContext, build_methods, default_methods
from specvlm.bench.suites import load_suite
from specvlm.cli import main
from specvlm.draft.compressor import CompressorConfig
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.errors import InputError
from specvlm.target import load_target

SELECT = CompressorConfig(ratios={"pool": 4.0})  # select over prune 20x, pool 4x, conv 3x, ...


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_target(tiny_dir)


@pytest.fixture(scope="module")
def drafts(target, tmp_path_factory) -> dict[str, Path]:
    """A plain draft and a select-mode compressor draft whose gate reads the question."""
    root = tmp_path_factory.mktemp("drafts")
    torch.manual_seed(0)
    EagleHead(EagleConfig.for_target(target.info)).save(root / "plain")
    head = EagleHead(EagleConfig.for_target(target.info, compressor=SELECT))
    with torch.no_grad():
        head.compressor.gate.weight.normal_(0, 1)
    head.save(root / "select")
    return {"plain": root / "plain", "select": root / "select"}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    cache = tmp_path_factory.mktemp("suites")
    return {n: load_suite(f"world-multi-{n}", n=1, cache_dir=cache) for n in (1, 2)}


def _engine(target, folder: Path | None) -> api.Engine:
    head = None if folder is None else EagleHead.load(folder, dtype=target.info.dtype).eval()
    return api.Engine(target, head)


# ---- one run, both drafts --------------------------------------------------------------------
def test_each_draft_method_finds_its_draft(target, drafts):
    plain, select = drafts["plain"], drafts["select"]
    ctx = BenchContext(_engine(target, plain), draft_dir=plain, compressor_draft=select)
    assert ctx.head("eaglevlm").folder == plain and ctx.head("specvlm").folder == select
    # a compressor draft as the engine's own: specvlm takes it, eaglevlm the plain fallback
    ctx = BenchContext(_engine(target, select), draft_dir=select, plain_draft=plain)
    assert ctx.head("specvlm").folder == select and ctx.head("eaglevlm").folder == plain
    assert default_methods(["plain", "eaglevlm", "hf-plain"], ctx) == (
        ["plain", "eaglevlm", "specvlm", "hf-plain"],
        [],
    )
    alone = BenchContext(_engine(target, select), draft_dir=select)
    names, notes = default_methods(["plain", "eaglevlm"], alone)
    assert names == ["plain", "specvlm"] and "eaglevlm skipped" in notes[0]
    with pytest.raises(InputError, match="--compressor-draft"):
        build_methods(["eaglevlm"], alone)
    with pytest.raises(InputError, match="--compressor-draft DIR"):
        BenchContext(_engine(target, plain)).head("specvlm")
    with pytest.raises(InputError, match="has no elastic visual compressor"):
        BenchContext(_engine(target, None), compressor_draft=plain).head("specvlm")


def test_records_say_which_draft_and_compressor_ran(target, drafts, items):
    ctx = BenchContext(
        _engine(target, drafts["plain"]),
        draft_dir=drafts["plain"],
        compressor_draft=drafts["select"],
    )
    methods = build_methods(["eaglevlm", "specvlm"], ctx)
    records = runner.run_bench(methods, items[2], max_new_tokens=8, progress=False)
    rec = {r["method"]: r for r in records}
    assert all(r["identical"] for r in records)
    assert "draft" not in rec["plain"]
    assert rec["eaglevlm"]["draft"] == {"folder": str(drafts["plain"]), "compressor": None}
    spec = rec["specvlm"]
    assert spec["draft"] == {"folder": str(drafts["select"]), "compressor": SELECT.to_dict()}
    assert spec["gate_choice"] in SELECT.operators and rec["eaglevlm"]["gate_choice"] is None
    assert spec["visual_tokens"] == rec["eaglevlm"]["visual_tokens"] == 32  # 2 images x 16
    rows = runner.summarise(records)
    row = next(r for r in rows if r["method"] == "specvlm" and r["suite"] == "all")
    assert row["gate_choices"] == {spec["gate_choice"]: 1} and row["draft"] == spec["draft"]
    table = runner.draft_table(rows)
    assert "none (reads every visual token)" in table
    compressor = "select: prune 20x, pool 4x, conv 3x, resampler 2q, text"
    assert f"| {compressor} | {spec['gate_choice']} 1 |" in table


def test_bench_with_default_methods_and_a_compressor_draft(tiny_dir, drafts, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    argv = ["bench", "--target", str(tiny_dir), "--draft", str(drafts["plain"]),
            "--compressor-draft", str(drafts["select"]), "--suite", "world-multi-2", "--n", "1",
            "--max-new-tokens", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    records = runner.read_jsonl(out)
    assert {r["method"] for r in records} >= {"plain", "eaglevlm", "specvlm", "hf-plain"}
    assert all(r["identical"] for r in records if r["method"] in ("eaglevlm", "specvlm"))
    assert records[0]["config"]["compressor_draft"] == str(drafts["select"])
    assert records[0]["config"]["dtype"] == "float32"  # every record says the dtype it ran in
    # and how its linears multiply: the tiny target's weights are all below the packing size
    assert records[0]["config"]["linears"] == {"onednn": 0, "one row dense": 0, "matmul": 23}
    assert "The drafts' costs" in stdout and "| world-multi-2 | specvlm | 32 |" in stdout
    # the compressor draft as --draft: specvlm runs it; eaglevlm has no plain draft and leaves
    argv = ["bench", "--target", str(tiny_dir), "--draft", str(drafts["select"]),
            "--suite", "world-multi-1", "--n", "1", "--max-new-tokens", "8",
            "--methods", "plain,eaglevlm,specvlm"]  # fmt: skip
    assert main(argv) == 2  # named explicitly: refused, saying what to give
    assert "--compressor-draft" in capsys.readouterr().err
    assert main(argv[:-2] + ["--out", str(out)]) == 0  # default methods: skipped with a note
    assert "eaglevlm skipped" in capsys.readouterr().err
    assert "specvlm" in {r["method"] for r in runner.read_jsonl(out)}


def test_the_sweep_prints_the_compressors_gain_per_visual_token_count(
    tiny_dir, drafts, tmp_path, capsys
):
    out = tmp_path / "s.jsonl"
    argv = ["bench", "--target", str(tiny_dir), "--draft", str(drafts["plain"]),
            "--compressor-draft", str(drafts["select"]), "--sweep", "1,2", "--n", "1",
            "--max-new-tokens", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert {r["method"] for r in runner.read_jsonl(out)} == {"plain", "eaglevlm", "specvlm"}
    sweep = stdout.split("gain per visual-token count:")[1]
    assert sweep.index("| world-multi-1 | 16 |") < sweep.index("| world-multi-2 | 32 |")
    assert main(["bench", "--sweep", "1", "--suite", "world"]) == 2
    assert "not both" in capsys.readouterr().err
    for bad, needle in (("0", "N = 1..16"), ("a", "e.g. 1,4,8"), ("17", "N = 1..16")):
        assert main(["bench", "--sweep", bad]) == 2
        assert needle in capsys.readouterr().err


def test_sweep_rows_pair_the_methods_per_suite_in_visual_token_order():
    def row(suite, method, speedup, visual, kv):
        return {"suite": suite, "method": method, "temperature": 0.0, "speedup": speedup,
                "tau": 2.0, "visual_tokens": visual, "draft_kv_tokens": kv,
                "draft_prefill_ms": 1.0}  # fmt: skip

    rows = [
        row("world-multi-8", "eaglevlm", 1.2, 512, 560), row("world-multi-8", "specvlm", 1.5, 512, 80),
        row("world-multi-1", "eaglevlm", 1.4, 64, 110), row("world-multi-1", "specvlm", 1.4, 64, 50),
        row("all", "eaglevlm", 1.3, 288, 335), row("all", "specvlm", 1.45, 288, 65),
    ]  # fmt: skip
    sweep = runner.sweep_rows(rows)
    assert [r["suite"] for r in sweep] == ["world-multi-1", "world-multi-8"]
    assert sweep[1]["gain"] == pytest.approx(1.25) and sweep[0]["gain"] == pytest.approx(1.0)
    table = runner.sweep_table(sweep)
    assert "| world-multi-8 | 512 | 1.20 | 1.50 | 1.25 | 2.00 → 2.00 | 560 → 80 |" in table
    assert runner.sweep_rows([r for r in rows if r["method"] == "eaglevlm"]) == []


# ---- the ablation ----------------------------------------------------------------------------
def test_ablation_settings_of_a_select_draft():
    names = [s.name for s in ablation.ablation_settings(SELECT, ratios=(4, 9))]
    assert names == [
        "select", "concat", "prune@4", "prune@9", "prune_norm@4", "prune_norm@9", "pool@4",
        "pool@9", "conv@3", "resampler@2q", "text",
    ]  # fmt: skip
    settings = {s.name: s.forced for s in ablation.ablation_settings(SELECT, ratios=(4,))}
    assert settings["select"] is None  # as trained
    assert settings["concat"] == CompressorConfig(
        mode="concat", operators=("prune", "pool", "conv", "resampler"),
        ratios={"prune": 20.0, "pool": 4.0, "conv": 3.0},
    )  # fmt: skip
    assert settings["pool@4"] == CompressorConfig(
        mode="fixed", operators=("pool",), ratios={"pool": 4}
    )
    mix = [s.name for s in ablation.ablation_settings(CompressorConfig(mode="mix"), ratios=(4,))]
    assert mix[:2] == ["mix", "concat"] and "resampler@2q" not in mix
    assert ablation.parse_ratios("4, 9") == (4.0, 9.0)
    for bad in ("0.5", "x", "", "inf"):
        with pytest.raises(InputError, match="ratios >= 1"):
            ablation.parse_ratios(bad)


def test_ablation_measures_every_setting_from_its_cache(target, drafts, items):
    ctx = BenchContext(
        _engine(target, drafts["plain"]),
        draft_dir=drafts["plain"],
        compressor_draft=drafts["select"],
    )
    records = ablation.run_ablation(ctx, items[1], ratios=(4,), max_new_tokens=8, progress=False)
    rec = {r["method"]: r for r in records}
    assert all(r["identical"] for r in records if r["method"] != "plain")
    T = rec["eaglevlm"]["draft_kv_tokens"]  # reads all 16 visual tokens
    kept = {  # visual tokens each setting leaves in the draft's cache, of 16 (a 4 x 4 grid)
        "specvlm[prune@4]": 4, "specvlm[prune_norm@4]": 4, "specvlm[pool@4]": 4,
        "specvlm[conv@3]": 4, "specvlm[resampler@2q]": 2, "specvlm[text]": 0,
        "specvlm[concat]": 1 + 4 + 4 + 2,  # prune 20x, pool 4x, conv 3x (2 x 2), 2 queries
    }  # fmt: skip
    per_token = rec["eaglevlm"]["draft_kv_bytes"] / T
    for method, m in kept.items():
        assert rec[method]["draft_kv_tokens"] == T - 16 + m, method
        assert rec[method]["draft_kv_bytes"] == per_token * (T - 16 + m), method
        assert rec[method]["draft"]["forced"]["mode"] in ("fixed", "concat")
    assert rec["specvlm[select]"]["gate_choice"] in SELECT.operators
    assert "forced" not in rec["specvlm[select]"]["draft"]
    rows = runner.summarise(records)
    assert ablation.not_identical(rows) == []
    table = ablation.ablation_table(rows)
    assert table.count("\n") == 2 + len(records) - 1  # header, rule, one row per setting
    assert "| world-multi-1 | pool@4 | forced fixed: pool 4x |" in table
    assert ablation.pivot_table(rows) == ""  # one suite: nothing to pivot


def test_ablate_command(tiny_dir, drafts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "a.jsonl"
    base = ["ablate", "--target", str(tiny_dir), "--draft", str(drafts["plain"]), "--n", "1",
            "--max-new-tokens", "6", "--ratios", "4"]  # fmt: skip
    argv = [*base, "--compressor-draft", str(drafts["select"]), "--sweep", "1,2", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    records = runner.read_jsonl(out)
    assert len(records) == 2 * 10 and all(r["config"]["ablation"] for r in records)
    assert "| world-multi-2 | text | forced fixed: text |" in stdout
    pivot = stdout.split("per visual-token count:")[1]
    assert "world-multi-1 (16 visual) | world-multi-2 (32 visual)" in pivot
    assert main(base) == 2  # no compressor draft at hand
    assert "--compressor-draft" in capsys.readouterr().err

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(api, "load", refuse)
    for bad, needle in ((["--ratios", "0"], "ratios >= 1"), (["--suite", "x", "--sweep", "1"], "not both"),
                        (["--n", "0"], "--n")):  # fmt: skip
        assert main(["ablate", *bad]) == 2
        assert needle in capsys.readouterr().err


def test_the_embedded_target_reads_64_tokens_per_image_up_to_8_images(tmp_path):
    from specvlm import embedded

    folder = embedded.embedded_target()
    if folder is None:
        pytest.skip("the embedded target is not in this checkout")
    target = load_target(folder)
    for n in (1, 4, 8):
        (item,) = load_suite(f"world-multi-{n}", n=1, cache_dir=tmp_path)
        prompt = target.prepare(list(item.messages), list(item.images))
        pre = target.prefill(prompt, capacity=prompt.input_ids.shape[0] + 1)
        assert [s.grid for s in pre.visual.spans] == [(1, 8, 8)] * n  # 128 px / 16 px patches
        assert pre.visual.n_visual == 64 * n
        assert prompt.input_ids.shape[0] + 128 <= target.info.max_context  # room to answer
