"""Images from OpenAI `image_url` parts: base64 data URLs, or files inside one allowed folder.

Nothing else is read: remote URLs are refused (the server fetches nothing), and a path is
accepted only when, with `..` and every symlink resolved, it lies inside `--allow-dir`
(`allowed_path`; `serve.videos` reads `video_url` parts through the same checks).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from specvlm.serve.config import ServeConfig
from specvlm.serve.errors import ApiError, bad_request

FORMATS = ("PNG", "JPEG", "WEBP")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_DATA = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.S)


def read_image_url(url: str, config: ServeConfig) -> Image.Image:
    """An `image_url.url` -> an RGB PIL image, within the configured byte and pixel limits."""
    if url.startswith("data:"):
        return decode_image(_data_url_bytes(url, config), config)
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request("file:// URLs must name a local file", param="image_url")
        return decode_image(_read_allowed(unquote(parsed.path), config), config)
    if _SCHEME.match(url) and not re.match(r"^[a-zA-Z]:[\\/]", url):
        raise bad_request(
            "only data: URLs (base64 PNG, JPEG or WebP) and, when the server allows a folder, "
            "file paths are accepted; the server fetches no remote URLs",
            param="image_url",
            code="unsupported_image_url",
        )
    return decode_image(_read_allowed(url, config), config)


def _data_url_bytes(url: str, config: ServeConfig) -> bytes:
    limit = config.max_image_bytes
    return data_url_bytes(url, "image/png", "image_url", limit, lambda n: _too_large(n, config))


def data_url_bytes(url: str, mime: str, param: str, limit: int, too_large) -> bytes:
    """The bytes of a base64 data URL; `too_large(size, ...)` makes the error past `limit`."""
    m = _DATA.match(url)
    if m is None or ";base64" not in m["params"]:
        raise bad_request(f"a data URL must look like data:{mime};base64,<data>", param=param)
    data = m["data"].strip()
    if len(data) * 3 // 4 > limit + 3:
        raise too_large(len(data) * 3 // 4)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"the data URL is not valid base64 ({e})", param=param) from e


def allowed_path(path: str, config: ServeConfig, what: str = "image") -> Path:
    """`path` resolved (`..` and symlinks), if it lies inside `config.allow_dir`; else 403."""
    param = f"{what}_url"
    if config.allow_dir is None:
        raise ApiError(
            403,
            f"this server reads no {what} files; send the {what} as a base64 data URL "
            "(or start the server with --allow-dir FOLDER)",
            type="permission_error",
            code="path_not_allowed",
            param=param,
        )
    base = Path(config.allow_dir).resolve()
    real = (base / path).resolve()  # an absolute candidate replaces base; symlinks resolved
    if not real.is_relative_to(base):
        raise ApiError(
            403,
            f"{what} path {path!r} is outside the folder this server may read",
            type="permission_error",
            code="path_not_allowed",
            param=param,
        )
    return real


def _read_allowed(path: str, config: ServeConfig) -> bytes:
    """The bytes of a regular file inside `config.allow_dir`; 403 for any path outside it."""
    real = allowed_path(path, config)
    # O_NOFOLLOW: a last component swapped for a symlink after resolve() is refused, not
    # followed; O_NONBLOCK: opening a FIFO does not wait for a writer (the S_ISREG check below
    # then refuses it; regular files ignore the flag)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise bad_request(
            f"cannot open image file {path!r}: {e.strerror}", param="image_url"
        ) from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise bad_request(f"image path {path!r} is not a regular file", param="image_url")
        if info.st_size > config.max_image_bytes:
            raise _too_large(info.st_size, config)
        return f.read(config.max_image_bytes + 1)


def decode_image(raw: bytes, config: ServeConfig) -> Image.Image:
    if len(raw) > config.max_image_bytes:
        raise _too_large(len(raw), config)
    try:
        img = Image.open(io.BytesIO(raw), formats=FORMATS)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise bad_request(
            "the image is not a PNG, JPEG or WebP file", param="image_url", code="invalid_image"
        ) from e
    width, height = img.size
    if width * height > config.max_image_pixels:  # checked before decoding the pixels
        raise bad_request(
            f"the image is {width}x{height} = {width * height} pixels; this server accepts at "
            f"most {config.max_image_pixels}",
            param="image_url",
            code="image_too_large",
        )
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise bad_request(
            f"the image cannot be decoded ({e})", param="image_url", code="invalid_image"
        ) from e


def _too_large(size: int, config: ServeConfig) -> ApiError:
    return bad_request(
        f"the image is {size} bytes; this server accepts at most {config.max_image_bytes}",
        param="image_url",
        code="image_too_large",
    )
