"""One engine, one decoding thread, a bounded queue in front of it.

An `Engine` decodes one request at a time, so every request goes through this worker: the
event loop admits a request (or answers 503 at once when `max_queue` are already waiting), the
thread runs `engine.stream(...)` and sends each verification round back to the request's
asyncio queue. Between rounds it checks whether the client has gone or the deadline has passed,
and if so closes the stream, which frees the engine for the next request at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from specvlm.decoding.stats import SpecStats
from specvlm.errors import EngineBusyError, InputError
from specvlm.serve.config import ServeConfig
from specvlm.serve.errors import ApiError, from_input_error
from specvlm.serve.metrics import Metrics
from specvlm.serve.protocol import ChatJob
from specvlm.serve.stops import StopMatcher

log = logging.getLogger("specvlm.serve")


@dataclass
class Round:
    text: str  # releasable text (stop strings cut, their possible beginnings held back)
    token_ids: list[int]  # the tokens this target forward committed


@dataclass
class Done:
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens or context)
    stats: SpecStats
    completion_tokens: int


@dataclass
class Failed:
    error: ApiError


Event = Round | Done | Failed


@dataclass(eq=False)  # compared and hashed by identity: tickets live in a set
class Ticket:
    """A job admitted to the queue, with its way back to the event loop."""

    job: ChatJob
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()
    arrived: float = field(default_factory=time.monotonic)
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    gone: threading.Event = field(default_factory=threading.Event)  # client left or timed out
    checked: float = field(default_factory=time.monotonic)  # last look for a disconnect

    def send(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutting down)
            self.gone.set()


def timeout_error(config: ServeConfig) -> ApiError:
    return ApiError(
        504,
        f"the request did not finish within {config.request_timeout_s:g} s",
        type="timeout_error",
        code="timeout",
    )


class EngineWorker:
    def __init__(self, engine: Any, config: ServeConfig, metrics: Metrics):
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self._queue: queue.Queue[Ticket | None] = queue.Queue()  # admission bounds it
        # the tickets waiting for the engine; one whose client left or timed out stops counting
        # at once (it stays in the queue until the worker skips it, but holds no place)
        self._waiting: set[Ticket] = set()
        self._lock = threading.Lock()
        self._current: Ticket | None = None
        self._thread = threading.Thread(target=self._loop, name="specvlm-engine", daemon=True)
        self.running = 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        with self._lock:
            return self._live_waiting()

    def _live_waiting(self) -> int:
        """Waiting tickets whose clients are still there (call with the lock held)."""
        self._waiting = {t for t in self._waiting if not t.gone.is_set()}
        return len(self._waiting)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:  # drop what waits, and end the running request at its next round
            for ticket in [*self._waiting, self._current]:
                if ticket is not None:
                    ticket.gone.set()
            self._waiting.clear()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, job: ChatJob) -> Ticket:
        """Admit a job, or raise a 503 at once when `max_queue` live requests are waiting."""
        ticket = Ticket(
            job, asyncio.get_running_loop(), time.monotonic() + self.config.request_timeout_s
        )
        with self._lock:
            full = self._live_waiting() >= self.config.max_queue
            if not full:
                self._waiting.add(ticket)
                self._queue.put_nowait(ticket)
        if full:
            self.metrics.requests.labels("rejected").inc()
            raise ApiError(
                503,
                f"the server is busy: {self.config.max_queue} requests are waiting; retry later",
                type="server_busy",
                code="queue_full",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        self.metrics.queue_depth.set(self.depth)
        return ticket

    def _loop(self) -> None:
        while (ticket := self._queue.get()) is not None:
            with self._lock:
                self._waiting.discard(ticket)
                self._current = ticket
            self.metrics.queue_depth.set(self.depth)
            if ticket.gone.is_set():
                self.metrics.requests.labels("cancelled").inc()
                continue
            if time.monotonic() > ticket.deadline:
                self.metrics.requests.labels("timeout").inc()
                ticket.send(Failed(timeout_error(self.config)))
                continue
            self.running = 1
            self.metrics.running.set(1)
            self.metrics.queue_wait.observe(time.monotonic() - ticket.arrived)
            try:
                outcome = self._run(ticket)
            except Exception:  # never let one request kill the thread
                log.exception("request %s failed", ticket.job.id)
                outcome = "error"
                ticket.send(Failed(ApiError(500, "internal error", type="server_error")))
            finally:
                self.running = 0
                self.metrics.running.set(0)
                with self._lock:
                    self._current = None
            self.metrics.requests.labels(outcome).inc()

    def _run(self, ticket: Ticket) -> str:
        """Decode one job, sending its rounds; returns the outcome label for /metrics."""
        job, stats, matcher = ticket.job, SpecStats(), StopMatcher(ticket.job.stops)
        tokens, finish, pieces = 0, None, None
        try:  # bad input raises at the call, before decoding starts
            pieces = self.engine.stream(job.messages, job.images, stats=stats, **job.options)
            for piece in pieces:
                tokens += len(piece.token_ids)
                ticket.send(Round(matcher.feed(piece.text), list(piece.token_ids)))
                if matcher.stopped:
                    finish = "stop"
                    break
                if ticket.gone.is_set():
                    return "cancelled"
                if time.monotonic() > ticket.deadline:
                    ticket.send(Failed(timeout_error(self.config)))
                    return "timeout"
        except InputError as e:
            ticket.send(Failed(from_input_error(e)))
            return "bad_request"
        except EngineBusyError as e:  # someone else in this process is using the engine
            ticket.send(
                Failed(
                    ApiError(
                        503,
                        str(e),
                        type="server_busy",
                        code="engine_busy",
                        headers={"Retry-After": str(self.config.retry_after_s)},
                    )
                )
            )
            return "rejected"
        finally:
            if pieces is not None:
                pieces.close()  # frees the engine now, even when we stopped early
        if tail := matcher.flush():
            ticket.send(Round(tail, []))
        if finish is None:
            finish = "stop" if stats.stop_reason == "eos" else "length"
        ticket.send(Done(finish, stats, tokens))
        self._observe(ticket, stats, tokens)
        return "ok"

    def _observe(self, ticket: Ticket, stats: SpecStats, tokens: int) -> None:
        m = self.metrics
        m.prompt_tokens.inc(stats.prompt_tokens)
        m.completion_tokens.inc(tokens)
        for n in stats.accept_lengths:
            m.accept_length.observe(n)
        if stats.accept_lengths:
            m.tau.observe(stats.tau)
        m.ttft.observe(stats.ttft_s)
        m.latency.observe(time.monotonic() - ticket.arrived)
