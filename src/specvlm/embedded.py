"""The embedded default models shipped in the package (trained on the project's world).

`assets/world-target/` is a LLaVA checkpoint trained by `specvlm world train-target`;
`assets/world-draft/` is its EagleVLM draft head trained by `specvlm train-draft`;
`assets/world-baseline/` is a 2-layer LLaVA with the same tokenizer, the classic separate draft
model that `specvlm bench` gives `transformers` assisted generation (hf-assisted).
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


def embedded_baseline() -> Path | None:
    folder = ASSETS / "world-baseline"
    return folder if (folder / "config.json").is_file() else None
