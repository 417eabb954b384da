"""`specvlm serve`: the real uvicorn server on a loopback port, driven by the official `openai`
client and by raw HTTP. The embedded pair checks exactness (output identical to
`Engine.generate`); a slow stub engine checks the queue, disconnects and timeouts exactly."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from specvlm import api  # noqa: E402
from specvlm.api import StreamPiece  # noqa: E402
from specvlm.bench.suites import load_suite  # noqa: E402
from specvlm.errors import EngineBusyError, GenerationArgumentError  # noqa: E402
from specvlm.serve.app import create_app  # noqa: E402
from specvlm.serve.config import MiB, ServeConfig  # noqa: E402
from specvlm.serve.stops import StopMatcher  # noqa: E402

KEY = "sk-test-key"
MODEL = "specvlm-world"
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serving(app):
    """`app` under a real uvicorn server on 127.0.0.1 (a free port); yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def data_url(path_or_bytes, mime: str = "image/png") -> str:
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def user_turn(question: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def video_turn(question: str, *urls: str) -> list[dict]:
    parts = [{"type": "video_url", "video_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def png_bytes(size: tuple[int, int], color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the embedded pair, for real


@pytest.fixture(scope="module")
def engine():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return api.load()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two world test scenes with their questions, the images inside an allowed folder."""
    allowed = tmp_path_factory.mktemp("allowed")
    items = load_suite("world-conversation", n=2, cache_dir=allowed)
    return allowed, [(Path(it.images[0]), it.messages[0]["content"]) for it in items]


@pytest.fixture(scope="module")
def base_url(engine, scenes):
    config = ServeConfig(
        model_id=MODEL,
        api_key=KEY,
        allow_dir=scenes[0],
        max_queue=4,
        max_images=2,
        max_image_bytes=MiB,
        max_image_pixels=300 * 300,
        max_body_bytes=4 * MiB,
    )
    with serving(create_app(engine, config)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def reference(engine, image: Path, question: str, max_new_tokens: int, **options):
    """What the library itself answers: the server's output must equal it."""
    messages = [{"role": "user", "content": question}]  # question: "<image>\n..."
    return engine.generate(messages, images=[image], max_new_tokens=max_new_tokens, **options)


def test_chat_completion_equals_generate(engine, scenes, client):
    _, [(image, question), _] = scenes
    ref = reference(engine, image, question, 24)
    r = client.chat.completions.create(
        model=MODEL,
        messages=user_turn(question.removeprefix("<image>\n"), data_url(image)),
        max_tokens=24,
        temperature=0,
    )
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ("stop" if ref.stop_reason == "eos" else "length")
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.prompt_tokens == ref.stats.prompt_tokens
    spec = r.usage.model_extra["speculative"]
    assert spec["enabled"] is True
    assert spec["tau"] == round(ref.stats.tau, 4)
    assert spec["target_forwards"] == ref.stats.target_forwards
    assert spec["accept_histogram"] == {str(k): v for k, v in ref.stats.accept_histogram.items()}


def test_streaming_equals_generate_one_chunk_per_round(engine, scenes, client):
    _, [_, (image, question)] = scenes
    ref = reference(engine, image, question, 24)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=user_turn(question.removeprefix("<image>\n"), data_url(image)),
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rounds = [
        c.model_extra["specvlm"]["round_tokens"] for c in chunks if "specvlm" in c.model_extra
    ]
    assert text == ref.text
    # the page shades tokens by these rounds: the prefill's token, then one per target forward
    assert rounds[0] == 1 and len(rounds) == 1 + ref.stats.target_forwards
    assert sum(rounds) == len(ref.token_ids)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_plain_decoding_gives_the_same_text(engine, scenes, client):
    _, [(image, question), _] = scenes
    ref = reference(engine, image, question, 16)
    r = client.chat.completions.create(
        model=MODEL,
        messages=user_turn(question.removeprefix("<image>\n"), data_url(image)),
        max_tokens=16,
        extra_body={"speculative": False},
    )
    assert r.choices[0].message.content == ref.text
    spec = r.usage.model_extra["speculative"]
    assert spec["enabled"] is False and spec["tau"] == 1.0


def test_stop_strings_cut_the_text(engine, scenes, client):
    _, [(image, question), _] = scenes
    ref = reference(engine, image, question, 24).text
    stop = ref.split()[1]  # the second word: somewhere in the middle
    want = ref[: ref.index(stop)]
    kwargs = dict(
        model=MODEL,
        max_tokens=24,
        stop=["@@never@@", stop],
        messages=user_turn(question.removeprefix("<image>\n"), data_url(image)),
    )
    r = client.chat.completions.create(**kwargs)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (want, "stop")
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stop_matcher_holds_back_a_possible_stop():
    m = StopMatcher(["END", "xy"])
    assert m.feed("abc E") == "abc "  # "E" may start "END"
    assert m.feed("N") == ""
    assert m.feed("D and more") == ""  # stopped: nothing after the stop string
    assert m.stopped and m.text[: m.sent] == "abc "
    m = StopMatcher(["END"])
    assert m.feed("the E") == "the " and m.feed("nd") == "End" and m.flush() == ""
    m = StopMatcher(["END"])
    assert m.feed("last EN") == "last " and m.flush() == "EN"  # no stop came: release it


def test_image_files_only_from_inside_the_allowed_folder(engine, scenes, client, tmp_path):
    allowed, [(image, question), _] = scenes
    want = reference(engine, image, question, 8).text
    q = question.removeprefix("<image>\n")
    for url in (str(image), f"file://{image}", str(image.relative_to(allowed))):
        r = client.chat.completions.create(model=MODEL, messages=user_turn(q, url), max_tokens=8)
        assert r.choices[0].message.content == want, url
    outside = tmp_path / "secret.png"
    outside.write_bytes(image.read_bytes())
    (allowed / "link.png").symlink_to(outside)
    for url in (
        str(outside),  # absolute, outside
        f"file://{outside}",
        f"../{outside.parent.name}/secret.png",  # relative, climbing out
        str(allowed / ".." / outside.parent.name / "secret.png"),
        "link.png",  # a symlink inside that points outside
        "/etc/passwd",
    ):
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.chat.completions.create(model=MODEL, messages=user_turn(q, url), max_tokens=8)
        assert e.value.status_code == 403, url
    for url in ("http://127.0.0.1:1/x.png", "https://example.com/cat.jpg", "ftp://x/y.png"):
        with pytest.raises(openai.BadRequestError, match="fetches no remote URLs"):
            client.chat.completions.create(model=MODEL, messages=user_turn(q, url), max_tokens=8)


def post(base_url: str, body, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return httpx.post(
            base_url + "/v1/chat/completions", content=raw, headers=headers, timeout=60
        )
    return httpx.post(base_url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_bad_requests_get_openai_errors_and_the_server_lives_on(base_url, scenes):
    _, [(image, question), _] = scenes
    good = user_turn("How many shapes are there?", data_url(image))
    many = user_turn("?", *[data_url(image)] * 3)
    cases = {
        "malformed json": (None, b'{"messages": [', 400),
        "not an object": (None, b"[1, 2]", 400),
        "missing messages": ({"model": MODEL}, None, 400),
        "empty messages": ({"messages": []}, None, 400),
        "unknown model": ({"model": "gpt-9", "messages": good}, None, 404),
        "bad role": ({"messages": [{"role": "wizard", "content": "hi"}]}, None, 400),
        "not an image": ({"messages": user_turn("?", data_url(b"hello world"))}, None, 400),
        "not base64": ({"messages": user_turn("?", "data:image/png;base64,@@@@")}, None, 400),
        "too many pixels": (
            {"messages": user_turn("?", data_url(png_bytes((400, 400))))},
            None,
            400,
        ),
        "too many bytes": ({"messages": user_turn("?", data_url(os.urandom(MiB + 10)))}, None, 400),
        "too many images": ({"messages": many}, None, 400),
        "prompt too long": ({"messages": [{"role": "user", "content": "red " * 3000}]}, None, 400),
        "negative max_tokens": ({"messages": good, "max_tokens": -5}, None, 400),
        "zero max_completion_tokens": ({"messages": good, "max_completion_tokens": 0}, None, 400),
        "huge max_tokens": ({"messages": good, "max_tokens": 10**9}, None, 400),
        "temperature 3": ({"messages": good, "temperature": 3}, None, 400),
        "temperature -1": ({"messages": good, "temperature": -1}, None, 400),
        "temperature text": ({"messages": good, "temperature": "hot"}, None, 400),
        "top_p 0": ({"messages": good, "top_p": 0}, None, 400),
        "n 2": ({"messages": good, "n": 2}, None, 400),
        "five stops": ({"messages": good, "stop": list("abcde")}, None, 400),
        "negative seed": ({"messages": good, "seed": -1}, None, 400),
        "image in assistant turn": (
            {
                "messages": [
                    {"role": "assistant", "content": good[0]["content"]},
                    {"role": "user", "content": "hi"},
                ]
            },
            None,
            400,
        ),
        "video to an image model": ({"messages": video_turn("?", "clip.mp4")}, None, 400),
        "body over the limit": (None, b'{"x": "' + b"a" * (4 * MiB) + b'"}', 413),
    }
    for name, (body, raw, status) in cases.items():
        r = post(base_url, body, raw=raw)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"], name
    r = post(base_url, {"messages": [{"role": "user", "content": "red " * 3000}]})
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = post(base_url, {"messages": video_turn("?", "clip.mp4")})
    assert r.json()["error"]["code"] == "unsupported_content"
    assert "reads no video" in r.json()["error"]["message"]
    assert httpx.get(base_url + "/health").json()["status"] == "ok"
    r = post(base_url, {"messages": good, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_api_key_is_required_on_v1_only(base_url):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for key in (None, "wrong", KEY + "x"):
        r = post(base_url, body, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(base_url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(base_url + "/health").status_code == 200
    assert post(base_url, body).status_code == 200


def test_models_health_metrics_and_unknown_routes(base_url, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(base_url + "/health").json()
    assert health == {
        "status": "ok",
        "model": MODEL,
        "running": 0,
        "queue_depth": 0,
        "max_queue": 4,
    }
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What colour is it?"}], max_tokens=4
    )
    text = httpx.get(base_url + "/metrics").text
    for name in (
        'specvlm_requests_total{outcome="ok"}',
        "specvlm_queue_depth",
        "specvlm_completion_tokens_total",
        "specvlm_accept_length_bucket",
        "specvlm_request_latency_seconds_bucket",
        "specvlm_time_to_first_token_seconds",
        'specvlm_requests_total{outcome="bad_request"}',
    ):
        assert name in text, name
    r = httpx.get(base_url + "/nope")
    assert r.status_code == 404 and "error" in r.json()


def test_raw_sse_ends_with_done(base_url):
    body = {
        "messages": [{"role": "user", "content": "What is there?"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_load_script_every_request_completes_or_gets_503(base_url, scenes):
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "scripts" / "serve_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    _, [(image, question), _] = scenes
    report = load.run_load(
        base_url,
        clients=6,
        requests=12,
        image=image,
        prompt=question.removeprefix("<image>\n"),
        max_tokens=8,
        api_key=KEY,
        timeout_s=60,
    )
    assert report["ok"] + report["rejected_503"] == 12
    assert report["ok"] >= 5 and report["wrong"] == 0 and report["failed"] == 0
    assert report["healthy_after"]


# ------------------------------------------------------- a slow stub: queue, disconnect, timeout


class SlowEngine:
    """Yields one token every `delay` seconds until max_new_tokens; refuses overlapping calls
    the way `Engine` does, and records when a stream is closed."""

    def __init__(self, delay: float = 0.02):
        self.delay = delay
        self.active = threading.Lock()
        self.closed = threading.Event()
        self.calls = 0

    def stream(self, prompt, images=None, stats=None, max_new_tokens=16, **options):
        if prompt[-1]["content"] == "boom":
            raise RuntimeError("an internal failure")
        if options.get("temperature", 0) > 1.5:
            raise GenerationArgumentError("temperature too high for this stub")
        if not self.active.acquire(blocking=False):
            raise EngineBusyError("busy")
        self.calls += 1
        self.closed.clear()
        try:
            stats.prompt_tokens = 3
            for i in range(max_new_tokens):
                time.sleep(self.delay)
                stats.accept_lengths.append(1)
                stats.new_tokens += 1
                yield StreamPiece(f"t{i} ", [i])
            stats.stop_reason = "max_new_tokens"
        finally:
            self.active.release()
            self.closed.set()


def ask(url: str, max_tokens: int, results: list | None = None, content: str = "hi", **extra):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    if results is not None:
        results.append(r)
    return r


def test_full_queue_answers_503_at_once_with_retry_after():
    stub = SlowEngine(delay=0.02)
    with serving(create_app(stub, ServeConfig(max_queue=1))) as url:
        results: list = []
        threads = [threading.Thread(target=ask, args=(url, 60, results)) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.05)  # in order: the first runs, the second waits, the rest find it full
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 200, 503, 503, 503]
        for r in results:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "1" and r.elapsed.total_seconds() < 1.0
                assert r.json()["error"]["code"] == "queue_full"
            else:
                assert r.json()["choices"][0]["message"]["content"].startswith("t0 t1 ")
        assert stub.calls == 2
        assert httpx.get(url + "/health").json()["queue_depth"] == 0


def test_a_client_that_leaves_mid_stream_frees_the_engine_at_once():
    stub = SlowEngine(delay=0.02)
    with serving(create_app(stub)) as url:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # decoding has started
        left = time.monotonic()
        assert stub.closed.wait(timeout=3), "generation went on after the client left"
        assert time.monotonic() - left < 2
        r = ask(url, 3)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "t0 t1 t2 "
        assert 'specvlm_requests_total{outcome="cancelled"} 1.0' in httpx.get(url + "/metrics").text


def test_non_streaming_client_that_leaves_is_dropped_too():
    stub = SlowEngine(delay=0.02)
    with serving(create_app(stub)) as url:
        with pytest.raises(httpx.ReadTimeout):
            ask_timeout = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}
            httpx.post(url + "/v1/chat/completions", json=ask_timeout, timeout=0.5)
        assert stub.closed.wait(timeout=3)
        assert ask(url, 2).status_code == 200


def test_request_timeout_gives_504_and_frees_the_engine():
    stub = SlowEngine(delay=0.02)
    with serving(create_app(stub, ServeConfig(request_timeout_s=0.4))) as url:
        r = ask(url, 4000)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert stub.closed.wait(timeout=3)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as s:
            lines = [line for line in s.iter_lines() if line]
        assert '"code": "timeout"' in lines[-2] and lines[-1] == "data: [DONE]"
        assert ask(url, 2).status_code == 200


def test_engine_errors_map_to_400_and_500_and_the_server_lives_on():
    stub = SlowEngine(delay=0.0)
    with serving(create_app(stub)) as url:
        r = ask(url, 2, temperature=1.8)
        assert r.status_code == 400 and "too high" in r.json()["error"]["message"]
        r = ask(url, 2, content="boom")
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "an internal failure" not in r.text  # no internals leak
        assert ask(url, 2).json()["choices"][0]["message"]["content"] == "t0 t1 "
        assert httpx.get(url + "/health").json()["status"] == "ok"


# --------------------------------------------------------------------------- the command line


def test_python_m_specvlm_serve_starts_the_embedded_pair(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SPECVLM_API_KEY": "k1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "specvlm.serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no /health within 60 s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        assert [m.id for m in c.models.list()] == [MODEL]
        assert "<title>" in httpx.get(url + "/").text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run(
        [sys.executable, "-m", "specvlm.serve", "--allow-dir", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


def test_a_request_that_gave_up_holds_no_queue_place():
    import asyncio

    from specvlm.serve.errors import ApiError
    from specvlm.serve.metrics import Metrics
    from specvlm.serve.worker import EngineWorker

    async def admit() -> None:
        worker = EngineWorker(None, ServeConfig(max_queue=1), Metrics())  # no thread: all wait
        first = worker.submit(object())
        with pytest.raises(ApiError) as e:
            worker.submit(object())
        assert e.value.status == 503
        first.gone.set()  # its client left (or it timed out) while waiting
        assert worker.depth == 0
        worker.submit(object())  # the place is free again at once
        assert worker.depth == 1

    asyncio.run(admit())


def test_max_queue_zero_is_refused():
    import argparse

    from specvlm.errors import InputError
    from specvlm.serve.cli import add_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-queue", "0"])
    with pytest.raises(InputError, match="--max-queue must be positive"):
        config_from_args(args)


def test_a_fifo_in_the_allowed_folder_is_refused_not_waited_on(tmp_path):
    from specvlm.serve.errors import ApiError
    from specvlm.serve.images import read_image_url

    os.mkfifo(tmp_path / "x.png")
    done: list = []

    def read() -> None:
        try:
            read_image_url("x.png", ServeConfig(allow_dir=tmp_path))
        except ApiError as e:
            done.append(e.status)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=5)
    assert done and done[0] in (400, 403), "reading a FIFO blocked or was accepted"


# ---------------------------------------------------------------- a target that reads video


def test_video_url_parts_reach_a_video_target(tmp_path):
    """A tiny Video-LLaVA served: a video as a data URL, as a file and as a frames folder in the
    allowed folder all answer what `Engine.generate(video=...)` answers; bad videos get 400s,
    paths outside the folder 403."""
    av = pytest.importorskip("av")
    from specvlm.tiny_video import build_tiny_video_llava

    folder = build_tiny_video_llava(tmp_path / "video-llava", num_layers=2, num_frames=4)
    engine = api.load(target=folder)
    allowed = tmp_path / "allowed"
    (allowed / "frames").mkdir(parents=True)
    frames = [Image.new("RGB", (40, 32), (30 * i, 200 - 20 * i, 90)) for i in range(8)]
    for i, frame in enumerate(frames):
        frame.save(allowed / "frames" / f"{i}.png")
    with av.open(str(allowed / "clip.mp4"), "w") as container:  # lossless: frames decode exactly
        stream = container.add_stream("libx264rgb", rate=10, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 40, 32, "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    question = "what happens?"
    want = engine.generate(question, video=frames, max_new_tokens=12, speculative=False)
    config = ServeConfig(model_id=MODEL, allow_dir=allowed, max_video_bytes=MiB)
    with serving(create_app(engine, config)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        clip = data_url(allowed / "clip.mp4", "video/mp4")
        for source in (clip, "clip.mp4", f"file://{allowed / 'clip.mp4'}", "frames"):
            r = client.chat.completions.create(
                model=MODEL, messages=video_turn(question, source), max_tokens=12
            )
            assert r.choices[0].message.content == want.text, source[:40]
            assert r.usage.completion_tokens == len(want.token_ids)
        (tmp_path / "outside.mp4").write_bytes((allowed / "clip.mp4").read_bytes())
        bad = {
            "not a video": (video_turn("?", data_url(b"no video here", "video/mp4")), 400),
            "two videos": (video_turn("?", "clip.mp4", "frames"), 400),
            "missing file": (video_turn("?", "nothing.mp4"), 400),
            "outside the folder": (video_turn("?", str(tmp_path / "outside.mp4")), 403),
            "remote": (video_turn("?", "https://example.com/a.mp4"), 400),
            "too large": (video_turn("?", data_url(os.urandom(MiB + 10), "video/mp4")), 400),
        }
        for name, (messages, status) in bad.items():
            r = httpx.post(url + "/v1/chat/completions", json={"messages": messages}, timeout=60)
            assert r.status_code == status, (name, r.text)
            # the server's own paths are never shown (only what the client sent)
            assert "specvlm-video-" not in r.text and str(allowed) not in r.text, name
        r = client.chat.completions.create(
            model=MODEL, messages=video_turn(question, "frames"), max_tokens=12
        )
        assert r.choices[0].message.content == want.text  # alive and exact after the errors
