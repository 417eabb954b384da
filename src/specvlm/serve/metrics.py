"""Prometheus metrics, one registry per app (so two servers in one process do not share)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "specvlm_requests",
            "Chat completion requests by outcome: ok, bad_request, rejected (queue full), "
            "cancelled (client gone), timeout, error",
            ["outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "specvlm_queue_depth", "Requests waiting for the engine", registry=r
        )
        self.running = Gauge("specvlm_running", "Requests decoding now (0 or 1)", registry=r)
        self.prompt_tokens = Counter(
            "specvlm_prompt_tokens", "Prompt tokens, images included", registry=r
        )
        self.completion_tokens = Counter(
            "specvlm_completion_tokens", "Generated tokens", registry=r
        )
        self.accept_length = Histogram(
            "specvlm_accept_length",
            "Tokens accepted per target forward (accepted drafts + 1); tau = sum / count",
            buckets=tuple(range(1, 17)),
            registry=r,
        )
        self.tau = Histogram(
            "specvlm_request_tau",
            "Mean accepted length of each request",
            buckets=(1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
            registry=r,
        )
        self.latency = Histogram(
            "specvlm_request_latency_seconds",
            "Request arrival to last token",
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = Histogram(
            "specvlm_queue_wait_seconds",
            "Request arrival to decoding start",
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "specvlm_time_to_first_token_seconds",
            "Decoding start to first token (prefill)",
            buckets=_LATENCY,
            registry=r,
        )
