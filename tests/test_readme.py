"""The README's examples run as written (from the repository root).

Every ```python block runs in a fresh interpreter; every line of every ```bash block runs in a
shell whose PATH starts with this environment's bin folder. `path/to/target` and `path/to/draft`
become the embedded pair's folders. The quick start's install and test commands are not re-run
here (this test is part of what they run): they are checked to be the commands CI runs.
"""

from __future__ import annotations

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
INSTALL = "pip install torch==2.13.0 -e '.[dev]'"
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


@pytest.mark.parametrize(
    "line", [ln for ln in shell_lines() if not ln.startswith("python3 -m venv")] + ["specvlm demo"]
)
def test_shell_example(line):
    # the quick start's first command ends in `.venv/bin/specvlm demo`: run here as `specvlm demo`
    done = run(["bash", "-c", substitute(line)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
