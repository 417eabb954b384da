"""What the operator sets when starting a server: limits, the allowed media folder, the API key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    model_id: str = "specvlm-world"  # the one `model` the server answers to
    api_key: str | None = None  # None: no authentication (the default bind is 127.0.0.1)
    max_queue: int = 8  # requests waiting behind the one decoding; more get 503 at once
    request_timeout_s: float = 120.0  # queue wait + generation, per request
    max_body_bytes: int = 24 * MiB
    max_images: int = 4  # per request
    max_image_bytes: int = 8 * MiB  # per image, encoded
    max_image_pixels: int = 4096 * 4096  # per image (and per video frame), width x height
    max_video_bytes: int = 24 * MiB  # per video file, encoded (a data URL is also in the body)
    max_tokens_default: int = 256  # when a request names none
    max_tokens_limit: int = 4096  # above this, 400 (the context bounds it further, per request)
    allow_dir: Path | None = None  # file:// and plain-path media only from inside this folder
    retry_after_s: int = 1  # the Retry-After header of a 503
