"""`specvlm demo` and `load()` defaults: the embedded pair when shipped, else the stand-in."""

from __future__ import annotations

import re
import shutil

from specvlm import api, embedded
from specvlm.demo import run_demo
from specvlm.train.quickfit import fit_head_to_target


def test_demo_on_the_stand_in_pair(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(embedded, "ASSETS", tmp_path / "no-assets")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # read by the warning, not by OpenMP now
    assert run_demo(max_new_tokens=16, out_dir=tmp_path) == 0
    out, err = capsys.readouterr()
    assert "warning: OMP_WAIT_POLICY=PASSIVE" in err
    assert "TINY RANDOM LLaVA" in out
    assert out.count("identical to plain: yes") == 4
    assert "summary: 4 prompts, identical output: all" in out
    assert (tmp_path / "image_0.png").is_file()


def test_load_and_demo_prefer_the_embedded_pair(tiny_dir, tmp_path, monkeypatch, capsys):
    assets = tmp_path / "assets"
    shutil.copytree(tiny_dir, assets / "world-target")
    fit_head_to_target(assets / "world-target", assets / "world-draft", steps=10)
    monkeypatch.setattr(embedded, "ASSETS", assets)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    engine = api.load()
    assert engine.target_dir == assets / "world-target" and engine.draft is not None
    assert run_demo(max_new_tokens=8, out_dir=tmp_path) == 0
    out, err = capsys.readouterr()
    assert "OMP_WAIT_POLICY" not in err
    assert "embedded world target" in out and "TINY RANDOM" not in out
    assert "summary: 8 prompts, identical output: all" in out
    assert len(set(re.findall(r"image: (\S+)", out))) == 8  # eight different scenes


def test_demo_samples_at_temperature_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(embedded, "ASSETS", tmp_path / "no-assets")
    assert run_demo(max_new_tokens=12, out_dir=tmp_path, temperature=1.0, top_p=0.9) == 0
    out = capsys.readouterr().out
    assert "sampling at T=1, top-p 0.9" in out
    assert out.count("identical to plain: n/a (sampled)") == 4
    assert "summary: 4 prompts, identical output: n/a (sampled)" in out
