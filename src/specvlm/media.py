"""Reading user-supplied images and videos, with errors that say what went wrong.

Accepted: a PIL image, a path (str or Path) to an image file, the bytes of an image file, or a
binary file object open on one. Images read from a file or bytes are turned upright by their EXIF
orientation (as a camera meant them, and as `transformers`' own `load_image` does); a PIL image
is taken as given, as `transformers`' processors take it. All are converted to RGB. URLs are never
fetched. An image larger than MAX_PIXELS is refused before it is decoded.

A video (`load_video`) is a folder of frame images, a list of frames, a (frames, height, width, 3)
uint8 array, or a video file decoded by PyAV (`pip install 'specvlm[video]'`), sampled to at most
`num_frames` frames uniformly (`sample_frame_indices`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from specvlm.errors import ImageError, VideoError

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


# ---- video ------------------------------------------------------------------------------------
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
VIDEO_ACCEPTED = (
    "a folder of frame images (PNG, JPEG, BMP, GIF or WebP, in name order), a list of frames "
    "(PIL images, paths, bytes or (height, width, 3) uint8 arrays), a (frames, height, width, 3) "
    "uint8 array, or the path of a "
    "video file (MP4, WebM, MKV, AVI, MOV, ...: decoded by PyAV, pip install 'specvlm[video]')"
)


def sample_frame_indices(total: int, num_frames: int) -> list[int]:
    """Which of `total` frames to keep: `num_frames` spread uniformly, frame i * total //
    num_frames for i < num_frames (`transformers`' `default_sample_indices_fn`; Video-LLaVA's
    model card takes np.arange(0, total, total / 8), the same frames); all of them when there
    are no more than `num_frames`."""
    if total <= num_frames:
        return list(range(total))
    return [i * total // num_frames for i in range(num_frames)]


def load_video(video: Any, num_frames: int) -> list[Image.Image]:
    """The frames of a video, RGB, at most `num_frames` sampled uniformly (see VIDEO_ACCEPTED).

    Only the sampled frames are read (a folder's or a list's other files are never opened; a
    file is decoded up to its last sampled frame)."""
    if num_frames < 1:
        raise VideoError(f"num_frames must be at least 1, got {num_frames}")
    if isinstance(video, str) and video.lower().startswith(_URL_SCHEMES):
        raise VideoError(
            f"{video[:80]!r} is a URL; SpecVLM never fetches URLs: download the video and pass "
            f"its path (accepted: {VIDEO_ACCEPTED})"
        )
    if isinstance(video, str | Path):
        path = Path(video)
        if path.is_dir():
            return _frames_folder(path, num_frames)
        if path.is_file():
            return _decode_video_file(path, num_frames)
        raise VideoError(f"video not found: {path} (expected {VIDEO_ACCEPTED})")
    if isinstance(video, Image.Image | bytes | bytearray | dict) or not hasattr(video, "__len__"):
        one_image = isinstance(video, Image.Image | bytes | bytearray)
        hint = " (one image is not a video: pass it in images=)" if one_image else ""
        raise VideoError(
            f"cannot use an object of type {type(video).__name__} as a video{hint}; "
            f"expected {VIDEO_ACCEPTED}"
        )
    if hasattr(video, "shape") and len(video.shape) != 4:  # an array: of frames only
        raise VideoError(
            f"a video array must be (frames, height, width, 3) uint8, got shape "
            f"{tuple(video.shape)}; expected {VIDEO_ACCEPTED}"
        )
    frames = list(video)  # an array: its frames, (height, width, 3) each
    if not frames:
        raise VideoError(f"the video has no frames; expected {VIDEO_ACCEPTED}")
    out = []
    for i in sample_frame_indices(len(frames), num_frames):
        try:
            out.append(_frame(frames[i]))
        except ImageError as e:
            raise VideoError(f"frame {i} of the video: {e}") from e
    return out


def _frame(item: Any) -> Image.Image:
    """One frame: anything `load_image` reads, or a (height, width, 3) uint8 array."""
    if not hasattr(item, "shape"):
        return load_image(item)
    import numpy as np

    array = np.asarray(item)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ImageError(
            f"a frame array must be (height, width, 3) uint8, got {array.shape} {array.dtype}"
        )
    _check_size((array.shape[1], array.shape[0]), "the frame")
    return Image.fromarray(array)


def _natural_key(path: Path) -> list:
    """frame_2.png before frame_10.png: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _frames_folder(folder: Path, num_frames: int) -> list[Image.Image]:
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")
        ),
        key=_natural_key,
    )
    if not files:
        raise VideoError(
            f"the video folder {folder} has no frame images ({', '.join(FRAME_SUFFIXES)} files, "
            "one per frame, in name order)"
        )
    try:
        return [load_image(files[i]) for i in sample_frame_indices(len(files), num_frames)]
    except ImageError as e:
        raise VideoError(f"a frame of the video folder {folder}: {e}") from e


def _decode_video_file(path: Path, num_frames: int) -> list[Image.Image]:
    """The sampled frames of a video file's first video stream, decoded by PyAV."""
    try:
        import av
    except ImportError as e:
        raise VideoError(
            f"reading the video file {path} needs PyAV: pip install 'specvlm[video]' (or pass "
            "a folder of frames or a list of images)"
        ) from e
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream; expected {VIDEO_ACCEPTED}")
            stream = container.streams.video[0]
            _check_size((stream.width, stream.height), f"the frames of {path}")
            # the header's frame count, else one pass over the packets (no decoding)
            total = stream.frames
            if total <= 0:
                total = sum(1 for p in container.demux(video=0) if p.size)
        indices = sample_frame_indices(total, num_frames)
        frames, ended = _decode_frames(path, indices)
        if ended is not None and len(frames) < len(indices):  # the header over-counted
            frames, _ = _decode_frames(path, sample_frame_indices(ended, num_frames))
    except ImageError:  # ours, VideoError included
        raise
    except (av.FFmpegError, OSError, ValueError) as e:  # InvalidDataError is all three
        raise VideoError(f"cannot read {path} as a video ({e}); expected {VIDEO_ACCEPTED}") from e
    if not frames:
        raise VideoError(f"{path} has no decodable video frames; expected {VIDEO_ACCEPTED}")
    return frames


def _decode_frames(path: Path, indices: list[int]) -> tuple[list[Image.Image], int | None]:
    """The frames at `indices` (ascending) of the first video stream, and None, or when the
    stream ended before its last index (or `indices` is empty), the frames it had."""
    import av

    wanted, frames = set(indices), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        for count, frame in enumerate(container.decode(stream), start=1):
            if count - 1 in wanted:
                frames.append(frame.to_image().convert("RGB"))
                if len(frames) == len(indices):
                    return frames, None
    return frames, count
