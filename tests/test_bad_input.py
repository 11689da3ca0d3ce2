"""The bad-input corpus: every entry point answers a user's mistake with one line and exit 2.

Each case is one line of :data:`CASES`: the entry point, its flags, the expected exit code, a
piece of the one-line message, the files set up beforehand and (optionally) that it runs as a
real subprocess. Every case runs in an empty temporary folder (its working directory) and
checks the contract: the exit code; stderr is one short line with the message and no
traceback; no password of any URL appears in stdout or stderr; every file there is unchanged
(sha256 before and after) and nothing was created (no schema-only SQLite file, no empty
journal, no lock file, no folder). Most cases run in-process
(``batchsize_study.commands.run(argv)``), which checks the same code as the script and is ~50x
faster; every entry point keeps real subprocess samples (``proc=True``).

Flags in ``argv`` may use ``{tmp}`` for the case's folder. Setups (``setup=``) are named in
:data:`SETUPS`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from batchsize_study import commands
from study import safety
from tests.conftest import ROOT, script_env

#: Secrets used in the URLs below; none may ever be printed (nor a fragment of them).
SECRETS = ("s3cretpw", "hunter", "22ab")
#: Flags that make a run reach its first trial in about a second (no case should get there).
FAST = ["--epochs", "1", "--max-batch-size", "64", "--model", "mlp", "--hidden", "8"]
STUDY = ["--trials", "1", *FAST, "--storage", "sqlite:///study.db", "--artifact-dir", "none"]
PG = "postgresql://alice:s3cretpw@127.0.0.1:9/db"  # nothing listens on port 9: refused at once
NOISE = ["--epochs", "1", "--repeats", "2", "--b-big", "16", "--model", "mlp", "--hidden", "8"]
NO_CUDA = not torch.cuda.is_available()

BROKEN_TASKS = """
import torch
from torch.utils.data import TensorDataset
from objectives.tasks import Task

def _data(labels=None):
    y = torch.arange(64) % 2 if labels is None else labels
    return TensorDataset(torch.randn(64, 4), y)

class Raises(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
    def forward(self, x):
        raise RuntimeError("forward is broken")

def width():
    return Task("width", lambda: torch.nn.Linear(5, 2), _data(), _data(), _data())
def outputs():
    return Task("outputs", lambda: torch.nn.Linear(4, 1), _data(), _data(), _data())
def raises():
    return Task("raises", Raises, _data(), _data(), _data())
def label():
    bad = torch.arange(64) % 2 - (torch.arange(64) == 5).long() * 2
    return Task("label", lambda: torch.nn.Linear(4, 2), _data(bad), _data(), _data())
def none():
    return Task("none", lambda: None, _data(), _data(), _data())
def not_a_task():
    return 42
def fails():
    raise KeyError("no such dataset")
"""


def _foreign_db(folder: Path) -> None:
    import sqlite3

    connection = sqlite3.connect(folder / "other.db")
    connection.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    connection.execute("INSERT INTO contacts VALUES ('Ada', '123')")
    connection.commit()
    connection.close()


def _study(folder: Path) -> None:
    shutil.copy(_study_template(), folder / "study.db")


def _glued_journal(folder: Path) -> None:
    """A journal study whose later records were appended to a half-written one."""
    lines = _study_template("study.log").read_bytes().splitlines(keepends=True)
    torn = b'{"op_code":5,"worker_id":"w","trial_id":0,"par'
    (folder / "study.log").write_bytes(b"".join(lines[:-2]) + torn + b"".join(lines[-2:]))


def _plain_study(folder: Path) -> None:
    """A plain Optuna study named like ours, with 5 trials, not made by this tool."""
    import optuna

    study = optuna.create_study(
        storage=f"sqlite:///{folder / 'plain.db'}", study_name="batch-size", direction="maximize"
    )
    for x in range(5):
        study.add_trial(optuna.trial.create_trial(value=x / 10))


_TEMPLATE: dict[str, Path] = {}


def _study_template(name: str = "study.db") -> Path:
    """A finished one-trial study (SQLite, or a journal for ``*.log``), made once
    (in-process) and copied into each case."""
    if name not in _TEMPLATE:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="bad-input-study-"))
        kind = "journal" if name.endswith(".log") else "sqlite"
        argv = [*STUDY[:-4], "--storage", f"{kind}:///{folder / name}"]
        argv += ["--artifact-dir", "none", "--checkpoint-dir", "none"]
        assert commands.run(argv) == 0
        _TEMPLATE[name] = folder / name
    return _TEMPLATE[name]


SETUPS = {
    "notes": lambda d: (d / "notes.log").write_text("my notes\nnot a journal\n"),
    "foreign_db": _foreign_db,
    "folder_db": lambda d: (d / "folder.db").mkdir(),
    "afile": lambda d: (d / "afile").write_text("a user's file\n"),
    "garbage_db": lambda d: (d / "garbage.db").write_bytes(b"\x00\xffgarbage" * 100),
    "empty_journal": lambda d: (d / "empty.log").write_text(""),
    "tasks": lambda d: (d / "tasks.py").write_text(BROKEN_TASKS),
    "study": _study,
    "plain_study": lambda d: _plain_study(d),
    "empty_db": lambda d: (d / "empty.db").write_bytes(b""),
    "glued_journal": lambda d: _glued_journal(d),
    "journal_study": lambda d: shutil.copy(_study_template("study.log"), d / "study.log"),
    "fifo": lambda d: os.mkfifo(d / "pipe.db"),
}


def case(
    entry,
    argv,
    message,
    *,
    code=2,
    setup=(),
    proc=False,
    xfail=None,
    cuda_free=False,
    creates=(),
    closed_stdout=False,
):
    """One corpus line: ``entry`` is run, probe, report, dashboard, noise or cli.

    ``creates``: files (path prefixes) the case may leave, e.g. the study a run made before the
    failure; everything else must stay unchanged. ``closed_stdout``: the subprocess writes into
    a pipe whose reader has gone (``| head``); ``message=None``: stderr stays empty.
    """
    setup = (setup,) if isinstance(setup, str) else tuple(setup)
    setup += tuple(f"creates:{c}" for c in creates)
    if closed_stdout:
        setup += ("closed_stdout",)
    marks = []
    if xfail:
        marks.append(pytest.mark.xfail(reason=xfail, strict=True))
    if cuda_free:
        marks.append(pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA"))
    name = f"{entry}{'-proc' if proc else ''}:{' '.join(argv)[:60]}"
    return pytest.param(entry, list(argv), code, message, setup, proc, marks=marks, id=name)


# fmt: off
CASES = [
    # ---- storage: files that are not an Optuna storage are refused unchanged
    case("run", [*FAST, "--storage", "journal:///notes.log"], "not an Optuna journal file", setup="notes", proc=True),  # noqa: E501
    case("run", [*FAST, "--storage", "journal:///{tmp}/notes.log"], "not an Optuna journal file", setup="notes"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///other.db"], "another program's SQLite database", setup="foreign_db", proc=True),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///folder.db"], "is a folder", setup="folder_db"),
    case("run", [*FAST, "--storage", "journal:///folder.db"], "is a folder", setup="folder_db"),
    case("run", [*FAST, "--storage", "sqlite:///garbage.db"], "not an SQLite database", setup="garbage_db"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///:memory:"], "in-memory"),
    case("run", [*FAST, "--storage", "sqlite:///afile/x.db"], "cannot create folder", setup="afile"),  # noqa: E501
    case("run", [*FAST, "--storage", "journal:///"], "give a file"),
    case("run", [*FAST, "--storage", "not a url"], "is not a database URL"),
    case("run", [*FAST, "--storage", "nosuchdb://x/y"], "unknown database kind"),
    # ---- URLs with secrets: never printed, in any form
    case("run", [*FAST, "--storage", "postgresql://alice:s3cretpw@host:abc/db"], "port a number"),  # noqa: E501
    case("run", [*FAST, "--storage", PG], "cannot connect", proc=True),
    case("run", [*FAST, "--storage", "postgresql://alice@127.0.0.1:9/db?password=s3cretpw"], "cannot connect"),  # noqa: E501
    case("run", [*FAST, "--storage", "postgresql://alice@127.0.0.1:9/db?sslmode=disable&password=s3cretpw"], "password=***"),  # noqa: E501
    case("run", [*FAST, "--storage", "postgresql://alice:hunter@22ab@127.0.0.1:9/db"], "unencoded '@'"),  # noqa: E501
    case("run", [*FAST, "--storage=postgresql://alice:hunter%4022ab@127.0.0.1:9/db"], "cannot connect"),  # noqa: E501
    case("run", [*FAST, "--storage", "mysql://u:s3cretpw@127.0.0.1/x"], "driver is missing"),
    case("report", ["--storage", PG], "cannot connect", proc=True),
    case("report", ["--storage", "postgresql://alice@127.0.0.1:9/db?password=s3cretpw"], "cannot connect"),  # noqa: E501
    case("report", ["--storage", "postgresql://alice:hunter@22ab@127.0.0.1:9/db"], "unencoded '@'"),  # noqa: E501
    case("dashboard", ["--storage", "postgresql://alice@127.0.0.1:9/db?password=s3cretpw"], "cannot connect"),  # noqa: E501
    # ---- run: every flag's edge values
    case("run", [*FAST, "--seed", "-1"], "is not a seed", proc=True),
    case("run", [*FAST, "--seed", "1e20"], "is not a seed"),
    case("run", [*FAST, "--seed", "4294967296"], "is not a seed"),
    case("run", [*FAST, "--trials", "0"], "--trials 0 must be at least 1"),
    case("run", [*FAST, "--trials", "x"], "invalid int value"),
    case("run", [*FAST, "--epochs", "0"], "--epochs 0 must be at least 1"),
    case("run", [*FAST, "--epochs", "-1"], "--epochs -1 must be at least 1"),
    case("run", [*FAST, "--min-batch-size", "0"], "not a power of two"),
    case("run", [*FAST, "--max-batch-size", "3"], "not a power of two"),
    case("run", [*FAST, "--base-batch-size", "0"], "not a power of two"),
    case("run", [*FAST, "--min-batch-size", "128"], "is above --max-batch-size"),
    case("run", [*FAST, "--max-accumulation", "0"], "--max-accumulation 0 must be at least 1"),
    case("run", [*FAST, "--base-lr", "0"], "must be a positive number"),
    case("run", [*FAST, "--base-lr", "nan"], "must be a positive number"),
    case("run", [*FAST, "--base-lr", "inf"], "must be a positive number"),
    case("run", [*FAST, "--hidden", "0"], "positive sizes"),
    case("run", [*FAST, "--hidden", "a,b"], "positive sizes"),
    case("run", [*FAST, "--synthetic-samples", "0"], "--synthetic-samples 0 must be at least 1"),
    case("run", [*FAST, "--synthetic-classes", "1"], "use at least 2"),
    case("run", [*FAST, "--task", "synthetic", "--synthetic-samples", "10"], "too small"),
    case("run", [*FAST, "--memory-budget", "lots"], "is not understood"),
    case("run", [*FAST, "--memory-budget", "0"], "must be at least 1 byte"),
    case("run", [*FAST[:2], "--model", "mlp", "--hidden", "8", "--memory-budget", "1KiB"], "too small"),  # noqa: E501
    case("run", [*FAST, "--memory-margin", "1"], "fraction in [0, 1)"),
    case("run", [*FAST, "--memory-margin", "-0.1"], "fraction in [0, 1)"),
    case("run", [*FAST, "--device", "tpu"], "use cpu, cuda, cuda:N or auto"),
    case("run", [*FAST, "--device", "cuda:0"], "no CUDA GPU", cuda_free=True),
    case("run", [*FAST, "--gpus", "0"], "no CUDA GPU", cuda_free=True),
    case("run", [*FAST, "--gpus", ","], "list GPU ids"),
    case("run", [*FAST, "--workers-per-gpu", "2"], "needs --gpus"),
    case("run", [*FAST, "--workers", "0"], "--workers 0 must be at least 1"),
    case("run", [*FAST, "--devices-per-trial", "0"], "--devices-per-trial 0: use a whole number of at least 1"),  # noqa: E501
    case("run", [*FAST, "--devices-per-trial", "x"], "invalid int value"),
    case("run", [*FAST, "--devices-per-trial", "4", "--batch-schedule", "2@0,64@0.5"], "batch 2 does not split evenly over 4 devices"),  # noqa: E501
    case("run", [*FAST, "--gpus", "0", "--devices-per-trial", "2"], "more than the 1 GPU(s) of --gpus 0"),  # noqa: E501
    case("run", [*FAST, "--gpus", "0,1,2", "--devices-per-trial", "2"], "does not divide the 3 GPUs"),  # noqa: E501
    case("run", [*FAST, "--device", "cuda", "--devices-per-trial", "2"], "list the GPUs, 2 per trial, with --gpus"),  # noqa: E501
    case("run", [*FAST, "--devices-per-trial", "2", "--collective-timeout", "0"], "--collective-timeout 0.0: use a positive number"),  # noqa: E501
    case("run", [*STUDY, "--devices-per-trial", "2", "--collective-timeout", "-1"], "--collective-timeout -1.0", proc=True),  # noqa: E501
    case("run", [*FAST, "--heartbeat-interval", "0"], "must be positive and below"),
    case("run", [*FAST, "--heartbeat-interval", "40"], "must be positive and below"),
    case("run", [*FAST, "--precision", "fp16", "--device", "cpu"], "needs a CUDA GPU"),
    case("run", [*FAST, "--precision", "fp8"], "invalid choice"),
    case("run", [*FAST, "--optimizer", "lamb"], "invalid choice: 'lamb'"),
    case("run", [*FAST, "--scaling", "cubic"], "invalid choice: 'cubic'"),
    case("run", [*FAST, "--objectives", "loss"], "use metric, or metric,time"),
    case("run", [*FAST, "--confirm-runs", "1"], "--confirm-runs 1: use at least 2"),
    case("run", [*FAST, "--confirm-runs", "x"], "invalid int value"),
    case("run", [*FAST, "--tolerance", "-0.1"], "--tolerance -0.1: use a number of at least 0"),
    case("run", [*FAST, "--tolerance", "nan"], "--tolerance nan: use a number of at least 0"),
    case("run", [*FAST, "--budget", "steps"], "needs --steps"),
    case("run", [*FAST, "--steps", "5"], "needs --budget steps"),
    case("run", [*FAST, "--warmup-epochs", "1"], "fewer than --epochs"),
    case("run", [*FAST, "--lr-search-width", "0.5"], "use 1 (off) or more"),
    case("run", [*FAST, "--study-name", "bad name"], "--study-name 'bad name'"),
    case("run", [*FAST, "--download"], "drop --download"),
    case("run", [*FAST, "--no-such-flag"], "unrecognized arguments"),
    case("run", [*FAST, "--data-dir", ""], "--data-dir is empty"),
    case("run", [*FAST, "--grace-period", "5"], "must be positive and below --grace-period 5"),
    case("run", [*FAST, "--base-batch-size", "3"], "--base-batch-size 3 is not a power of two"),
    case("run", [*FAST, "--gpus", "0,0"], "list distinct GPU ids"),
    case("run", [*FAST, "--workers", "3", "--gpus", "0,1"], "--workers 3 contradicts"),
    case("run", [*FAST, "--study-name", ""], "--study-name ''"),
    case("run", [*FAST, "--budget", "steps", "--steps", "0"], "--steps 0 must be at least 1"),
    case("run", [*FAST, "--storage", "journal:///empty.log", "--task", "synthetic", "--synthetic-samples", "10"], "too small", setup="empty_journal"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///new/deeper/s.db", "--task", "synthetic", "--synthetic-samples", "10"], "too small"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///empty.db", "--task", "synthetic", "--synthetic-samples", "10"], "too small", setup="empty_db"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///file:x.db?mode=ro&uri=true"], "file: URI opens the database for readers"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:///file:sub/x.db?mode=ro&uri=true"], "a run writes: give a plain path", proc=True),  # noqa: E501
    # ---- run: folders that are files are refused before anything is stored
    case("run", [*FAST, "--checkpoint-dir", "afile"], "--checkpoint-dir afile is a file", setup="afile", proc=True),  # noqa: E501
    case("run", [*FAST, "--checkpoint-dir", "afile/sub"], "is under afile, a file", setup="afile"),  # noqa: E501
    case("run", [*FAST, "--artifact-dir", "afile"], "--artifact-dir afile is a file", setup="afile"),  # noqa: E501
    case("run", [*FAST, "--data-dir", "afile"], "--data-dir afile is a file", setup="afile"),
    # ---- run: tasks
    case("run", [*FAST, "--task", "cifar100"], "is not a built-in task"),
    case("run", [*FAST, "--task", "missing.py:f"], "not found"),
    case("run", [*FAST, "--task", "no_such_module_x:f"], "importing no_such_module_x failed"),
    case("run", [*FAST, "--task", "tasks.py:nothing"], "has no callable", setup="tasks"),
    case("run", [*FAST, "--task", "tasks.py:not_a_task"], "not objectives.Task", setup="tasks"),
    case("run", [*FAST, "--task", "tasks.py:fails"], "the factory raised KeyError", setup="tasks"),  # noqa: E501
    case("run", [*FAST, "--task", "tasks.py:width"], "model", setup="tasks"),
    case("run", [*FAST, "--task", "tasks.py:outputs"], "outputs", setup="tasks"),
    case("run", [*FAST, "--task", "tasks.py:raises"], "forward", setup="tasks"),
    case("run", [*FAST, "--task", "tasks.py:label"], "label", setup="tasks"),
    case("run", [*FAST, "--task", "tasks.py:none"], "build_model", setup="tasks"),  # noqa: E501
    # ---- run: a resume may not change what the study measures or the data it is judged on
    case("run", [*STUDY, "--seed", "1"], "--seed 0 (stored) vs 1 (now)", setup="study", proc=True),  # noqa: E501
    case("run", [*STUDY, "--data-dir", "elsewhere"], "--data-dir 'storage/data' (stored)", setup="study"),  # noqa: E501
    case("run", [*STUDY, "--epochs", "2"], "--epochs 1 (stored) vs 2 (now)", setup="study"),
    case("run", [*STUDY, "--hidden", "16"], "--hidden [8] (stored) vs [16] (now)", setup="study"),
    # ---- probe
    case("probe", ["--device", "cuda:0"], "no CUDA GPU", proc=True, cuda_free=True),
    case("probe", ["--bogus"], "unrecognized arguments: --bogus", proc=True),
    case("probe", ["--device", "tpu"], "use cpu, cuda, cuda:N or auto"),
    case("probe", ["--min-batch-size", "0"], "--min-batch-size 0 must be at least 1"),
    case("probe", ["--max-batch-size", "0"], "--max-batch-size 0 must be at least"),
    case("probe", ["--timed-steps", "0"], "--timed-steps 0 must be at least 1"),
    case("probe", ["--memory-budget", "0"], "must be at least 1 byte"),
    case("probe", ["--memory-budget", "6 gigs"], "is not understood"),
    case("probe", ["--memory-margin", "1.5"], "--memory-margin 1.5"),
    case("probe", ["--memory-budget", "1GiB", "--memory-margin", "0.2"], "--memory-margin applies"),  # noqa: E501
    case("probe", ["--model", "mlp", "--hidden", "8", "--memory-budget", "1KiB"], "memory budget 1.00 KiB"),  # noqa: E501
    case("probe", ["--seed", "-1"], "is not a seed"),
    case("probe", ["--min-batch-size", "100000"], "--min-batch-size 100000 is larger than the training set"),  # noqa: E501
    case("probe", ["--hidden", "0"], "positive sizes"),
    case("probe", ["--task", "nope"], "is not a built-in task"),
    case("probe", ["--precision", "fp16"], "needs a CUDA GPU"),
    case("probe", ["--synthetic-classes", "1", "--task", "synthetic"], "use at least 2"),
    case("probe", ["--task", "tasks.py:fails"], "the factory raised", setup="tasks"),
    case("probe", ["--task", "tasks.py:width"], "model", setup="tasks"),
    # ---- noise_scale
    case("noise", ["--batch-size", "0"], "--batch-size 0 must be at least 1", proc=True),
    case("noise", ["--epochs", "-1"], "--epochs -1 must be at least 0"),
    case("noise", ["--device", "cuda:0"], "no CUDA GPU", cuda_free=True),
    case("noise", ["--b-small", "0"], "--b-small 0 must be at least 1"),
    case("noise", ["--b-big", "12"], "--b-big 12 must be a multiple of --b-small 8"),
    case("noise", ["--repeats", "1"], "--repeats 1 must be at least 2"),
    case("noise", ["--b-small", "2048", "--b-big", "4096"], "--b-small 2048 needs at least twice"),  # noqa: E501
    case("noise", ["--lr", "0"], "--lr 0.0 must be a positive number"),
    case("noise", ["--lr", "nan"], "must be a positive number"),
    case("noise", ["--seed", "1e20"], "is not a seed"),
    case("noise", ["--bogus"], "unrecognized arguments"),
    case("noise", ["--task", "nope"], "is not a built-in task"),
    case("noise", [*NOISE, "--lr", "1e6"], "the model diverged", code=0),
    case("noise", ["--task", "tasks.py:width"], "model", setup="tasks"),
    # ---- report: never creates what it reads
    case("report", ["--storage", "journal:///missing.log"], "no journal file at missing.log", proc=True),  # noqa: E501
    case("report", ["--storage", "sqlite:///missing.db"], "no study database at missing.db"),
    case("report", ["--storage", "sqlite:///nowhere/missing.db"], "does not exist"),
    case("report", ["--storage", "journal:///notes.log"], "not an Optuna journal file", setup="notes"),  # noqa: E501
    case("report", ["--storage", "sqlite:///other.db"], "another program's", setup="foreign_db"),
    case("report", ["--storage", "sqlite:///folder.db"], "folder.db", setup="folder_db"),
    case("report", ["--storage", "sqlite:///garbage.db"], "not an SQLite database", setup="garbage_db"),  # noqa: E501
    case("report", ["--storage", "journal:///empty.log"], "no study named", setup="empty_journal"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--study-name", "other"], "no study named 'other'", setup="study"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "pdf"], "invalid choice", setup="study"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "text", "--out", "afile/x.txt"], "cannot write", setup=("study", "afile")),  # noqa: E501
    case("report", ["--storage", "not a url"], "is not a database URL"),
    # ---- report: no output path can be an input
    case("report", ["--storage", "sqlite:///study.db", "--out", "study.db"], "--out study.db is the study's storage", setup="study", proc=True),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "text", "--out", "study.db"], "is the study's storage", setup="study"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "text", "--out", "{tmp}/study.db"], "is the study's storage", setup="study"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "json", "--out", "study.db-journal"], "is the study's storage", setup="study"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--out", "study.db", "--force"], "is the study's storage", setup="study"),  # noqa: E501
    case("report", ["--storage", "journal:///study.log", "--format", "json", "--out", "study.log"], "--out study.log is the study's storage", setup="journal_study", proc=True),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "json", "--out", "other.db"], "is an SQLite database (a study storage)", setup=("study", "foreign_db")),  # noqa: E501
    case("report", ["--storage", "journal:///study.log", "--format", "text", "--out", "study.db"], "is an SQLite database", setup=("journal_study", "study"), proc=True),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--out", "study.log"], "is an Optuna journal file", setup=("study", "journal_study")),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "text", "--out", "notes.log"], "was not written by this tool", setup=("study", "notes")),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--out", "afile"], "add --force to replace it", setup=("study", "afile")),  # noqa: E501
    # ---- readers: a study this tool did not make is named as such; a broken journal the fix
    case("report", ["--storage", "journal:///study.log"], "run the study's run command once", setup="glued_journal", proc=True),  # noqa: E501
    case("report", ["--storage", "sqlite:///plain.db"], "a plain Optuna study of 5 trials", setup="plain_study", proc=True),  # noqa: E501
    case("report", ["--storage", "sqlite:///plain.db", "--format", "text"], "was not made by run_study.py", setup="plain_study"),  # noqa: E501
    # ---- dashboard
    case("dashboard", ["--port", "99999"], "'99999' is not a port", proc=True),
    case("dashboard", ["--port", "-1"], "is not a port"),
    case("dashboard", ["--port", "http"], "is not a port"),
    case("dashboard", ["--storage", "sqlite:///study.db", "--artifact-dir", "afile"], "--artifact-dir afile is a file", setup=("study", "afile"), proc=True),  # noqa: E501
    case("dashboard", ["--storage", "sqlite:///missing.db"], "no study database"),
    case("dashboard", ["--storage", "journal:///missing.log"], "no journal file"),
    case("dashboard", ["--storage", "sqlite:///other.db"], "another program's", setup="foreign_db"),  # noqa: E501
    # ---- the console command
    case("cli", ["nope"], "unknown command 'nope'", proc=True),
    case("cli", [], "give a command"),
    case("cli", ["probe", "--device", "cuda:0"], "no CUDA GPU", proc=True, cuda_free=True),
    case("cli", ["run", *FAST, "--seed", "-1"], "is not a seed"),
    case("cli", ["report", "--storage", "journal:///missing.log"], "no journal file"),
    case("cli", ["dashboard", "--port", "70000"], "is not a port"),
    case("cli", ["noise-scale", "--epochs", "-1"], "--epochs -1 must be at least 0"),
]
# fmt: on

DATA_TASKS = """
import sys
import torch
from torch.utils.data import Dataset, TensorDataset
from objectives.tasks import Task

SAMPLES = 96

def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 2)

def _task(train, val=None):
    return Task("t", lambda: torch.nn.Linear(4, 2), train, val or _data(), _data())

def make():  # the data of the stored study: SAMPLES changes it
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 4, generator=g)
    n = SAMPLES // 2
    return _task(TensorDataset(x[:n], (x[:n, 0] > 0).long()), _data(SAMPLES // 4))

def nan():
    x = torch.randn(64, 4)
    x[41, 2] = float("nan")
    return _task(TensorDataset(x, torch.arange(64) % 2))

def inf():
    x = torch.randn(64, 4)
    x[3] = float("-inf")
    return _task(_data(), TensorDataset(x, torch.arange(64) % 2))

class Records(Dataset):
    def __len__(self):
        return 200
    def __getitem__(self, i):
        if i == 150:
            raise OSError(f"record {i} is damaged")
        return torch.full((4,), float(i % 5)), torch.tensor(i % 2)

def unreadable():
    return _task(Records())

class Hungry(torch.nn.Module):  # fits the checks' 8 items, not a trial's batches
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
    def forward(self, x):
        if len(x) > 8:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 68719476736 bytes. Error code 12")
        return self.linear(x)

def hungry():
    return Task("hungry", Hungry, _data(), _data(), _data())

class Stream(Dataset):  # read item by item in training (a collate): item BAD is damaged
    def __len__(self):
        return 200
    def __getitem__(self, i):
        if i == BAD:
            raise OSError(f"record {i} is damaged")
        return torch.full((4,), float(i % 5)), torch.full((1,), float(i % 3))

def _unchecked(size):  # an item no check before the study reads
    from objectives.datacheck import sample_indices
    from objectives.taskcheck import check_indices
    seen = set(sample_indices(size)) | set(check_indices(size))
    return next(i for i in range(size) if i not in seen)

BAD = _unchecked(200)

def streamed():
    from objectives.metrics import MSE, mse
    stack = lambda items: tuple(torch.stack(part) for part in zip(*items))
    return Task("streamed", lambda: torch.nn.Linear(4, 1), Stream(), Stream(), Stream(),
                loss=lambda out, y: mse(out, y).reshape(-1), metric=MSE, collate=stack)

def exits():
    sys.exit(3)

def exits_quietly():
    sys.exit(0)
"""


def _data_study(folder: Path) -> None:
    """A finished one-trial study of ``data.py:make``, then ``data.py`` with fewer samples."""
    shutil.copy(_data_study_template(), folder / "study.db")
    (folder / "data.py").write_text(DATA_TASKS.replace("SAMPLES = 96", "SAMPLES = 80"))


DATA_STUDY = ["--epochs", "1", "--max-batch-size", "16", "--model", "mlp", "--scaling", "none"]
DATA_STUDY += ["--task", "data.py:make", "--storage", "sqlite:///study.db"]
DATA_STUDY += ["--artifact-dir", "none", "--checkpoint-dir", "none"]


def _data_study_template() -> Path:
    if not _DATA_TEMPLATE:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="bad-input-data-study-"))
        (folder / "data.py").write_text(DATA_TASKS)
        here = Path.cwd()
        os.chdir(folder)
        try:
            assert commands.run([*DATA_STUDY, "--trials", "1"]) == 0
        finally:
            os.chdir(here)
        _DATA_TEMPLATE.append(folder / "study.db")
    return _DATA_TEMPLATE[0]


_DATA_TEMPLATE: list[Path] = []
SETUPS["data_tasks"] = lambda d: (d / "data.py").write_text(DATA_TASKS)
SETUPS["data_study"] = _data_study
SETUPS["exits_on_import"] = lambda d: (d / "exiting.py").write_text("import sys\nsys.exit(5)\n")

# fmt: off
#: Numbers a run cannot represent, secrets in any URL parameter, the data a study was made on,
#: and the machine's own limits (memory, pipes, special files).
CASES += [
    # ---- numbers: finite, and within what the run can represent, before anything is stored
    case("run", [*FAST, "--lr-search-width", "inf"], "--lr-search-width inf: use 1 (off) or more"),  # noqa: E501
    case("run", [*FAST, "--lr-search-width", "nan"], "--lr-search-width nan: use 1 (off) or more"),  # noqa: E501
    case("run", [*FAST, "--base-lr", "1e308"], "keep them within 1e-30 to 1e+30", proc=True),
    case("run", [*FAST, "--base-lr", "1e-35"], "keep them within 1e-30 to 1e+30"),
    case("run", [*FAST, "--base-lr", "1e20", "--lr-search-width", "1e12"], "keep them within"),  # noqa: E501
    case("run", [*FAST, "--budget", "steps", "--steps", "1e24"], "invalid int value: '1e24'"),
    case("run", [*FAST, "--budget", "steps", "--steps", str(10**24)], "is above 2147483647"),
    case("run", [*FAST, "--epochs", str(2**31)], "--epochs 2147483648 is above 2147483647"),
    case("run", [*FAST, "--trials", str(10**30)], "is above 2147483647"),
    case("run", [*FAST, "--max-accumulation", str(2**40)], "is above 2147483647"),
    case("run", [*FAST, "--hidden", str(10**12)], "--hidden 1000000000000 is above 2147483647"),  # noqa: E501
    case("run", [*FAST, "--memory-budget", "1e400"], "is not understood"),
    case("run", [*FAST, "--memory-budget", "9" * 30 + "TiB"], "too large"),
    case("run", [*FAST, "--warmup-epochs", str(2**63)], "--warmup-epochs"),
    case("run", [*FAST, "--heartbeat-interval", "-0"], "must be positive and below"),
    # ---- secrets in any URL parameter, and a fix that names the real problem
    case("run", [*FAST, "--storage", "postgresql://alice@127.0.0.1:9/db?auth_token=s3cretpw"], "auth_token=***", proc=True),  # noqa: E501
    case("run", [*FAST, "--storage", "postgresql://alice@127.0.0.1:9/db?client_secret=s3cretpw"], "remove the parameters it does not know"),  # noqa: E501
    case("run", [*FAST, "--storage", "postgresql://alice@127.0.0.1:9/db?api-key=s3cretpw&sslmode=disable"], "api-key=***&sslmode=disable"),  # noqa: E501
    case("run", [*FAST, "--storage", "postgresql://alice:hunter@127.0.0.1:9/db?x-token=22ab"], "x-token=***"),  # noqa: E501
    case("run", [*FAST, "--storage", "postgresql://alice@127.0.0.1:9/db?s3cretpw"], "db?***"),
    case("run", [*FAST, "--storage", "sqlite:///s.db?auth_token=s3cretpw"], "SQLite takes no parameter auth_token"),  # noqa: E501
    case("run", [*FAST, "--storage", "mysql://u@127.0.0.1:9/x?api-key=s3cretpw"], "driver is missing"),  # noqa: E501
    case("report", ["--storage", "postgresql://alice@127.0.0.1:9/db?client_secret=s3cretpw"], "client_secret=***"),  # noqa: E501
    case("dashboard", ["--storage", "postgresql://alice@127.0.0.1:9/db?auth_token=s3cretpw"], "auth_token=***"),  # noqa: E501
    # ---- storage paths that are not a regular file or folder
    case("run", [*FAST, "--storage", "sqlite:////"], "names a folder, not a file", proc=True),
    case("run", [*FAST, "--storage", "sqlite:///pipe.db"], "is a named pipe (FIFO)", setup="fifo", proc=True),  # noqa: E501
    case("run", [*FAST, "--storage", "journal:///pipe.db"], "is a named pipe (FIFO)", setup="fifo"),  # noqa: E501
    case("run", [*FAST, "--storage", "sqlite:////dev/null"], "/dev/null is a device"),
    case("run", [*FAST, "--storage", "journal:////dev/null"], "/dev/null is a device"),
    case("report", ["--storage", "sqlite:///pipe.db"], "pipe.db", setup="fifo"),
    # ---- the data is part of the study, and is checked before anything is stored
    case("run", [*DATA_STUDY, "--trials", "2"], "was created on other data: train size 48 -> 40; val size 24 -> 20", setup="data_study", proc=True),  # noqa: E501
    case("run", [*FAST, "--task", "data.py:nan"], "train item 41 has NaN in its inputs", setup="data_tasks"),  # noqa: E501
    case("run", [*FAST, "--task", "data.py:inf"], "val item 3 has an infinite value in its inputs", setup="data_tasks"),  # noqa: E501
    case("run", [*FAST, "--task", "data.py:unreadable"], "train item 150 could not be read: OSError: record 150 is damaged", setup="data_tasks"),  # noqa: E501
    case("probe", ["--task", "data.py:nan"], "train item 41 has NaN", setup="data_tasks"),
    case("noise", ["--task", "data.py:unreadable"], "train item 150 could not be read", setup="data_tasks"),  # noqa: E501
    # ---- the machine's limits and a task's own exits: the user's problem, said so
    case("run", [*FAST, "--task", "data.py:hungry", "--storage", "sqlite:///oom.db", "--checkpoint-dir", "none", "--artifact-dir", "none"], "out of memory (DefaultCPUAllocator: can't allocate memory", setup="data_tasks", creates=("oom.db",), proc=True),  # noqa: E501
    case("run", [*FAST, "--task", "data.py:streamed", "--storage", "sqlite:///s.db", "--checkpoint-dir", "none", "--artifact-dir", "none"], "item 1 could not be read: OSError: record 1 is damaged", setup="data_tasks", creates=("s.db",)),  # noqa: E501
    case("run", [*FAST, "--task", "data.py:exits"], "the factory called sys.exit(3)", setup="data_tasks", proc=True),  # noqa: E501
    case("run", [*FAST, "--task", "data.py:exits_quietly"], "the factory called sys.exit(0)", setup="data_tasks"),  # noqa: E501
    case("run", [*FAST, "--task", "exiting.py:make"], "importing exiting.py called sys.exit(5)", setup="exits_on_import"),  # noqa: E501
    case("probe", ["--task", "data.py:exits"], "the factory called sys.exit(3)", setup="data_tasks"),  # noqa: E501
    case("report", ["--storage", "sqlite:///study.db", "--format", "text"], None, code=141, setup="study", proc=True, closed_stdout=True),  # noqa: E501
    case("cli", ["--help"], None, code=141, proc=True, closed_stdout=True),
    case("probe", ["--help"], None, code=141, proc=True, closed_stdout=True),
    case("probe", ["--timed-steps", str(2**31)], "--timed-steps 2147483648 is above 2147483647"),  # noqa: E501
    case("noise", ["--batch-size", str(10**20)], "is above 2147483647"),
    case("noise", ["--b-big", str(2**64)], "is above 2147483647"),
    # ---- found by the fuzz stage (tests/test_fuzz.py)
    case("report", ["--storage", "postgresql://alice:s3cretpw@127.0.0.1:abc/db"], "is the port a number?"),  # noqa: E501
    case("report", ["--storage", "postgresql://alice@[::1]:9/db?auth_token=s3cretpw"], "auth_token=***"),  # noqa: E501
    case("report", ["--storage", "127.0.0.1:9/db?a=b=s3cretpw"], "db?a=*** is not a database URL"),  # noqa: E501
    case("run", [*FAST, "--storage", "//127.0.0.1:9/db?x-token=s3cretpw"], "x-token=***"),
    case("run", [*FAST, "--storage", "journal:///dir/"], "give a file"),
    case("run", [*FAST, "--storage", "journal:////"], "give a file"),
    case("run", [*FAST, "--storage", "sqlite:///a%00b.db"], "holds a NUL character"),
    case("run", [*FAST, "--storage", "sqlite:///d/"], "names a folder, not a file"),
    # ---- batch-size schedules (--batch-schedule) and the branch command
    case("run", [*FAST, "--batch-schedule", "32@0.5"], "the first must start at 0", proc=True),
    case("run", [*FAST, "--batch-schedule", "8@0,16@0.5,32@0.5"], "do not increase"),
    case("run", [*FAST, "--batch-schedule", "24@0"], "batch size 24 of the schedule is not a power of two"),  # noqa: E501
    case("run", [*FAST, "--batch-schedule", "8@0,16"], "has no '@'"),
    case("run", [*FAST, "--batch-schedule", "8@zero"], "is not BATCH@START_FRACTION"),
    case("run", [*FAST, "--batch-schedule", "8@0,16@1.5"], "is not in [0, 1)"),
    case("run", [*FAST, "--batch-schedule", "8@0,16@nan"], "must be a number in [0, 1)"),
    case("run", [*FAST, "--batch-schedule", ""], "--batch-schedule is empty"),
    case("run", [*FAST, "--batch-schedule", "8@0,16@0.5", "--budget", "steps", "--steps", "9"], "needs an epoch budget"),  # noqa: E501
    case("run", [*STUDY, "--batch-schedule", "8@0,1024@0.5"], "above the space's largest batch 64", proc=True),  # noqa: E501
    case("branch", [*FAST, "--branch-repeats", "1"], "--branch-repeats 1 must be at least 2", proc=True),  # noqa: E501
    case("branch", [*FAST, "--branch-window", "0"], "--branch-window 0: use a fraction"),
    case("branch", [*FAST, "--branch-points", "0"], "--branch-points 0 must be at least 1"),
    case("branch", [*FAST, "--reference-batch-size", "12"], "is not a power of two"),
    case("branch", [*FAST, "--loss-tolerance", "nan"], "--loss-tolerance nan"),
    case("branch", [*FAST, "--reference-batch-size", "128"], "above the space's largest batch 64"),  # noqa: E501
    case("branch", [*FAST, "--batch-schedule", "8@1"], "is not in [0, 1)"),
    case("branch", [*FAST, "--output", "afile"], "was not written by this tool", setup="afile"),
]
# fmt: on

IN_PROCESS = {
    "run": commands.run,
    "probe": commands.probe,
    "report": commands.report,
    "dashboard": commands.dashboard,
    "noise": commands.noise_scale,
    "branch": commands.branch,
    "cli": commands.main,
}
SCRIPTS = {
    "run": "run_study.py",
    "probe": "probe.py",
    "report": "report.py",
    "dashboard": "dashboard.py",
    "noise": "noise_scale.py",
    "branch": "branch.py",
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``folder``, by relative path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(folder))
        if path.is_dir():
            out[rel] = "folder"
        elif not path.is_file():  # a FIFO or a device: reading it would block
            out[rel] = "special"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_case(
    entry: str, argv: list[str], folder: Path, proc: bool, capsys, closed_stdout: bool = False
) -> tuple:
    """``(exit code, stdout, stderr)`` of one entry point with ``argv``, run in ``folder``.

    With ``closed_stdout`` (a subprocess), standard output is a pipe whose reader has gone.
    """
    if proc:
        command = (
            [sys.executable, str(ROOT / "scripts" / SCRIPTS[entry])]
            if entry in SCRIPTS
            else [sys.executable, "-m", "batchsize_study.commands"]
        )  # noqa: E501
        if closed_stdout:
            read_end, write_end = os.pipe()
            os.close(read_end)
            env = {**script_env(), "PYTHONUNBUFFERED": ""}  # buffered, as in a user's pipe
            try:
                done = subprocess.run(
                    [*command, *argv],
                    cwd=folder,
                    env=env,
                    stdout=write_end,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=60,
                )
            finally:
                os.close(write_end)
            return done.returncode, "", done.stderr
        done = subprocess.run(
            [*command, *argv],
            cwd=folder,
            env=script_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stdout, done.stderr
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = IN_PROCESS[entry](argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("entry, argv, code, message, setup, proc", CASES)
def test_bad_input_is_one_line_and_changes_nothing(
    entry, argv, code, message, setup, proc, tmp_path, monkeypatch, capsys
):
    creates = [name.split(":", 1)[1] for name in setup if name.startswith("creates:")]
    closed = "closed_stdout" in setup
    for name in setup:
        if name in SETUPS:
            SETUPS[name](tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    got, out, err = run_case(entry, argv, tmp_path, proc, capsys, closed)
    shown = out + err
    assert got == code, shown
    lines = err.strip().splitlines()
    if message is None:
        assert lines == [], err
    else:
        assert len(lines) == 1 and message in lines[0], err
        assert len(lines[0]) < 400, err
    assert "Traceback" not in shown and "internal error" not in shown, shown
    for secret in SECRETS:
        assert secret not in shown, shown
    after = snapshot(tmp_path)
    if entry in ("run", "cli") and any("study" in name for name in setup):
        after.pop("study.db.claim-lock", None)  # a run may lock a study it resumes
    after = {k: v for k, v in after.items() if not any(k.startswith(c) for c in creates)}
    assert after == before


def test_the_corpus_holds_a_subprocess_sample_of_every_entry_point():
    sampled = {c.values[0] for c in CASES if c.values[5]}
    assert sampled == set(IN_PROCESS)
    assert len(CASES) >= 100


def test_an_internal_error_is_one_line_naming_its_log_without_secrets(
    tmp_path, monkeypatch, capsys
):
    import study.orchestrate

    def crash(config, backend):
        raise RuntimeError(f"boom while opening {config.storage}")

    monkeypatch.setattr(study.orchestrate, "run_study", crash)
    monkeypatch.setattr(safety, "CRASH_DIR", tmp_path / "crashes")
    monkeypatch.chdir(tmp_path)
    code = commands.run([*FAST, "--storage", PG])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "internal error (RuntimeError: boom" in lines[0]
    logs = list((tmp_path / "crashes").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    text = logs[0].read_text()
    assert "Traceback" in text and "boom" in text
    assert "s3cretpw" not in err + text


def test_a_disk_full_error_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import errno

    import study.orchestrate

    def full(config, backend):
        raise OSError(errno.ENOSPC, "No space left on device", "storage/x.db")

    monkeypatch.setattr(study.orchestrate, "run_study", full)
    monkeypatch.chdir(tmp_path)
    assert commands.run(FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full: writing a file (storage/x.db)" in err[0]
    assert "failed on the filesystem mounted at" in err[0] and "free of" in err[0]


def test_artifact_dir_none_means_off_in_the_dashboard_too(tmp_path, monkeypatch, capsys):
    import study.report.dashboard

    _study(tmp_path)
    seen = {}

    def server(storage, *, artifact_dir, host, port, quiet):
        seen["artifact_dir"] = artifact_dir
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(study.report.dashboard, "make_dashboard_server", server)
    monkeypatch.chdir(tmp_path)
    argv = ["--storage", "sqlite:///study.db", "--artifact-dir", "none"]
    assert commands.dashboard(argv) == 2
    assert seen == {"artifact_dir": None} and not (tmp_path / "none").exists()
    assert "cannot listen" in capsys.readouterr().err


def test_a_run_refused_after_opening_its_storage_leaves_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*FAST, "--task", "synthetic", "--synthetic-samples", "10"]
    for url in ("sqlite:///new/s.db", "journal:///new/s.log"):
        with pytest.raises(SystemExit):
            commands.run([*argv, "--storage", url])
        assert list(tmp_path.iterdir()) == [], url
    assert "too small" in capsys.readouterr().err


def test_the_success_line_hides_the_password():
    from study.storage import redact

    for url in (
        "postgresql://alice:s3cretpw@host/db",
        "postgresql://alice@host/db?password=s3cretpw",
        "postgresql://alice:hunter@22ab@host/db",
        "postgresql+psycopg://alice:hunter%4022ab@host:5432/db?sslmode=require",
    ):
        shown = redact(url)
        assert not any(s in shown for s in SECRETS), shown
        assert shown.startswith(url.split("://")[0] + "://alice")


def test_every_query_value_is_hidden_unless_known_harmless():
    from study.storage import redact

    for url, shown in (
        ("postgresql://a@h/db?auth_token=s3cretpw", "postgresql://a@h/db?auth_token=***"),
        ("postgresql://a@h/db?client_secret=s3cretpw", "postgresql://a@h/db?client_secret=***"),
        ("postgresql://a@h/db?api-key=s3cretpw", "postgresql://a@h/db?api-key=***"),
        ("postgresql://a@h/db?Some_New_Key=s3cretpw", "postgresql://a@h/db?Some_New_Key=***"),
        ("postgresql://a@h/db?s3cretpw", "postgresql://a@h/db?***"),
        (
            "postgresql://a:hunter@h/db?sslmode=require&connect_timeout=5&password=22ab",
            "postgresql://a:***@h/db?sslmode=require&connect_timeout=5&password=***",
        ),
        ("sqlite:///s.db?timeout=20", "sqlite:///s.db?timeout=20"),
    ):
        assert redact(url) == shown
        assert safety.scrub(f"failed: {url}", [url]) == f"failed: {shown}"


def test_an_unknown_url_parameter_is_not_blamed_on_the_host():
    from study.storage import StorageError, open_storage

    with pytest.raises(StorageError) as refused:
        open_storage("postgresql://alice@127.0.0.1:9/db?client_secret=s3cretpw")
    message = str(refused.value)
    assert "host" not in message and "port" not in message and "s3cretpw" not in message
    assert 'invalid connection option "client_secret"' in message


def test_out_of_memory_is_told_apart_without_torch():
    assert safety.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to ..."))
    assert safety.is_out_of_memory(MemoryError())
    message = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
    assert safety.is_out_of_memory(RuntimeError(message))
    assert not safety.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not safety.is_out_of_memory(ValueError("out of memory"))


def test_an_internal_errors_log_hides_query_secrets_too(tmp_path, monkeypatch, capsys):
    import study.orchestrate

    def crash(config, backend):
        raise RuntimeError(f"boom while opening {config.storage}")

    monkeypatch.setattr(study.orchestrate, "run_study", crash)
    monkeypatch.setattr(safety, "CRASH_DIR", tmp_path / "crashes")
    monkeypatch.chdir(tmp_path)
    url = "postgresql://alice@127.0.0.1:9/db?auth_token=s3cretpw&client_secret=hunter"
    assert commands.run([*FAST, "--storage", url]) == 1
    err = capsys.readouterr().err
    (log,) = (tmp_path / "crashes").glob("crash-*.log")
    text = log.read_text()
    assert "boom" in text and "auth_token=***" in text
    assert not any(s in err + text for s in SECRETS)
