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

from batchsize_study import commands
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
    assert study.user_attrs["published"] == 1  # the note was written for it
    assert commands.run(argv) == 0  # now complete: a rerun changes nothing
    assert "computing it now" not in capsys.readouterr().out
    # stopped after the answer, before the note and report: the same command writes those
    connection = sqlite3.connect(tmp_path / "study.db")
    with connection:
        connection.execute("DELETE FROM study_user_attributes WHERE key = 'published'")
    connection.close()
    answer = optuna.load_study(study_name="batch-size", storage=url).user_attrs["recommendation"]
    assert commands.run(argv) == 0
    study = optuna.load_study(study_name="batch-size", storage=url)
    assert study.user_attrs["published"] == 1 and study.user_attrs["recommendation"] == answer


# ------------------------------------------------------------------ a full disk loses nothing

FAST_RUN = [*STUDY_ARGS[2:], "--checkpoint-dir", "none"]


def _finished(url: str) -> list[int]:
    from study.storage import open_storage

    storage = open_storage(url, heartbeat_interval=None, read_only=True)
    study = optuna.load_study(study_name="batch-size", storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t.number for t in study.get_trials(deepcopy=False, states=states)]


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_full_disk_leaves_a_journal_study_readable_and_the_same_command_continues(tmp_path):
    with tmpfs(tmp_path / "small", "512k") as small:
        url = f"journal:///{small / 'study.log'}"
        run = ["--storage", url, *FAST_RUN]
        done = run_script("run_study.py", "--trials", "2", *run, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        before = _finished(url)
        assert len(before) == 2
        fill(small)
        done = run_script("run_study.py", "--trials", "4", *run, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        line = _one_line(done)
        assert "the disk is full" in line and f"mounted at {small}" in line, line
        assert _finished(url) == before  # readable after the failure
        text = (small / "study.log").read_bytes()
        assert text.endswith(b"\n")  # whole records only
        assert sorted(p.name for p in small.iterdir()) == [
            "filler",
            "study.log",
            "study.log.claim-lock",
        ]  # no lock or temporary file left
        (small / "filler").unlink()
        done = run_script("run_study.py", "--trials", "4", *run, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        after = _finished(url)
        assert len(after) == 4 and set(before) <= set(after)  # and after the next run


def test_a_torn_last_journal_record_is_set_aside_and_never_appended_to(tmp_path):
    journal = tmp_path / "study.log"
    shutil.copy(_study_template("study.log"), journal)
    url = f"journal:///{journal}"
    torn = b'{"op_code":5,"worker_id":"w","trial_id":0,"par'
    with open(journal, "ab") as handle:
        handle.write(torn)
    # a reader reads around it and changes nothing (a writer may be writing it right now)
    done = run_script("report.py", "--storage", url, "--format", "text", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert journal.read_bytes().endswith(torn)
    done = run_script("run_study.py", "--trials", "2", "--storage", url, *FAST_RUN, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ended with a half-written record ({len(torn)} bytes" in done.stderr
    backups = list(tmp_path.glob("study.log.torn-*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn
    assert len(_finished(url)) == 2
    for line in journal.read_bytes().splitlines():
        assert line.startswith(b"{") and line.endswith(b"}")


def test_a_full_disk_under_sqlite_is_one_line_and_the_study_stays(tmp_path):
    with tmpfs(tmp_path / "small", "512k") as small:
        shutil.copy(_study_template(), small / "study.db")
        url = f"sqlite:///{small / 'study.db'}"
        before = _finished(url)
        fill(small)
        run = ["--storage", url, *FAST_RUN]
        done = run_script("run_study.py", "--trials", "3", *run, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        line = _one_line(done)
        assert "the disk is full" in line and f"mounted at {small}" in line, line
        assert "internal error" not in line
        assert _finished(url) == before
        assert not [p for p in small.iterdir() if p.name.endswith((".tmp", "-journal"))]
        (small / "filler").unlink()
        done = run_script("run_study.py", "--trials", "3", *run, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(_finished(url)) == 3


def test_a_full_disk_under_the_checkpoints_is_one_line_and_leaves_no_temporary(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    two_epochs = [*STUDY_ARGS[2:], "--epochs", "2", "--storage", url]  # (the last epoch saves none)
    done = run_script("run_study.py", "--trials", "1", *two_epochs, "--checkpoint-dir", "none")
    assert done.returncode == 0, done.stderr
    with tmpfs(tmp_path / "small", "256k") as small:
        fill(small)
        run = [*two_epochs, "--checkpoint-dir", str(small)]
        done = run_script("run_study.py", "--trials", "2", *run, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        line = _one_line(done)
        assert "writing a checkpoint" in line and f"mounted at {small}" in line, line
        assert "it needs about" in line
        assert not list(small.rglob("*.tmp")) and len(_finished(url)) == 1
        (small / "filler").unlink()
        done = run_script("run_study.py", "--trials", "2", *run, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(_finished(url)) == 2


ORPHAN = """
import sys
import optuna
from study.budget import claim_trial
from study.locks import storage_lock
from study.storage import open_storage

url = sys.argv[1]
study = optuna.load_study(study_name="batch-size", storage=open_storage(url))
print(claim_trial(study, 5, storage_lock(url)).trial.number)
"""


def test_a_running_trial_whose_process_is_gone_is_retried_without_waiting(tmp_path):
    import sys
    import time

    from tests.conftest import script_env

    journal = tmp_path / "study.log"
    shutil.copy(_study_template("study.log"), journal)
    url = f"journal:///{journal}"
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN, url],
        cwd=tmp_path,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    orphan = int(done.stdout.strip())  # RUNNING, its process gone (no heartbeat since)
    start = time.monotonic()
    done = run_script("run_study.py", "--trials", "2", "--storage", url, *FAST_RUN, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start < 25  # the grace period is 30 s: not waited for
    from study.storage import open_storage

    storage = open_storage(url, heartbeat_interval=None, read_only=True)
    study = optuna.load_study(study_name="batch-size", storage=storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[orphan].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE


# ------------------------------------------------------------------ readers read


@contextlib.contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a read-only bind mount; even root cannot
    write there). Skips the test when mounting is refused."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.decode().strip() or 'not root'})")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(target)]
        done = subprocess.run(remount, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only ({done.stderr.decode().strip()})")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _dashboard_serves(url: str, cwd: Path) -> str:
    """Start the dashboard on ``url``, fetch its list of studies, stop it; the list."""
    import socket
    import sys
    import time
    import urllib.request

    from tests.conftest import ROOT, script_env

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(ROOT / "scripts" / "dashboard.py"), "--storage", url]
    command += ["--artifact-dir", "none", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=cwd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as page:
                    return page.read().decode()
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.communicate()[1].decode()) from None
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_and_dashboard_read_a_study_on_a_read_only_mount(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(_study_template(), source / "study.db")
    shutil.copy(_study_template("study.log"), source / "study.log")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    with read_only_mount(source, tmp_path / "ro") as ro:
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")  # root cannot write there either
        for url in (f"sqlite:///{ro / 'study.db'}", f"journal:///{ro / 'study.log'}"):
            done = run_script("report.py", "--storage", url, "--format", "text", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert "1 trial: 1 complete" in done.stdout
            done = run_script(
                "report.py", "--storage", url, "--format", "json", "--out", "a.json", cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr
            assert '"batch-size"' in _dashboard_serves(url, tmp_path)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_readers_read_a_storage_another_writer_holds(tmp_path):
    import sqlite3
    import time

    shutil.copy(_study_template(), tmp_path / "study.db")
    shutil.copy(_study_template("study.log"), tmp_path / "study.log")
    writer = sqlite3.connect(tmp_path / "study.db")
    writer.execute("BEGIN IMMEDIATE")  # a run in the middle of a write transaction
    (tmp_path / "study.log.lock").symlink_to("study.log")  # a journal writer's lock
    try:
        for url in ("sqlite:///study.db", "journal:///study.log"):
            start = time.monotonic()
            done = run_script("report.py", "--storage", url, "--format", "text", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert time.monotonic() - start < 30
    finally:
        writer.rollback()
        writer.close()
    assert (tmp_path / "study.log.lock").is_symlink()  # the reader took no lock, freed none


def test_a_checkpoint_never_replaces_a_storage_file(tmp_path):
    import torch

    from objectives.checkpoint import CheckpointStore
    from objectives.train import TrainResult
    from study.outputs import OutputError

    store = CheckpointStore(tmp_path)
    shutil.copy(_study_template(), store.path(0))  # a study where a checkpoint would go
    before = store.path(0).read_bytes()
    model = torch.nn.Linear(2, 2)
    with pytest.raises(OutputError, match="is an SQLite database"):
        store.save(0, "run", model, None, TrainResult(epochs=[]), 8)
    assert store.path(0).read_bytes() == before and len(list(tmp_path.iterdir())) == 1
    store.save(1, "run", model, None, TrainResult(epochs=[]), 8)  # a checkpoint may be replaced
    store.save(1, "run", model, None, TrainResult(epochs=[]), 8)
    assert store.load(1, "run", "cpu").micro_batch_size == 8


def test_ctrl_c_while_the_answer_is_timed_then_the_same_command_stores_the_answer(tmp_path):
    import signal
    import sys

    from tests.conftest import ROOT, script_env

    # two cells decided fast: batch 32 leads, 64 is shown within a wide tolerance, so the
    # answer times 32 and 64 side by side after the trials
    argv = ["--trials", "12", "--epochs", "2", "--model", "mlp", "--hidden", "16"]
    argv += ["--scaling", "none", "--base-lr", "0.01", "--min-batch-size", "16"]
    argv += ["--max-batch-size", "64", "--confirm-runs", "2", "--tolerance", "0.5"]
    argv += ["--storage", "sqlite:///s.db", "--artifact-dir", "none", "--checkpoint-dir", "none"]
    command = [sys.executable, str(ROOT / "scripts" / "run_study.py"), *argv]
    for attempt in range(3):  # (a busy machine may let the timing end before the signal)
        folder = tmp_path / f"attempt-{attempt}"
        folder.mkdir()
        run = subprocess.Popen(
            command, cwd=folder, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for line in run.stdout:
            if b"timing the answer's candidate batch sizes" in line:
                run.send_signal(signal.SIGINT)
                break
        _, err = run.communicate(timeout=120)
        url = f"sqlite:///{folder / 's.db'}"
        study = optuna.load_study(study_name="batch-size", storage=url)
        if run.returncode == 130 and "recommendation" not in study.user_attrs:
            break
    assert run.returncode == 130 and "recommendation" not in study.user_attrs, err
    trials = len(study.trials)
    done = run_script("run_study.py", *argv, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "answer is missing or out of date: computing it now" in done.stdout, done.stdout
    assert "timing the answer's candidate batch sizes [32, 64]" in done.stdout, done.stdout
    study = optuna.load_study(study_name="batch-size", storage=url)
    answer = study.user_attrs["recommendation"]
    assert answer["decided"] and answer["fastest_within"]["batch_size"] == 64, answer
    assert "speed" in study.user_attrs, done.stderr  # the timing, redone and stored
    assert len(study.trials) == trials  # no new trial


def test_a_journal_broken_by_a_record_appended_to_a_torn_one_reads_again(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "study.log"
    shutil.copy(_study_template("study.log"), journal)
    torn = b'{"op_code":5,"worker_id":"w","trial_id":0,"par'
    with open(journal, "ab") as handle:
        handle.write(torn)
    # what Optuna's own backend does next (and what this tool did before): append to it
    study = optuna.load_study(
        study_name="batch-size", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    study.set_user_attr("after", 1)
    with pytest.raises(ValueError):  # written, then its own read fails on the broken line
        study.set_user_attr("later", 2)
    with pytest.raises(ValueError):  # from now on nobody can read the study
        JournalStorage(JournalFileBackend(str(journal)))
    url = f"journal:///{journal}"
    done = run_script("report.py", "--storage", url, "--format", "text", cwd=tmp_path)
    assert done.returncode == 2 and "run the study's run command once" in _one_line(done)
    done = run_script("run_study.py", "--trials", "2", "--storage", url, *FAST_RUN, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "held 1 half-written record(s) with later records appended" in done.stderr
    backups = list(tmp_path.glob("study.log.torn-*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn + b"\n"
    assert len(_finished(url)) == 2
    study = optuna.load_study(
        study_name="batch-size", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    assert study.user_attrs["after"] == 1  # the record appended to the torn one is kept
    assert study.user_attrs["later"] == 2
