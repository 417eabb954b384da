"""Bounded load test of `specvlm serve`: N concurrent clients, a fixed number of requests.

Every request must either complete with the same text as a lone warm-up request (temperature 0
is deterministic) or get a 503 from the full queue; the report counts both, and anything else
as failed or wrong, with throughput and latency percentiles. Loopback only.

    python scripts/serve_load.py --clients 8 --requests 64            # starts its own server
    python scripts/serve_load.py --url http://127.0.0.1:8000 --api-key KEY   # a running one
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx


def run_load(
    base_url: str,
    *,
    clients: int,
    requests: int,
    image: Path,
    prompt: str,
    max_tokens: int = 32,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    speculative: bool = True,
) -> dict:
    if urlparse(base_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("serve_load.py only talks to a loopback address")
    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    b64 = base64.b64encode(Path(image).read_bytes()).decode()
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
                    {"type": "text", "text": prompt},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "speculative": speculative,
    }
    with httpx.Client(headers=headers, timeout=timeout_s) as c:
        warm = c.post(url, json=body)
        warm.raise_for_status()
        expected = warm.json()["choices"][0]["message"]["content"]

    lock = threading.Lock()
    outcomes: list[tuple[str, float, int]] = []  # (outcome, seconds, completion tokens)
    todo = iter(range(requests))

    def client() -> None:
        with httpx.Client(headers=headers, timeout=timeout_s) as c:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                start = time.perf_counter()
                try:
                    r = c.post(url, json=body)
                    seconds = time.perf_counter() - start
                    if r.status_code == 200:
                        data = r.json()
                        right = data["choices"][0]["message"]["content"] == expected
                        tokens = data["usage"]["completion_tokens"]
                        outcome = ("ok" if right else "wrong", seconds, tokens)
                    elif r.status_code == 503 and "Retry-After" in r.headers:
                        outcome = ("rejected_503", seconds, 0)
                    else:
                        outcome = ("failed", seconds, 0)
                except httpx.HTTPError:
                    outcome = ("failed", time.perf_counter() - start, 0)
                with lock:
                    outcomes.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.perf_counter() - start
    ok = sorted(s for o, s, _ in outcomes if o == "ok")
    health = httpx.get(base_url.rstrip("/") + "/health", timeout=10)
    count = {
        k: sum(o == k for o, _, _ in outcomes) for k in ("ok", "rejected_503", "failed", "wrong")
    }
    return {
        "clients": clients,
        "requests": requests,
        **count,
        "lost": requests - len(outcomes),
        "max_tokens": max_tokens,
        "wall_s": round(wall, 3),
        "throughput_rps": round(count["ok"] / wall, 3),
        "tokens_per_s": round(sum(t for o, _, t in outcomes if o == "ok") / wall, 1),
        "latency_s": {f"p{q}": round(_percentile(ok, q), 3) for q in (50, 90, 99)}
        | {"max": round(ok[-1], 3) if ok else 0.0},
        "healthy_after": health.status_code == 200 and health.json()["queue_depth"] == 0,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q / 100  # linear interpolation between closest ranks
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@contextlib.contextmanager
def _own_server(max_queue: int):
    """The embedded pair behind `specvlm serve`'s app, on a free loopback port."""
    import uvicorn

    from specvlm.api import load
    from specvlm.serve.app import create_app
    from specvlm.serve.config import ServeConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(load(), ServeConfig(max_queue=max_queue))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (loopback); default: start one in-process")
    p.add_argument("--api-key")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=8, help="of the in-process server")
    p.add_argument("--plain", action="store_true", help="speculative=false")
    p.add_argument("--image", type=Path, help="default: a world test scene")
    p.add_argument("--prompt", default="What do you see in this picture?")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = p.parse_args()
    image = args.image
    if image is None:
        import tempfile

        from specvlm.bench.suites import load_suite

        image = Path(
            load_suite("world-detailed", n=1, cache_dir=Path(tempfile.mkdtemp()))[0].images[0]
        )
    server = contextlib.nullcontext(args.url) if args.url else _own_server(args.max_queue)
    with server as url:
        report = run_load(
            url,
            clients=args.clients,
            requests=args.requests,
            image=image,
            prompt=args.prompt,
            max_tokens=args.max_tokens,
            api_key=args.api_key,
            speculative=not args.plain,
        )
    if args.json:
        print(json.dumps(report))
        return
    lat = report["latency_s"]
    print(
        f"{report['requests']} requests from {report['clients']} clients in {report['wall_s']} s: "
        f"{report['ok']} ok, {report['rejected_503']} 503, {report['failed']} failed, "
        f"{report['wrong']} wrong, {report['lost']} lost\n"
        f"throughput {report['throughput_rps']} req/s, {report['tokens_per_s']} tok/s; "
        f"latency p50 {lat['p50']} s, p90 {lat['p90']} s, p99 {lat['p99']} s, max {lat['max']} s; "
        f"healthy after: {report['healthy_after']}"
    )


if __name__ == "__main__":
    main()
