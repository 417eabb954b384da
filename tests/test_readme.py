"""The README's examples run as written (from the repository root).

Every ```python block runs in a fresh interpreter; every line of every ```bash block runs in a
shell whose PATH starts with this environment's bin folder. `path/to/target` and `path/to/draft`
become the embedded pair's folders. The quick start's install and test commands are not re-run
here (this test is part of what they run): they are checked to be the commands CI runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specvlm.embedded import embedded_draft, embedded_target

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(python|bash)\n(.*?)^```", README, flags=re.M | re.S)
INSTALL = "torch==2.13.0 -e '.[dev]'"
TEST_COMMAND = ".venv/bin/python -m pytest -q"

pytestmark = pytest.mark.slow


def substitute(code: str) -> str:
    return code.replace("path/to/target", str(embedded_target())).replace(
        "path/to/draft", str(embedded_draft())
    )


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_the_readme_has_examples():
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 2 and kinds.count("bash") >= 2


@pytest.mark.parametrize(
    "code", [c for k, c in BLOCKS if k == "python"], ids=lambda c: c.splitlines()[2][:40]
)
def test_python_example(code):
    done = run([sys.executable, "-c", substitute(code)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "the example printed nothing"


def shell_lines() -> list[str]:
    lines = []
    for kind, code in BLOCKS:
        if kind == "bash":
            lines += [
                ln.strip() for ln in code.splitlines() if ln.strip() and not ln.startswith("#")
            ]
    return lines


def test_quick_start_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    quick = [ln for ln in shell_lines() if ln.startswith("python3 -m venv")]
    assert len(quick) == 2
    assert quick[1].endswith(TEST_COMMAND) and TEST_COMMAND in ci
    assert INSTALL in quick[1] and INSTALL in ci


def server_line() -> str:
    lines = [ln for ln in shell_lines() if ln.startswith("specvlm serve")]
    assert len(lines) == 1, "the README shows one `specvlm serve` command"
    return lines[0].split("#")[0].strip()


@pytest.fixture(scope="module")
def readme_server():
    """The README's `specvlm serve` line, running in the background until the module ends."""
    import time
    import urllib.request

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + server_line()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=5):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


EXAMPLES = [
    ln for ln in shell_lines() if not ln.startswith(("python3 -m venv", "specvlm serve"))
] + ["specvlm demo"]


@pytest.mark.parametrize("line", EXAMPLES)
def test_shell_example(line, request):
    # the quick start's first command ends in `.venv/bin/specvlm demo`: run here as `specvlm demo`
    if "127.0.0.1:8000" in line:
        request.getfixturevalue("readme_server")
    done = run(["bash", "-c", substitute(line)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
    if line.startswith("curl"):
        answer = json.loads(done.stdout)
        assert answer["choices"][0]["message"]["content"].strip()
