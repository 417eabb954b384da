"""What the one-stage recipes on a LLaVA folder (video, events) share: no auxiliary losses,
their start-up checks, and one run of `loop.train_llava` that ends by writing `out/model/`."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.world.train_target.loop import Budget, train_llava
from specvlm.world.train_target.run import Run, _load_checkpoint, make_optimizer


class NoAuxLosses:
    """The world recipe's auxiliary losses (`loop.train_step` reads them), all off."""

    @property
    def aux_weight(self) -> float:
        return 0.0

    @property
    def align_weight(self) -> float:
        return 0.0

    @property
    def pointer_weight(self) -> float:
        return 0.0


def start_recipe(
    config, configs: dict, overrides: dict, steps: int | None, minutes: float | None,
    out: str | Path, resume: bool, ckpt_name: str = "checkpoint.pt",
):  # fmt: skip
    """The named (or given) config with `overrides` (bf16 off on a CPU without it), after
    checking the budget and whether `out` holds a run: (cfg, out, checkpoint path)."""
    if isinstance(config, str) and config not in configs:
        raise InputError(f"unknown --config {config!r}; accepted: {', '.join(configs)}")
    cfg = replace(configs[config] if isinstance(config, str) else config, **overrides)
    if cfg.bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("train-target: this CPU has no native bf16; training in fp32", file=sys.stderr)
        cfg = replace(cfg, bf16=False)
    if steps is None and minutes is None:
        raise InputError("give --steps or --minutes (or both)")
    if (steps is not None and steps < 2) or (minutes is not None and minutes <= 0):
        raise InputError("--steps must be at least 2 and --minutes positive")
    out = Path(out)
    ckpt = out / ckpt_name
    if resume and not ckpt.is_file():
        raise InputError(f"--resume: no checkpoint at {ckpt}")
    if not resume and ckpt.is_file():
        raise InputError(f"{out} holds a run already: pass --resume, or start a new --out")
    return cfg, out, ckpt


def run_recipe(
    cfg, model, trained: torch.nn.ModuleDict, data: dict, tokenizer, *, name: str, out: Path,
    ckpt: Path, init: str | Path, files_from: Path, steps: int | None, minutes: float | None,
    resume: bool, stop_at: int | None, ckpt_minutes: float, log_every: int, progress: bool,
    **train_kwargs,
) -> dict:  # fmt: skip
    """Train `trained` (part of `model`) on `data` with `loop.train_llava` until the budget or
    `stop_at`; at the end of the budget write `out/model/` (the model in fp16, plus the
    tokenizer, template and processor files of `files_from`). Returns the run's summary:
    steps, elapsed_s, losses, first_loss, final_loss, model (the folder, or None)."""
    model.train()
    run = Run(cfg, model, None, trained, make_optimizer(cfg, trained), ckpt)
    run.state = {
        "step": 0, "vision_step": 0, "elapsed": 0.0, "tokens": 0, "config": asdict(cfg),
        "losses": [], "pointer_losses": [], "motion_losses": [], "vision": {},
        "init": str(init),
    }  # fmt: skip
    if resume:
        _load_checkpoint(run)
    budget = Budget(steps, minutes)
    n_train = sum(p.numel() for p in trained.parameters())
    print(f"{name}: {n_train / 1e6:.1f} M trained parameters, {len(data['ids'])} records",
          file=sys.stderr, flush=True)  # fmt: skip
    train_llava(
        run, data, tokenizer, budget, stop_at, ckpt_minutes, ckpt_every=None,
        log_every=log_every, progress=progress, double_bos=False, show_eta=True, **train_kwargs,
    )  # fmt: skip
    run.save()
    done = budget.progress(run.state["step"], run.state["elapsed"]) >= 1.0
    model.eval()
    losses = run.state["losses"]
    tail = losses[-max(1, min(50, len(losses) // 10)) :]
    result = {
        "steps": run.state["step"],
        "elapsed_s": run.state["elapsed"],
        "losses": losses,
        "first_loss": (losses or [float("nan")])[0],
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "model": None,
    }
    if run.state.get("motion_losses"):  # the video recipe's motion loss, when on
        result["motion_losses"] = run.state["motion_losses"]
    if done:
        folder = out / "model"
        with quiet_transformers():
            model.to(torch.float16).save_pretrained(folder)
        for file in files_from.iterdir():  # tokenizer, template, processor
            if file.is_file() and not file.name.startswith(("model", "config", "specvlm")):
                (folder / file.name).write_bytes(file.read_bytes())
        result["model"] = str(folder)
    return result
