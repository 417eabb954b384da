"""`quiet_transformers()`: load and save `transformers` objects without their chatter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_transformers(log: bool = False) -> Iterator[None]:
    """`transformers`' weight-loading bar off (it would break our own progress bars) and, unless
    `log`, its log below error level (e.g. the notice that the image processor falls back to PIL
    without torchvision; but also a checkpoint's load report of missing or unexpected keys); both
    restored as they were on exit, so nested uses are safe."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    if not log:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
