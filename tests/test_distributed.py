"""One trial on several devices: real 2-process gloo groups on the CPU, real kills.

Every test starts real helper ranks (``objectives.distributed``): a group of two processes
costs a few seconds to start, so each test starts as few as it can.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives.backend import build_task
from objectives.data import place
from objectives.distributed import Job, TrialGroup
from objectives.train import TrainSettings, make_step, train_model
from study.config import StudyConfig
from tests.conftest import ROOT, script_env

CONFIG = StudyConfig(task="digits", model="mlp", hidden=(16,))
TINY = ["--model", "mlp", "--hidden", "16", "--artifact-dir", "none"]


@pytest.fixture(scope="module")
def digits():
    task = build_task(CONFIG)
    train = place(task.train, "cpu", task.collate, "train")
    val = place(task.val, "cpu", task.collate, "val")
    return task, train, val


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread in this process and in the helpers it starts: a kernel's summation
    order then does not depend on how many threads the machine's load leaves it, so the
    equality checks compare the two ways of batching and nothing else."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def _on_two_ranks(task, train, val, model, settings, *, start=0, optimizer_state=None):
    """Train ``model`` as rank 0 of a real 2-process group; return its result and helpers."""
    group = TrialGroup(CONFIG, "cpu", 2, timeout_s=60)
    with group:
        step = make_step(model, settings, task)
        if optimizer_state is not None:
            step.optimizer.load_state_dict(optimizer_state)
        on_epoch = group.start(model, step, Job(settings, start, optimizer_state), None)
        result = train_model(
            model,
            train,
            val,
            settings,
            on_epoch,
            step=step,
            start_epoch=start,
            task=task,
            parallel=group.ranks,
        )
    return result, group.helpers


def test_two_ranks_of_b_with_accumulation_equal_one_process_of_2b(digits, one_thread):
    """2 processes x 16 per micro-batch x 2 accumulated = one process's batch of 64: the same
    parameters after two epochs of updates (to 1e-6 in float32), the same metric."""
    task, train, val = digits
    torch.manual_seed(0)
    one, two = task.build_model(), None
    two = copy.deepcopy(one)
    alone = TrainSettings(
        epochs=2, batch_size=64, micro_batch_size=64, lr=0.05, optimizer="sgd", seed=3
    )
    shared = TrainSettings(
        epochs=2, batch_size=64, micro_batch_size=16, lr=0.05, optimizer="sgd", seed=3
    )
    expected = train_model(one, train, val, alone, task=task)
    result, helpers = _on_two_ranks(task, train, val, two, shared)
    seen = (
        _max_diff(one, two),
        (result.val_metric, expected.val_metric),
        (result.epochs[-1].train_loss, expected.epochs[-1].train_loss),
        [h.returncode for h in helpers],
    )
    assert _max_diff(one, two) < 1e-6, seen
    assert result.val_metric == pytest.approx(expected.val_metric, abs=1e-9), seen
    assert result.epochs[-1].train_loss == pytest.approx(
        expected.epochs[-1].train_loss, rel=1e-5
    ), seen
    assert result.samples_seen == expected.samples_seen  # the group's samples, not a rank's
    assert [h.returncode for h in helpers] == [0], seen


def test_a_resumed_attempt_restores_every_rank(digits, one_thread):
    """Adam's state saved after one epoch (one process) and resumed on two ranks: the second
    epoch equals one process resuming it, which holds only if the helper restored it too."""
    task, train, val = digits
    settings = TrainSettings(epochs=1, batch_size=64, micro_batch_size=32, lr=3e-3, seed=5)
    torch.manual_seed(1)
    model = task.build_model()
    step = make_step(model, settings, task)
    train_model(model, train, val, settings, step=step, task=task)
    saved = copy.deepcopy(step.optimizer.state_dict())
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    resumed = TrainSettings(epochs=1, batch_size=64, micro_batch_size=32, lr=3e-3, seed=6)
    step_one = make_step(one, resumed, task)
    step_one.optimizer.load_state_dict(copy.deepcopy(saved))  # loading shares the tensors
    train_model(one, train, val, resumed, step=step_one, start_epoch=1, task=task)
    _on_two_ranks(task, train, val, two, resumed, start=1, optimizer_state=saved)
    assert _max_diff(one, two) < 1e-6


def test_a_prune_stops_every_rank_at_the_same_epoch(digits):
    """Rank 0 prunes after epoch 2 of 5: the helper stops there too and exits by itself (a
    helper that trained on would block in epoch 3's collective and be killed instead)."""
    task, train, val = digits
    settings = TrainSettings(epochs=5, batch_size=64, micro_batch_size=32, lr=1e-3, seed=2)
    model = task.build_model()
    seen = []

    def on_epoch(epoch) -> None:
        seen.append(epoch.epoch)
        if epoch.epoch == 2:
            raise optuna.TrialPruned("pruned after evaluation 2")

    group = TrialGroup(CONFIG, "cpu", 2, timeout_s=60)
    with pytest.raises(optuna.TrialPruned), group:
        step = make_step(model, settings, task)
        lead = group.start(model, step, Job(settings, 0, None), on_epoch)
        train_model(model, train, val, settings, lead, step=step, task=task, parallel=group.ranks)
    assert seen == [1, 2]
    assert [h.returncode for h in group.helpers] == [0]  # exited itself, not killed


def _children(pid: int) -> list[int]:
    """Live helper ranks whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid"))
        if ppid == pid and b"helper_main" in cmdline and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


def _run(tmp_path: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_study.py"),
            *TINY,
            *flags,
            "--storage",
            f"sqlite:///{tmp_path / 'study.db'}",
        ],
        cwd=tmp_path,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_rank_fails_the_trial_which_resumes_and_the_budget_stays_exact(tmp_path):
    """SIGKILL rank 1 mid-epoch: the trial is FAIL within seconds, queued again and resumed
    from its checkpoint on a fresh group; the study ends with exactly its 2 trials and no
    helper is left running."""
    run = _run(
        tmp_path,
        "--trials",
        "2",
        "--epochs",
        "6",
        "--pruner",
        "none",
        "--min-batch-size",
        "8",
        "--max-batch-size",
        "8",
        "--max-accumulation",
        "1",
        "--devices-per-trial",
        "2",
        "--collective-timeout",
        "20",
    )
    killed: list[int] = []
    checkpoint = tmp_path / "checkpoints" / "batch-size" / "trial-0.pt"

    def kill_after_first_epoch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            helpers = _children(run.pid)
            if checkpoint.exists() and helpers:
                time.sleep(0.1)  # into the next epoch
                os.kill(helpers[0], signal.SIGKILL)
                killed.append(time.time())
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_epoch)
    killer.start()
    out, err = run.communicate(timeout=240)
    killer.join()
    assert run.returncode == 0, err
    assert killed, "no helper rank was seen to kill"
    assert "rank 1" in err and "was killed by SIGKILL" in err
    study = optuna.load_study(study_name="batch-size", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert (failed.datetime_complete.timestamp() - killed[0]) < 30  # bounded, not a hang
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.user_attrs["devices"] == 2
    assert _children(run.pid) == []


@pytest.mark.slow
def test_two_concurrent_two_rank_trials_and_the_global_batch_in_record_and_answer(tmp_path):
    """--workers 2 --devices-per-trial 2: two trials of two processes at once (ports picked
    by the OS, no clash); every record and the answer give the global batch = micro x
    devices x accumulation."""
    run = _run(
        tmp_path,
        "--trials",
        "4",
        "--epochs",
        "2",
        "--workers",
        "2",
        "--devices-per-trial",
        "2",
        "--min-batch-size",
        "16",
        "--max-batch-size",
        "16",
        "--max-accumulation",
        "1",
        "--scaling",
        "linear",
        "--confirm-runs",
        "2",
        "--pruner",
        "none",
    )
    out, err = run.communicate(timeout=240)
    assert run.returncode == 0, err
    study = optuna.load_study(study_name="batch-size", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials].count(TrialState.COMPLETE) >= 2
    assert not [t for t in trials if t.state == TrialState.FAIL], err
    for t in trials:
        a = t.user_attrs
        assert a["batch_size"] == a["micro_batch_size"] * a["devices"] * a["accumulation_steps"]
        assert a["devices"] == 2 and a["batch_size"] == 32 and a["micro_batch_size"] == 16
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), (
        "no two trials overlapped"
    )
    cell = study.user_attrs["recommendation"]["most_accurate"]
    assert (cell["batch_size"], cell["micro_batch_size"], cell["devices"]) == (32, 16, 2)
    assert cell["accumulation_steps"] == 1


@pytest.mark.slow
def test_killing_rank_0_leaves_no_helper_behind(tmp_path):
    """SIGKILL the process that holds the trial (rank 0): its helper rank ends within
    seconds (the parent-death signal), none is left running."""
    run = _run(tmp_path, "--trials", "1", "--epochs", "20", "--pruner", "none",
               "--min-batch-size", "8", "--max-batch-size", "8", "--max-accumulation", "1",
               "--devices-per-trial", "2")  # fmt: skip
    deadline = time.monotonic() + 60
    helpers: list[int] = []
    while not helpers and time.monotonic() < deadline and run.poll() is None:
        helpers = _children(run.pid)
        time.sleep(0.05)
    assert helpers, "no helper rank started"
    run.kill()
    run.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(map(_running, helpers)):
        time.sleep(0.05)
    assert not any(map(_running, helpers))


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
