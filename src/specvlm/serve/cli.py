"""`specvlm serve`: the flags, and a run that loads the engine and starts uvicorn.

Wired into `specvlm.cli` with `add_parser(subparsers)`; also runs alone:
`python -m specvlm.serve --port 8000`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import warnings
from pathlib import Path

from specvlm.errors import InputError
from specvlm.serve.config import MiB, ServeConfig

API_KEY_ENV = "SPECVLM_API_KEY"
DEFAULTS = ServeConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server and a web page",
        description="Serve a target + draft over an OpenAI-compatible API "
        "(POST /v1/chat/completions, GET /v1/models, /health, /metrics) and a web page at /.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="target model folder (Hugging Face format); default: embedded")
    p.add_argument("--draft", help="draft head folder; default: the embedded target's draft")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--model-name",
        help="the model id clients send (default: the target's "
        f"folder name, or {DEFAULTS.model_id} for the embedded pair)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--allow-dir",
        type=Path,
        help="image and video paths (file:// or plain; a video may be a folder of frames) "
        "are read from inside this folder only; default: none, media come as base64 data URLs",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULTS.max_queue,
        help="requests waiting behind the running one; more get 503",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULTS.request_timeout_s,
        help="seconds per request, queue wait included",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULTS.max_tokens_default,
        help="max_tokens of a request that names none",
    )
    p.add_argument("--max-images", type=int, default=DEFAULTS.max_images)
    p.add_argument("--max-image-mb", type=float, default=DEFAULTS.max_image_bytes / MiB)
    p.add_argument("--max-image-pixels", type=int, default=DEFAULTS.max_image_pixels)
    p.add_argument("--max-video-mb", type=float, default=DEFAULTS.max_video_bytes / MiB)
    p.add_argument("--max-body-mb", type=float, default=DEFAULTS.max_body_bytes / MiB)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    for name in ("max_queue", "max_tokens", "max_images", "max_image_pixels"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive")
    sizes = (args.request_timeout, args.max_image_mb, args.max_video_mb, args.max_body_mb)
    if min(sizes) <= 0:
        raise InputError(
            "--request-timeout, --max-image-mb, --max-video-mb and --max-body-mb must be positive"
        )
    if args.allow_dir is not None and not args.allow_dir.is_dir():
        raise InputError(f"--allow-dir {args.allow_dir} is not a folder")
    if not 0 <= args.port < 65536:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    name = args.model_name or (Path(args.target).name if args.target else DEFAULTS.model_id)
    return ServeConfig(
        model_id=name,
        api_key=args.api_key or None,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_images=args.max_images,
        max_image_bytes=int(args.max_image_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_video_bytes=int(args.max_video_mb * MiB),
        max_tokens_default=args.max_tokens,
        allow_dir=args.allow_dir.resolve() if args.allow_dir else None,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        import uvicorn

        from specvlm.serve.app import create_app
    except ImportError as e:
        raise InputError(
            f"`specvlm serve` needs the server packages ({e.name} is missing): "
            "pip install 'specvlm[serve]'"
        ) from None
    from specvlm.api import load

    if not _loopback(args.host) and config.api_key is None:
        print(
            f"warning: serving on {args.host} with no API key: anyone who can reach this "
            f"port can use it (set --api-key or ${API_KEY_ENV})",
            file=sys.stderr,
        )
    print("loading the model ...", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = load(target=args.target, draft=args.draft, device=args.device, dtype=args.dtype)
    app = create_app(engine, config)
    print(
        f"serving {config.model_id!r} on http://{args.host}:{args.port} "
        f"(web page at /, API at /v1)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specvlm.serve", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InputError as e:
        print(f"specvlm serve: error: {e}", file=sys.stderr)
        return 2
