"""The FastAPI app: OpenAI-compatible chat completions, models, health, metrics and a web page.

Thin over `specvlm.api`: requests become `engine.stream(...)` calls on the worker thread
(`worker.py`); the only text work done here is cutting at `stop` strings (`stops.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from specvlm.serve import protocol
from specvlm.serve.config import ServeConfig
from specvlm.serve.errors import ApiError
from specvlm.serve.metrics import Metrics
from specvlm.serve.worker import EngineWorker, Failed, Round, Ticket, timeout_error

log = logging.getLogger("specvlm.serve")
POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


def create_app(engine: Any, config: ServeConfig | None = None) -> FastAPI:
    """An app serving `engine` (a `specvlm.api.Engine`, or anything with its `stream`)."""
    config = config or ServeConfig()
    metrics = Metrics()
    worker = EngineWorker(engine, config, metrics)
    target = getattr(engine, "target", None)
    image_token = getattr(getattr(target, "processor", None), "image_token", None) or "<image>"
    video = None
    if "video" in getattr(target, "modalities", ()):  # a Video-LLaVA target
        video = protocol.VideoInput(target.processing.video_token, target.num_frames)
    context = getattr(getattr(target, "info", None), "max_context", None)
    max_tokens_limit = min(config.max_tokens_limit, context or config.max_tokens_limit)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(
        title="SpecVLM", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.worker = worker
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        err = ApiError(e.status_code, str(e.detail), type=kind, code=None)
        return JSONResponse(err.body(), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        err = ApiError(500, "internal error", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), config.api_key.encode()
        ):
            raise ApiError(
                401,
                "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def model_card() -> dict[str, Any]:
        return {"id": config.model_id, "object": "model", "created": started, "owned_by": "specvlm"}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != config.model_id:
            raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")
        return model_card()

    @v1.post("/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await _read_body(request, config.max_body_bytes)
            job = await run_in_threadpool(
                protocol.parse_chat, body, config, image_token, max_tokens_limit, video
            )  # images and videos are decoded off the event loop
        except ApiError:
            metrics.requests.labels("bad_request").inc()
            raise
        ticket = worker.submit(job)
        first = await _next_event(ticket, config, request)
        if isinstance(first, Failed):
            raise first.error
        if job.stream:
            return StreamingResponse(
                _sse(ticket, first, config),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, event = "", first
        while isinstance(event, Round):
            text += event.text
            event = await _next_event(ticket, config, request)
        if isinstance(event, Failed):
            raise event.error
        use = protocol.usage(event.stats, event.completion_tokens, job.options["speculative"])
        return JSONResponse(
            protocol.completion(job, config.model_id, text, event.finish_reason, use)
        )

    app.include_router(v1)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        if not worker.alive:
            raise ApiError(503, "the engine thread has stopped", type="server_error")
        return {
            "status": "ok",
            "model": config.model_id,
            "running": worker.running,
            "queue_depth": worker.depth,
            "max_queue": config.max_queue,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("specvlm.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    examples: list[tuple[Path, str]] = []

    @app.get("/examples")
    async def example_list() -> list[dict[str, Any]]:
        if not examples:
            examples.extend(await run_in_threadpool(_world_examples))
        return [{"image": f"/examples/{i}.png", "prompt": p} for i, (_, p) in enumerate(examples)]

    @app.get("/examples/{index}.png")
    async def example_image(index: int) -> FileResponse:
        if not 0 <= index < len(examples):
            raise ApiError(404, "no such example", type="not_found_error")
        return FileResponse(examples[index][0], media_type="image/png")

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    too_large = ApiError(
        413, f"the request body is larger than {limit} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _next_event(ticket: Ticket, config: ServeConfig, request: Request | None = None):
    """The worker's next event; gives the job up when the client leaves or time runs out."""
    while True:
        if ticket.events.empty() and time.monotonic() > ticket.deadline + 1.0:
            ticket.gone.set()  # the worker checks the deadline between rounds; this is a backstop
            raise timeout_error(config)
        if request is not None and time.monotonic() - ticket.checked > POLL_S:
            ticket.checked = time.monotonic()
            if await request.is_disconnected():
                ticket.gone.set()
                raise ApiError(499, "client closed the request", code="client_closed")
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(ticket.events.get(), timeout=POLL_S)


async def _sse(ticket: Ticket, first: Round, config: ServeConfig) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, one chunk per verification round.

    A client that disconnects cancels this generator (Starlette), and `finally` tells the
    worker to stop decoding at its next round."""
    job, model = ticket.job, config.model_id
    try:
        yield protocol.chunk(job, model, {"role": "assistant", "content": ""})
        event = first
        while isinstance(event, Round):
            yield protocol.chunk(
                job, model, {"content": event.text}, round_tokens=len(event.token_ids)
            )
            event = await _next_event(ticket, config)
        if isinstance(event, Failed):
            yield protocol.error_event(event.error)
        else:
            yield protocol.chunk(job, model, finish=event.finish_reason)
            if job.include_usage:
                speculative = job.options["speculative"]
                use = protocol.usage(event.stats, event.completion_tokens, speculative)
                yield protocol.chunk(job, model, use=use)
    except ApiError as e:
        yield protocol.error_event(e)
    finally:
        ticket.gone.set()
    yield protocol.DONE


def _world_examples() -> list[tuple[Path, str]]:
    """A few world test scenes and questions for the page's "pick an example" list."""
    try:
        from specvlm.bench.suites import load_suite

        # six different scenes: three to describe, three with a short question
        items = load_suite("world-detailed", n=3) + load_suite("world-conversation", n=6)[3:]
    except Exception:  # the page works without examples (upload an image instead)
        log.warning("no example images", exc_info=True)
        return []
    out = []
    for it in items:
        prompt = it.messages[-1]["content"].replace("<image>", "").strip()
        out.append((Path(it.images[0]), prompt))
    return out
