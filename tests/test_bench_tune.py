"""Tree auto-tuning: measured costs and acceptance -> a choice that load() picks up."""

from __future__ import annotations

from specvlm import api
from specvlm.bench import tune as tune_module
from specvlm.config import TreeConfig
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image


def test_tune_writes_a_choice_that_load_uses(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tune_module, "GRID", {"depth": (2, 7), "top_k": (2, 10), "budget": (4, 60)})
    prompts = [("describe the image.", [noise_image(0)])]
    fit_head_to_target(tiny_dir, tmp_path / "d", prompts=prompts, new_tokens=32, steps=80)
    engine = api.load(target=tiny_dir, draft=tmp_path / "d")
    assert engine.tree == TreeConfig()  # nothing tuned yet
    res = tune_module.tune(engine, prompts, max_new_tokens=32, progress=False)
    trees = [TreeConfig(**g["tree"]) for g in res["grid"]]
    assert TreeConfig(7, 10, 60) in trees and TreeConfig(2, 2, 4) in trees
    assert TreeConfig(2, 2, 60) not in trees  # more nodes than the tree can hold
    best = max(res["grid"], key=lambda g: g["tokens_per_s"])
    assert res["tree"] == best["tree"] and res["gain_over_paper_default"] >= 1.0
    assert res["tokens_per_s"] == best["tokens_per_s"] > 0 and res["plain_tokens_per_s"] > 0
    assert res["speedup"] == res["tokens_per_s"] / res["plain_tokens_per_s"]
    assert all(g["tau"] >= 1.0 for g in res["grid"])
    deepest = max(res["grid"], key=lambda g: g["tau"])  # a fitted draft gets deep trees accepted
    assert deepest["tree"]["depth"] == 7 and deepest["tau"] > 2
    assert set(res["costs_s"]["verify"]) == {"1", "4", "60"}
    again = api.load(target=tiny_dir, draft=tmp_path / "d")
    assert again.tree == TreeConfig(**res["tree"])
