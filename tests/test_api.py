"""From Python: a Task object studied in one process, the study and its answer returned."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from batchsize_study.api import StudyResult, run_study
from objectives import MSE, Task
from objectives.metrics import mse
from study.config import ConfigError, StudyConfig
from study.decision import plan_settings
from study.record import study_metric


def line_task() -> Task:
    """A small regression problem: y = x . w + noise, a linear model."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=g)

    def split(n: int) -> TensorDataset:
        x = torch.randn(n, 6, generator=g)
        return TensorDataset(x, (x @ w + 0.1 * torch.randn(n, generator=g)).unsqueeze(1))

    return Task(
        "line",
        lambda: torch.nn.Linear(6, 1),
        split(256),
        split(64),
        split(64),
        loss=mse,
        metric=MSE,
    )


def settings(tmp_path, **more) -> dict:
    return {
        "trials": 8,
        "epochs": 2,
        "max_batch_size": 32,
        "min_batch_size": 16,
        "scaling": "none",
        "base_lr": 0.05,
        "confirm_runs": 2,
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "artifact_dir": "none",
        "device": "cpu",
        **more,
    }


def test_a_task_object_is_studied_in_this_process_and_the_answer_comes_back(tmp_path):
    result = run_study(task=line_task(), **settings(tmp_path))
    assert isinstance(result, StudyResult)
    study = result.study
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(study.trials) <= 8 and study.direction.name == "MINIMIZE"  # it may stop early
    assert result.recommendation["trials_used"] == len(finished)
    assert study_metric(study).name == "mse"
    assert study.user_attrs["config"]["task"] == "python:line"
    assert study.user_attrs["plan"] == plan_settings()  # pinned for resumes and readers
    answer = result.recommendation
    assert answer == study.user_attrs["recommendation"]
    assert set(answer) >= {"most_accurate", "fastest_within", "tolerance", "budget", "statement"}
    best = answer["most_accurate"]
    assert best is not None and best["confirm_runs"] >= 2 and best["batch_size"] in (16, 32)
    assert result.statement == answer["statement"] and "Answer" in result.log
    assert {t.user_attrs.get("phase") for t in study.trials} <= {"search", "confirm"}


def test_the_same_call_resumes_the_study_and_the_command_line_cannot(tmp_path):
    first = run_study(task=line_task(), **settings(tmp_path, trials=2))
    assert len(first.study.trials) == 2  # the exploration; no room to confirm its leader
    assert first.recommendation["most_accurate"] is None
    again = run_study(task=line_task(), **settings(tmp_path, trials=6))
    assert 4 <= len(again.study.trials) <= 6  # resumed: the leader confirmed, maybe more
    assert again.recommendation["most_accurate"] is not None
    proc = subprocess.run(
        [sys.executable, "-m", "batchsize_study.commands", "run", "--task", "python:line"]
        + ["--trials", "7", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--device", "cpu"]
        + ["--epochs", "2", "--min-batch-size", "16", "--max-batch-size", "32"]
        + ["--scaling", "none", "--base-lr", "0.05", "--confirm-runs", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "a Task object given from Python" in lines[0], proc.stderr


def test_a_task_object_with_worker_processes_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(ConfigError, match="importable function returning the Task"):
        run_study(task=line_task(), **settings(tmp_path, workers=2))
    assert not (tmp_path / "s.db").exists()  # nothing stored


def test_defaults_come_from_a_config_and_keyword_settings_override_it(tmp_path):
    config = StudyConfig(**settings(tmp_path, trials=3))
    result = run_study(config, task=line_task(), epochs=1)
    assert result.study.user_attrs["config"]["epochs"] == 1
    assert len(result.study.trials) <= 3


def test_verbose_shows_progress_as_the_run_goes_and_keeps_the_log(tmp_path, capsys):
    result = run_study(task=line_task(), verbose=True, **settings(tmp_path, trials=2))
    shown = capsys.readouterr().out
    assert "[1/2]" in shown and "[2/2]" in shown  # a line per finished trial
    assert shown == result.log
    (tmp_path / "quiet").mkdir()
    quiet = run_study(task=line_task(), **settings(tmp_path / "quiet", trials=2))
    assert capsys.readouterr().out == "" and "[2/2]" in quiet.log  # off outside a notebook


def _value_transactions(run) -> list[int]:
    """Run ``run()``; return, per committed transaction that stored epoch values, how many."""
    import sqlalchemy
    from sqlalchemy.engine import Engine

    pending: dict[int, int] = {}
    done: list[int] = []

    def seen(conn, _cursor, statement, *_args) -> None:
        if "trial_intermediate_values" in statement and statement.lstrip()[:6] in (
            "INSERT",
            "UPDATE",
        ):
            pending[id(conn)] = pending.get(id(conn), 0) + 1

    def committed(conn) -> None:
        if pending.get(id(conn)):
            done.append(pending.pop(id(conn)))

    sqlalchemy.event.listen(Engine, "before_cursor_execute", seen)
    sqlalchemy.event.listen(Engine, "commit", committed)
    try:
        run()
    finally:
        sqlalchemy.event.remove(Engine, "before_cursor_execute", seen)
        sqlalchemy.event.remove(Engine, "commit", committed)
    return done


def test_trials_no_pruner_reads_store_several_epochs_a_transaction_the_others_each_epoch(
    tmp_path,
):
    (tmp_path / "none").mkdir()
    unpruned = settings(tmp_path / "none", trials=2, epochs=8, pruner="none")
    done = _value_transactions(lambda: run_study(task=line_task(), **unpruned))
    study = run_study(task=line_task(), **unpruned).study  # resumed: nothing more to run
    assert [sorted(t.intermediate_values) for t in study.trials] == [list(range(1, 9))] * 2
    assert sum(done) == 16 and len(done) < 8  # epochs of milliseconds: stored a few at a time

    (tmp_path / "median").mkdir()
    prunable = settings(tmp_path / "median", trials=1, epochs=4, pruner="median")
    done = _value_transactions(lambda: run_study(task=line_task(), **prunable))
    assert done == [1, 1, 1, 1]  # each epoch stored before the pruner is asked
