"""A training run's state and set-up: its config and arguments, the model, optimizer and
checkpoint state (`Run`), and resuming from a checkpoint written with the same settings."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from specvlm.errors import InputError
from specvlm.world.train_target.config import CONFIGS, TargetTrainConfig
from specvlm.world.train_target.losses import PatchHeads
from specvlm.world.train_target.model import build_model, init_weights


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block on `n` intra-op threads and give the caller back its own count afterwards
    (the tests run on one, and a bitwise test after a recipe must still find one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_two_threads(recipe):
    """Run a training recipe on 2 intra-op threads (the cores of the boxes it was tuned on)."""

    @functools.wraps(recipe)
    def run(*args, **kwargs):
        with torch_threads(2):
            return recipe(*args, **kwargs)

    return run


def make_optimizer(cfg: TargetTrainConfig, model) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); weight decay on matrices other than embeddings only."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def save_checkpoint(path: Path, model, opt, state: dict) -> None:
    """Weights, optimizer and `state` in one file, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


def resolve_config(config: str | TargetTrainConfig, overrides: dict) -> TargetTrainConfig:
    """The named (or given) config with `overrides`; bf16 off on a CPU without native bf16."""
    if isinstance(config, str) and config not in CONFIGS:
        raise InputError(f"unknown --config {config!r}; accepted: {', '.join(CONFIGS)}")
    cfg = CONFIGS[config] if isinstance(config, str) else config
    cfg = replace(cfg, **overrides)
    if cfg.bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("train-target: this CPU has no native bf16; training in fp32", file=sys.stderr)
        cfg = replace(cfg, bf16=False)
    return cfg


def check_arguments(
    cfg: TargetTrainConfig,
    out: Path,
    steps: int | None,
    minutes: float | None,
    resume: bool,
    init: str | Path | None,
) -> None:
    """InputError for a budget, pointer layer, output folder, --resume or --init that cannot
    work."""
    if steps is None and minutes is None:
        raise InputError("give --steps or --minutes (or both)")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if minutes is not None and minutes <= 0:
        raise InputError(f"--minutes must be positive, got {minutes}")
    if cfg.pointer_weight > 0 and not 0 <= cfg.pointer_layer < cfg.layers:
        raise InputError(
            f"pointer_layer {cfg.pointer_layer} is not a layer of a {cfg.layers}-layer "
            f"decoder; accepted: 0 to {cfg.layers - 1}"
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder, but {out} is a file")
    if resume and not (out / "checkpoint.pt").is_file():
        raise InputError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    if init is not None and not (Path(init) / "config.json").is_file():
        raise InputError(
            f"--init: {init} is not a model folder (no config.json); "
            "give a world target's model/ folder"
        )


def check_resume_config(saved: dict, cfg: TargetTrainConfig, path: Path) -> None:
    """InputError naming every setting in which the checkpoint's config (`saved`) differs from
    this run's; bf16 may differ (it is the machine's choice, not the recipe's). A setting the
    checkpoint lacks (one added to the recipe after it was written) counts as its default."""
    now = asdict(cfg)
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    saved = {**defaults, **saved}
    differ = [k for k in {**saved, **now} if k != "bf16" and saved.get(k) != now.get(k)]
    if differ:
        was = ", ".join(f"{k} {saved.get(k, '(unset)')}" for k in differ)
        asks = ", ".join(f"{k} {now.get(k, '(unset)')}" for k in differ)
        raise InputError(
            f"--resume: {path} was trained with {was}, this run asks for {asks}; "
            "resume with the checkpoint's settings or start a new --out"
        )


@dataclass
class Run:
    """What a training run steps and saves: the LLaVA, the patch heads, their optimizer and the
    state written with every checkpoint (step counts, time, losses, the config)."""

    cfg: TargetTrainConfig
    model: torch.nn.Module
    heads: PatchHeads
    trained: torch.nn.ModuleDict  # model and heads: what the optimizer steps and saves
    opt: torch.optim.Optimizer
    ckpt_path: Path
    state: dict = field(default_factory=dict)

    def save(self) -> None:
        save_checkpoint(self.ckpt_path, self.trained, self.opt, self.state)


def start_run(
    cfg: TargetTrainConfig, tokenizer, out: Path, resume: bool, init: str | Path | None
) -> Run:
    """A fresh model (or `init`'s weights), or the checkpoint's model, optimizer and state."""
    model = build_model(cfg, tokenizer)
    if init is not None and not resume:
        init_weights(model, tokenizer, Path(init))
    model.set_attn_implementation("eager")  # for training; saved with the default (sdpa)
    heads = PatchHeads(cfg.vision_hidden)
    trained = torch.nn.ModuleDict({"model": model, "heads": heads})
    run = Run(cfg, model, heads, trained, make_optimizer(cfg, trained), out / "checkpoint.pt")
    run.state = {
        "step": 0,
        "vision_step": 0,
        "elapsed": 0.0,
        "tokens": 0,
        "config": asdict(cfg),
        "losses": [],
        "pointer_losses": [],
        "vision": {},
        "init": None,
    }
    if init is not None:  # a trained vision tower: no vision stage
        run.state["vision_step"], run.state["init"] = cfg.vision_pretrain_steps, str(init)
    if resume:
        _load_checkpoint(run)
    return run


def _load_checkpoint(run: Run) -> None:
    ckpt = torch.load(run.ckpt_path, weights_only=False)
    check_resume_config(ckpt["config"], run.cfg, run.ckpt_path)
    try:
        run.trained.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise InputError(
            f"--resume: {run.ckpt_path} was written by an older version of this recipe (its "
            f"weights do not fit this model: {str(e).splitlines()[0]}); start a new --out"
        ) from e
    run.opt.load_state_dict(ckpt["optimizer"])
    run.state = {k: ckpt.get(k, v) for k, v in run.state.items()}
