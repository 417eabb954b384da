"""Reading user-supplied images, with errors that say what went wrong.

Accepted: a PIL image, a path (str or Path) to an image file, the bytes of an image file, or a
binary file object open on one. Images read from a file or bytes are turned upright by their EXIF
orientation (as a camera meant them, and as `transformers`' own `load_image` does); a PIL image
is taken as given, as `transformers`' processors take it. All are converted to RGB. URLs are never
fetched. An image larger than MAX_PIXELS is refused before it is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from specvlm.errors import ImageError

MAX_PIXELS = 8192 * 8192  # width x height; larger images are refused (decompression bombs)
ACCEPTED = (
    "a PIL.Image, a path to a PNG, JPEG, BMP, GIF or WebP file, the bytes of such a file, "
    "or a binary file object"
)
_URL_SCHEMES = ("http://", "https://", "ftp://", "data:")


def load_image(item: Any) -> Image.Image:
    """A PIL image in RGB, upright, from any of the ACCEPTED kinds."""
    if isinstance(item, Image.Image):  # taken as given, like transformers' processors do
        _check_size(item.size, "the image")
        return item.convert("RGB")
    if isinstance(item, str) and item.lower().startswith(_URL_SCHEMES):
        raise ImageError(
            f"{item[:80]!r} is a URL; SpecVLM never fetches URLs: download the image and pass "
            f"its path (accepted: {ACCEPTED})"
        )
    if isinstance(item, str | Path):
        path = Path(item)
        if not path.is_file():
            raise ImageError(f"image file not found: {path} (expected {ACCEPTED})")
        return _decode(path, str(path))
    if isinstance(item, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(bytes(item)), f"the {len(item)} bytes given")
    if hasattr(item, "read"):
        return _decode(item, f"file object {getattr(item, 'name', type(item).__name__)!r}")
    raise ImageError(
        f"cannot use an object of type {type(item).__name__} as an image; expected {ACCEPTED}"
    )


def _decode(source: Any, name: str) -> Image.Image:
    try:
        with Image.open(source) as img:
            _check_size(img.size, name)
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own check, at open, for huge images
        raise ImageError(
            f"{name} is too large to decode safely ({e}); the limit is {MAX_PIXELS:,} pixels "
            "(8192x8192): downscale it first"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read {name} as an image ({e}); expected {ACCEPTED}") from e


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{MAX_PIXELS:,} (8192x8192): downscale it first"
        )


def load_images(items: Any) -> list[Image.Image]:
    if items is None:
        return []
    if isinstance(items, str | Path | Image.Image | bytes | bytearray):
        items = [items]
    if isinstance(items, dict) or not hasattr(items, "__iter__"):
        raise ImageError(
            f"images must be a list of images, got {type(items).__name__}; each one {ACCEPTED}"
        )
    return [load_image(x) for x in items]
