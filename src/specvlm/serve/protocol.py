"""The OpenAI chat-completions format: request -> (messages, images, options), and responses.

A request's content parts become one LLaVA-style string per message: each `image_url` part is
the target's image placeholder and a newline, each `text` part its text, in order. So
`[{"type": "image_url", ...}, {"type": "text", "text": "What is this?"}]` is the user turn
`"<image>\\nWhat is this?"`, exactly what `specvlm.load().generate([...], images=[...])` takes.
A `video_url` part (vLLM's extension; one per request, for a target that reads video) is the
target's video placeholder and a newline, its frames passed as `generate(..., video=frames)`.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from specvlm.decoding.stats import SpecStats
from specvlm.serve.config import ServeConfig
from specvlm.serve.errors import ApiError, bad_request
from specvlm.serve.images import read_image_url
from specvlm.serve.videos import read_video_url

MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 256


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use (user, ...)


class ImageURL(_Model):
    url: str


class ContentPart(_Model):
    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: ImageURL | str | None = None
    video_url: ImageURL | str | None = None


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatRequest(_Model):
    model: str | None = None
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 0.0  # greedy by default (OpenAI's is 1.0; a VLM demo wants determinism)
    top_p: float = 1.0
    top_k: int = 0  # extension
    repetition_penalty: float = 1.0  # extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    speculative: bool = True  # extension: False decodes plainly (the baseline)


@dataclass(frozen=True)
class VideoInput:
    """How the served target reads video: its placeholder and its frame count."""

    token: str
    num_frames: int


@dataclass
class ChatJob:
    """What the worker needs: the engine's arguments plus the server-side `stop` strings."""

    messages: list[dict[str, str]]
    images: list[Image.Image]
    options: dict[str, Any]
    stops: list[str]
    stream: bool
    include_usage: bool
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


def parse_chat(
    body: bytes,
    config: ServeConfig,
    image_token: str,
    max_tokens_limit: int,
    video: VideoInput | None = None,
) -> ChatJob:
    """Raw request body -> a job, or an `ApiError` (400/403/404) saying what is wrong.
    `video`: how the target reads video (None: it does not; `video_url` parts are refused)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})", code="invalid_json") from e
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise bad_request(f"{where}: {err['msg']}", param=where) from e
    if req.model is not None and req.model != config.model_id:
        raise ApiError(
            404,
            f"the model {req.model!r} does not exist; this server serves {config.model_id!r}",
            code="model_not_found",
            param="model",
        )
    if not req.messages:
        raise bad_request("messages must hold at least one message", param="messages")
    if req.n != 1:
        raise bad_request("only n=1 is supported", param="n")
    requested = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    max_tokens = (
        min(config.max_tokens_default, max_tokens_limit) if requested is None else requested
    )
    if not 1 <= max_tokens <= max_tokens_limit:
        raise bad_request(
            f"max_tokens must be between 1 and {max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
        )
    if not 0.0 <= req.temperature <= 2.0:
        raise bad_request(
            f"temperature must be between 0 and 2, got {req.temperature}", param="temperature"
        )
    if not 0.0 < req.top_p <= 1.0:
        raise bad_request(f"top_p must be in (0, 1], got {req.top_p}", param="top_p")
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise bad_request(f"seed must be in [0, 2**63), got {req.seed}", param="seed")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(
            f"stop takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
            "characters",
            param="stop",
        )
    messages, images, frames = _messages(req.messages, config, image_token, video)
    options: dict[str, Any] = dict(
        max_new_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        speculative=req.speculative,
    )
    if frames is not None:
        options["video"] = frames
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return ChatJob(messages, images, options, stops, req.stream, include_usage)


def _messages(
    messages: list[Message], config: ServeConfig, image_token: str, video: VideoInput | None
) -> tuple[list[dict[str, str]], list[Image.Image], list[Image.Image] | None]:
    urls: list[str] = []
    video_urls: list[str] = []
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if m.content is None or isinstance(m.content, str):
            out.append({"role": role, "content": m.content or ""})
            continue
        text = ""
        for part in m.content:
            if part.type == "text":
                text += part.text or ""
                continue
            what = "images" if part.type == "image_url" else "videos"
            if role != "user":
                raise bad_request(
                    f"messages.{i}: {what} are accepted in user messages only", param="messages"
                )
            field = part.image_url if part.type == "image_url" else part.video_url
            url = field.url if isinstance(field, ImageURL) else field
            if not url:
                raise bad_request(f"messages.{i}: a {part.type} part needs a url", param="messages")
            if part.type == "image_url":
                urls.append(url)
                text += image_token + "\n"
                continue
            if video is None:
                raise bad_request(
                    f"messages.{i}: this model reads no video; it accepts text and image_url parts",
                    param="messages",
                    code="unsupported_content",
                )
            video_urls.append(url)
            text += video.token + "\n"
        out.append({"role": role, "content": text})
    if len(urls) > config.max_images:
        raise bad_request(
            f"{len(urls)} images in one request; this server accepts at most {config.max_images}",
            param="messages",
            code="too_many_images",
        )
    if len(video_urls) > 1:
        raise bad_request(
            f"{len(video_urls)} videos in one request; this model reads one",
            param="messages",
            code="too_many_videos",
        )
    frames = None
    if video_urls:
        assert video is not None
        frames = read_video_url(video_urls[0], config, video.num_frames)
    return out, [read_image_url(u, config) for u in urls], frames


def usage(stats: SpecStats, completion_tokens: int, speculative: bool) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": stats.prompt_tokens + completion_tokens,
        "speculative": {
            "enabled": speculative,
            "tau": round(stats.tau, 4),
            "target_forwards": stats.target_forwards,
            "accept_histogram": {str(k): v for k, v in stats.accept_histogram.items()},
            "ttft_s": round(stats.ttft_s, 6),
            "decode_s": round(stats.decode_s, 6),
            "tokens_per_s": round(stats.tokens_per_s, 3),
        },
    }


def completion(job: ChatJob, model: str, text: str, finish: str, use: dict) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": use,
    }


def chunk(
    job: ChatJob,
    model: str,
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    round_tokens: int | None = None,
    use: dict | None = None,
) -> str:
    """One server-sent event. `round_tokens`: the tokens one target forward committed (an
    extension, under "specvlm"); a usage-only chunk has no choices (OpenAI's include_usage)."""
    body: dict[str, Any] = {
        "id": job.id,
        "object": "chat.completion.chunk",
        "created": job.created,
        "model": model,
        "choices": []
        if use is not None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}],
    }
    if round_tokens is not None:
        body["specvlm"] = {"round_tokens": round_tokens}
    if use is not None:
        body["usage"] = use
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def error_event(err: ApiError) -> str:
    return f"data: {json.dumps(err.body())}\n\n"


DONE = "data: [DONE]\n\n"
