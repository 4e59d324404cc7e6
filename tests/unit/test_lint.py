"""The code passes the project's linters (config in pyproject.toml): ruff on everything, mypy on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_ruff_finds_nothing():
    res = _run("ruff", "check", "--no-cache", "sctpbond", "tests")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_finds_nothing_in_the_package():
    # the cache goes to /tmp, not into the working tree
    res = _run("mypy", "--cache-dir", "/tmp/sctpbond-mypy-cache", "sctpbond")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success" in res.stdout, res.stdout
