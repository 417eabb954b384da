"""Bad arguments, output paths and data end in one line and exit code 2, before the work, and
nothing already written is lost: generate, bench, world make/show, train-draft."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from specvlm import api
from specvlm.bench import runner
from specvlm.cli import main
from specvlm.train import distill
from specvlm.world import cli as world_cli
from specvlm.world.dataset import make_dataset


def _fails(argv: list[str], capsys, *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("specvlm: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is loaded: these arguments must be refused before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(api, "load", refuse)
    monkeypatch.setattr(distill, "load_target", refuse)


BAD_SAMPLING = [
    (["--temperature", "1e-300"], "temperature"),
    (["--temperature", "inf"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--seed", str(2**64)], "seed"),
    (["--seed", "-1"], "seed"),
    (["--max-new-tokens", "0"], "max-new-tokens"),
]


@pytest.mark.parametrize(("extra", "needle"), [
    *BAD_SAMPLING, (["--repetition-penalty", "inf"], "repetition_penalty"),
    (["--top-k", "-1"], "top_k"),
])  # fmt: skip
def test_generate_refuses_bad_sampling_before_loading(extra, needle, no_loading, capsys):
    _fails(["generate", "--prompt", "hi", *extra], capsys, needle)


@pytest.mark.parametrize(("extra", "needle"), BAD_SAMPLING)
def test_bench_refuses_bad_sampling_before_loading(extra, needle, no_loading, capsys):
    _fails(["bench", "--quick", *extra], capsys, needle)


def test_bench_refuses_a_seed_that_overflows_with_samples(no_loading, capsys):
    argv = ["bench", "--temperature", "1", "--samples", "3", "--seed", str(2**63 - 2)]
    _fails(argv, capsys, "seed")


@pytest.mark.parametrize("extra", [["--n", "0"], ["--quick", "--n", "0"], ["--samples", "0"]])
def test_bench_refuses_counts_below_one(extra, no_loading, capsys):
    _fails(["bench", *extra], capsys, "at least 1")


@pytest.mark.parametrize("device", ["banana", "cuda"])
@pytest.mark.parametrize("verb", ["generate", "bench"])
def test_an_unusable_device_is_one_line(verb, device, tiny_dir, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [verb, "--target", str(tiny_dir), "--device", device]
    argv += ["--prompt", "hi"] if verb == "generate" else ["--quick", "--methods", "plain"]
    _fails(argv, capsys, device)


def test_bench_checks_out_and_plots_before_the_run(tmp_path, no_loading, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _fails(["bench", "--out", str(blocker / "r.jsonl")], capsys, "--out")
    _fails(["bench", "--out", str(tmp_path)], capsys, "is a folder")
    _fails(["bench", "--plots", str(blocker)], capsys, "--plots")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # not installed
    _fails(["bench", "--plots", str(tmp_path / "p")], capsys, "pip install matplotlib", "bench")
    with pytest.raises(specvlm_input_error()):
        runner.plot([], tmp_path / "p")


def specvlm_input_error():
    from specvlm.errors import InputError

    return InputError


def test_world_make_and_show_check_out_before_the_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work ran before --out was checked")

    monkeypatch.setattr(world_cli, "make_dataset", no_work)
    monkeypatch.setattr(world_cli, "contact_sheet", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _fails(["world", "make", "--split", "val", "--n", "1", "--out", str(blocker)], capsys, "file")
    _fails(
        ["world", "make", "--split", "val", "--n", "1", "--out", str(blocker / "x")],
        capsys,
        "cannot write",
    )
    _fails(["world", "show", "--out", str(blocker / "x.png")], capsys, "cannot write")
    _fails(["world", "tokenizer", "--out", str(blocker)], capsys, "file")


# ---- train-draft ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return make_dataset(
        "train", 4, out, families=["conversation", "reasoning"], resolution=64, progress=False
    )


def _train(tiny_dir, data, out, *extra: str) -> list[str]:
    return [
        "train-draft",
        "--target",
        str(tiny_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--no-progress",
        *extra,
    ]


def _log(out) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--seed", str(2**64)], "seed"), (["--lr", "nan"], "lr"), (["--w-feat", "inf"], "w_feat"),
])  # fmt: skip
def test_train_draft_refuses_bad_settings_before_loading(
    extra, needle, tmp_path, no_loading, capsys
):
    _fails(_train("t", "d.jsonl", tmp_path / "o", *extra), capsys, needle)


def test_train_draft_checks_out_before_loading(tmp_path, data, no_loading, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _fails(_train("t", data, blocker), capsys, "--out", "file")
    _fails(_train("t", data, blocker / "x"), capsys, "cannot write")


def test_resume_with_other_settings_is_refused_and_changes_nothing(
    tiny_dir, data, tmp_path, capsys
):
    out = tmp_path / "d"
    assert main(_train(tiny_dir, data, out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    err = _fails(
        _train(tiny_dir, data, out, "--resume", "--batch-size", "4", "--lr", "0.01"),
        capsys,
        "--batch-size 2 (now 4)",
        "--lr 0.001 (now 0.01)",
    )
    assert "new --out" in err
    other = tmp_path / "other.jsonl"
    rows = data.read_text().splitlines()
    other.write_text("\n".join(rows[::-1]) + "\n")  # same rows, another order: other data
    for p in data.parent.iterdir():
        if p.is_dir():
            shutil.copytree(p, tmp_path / p.name)
    _fails(_train(tiny_dir, other, out, "--resume"), capsys, "--data", "other contents")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the same settings (bookkeeping aside) resume; a finished run has nothing left to do
    assert main(_train(tiny_dir, data, out, "--resume", "--checkpoint-every", "3")) == 0
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]


def test_resumed_log_does_not_repeat_steps(tiny_dir, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    save = distill._save_checkpoint

    def killed_at_step_4(out_, head, opt, sched, step, meta):
        if step == 4:
            raise KeyboardInterrupt  # steps 3 and 4 are logged; the checkpoint is at step 2
        save(out_, head, opt, sched, step, meta)

    monkeypatch.setattr(distill, "_save_checkpoint", killed_at_step_4)
    assert main(_train(tiny_dir, data, out)) == 130
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    assert (out / "checkpoints" / "latest").read_text() == "step-2"
    monkeypatch.setattr(distill, "_save_checkpoint", save)
    assert main(_train(tiny_dir, data, out, "--resume")) == 0
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]


def test_final_save_never_leaves_a_torn_draft_folder(tiny_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "d"
    assert main(_train(tiny_dir, data, out)) == 0
    before = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json")}
    real_save = distill.EagleHead.save

    def dies_half_way(self, folder, dtype=torch.float16):
        real_save(self, folder, dtype)
        (folder / "model.safetensors").write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(distill.EagleHead, "save", dies_half_way)
    assert main(_train(tiny_dir, data, out, "--seed", "1")) == 130
    after = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json")}
    assert after == before
    monkeypatch.undo()
    assert main(_train(tiny_dir, data, out, "--seed", "1")) == 0
    assert not (out / ".tmp-final").exists()
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    api.load(target=tiny_dir, draft=out)  # a complete, loadable pair


def _with_bad_rows(data, tmp_path):
    """data's rows, then one whose image exists but is not an image (line 9) and one longer than
    the tiny target's context (line 10)."""
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for p in data.parent.iterdir():
        if p.is_dir():
            shutil.copytree(p, tmp_path / p.name, dirs_exist_ok=True)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    broken = {**rows[0], "image": "images/broken.png"}
    long = {
        **rows[1],
        "conversations": [rows[1]["conversations"][0], {"from": "gpt", "value": "red " * 3000}],
    }
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, broken, long]))
    return path


def test_rows_the_target_cannot_take_are_skipped_and_counted(tiny_dir, data, tmp_path, capsys):
    bad = _with_bad_rows(data, tmp_path)
    out = tmp_path / "d"
    lines = []
    distill.train_draft(
        tiny_dir, bad, out, distill.TrainConfig(batch_size=2), progress=False, log=lines.append
    )
    assert lines[0] == (
        "data: 8 of 10 rows kept; skipped: 1 unreadable image, 1 longer than the context"
    )
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    _fails(
        _train(tiny_dir, bad, tmp_path / "s", "--on-bad-row", "stop"),
        capsys,
        "bad.jsonl:9:",
        "cannot read",
    )
