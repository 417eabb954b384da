"""Videos from `video_url` content parts (vLLM's extension of the OpenAI format), for a target
that reads video: a base64 data URL of a video file, or, inside `--allow-dir`, a video file or
a folder of frame images. Decoded (PyAV) and sampled to the target's frame count here, off the
event loop; the engine receives the frames. Nothing remote is fetched.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from specvlm.errors import ImageError
from specvlm.media import load_video
from specvlm.serve.config import ServeConfig
from specvlm.serve.errors import ApiError, bad_request
from specvlm.serve.images import allowed_path, data_url_bytes

PARAM = "video_url"
ACCEPTED = (
    "a video_url is a base64 data URL of a video file (MP4, WebM, MKV, AVI, MOV, ...) or, when "
    "the server allows a folder, the path of a video file or of a folder of frame images in it"
)


def read_video_url(url: str, config: ServeConfig, num_frames: int) -> list[Image.Image]:
    """A `video_url.url` -> its frames (RGB, at most `num_frames`, sampled uniformly)."""
    if url.startswith("data:"):
        raw = data_url_bytes(
            url, "video/mp4", PARAM, config.max_video_bytes, lambda n: _too_large(n, config)
        )
        fd, name = tempfile.mkstemp(prefix="specvlm-video-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            return _frames(Path(name), num_frames, config, "the data URL's video")
        finally:
            os.unlink(name)
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request("file:// URLs must name a local file", param=PARAM)
        url = unquote(parsed.path)
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) and not re.match(r"^[a-zA-Z]:[\\/]", url):
        raise bad_request(
            "only data: URLs (a base64 video file) and, when the server allows a folder, paths "
            "of video files or frame folders are accepted; the server fetches no remote URLs",
            param=PARAM,
            code="unsupported_video_url",
        )
    real = allowed_path(url, config, what="video")
    if real.is_file() and real.stat().st_size > config.max_video_bytes:
        raise _too_large(real.stat().st_size, config)
    return _frames(real, num_frames, config, repr(url))


def _frames(path: Path, num_frames: int, config: ServeConfig, name: str) -> list[Image.Image]:
    try:
        frames = load_video(path, num_frames)
    except ImageError as e:  # VideoError, or a frame of a folder that is not an image
        text = str(e).replace(str(path), name)  # never show the server's own paths
        text = text.split("; expected")[0].split(" (expected")[0]  # the library's Python types
        raise bad_request(f"{text}; {ACCEPTED}", param=PARAM, code="invalid_video") from e
    for frame in frames:
        if frame.width * frame.height > config.max_image_pixels:
            raise bad_request(
                f"the video's frames are {frame.width}x{frame.height} pixels; this server "
                f"accepts at most {config.max_image_pixels} per frame",
                param=PARAM,
                code="video_too_large",
            )
    return frames


def _too_large(size: int, config: ServeConfig) -> ApiError:
    return bad_request(
        f"the video is {size} bytes; this server accepts at most {config.max_video_bytes}",
        param=PARAM,
        code="video_too_large",
    )
