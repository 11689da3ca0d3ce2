"""Shared fixtures: the repository root, a temporary SQLite URL, and running scripts for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def script_env() -> dict[str, str]:
    """The environment for script subprocesses: this tree's packages first, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_script(name: str, *args: str, cwd: Path | None = None, timeout: float = 300):
    """Run ``scripts/<name>`` with ``args`` in a real subprocess; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL for a fresh SQLite file in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'study.db'}"
