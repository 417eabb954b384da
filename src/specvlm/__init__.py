"""SpecVLM: lossless speculative decoding for vision-language models."""

from specvlm.errors import (
    DataError,
    DraftMismatchError,
    GenerationArgumentError,
    ImageError,
    InputError,
    ModelFolderError,
    PromptError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "DraftMismatchError",
    "GenerationArgumentError",
    "ImageError",
    "InputError",
    "ModelFolderError",
    "PromptError",
    "UnsupportedModelError",
    "__version__",
]
