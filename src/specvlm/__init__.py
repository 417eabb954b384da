"""SpecVLM: lossless speculative decoding for vision-language models.

    import specvlm
    engine = specvlm.load()                      # the embedded world pair
    out = engine.generate("How many shapes are there?", images=["scene.png"])

The engine and its types load lazily (on first use), so `import specvlm` and the command line's
`--help` do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specvlm.errors import (
    DataError,
    DraftMismatchError,
    EngineBusyError,
    GenerationArgumentError,
    ImageError,
    InputError,
    ModelFolderError,
    PromptError,
    UnsupportedModelError,
    VideoError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "load": "specvlm.api",
    "Engine": "specvlm.api",
    "GenerationOutput": "specvlm.api",
    "GenerationRequest": "specvlm.api",
    "StreamPiece": "specvlm.api",
    "TreeConfig": "specvlm.config",
    "SamplingConfig": "specvlm.config",
    "SpecStats": "specvlm.decoding.stats",
}

if TYPE_CHECKING:
    from specvlm.api import Engine, GenerationOutput, GenerationRequest, StreamPiece, load
    from specvlm.config import SamplingConfig, TreeConfig
    from specvlm.decoding.stats import SpecStats


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'specvlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DataError",
    "DraftMismatchError",
    "Engine",
    "EngineBusyError",
    "GenerationArgumentError",
    "GenerationOutput",
    "GenerationRequest",
    "ImageError",
    "InputError",
    "ModelFolderError",
    "PromptError",
    "SamplingConfig",
    "SpecStats",
    "StreamPiece",
    "TreeConfig",
    "UnsupportedModelError",
    "VideoError",
    "__version__",
    "load",
]
