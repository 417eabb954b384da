"""Reading user-supplied images, with errors that say what went wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from specvlm.errors import ImageError

ACCEPTED = "a PIL.Image or a path to a PNG, JPEG, BMP, GIF or WebP file"


def load_image(item: Any) -> Image.Image:
    """A PIL image in RGB, from a PIL image or a path."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, str | Path):
        path = Path(item)
        if not path.is_file():
            raise ImageError(f"image file not found: {path} (expected {ACCEPTED})")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot read {path} as an image ({e}); expected {ACCEPTED}") from e
    raise ImageError(f"unsupported image object of type {type(item).__name__}; expected {ACCEPTED}")


def load_images(items: Any) -> list[Image.Image]:
    if items is None:
        return []
    if isinstance(items, str | Path | Image.Image):
        items = [items]
    return [load_image(x) for x in items]
