"""Nothing stored is lost: outputs never replace an input, a full disk leaves every study
readable, an interrupted study finishes its answer, and readers only read.

Real components throughout: SQLite and journal files, script subprocesses, and (as root) a
real full filesystem (a small tmpfs) and a real read-only mount; the tests that need a mount
skip, saying why, where the machine refuses one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from study import commands
from study.outputs import write_atomic
from tests.conftest import run_script
from tests.test_bad_input import STUDY, _study_template


def _readable(url: str) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of the study ``batch-size`` at ``url`` (fails if unreadable)."""
    from study.storage import open_storage

    storage = open_storage(url, heartbeat_interval=None, read_only=True)
    study = optuna.load_study(study_name="batch-size", storage=storage)
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


# ------------------------------------------------------------------ outputs are never inputs


def test_a_report_aimed_at_its_storage_leaves_a_readable_study(tmp_path):
    shutil.copy(_study_template(), tmp_path / "s.db")
    before = (tmp_path / "s.db").read_bytes()
    for extra in ([], ["--format", "text"], ["--format", "json"], ["--force"]):
        done = run_script(
            "report.py", "--storage", "sqlite:///s.db", "--out", "s.db", *extra, cwd=tmp_path
        )
        assert done.returncode == 2, done.stderr
        assert "is the study's storage" in done.stderr and len(done.stderr.splitlines()) == 1
    assert (tmp_path / "s.db").read_bytes() == before
    assert len(_readable(f"sqlite:///{tmp_path / 's.db'}")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_a_report_replaces_its_own_file_and_a_foreign_one_only_with_force(
    tmp_path, monkeypatch, capsys
):
    shutil.copy(_study_template(), tmp_path / "s.db")
    monkeypatch.chdir(tmp_path)
    base = ["--storage", "sqlite:///s.db"]
    for fmt, name in (("text", "r.txt"), ("json", "r.json"), ("html", "r.html")):
        assert commands.report([*base, "--format", fmt, "--out", name]) == 0
        first = (tmp_path / name).read_bytes()
        assert commands.report([*base, "--format", fmt, "--out", name]) == 0  # ours: replaced
        assert (tmp_path / name).stat().st_size > 0 and first
    (tmp_path / "mine.txt").write_text("the user's notes\n")
    assert commands.report([*base, "--format", "text", "--out", "mine.txt"]) == 2
    assert (tmp_path / "mine.txt").read_text() == "the user's notes\n"
    assert "add --force" in capsys.readouterr().err
    assert commands.report([*base, "--format", "text", "--out", "mine.txt", "--force"]) == 0
    assert (tmp_path / "mine.txt").read_text().startswith("Batch-size study ")
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old\n")

    with pytest.raises(TypeError):  # the write fails after the temporary file was opened
        write_atomic(target, object())  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# ------------------------------------------------------------------ real mounts (root only)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A real, small filesystem at ``folder`` (skips the test when mounting is refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the filesystem of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)


def test_a_report_on_a_full_disk_names_the_disk_and_leaves_no_temporary(tmp_path):
    shutil.copy(_study_template(), tmp_path / "s.db")
    with tmpfs(tmp_path / "small") as small:
        fill(small)
        done = run_script(
            "report.py",
            "--storage",
            "sqlite:///s.db",
            "--format",
            "text",
            "--out",
            str(small / "r.txt"),
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "the disk is full" in lines[0], done.stderr
        assert f"mounted at {small}" in lines[0] and "free of" in lines[0]
        assert sorted(p.name for p in small.iterdir()) == ["filler"]


STUDY_ARGS = [a for a in STUDY if a not in ("--storage", "sqlite:///study.db")]


# ------------------------------------------------------------------ the answer is finished


def test_a_study_whose_answer_is_missing_gets_it_from_the_same_command(
    tmp_path, monkeypatch, capsys
):
    import sqlite3

    shutil.copy(_study_template(), tmp_path / "study.db")
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///study.db"
    # the state a Ctrl-C leaves while the answer's batch sizes are timed: trials done, no answer
    connection = sqlite3.connect(tmp_path / "study.db")
    with connection:
        connection.execute("DELETE FROM study_user_attributes WHERE key = 'recommendation'")
    connection.close()
    study = optuna.load_study(study_name="batch-size", storage=url)
    assert "recommendation" not in study.user_attrs
    trials = len(study.get_trials(deepcopy=False))
    argv = [*STUDY_ARGS, "--storage", url, "--checkpoint-dir", "none"]
    assert commands.run(argv) == 0
    assert "answer is missing or out of date: computing it now" in capsys.readouterr().out
    study = optuna.load_study(study_name="batch-size", storage=url)
    assert study.user_attrs["recommendation"]["trials_used"] == 1
    assert len(study.get_trials(deepcopy=False)) == trials  # no new trial
    assert commands.run(argv) == 0  # now complete: a rerun changes nothing
    assert "computing it now" not in capsys.readouterr().out
