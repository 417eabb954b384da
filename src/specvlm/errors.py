"""Errors a user can cause. Each message says what was wrong and what is accepted.

The CLI turns any `InputError` into a one-line message and exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a path, a file, an argument or a combination of them."""


class ModelFolderError(InputError):
    """A model folder is missing, unreadable or incomplete."""


class UnsupportedModelError(InputError):
    """A checkpoint whose architecture SpecVLM has no target adapter for."""


class ImageError(InputError):
    """An image that cannot be read, or images that do not fit the prompt."""


class VideoError(ImageError):
    """A video that cannot be read (a file, a folder of frames, a list of frames)."""


class PromptError(InputError):
    """A prompt that cannot be run: too long for the context, or placeholders that do not match."""


class GenerationArgumentError(InputError):
    """A generation argument out of range (max_new_tokens, temperature, top_p, top_k, ...)."""


class DraftMismatchError(InputError):
    """A draft head trained for a different target than the one it is paired with."""


class DataError(InputError):
    """Bad training or benchmark data: a malformed row, a missing file, an unknown format."""


class EngineBusyError(RuntimeError):
    """An `Engine` is already decoding a request (it owns one KV cache: one request at a time).

    Not an input error: the same call succeeds once the running request has finished. Servers
    queue requests in front of an engine instead of calling it concurrently.
    """
