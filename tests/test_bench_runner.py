"""The benchmark runner: interleaving, identical-output checks, errors, records, tables, plots."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from specvlm import api
from specvlm.bench import runner
from specvlm.bench.methods import BenchContext, EngineMethod, RunResult, build_methods
from specvlm.errors import InputError
from tests.conftest import noise_image


@dataclass(frozen=True)
class Item:
    id: str
    suite: str
    messages: tuple
    images: tuple = ()


ITEMS = [
    Item(f"q{i}", "s1" if i < 2 else "s2", ({"role": "user", "content": f"q{i}"},))
    for i in range(3)
]


class Stub:
    """A method with scripted output; records the order it was called in."""

    def __init__(self, name, calls, tokens=(1, 2, 3), seconds=1.0, fail=False, tau=None):
        self.name, self.calls, self.tokens = name, calls, list(tokens)
        self.seconds, self.fail, self.tau = seconds, fail, tau

    def run(self, req):
        self.calls.append((self.name, req.messages[0]["content"], req.max_new_tokens))
        if self.fail:
            raise ValueError("this baseline is broken")
        return RunResult(
            self.tokens,
            "x",
            0.1,
            0.1,
            self.seconds - 0.1,
            tau=self.tau,
            accept_histogram={1: 1, round(2 * self.tau - 1): 1} if self.tau else {},
        )


def test_methods_are_interleaved_after_a_warm_up():
    calls = []
    methods = [Stub("plain", calls), Stub("a", calls), Stub("b", calls)]
    runner.run_bench(methods, ITEMS, max_new_tokens=16, progress=False)
    warm, timed = calls[:3], [(n, q) for n, q, _ in calls[3:]]
    assert all(c[2] == 8 for c in warm)  # short warm-up of every method
    assert timed == [
        ("plain", "q0"),
        ("a", "q0"),
        ("b", "q0"),
        ("b", "q1"),
        ("a", "q1"),
        ("plain", "q1"),
        ("plain", "q2"),
        ("a", "q2"),
        ("b", "q2"),
    ]


def test_a_method_with_a_wrong_token_is_reported_not_identical():
    calls = []
    methods = [
        Stub("plain", calls),
        Stub("fast-but-wrong", calls, tokens=(1, 9, 3), seconds=0.5),
        Stub("good", calls, seconds=0.25, tau=3.0),
    ]
    records = runner.run_bench(methods, ITEMS, progress=False)
    wrong = [r for r in records if r["method"] == "fast-but-wrong"]
    assert [r["identical"] for r in wrong] == [False] * 3
    assert all(r["speedup"] == pytest.approx(2.0) for r in wrong)
    rows = {(r["suite"], r["method"]): r for r in runner.summarise(records)}
    assert rows[("all", "fast-but-wrong")]["identical"] == 0.0
    assert rows[("all", "good")]["identical"] == 1.0
    assert rows[("all", "good")]["speedup"] == pytest.approx(4.0)
    assert rows[("s1", "good")]["tau"] == 3.0 and rows[("s1", "good")]["runs"] == 2
    table = runner.markdown_table(runner.summarise(records))
    assert "| all | fast-but-wrong | 0 | 2.00× ± 0.00 | — | 6.0 | 100 | 0% | 3 |" in table
    for field in (
        "machine",
        "commit",
        "config",
        "method",
        "suite",
        "temperature",
        "tokens",
        "seconds",
        "tau",
        "speedup",
    ):
        assert field in records[0]


class PerItem(Stub):
    """Seconds and accepted lengths that differ per item."""

    def __init__(self, name, calls, seconds_of, hist_of):
        super().__init__(name, calls, tau=1.0)
        self.seconds_of, self.hist_of = seconds_of, hist_of

    def run(self, req):
        q = req.messages[0]["content"]
        secs, hist = self.seconds_of.get(q, 1.0), self.hist_of.get(q, {1: 3})
        tau = sum(k * n for k, n in hist.items()) / sum(hist.values())
        return RunResult(self.tokens, "x", 0.1, 0.1, secs - 0.1, tau=tau, accept_histogram=hist)


def test_summary_speedup_is_the_workload_ratio_and_tau_is_per_round():
    calls = []
    spec = PerItem(
        "spec",
        calls,
        seconds_of={"q0": 0.25, "q1": 1.0, "q2": 0.5},
        hist_of={"q0": {4: 1}, "q1": {1: 3}, "q2": {2: 1, 4: 1}},
    )
    records = runner.run_bench([Stub("plain", calls), spec], ITEMS, progress=False)
    rows = {(r["suite"], r["method"]): r for r in runner.summarise(records)}
    # s1 holds q0 and q1: plain 2 s, spec 1.25 s for the same tokens -> 1.6x (not (4 + 1) / 2)
    assert rows[("s1", "spec")]["speedup"] == pytest.approx(1.6)
    assert rows[("s1", "spec")]["speedup_sd"] == pytest.approx(1.5)  # per-item 4.0 and 1.0
    assert rows[("all", "spec")]["speedup"] == pytest.approx(3.0 / 1.75)
    # tau over rounds: s1 has 4 rounds accepting 4 + 1 + 1 + 1 tokens (not (4 + 1) / 2)
    assert rows[("s1", "spec")]["tau"] == pytest.approx(7 / 4)
    assert rows[("all", "spec")]["tau"] == pytest.approx(13 / 6)


def test_items_with_the_same_id_in_two_suites_are_paired_within_their_suite():
    items = [
        Item("7", "s1", ({"role": "user", "content": "a"},)),
        Item("7", "s2", ({"role": "user", "content": "b"},)),
    ]
    calls = []
    plain = PerItem("plain", calls, seconds_of={"a": 1.0, "b": 4.0}, hist_of={})
    spec = PerItem("spec", calls, seconds_of={"a": 0.5, "b": 1.0}, hist_of={})
    rows = {
        (r["suite"], r["method"]): r
        for r in runner.summarise(runner.run_bench([plain, spec], items, progress=False))
    }
    assert rows[("s1", "spec")]["speedup"] == pytest.approx(2.0)
    assert rows[("s2", "spec")]["speedup"] == pytest.approx(4.0)


def test_a_failing_baseline_is_reported_and_the_rest_run():
    calls = []
    methods = [Stub("plain", calls), Stub("broken", calls, fail=True), Stub("ok", calls)]
    records = runner.run_bench(methods, ITEMS, progress=False)
    broken = [r for r in records if r["method"] == "broken"]
    assert len(broken) == 3 and all(
        r["error"] == "ValueError: this baseline is broken" for r in broken
    )
    assert all("error" not in r for r in records if r["method"] != "broken")
    table = runner.markdown_table(runner.summarise(records))
    assert "| all | broken | 0 | failed: ValueError: this baseline is broken | | | | | 3 |" in table


def test_sampling_runs_each_item_several_times_with_seeds():
    calls = []
    seeds = []

    class Seeded(Stub):
        def run(self, req):
            seeds.append(req.seed)
            return super().run(req)

    runner.run_bench(
        [Seeded("plain", calls)], ITEMS[:1], temperatures=[1.0], samples=3, seed=10, progress=False
    )
    assert seeds == [10, 10, 11, 12]  # warm-up, then three samples


def test_records_round_trip_and_plots(tmp_path):
    calls = []
    methods = [Stub("plain", calls), Stub("spec", calls, seconds=0.5, tau=2.5)]
    records = runner.run_bench(methods, ITEMS, progress=False)
    runner.write_jsonl(records, tmp_path / "r.jsonl")
    assert runner.read_jsonl(tmp_path / "r.jsonl") == records
    paths = runner.plot(records, tmp_path / "plots")
    assert [p.name for p in paths] == ["speedup.png", "accept_lengths.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_engine_methods_on_a_tiny_target(tiny_dir, tmp_path):
    from specvlm.train.quickfit import fit_head_to_target

    img = tmp_path / "i.png"
    noise_image(0).save(img)
    draft = fit_head_to_target(
        tiny_dir, tmp_path / "d", prompts=[("q", [noise_image(0)])], steps=50
    )
    engine = api.Engine(api.load(target=tiny_dir).target, draft, target_dir=tiny_dir)
    # the target as its own separate draft model: every drafted chain is accepted
    ctx = BenchContext(engine=engine, target_dir=tiny_dir, assistant_dir=tiny_dir)
    names = ["eaglevlm", "hf-plain", "hf-lookup", "assisted", "assisted-concurrent", "hf-assisted"]
    methods = build_methods(names, ctx)
    assert [m.name for m in methods] == ["plain", *names]
    # "USER: <image>...ASSISTANT:": prompt lookup matches the last ":" at "USER:" and would
    # propose the image placeholders (transformers 5.24 then fails); hf-lookup bans them
    items = [Item("a", "s", ({"role": "user", "content": "<image>\nq"},), (img,))]
    records = runner.run_bench(methods, items, max_new_tokens=24, progress=False)
    assert {r["method"]: r["identical"] for r in records} == {m: True for m in ["plain", *names]}
    depth = engine.tree.depth
    for r in records:
        if r["method"].startswith("assisted"):  # 24 tokens: the first, then full chains
            assert r["tau"] == pytest.approx(23 / -(-23 // (depth + 1))), r
            assert r["draft"]["assistant"] == str(tiny_dir)
    with pytest.raises(InputError, match="unknown methods"):
        build_methods(["medusa"], ctx)
    with pytest.raises(InputError, match="needs a small separate draft model"):
        build_methods(["assisted"], BenchContext(engine=engine, target_dir=tiny_dir))
    with pytest.raises(InputError, match="needs a draft head"):
        EngineMethod("eaglevlm", api.Engine(engine.target, None), speculative=True)


@pytest.mark.parametrize(
    ("policy", "device", "warns"),
    [
        ("PASSIVE", "cpu", True),
        ("passive ", "cpu", True),
        ("ACTIVE", "cpu", False),
        (None, "cpu", False),
        ("PASSIVE", "cuda", False),
    ],
)
def test_timing_warning_names_a_passive_openmp_wait_policy(monkeypatch, policy, device, warns):
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    warning = runner.timing_warning(device)
    assert (warning is not None) == warns
    if warns:
        assert "OMP_WAIT_POLICY=PASSIVE" in warning and "Unset it" in warning


def test_machine_records_the_openmp_wait_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "OMP_WAIT_POLICY" not in runner.machine()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert ", OMP_WAIT_POLICY=PASSIVE," in runner.machine()
