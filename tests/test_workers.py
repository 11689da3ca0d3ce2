"""Many workers on one study: real processes, real SQLite files, real kills and real OOMs.

The PostgreSQL side of the same behaviour is in ``test_postgres.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch.optim.optimizer import register_optimizer_step_pre_hook

from objectives import trial_seed
from tests.conftest import ROOT, run_script, script_env

SMALL = ["--model", "mlp", "--hidden", "16", "--pruner", "none"]
QUICK = [*SMALL, "--epochs", "1", "--max-batch-size", "64"]
# Long enough to kill a trial in the middle: batch 8 is ~135 steps per epoch.
LONG = [*SMALL, "--epochs", "8", "--min-batch-size", "8", "--max-batch-size", "8"]
BEAT = ["--heartbeat-interval", "1", "--grace-period", "3"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A worker without torch: the claim loop of run_trials around an objective that only sleeps,
# so that many claims race in little time.
BUDGET_WORKER = textwrap.dedent(
    """
    import sys, time
    import optuna
    from study.locks import storage_lock
    from study.runner import run_trials
    from study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, total = sys.argv[1], int(sys.argv[2])
    study = optuna.load_study(study_name="race", storage=open_storage(url, 1, 3))

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        time.sleep(0.02)
        return x

    run_trials(study, objective, total, lock=storage_lock(url), poll_s=0.05)
    """
)


def load(url: str, name: str = "batch-size") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def counts(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def race(url: str, total: int, workers: int = 4) -> None:
    """Create study ``race`` once, then let ``workers`` processes spend its budget at once."""
    from study.storage import open_storage

    optuna.create_study(study_name="race", storage=open_storage(url, 1, 3))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUDGET_WORKER, url, str(total)],
            env=script_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


@pytest.mark.parametrize(
    "kind, attempt", [("sqlite", 0), ("sqlite", 1), ("sqlite", 2), ("journal", 0)]
)
def test_four_racing_workers_spend_exactly_the_budget(tmp_path, kind, attempt):
    url = f"sqlite:///{tmp_path / 'r.db'}" if kind == "sqlite" else f"journal:///{tmp_path}/r.log"
    race(url, total=24)
    from study.storage import open_storage

    trials = optuna.load_study(study_name="race", storage=open_storage(url, 1, 3)).trials
    assert counts(trials) == {"COMPLETE": 24}  # not one trial created past the budget


def _start(url: str, trials: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/run_study.py"), "--trials", str(trials)]
        + ["--storage", url, *extra],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(url: str, proc: subprocess.Popen, ready, timeout: float = 180):
    """Poll the study until ``ready(trials)`` returns something truthy; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = load(url).trials
        except Exception:  # the study may not exist yet
            trials = []
        found = ready(trials)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the study")


def _pid(trial) -> int:
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])


def _mid_trial(min_epochs: int, checkpoints: Path | None = None):
    """A RUNNING trial with a worker, ``min_epochs`` to 5 of its 8 epochs reported, and, with
    ``checkpoints`` (the study's checkpoint folder), its checkpoint written.

    The upper bound keeps a slow poll from picking a trial about to finish before the kill.
    An epoch's value is stored just before that epoch's checkpoint is written, so a kill that
    must find a checkpoint waits for the file itself.
    """

    def ready(trials):
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and "worker" in t.user_attrs
            and min_epochs <= len(t.intermediate_values) <= 5
            and (checkpoints is None or (checkpoints / f"trial-{t.number}.pt").exists())
        ]
        return running[0] if running else None

    return ready


@pytest.mark.slow
def test_workers_share_one_study_and_record_worker_and_device(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = run_script("run_study.py", "--trials", "6", *QUICK, "--workers", "3", "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert "starting 3 workers" in proc.stdout and "per cell" in proc.stdout
    trials = load(url).trials
    assert counts(trials) == {"COMPLETE": 6}
    workers = {t.user_attrs["worker"] for t in trials}
    assert all(t.user_attrs["device"] == "cpu" for t in trials)
    assert 1 < len(workers) <= 3  # several processes ran trials; none is the parent
    parent_line = [line for line in proc.stdout.splitlines() if line.startswith("trial ")]
    assert all("[w" in line for line in parent_line)  # each worker names itself


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_failed_in_the_grace_period_and_resumed(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    checkpoints = tmp_path / "checkpoints"
    proc = _start(url, 3, *LONG, *BEAT, "--workers", "2", "--checkpoint-dir", str(checkpoints))
    victim = _wait_for(url, proc, _mid_trial(min_epochs=1, checkpoints=checkpoints / "batch-size"))
    os.kill(_pid(victim), signal.SIGKILL)
    killed_at = time.time()
    failed_at = _wait_for(
        url,
        proc,
        lambda ts: time.time() if ts[victim.number].state == TrialState.FAIL else None,
        timeout=60,
    )
    assert failed_at - killed_at <= 3 + 1 + 2  # grace period, heartbeat interval, polling
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "was killed by SIGKILL" in err
    trials = load(url).trials
    assert counts(trials) == {"COMPLETE": 3, "FAIL": 1}
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == victim.params  # the same trial, continued:
    assert retry[0].user_attrs["seed"] == trial_seed(0, victim.number)
    assert retry[0].user_attrs["resumed_from_epoch"] >= 1  # not started over
    assert sorted(retry[0].intermediate_values) == list(range(1, 9))
    assert retry[0].user_attrs["epochs_completed"] == 8
    assert not any((tmp_path / "checkpoints" / "batch-size").iterdir())  # cleaned up


@pytest.mark.slow
def test_after_a_crash_of_everything_the_same_command_finishes_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    # 40 epochs: the two workers' trials drift apart, and a wide window of epochs still finds
    # both in the middle of a trial at once (with 8 epochs the study could end first).
    # One cell: one exploration trial, then the three confirmation runs the budget has room for
    args = [*SMALL, "--epochs", "40", "--min-batch-size", "8", "--max-batch-size", "8"]
    args += [*BEAT, "--workers", "2", "--scaling", "linear"]
    proc = _start(url, 4, *args)

    def two_mid_trial_after_one_done(trials):
        # Both trials well inside their 40 epochs, so neither finishes before the kill lands.
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and "worker" in t.user_attrs
            and 1 <= len(t.intermediate_values) <= 30
        ]
        done = [t for t in trials if t.state in FINISHED]
        return running if len(running) == 2 and done else None

    running = _wait_for(url, proc, two_mid_trial_after_one_done)
    for pid in {_pid(t) for t in running}:
        os.kill(pid, signal.SIGKILL)
    proc.kill()  # the parent too: nothing is left to clean up
    proc.communicate()
    # What the crash left: finished trials to keep, and stranded RUNNING ones to be failed.
    before = {t.number: (t.user_attrs, t.datetime_complete) for t in load(url).trials}
    stranded = [t.number for t in load(url).trials if t.state == TrialState.RUNNING]
    assert stranded  # the kill landed in the middle of a trial
    rerun = _start(url, 4, *args)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    trials = load(url).trials
    states = counts(trials)
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 4
    assert "RUNNING" not in states and "WAITING" not in states
    # The killed attempts stay as FAIL records, and nothing else failed.
    assert all(trials[n].state == TrialState.FAIL for n in stranded)
    assert states.get("FAIL", 0) == len(stranded)
    for number, (attrs, completed) in before.items():
        if trials[number].state in FINISHED and completed is not None:
            assert (trials[number].user_attrs, trials[number].datetime_complete) == (
                attrs,
                completed,
            )


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_cleanly(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = _start(url, 4, *LONG, "--workers", "2")

    def two_running(trials):
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        return running if len(running) == 2 else None

    running = _wait_for(url, proc, two_running)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    for pid in {_pid(t) for t in running}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = load(url).trials
    states = counts(trials)
    assert "RUNNING" not in states and states.get("FAIL") == states.get("WAITING") == 2, (
        states,
        err,
    )
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    queued = {t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING}
    assert queued == failed  # each interrupted trial waits to be resumed by the next run


OOM_TASK = textwrap.dedent(
    """
    import torch
    from torch.utils.data import TensorDataset
    from objectives import Task

    LIMIT = 32  # samples per forward pass this "device" holds


    class Greedy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
            )

        def forward(self, x):
            if self.training and x.shape[0] > LIMIT:
                torch.empty(2**50)  # 4 PiB: the CPU allocator refuses, a real OOM
            return self.net(x)


    def make():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, 8, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        split = lambda a, b: TensorDataset(x[a:b], y[a:b])
        return Task("greedy", Greedy, split(0, 256), split(256, 328), split(328, 400))
    """
)


@pytest.mark.slow
def test_out_of_memory_retries_with_half_the_micro_batch_then_prunes(tmp_path):
    task = tmp_path / "greedy.py"
    task.write_text(OOM_TASK)
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = run_script(
        "run_study.py",
        "--trials", "2", "--task", f"{task}:make", "--epochs", "2", "--pruner", "none",
        "--min-batch-size", "64", "--max-batch-size", "128", "--sampler", "grid",
        "--scaling", "none", "--base-lr", "0.05", "--storage", url,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # never the study
    by_batch = {t.params["batch_size"]: t for t in load(url).trials}
    fits = by_batch[64]  # 64 fails, 32 x 2 fits: the same effective batch
    assert fits.state == TrialState.COMPLETE
    assert (fits.user_attrs["micro_batch_size"], fits.user_attrs["accumulation_steps"]) == (32, 2)
    [oom] = fits.user_attrs["oom"]
    assert (oom["micro_batch_size"], oom["accumulation_steps"], oom["epoch"]) == (64, 1, 1)
    assert "can't allocate memory" in oom["error"]
    fails = by_batch[128]  # 128 fails, 64 x 2 fails too: pruned after one retry
    assert fails.state == TrialState.PRUNED
    assert [o["micro_batch_size"] for o in fails.user_attrs["oom"]] == [128, 64]
    # The run's own lines say why: one trial trained after a retry, the other gave up.
    lines = [line for line in proc.stdout.splitlines() if re.search(r"\btrial +\d+ ", line)]
    assert any("(32x2)" in line and "after 1 out-of-memory attempt" in line for line in lines)
    assert any("pruned" in line and "out of memory at micro-batch 64" in line for line in lines)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_a_worker_s_memory_does_not_grow_from_trial_to_trial(tmp_path):
    from objectives import BatchSizeObjective, load_task
    from study.config import StudyConfig
    from study.runner import run_trials
    from study.space import build_space

    (tmp_path / "greedy.py").write_text(OOM_TASK)
    spec = f"{tmp_path / 'greedy.py'}:make"
    config = StudyConfig(trials=8, task=spec, epochs=2, scaling="none").validate()
    task = load_task(spec)
    space = build_space(16, 128, 1, len(task.train), "none", "test")
    built: list[weakref.ref] = []  # every model and optimizer a trial made
    build = task.build_model

    def tracked_build() -> torch.nn.Module:
        model = build()
        built.append(weakref.ref(model))
        return model

    task.build_model = tracked_build
    hook = register_optimizer_step_pre_hook(lambda opt, *_: built.append(weakref.ref(opt)))
    objective = BatchSizeObjective(task, config, space, "cpu")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    alive: list[int] = []
    rss: list[int] = []

    def after(_study, _trial) -> None:  # (the objective collected garbage already)
        alive.append(sum(ref() is not None for ref in built))
        rss.append(_rss_bytes())

    try:
        run_trials(study, objective, 8, on_trial=after)
    finally:
        hook.remove()
    assert any("oom" in t.user_attrs for t in study.trials)  # some trials did run out
    assert len(built) > 8 and alive == [0] * 8  # no model or optimizer outlives its trial
    assert rss[-1] - rss[2] < 64 * 2**20, [r // 2**20 for r in rss]


def test_a_locked_sqlite_file_is_one_line_exit_2_and_left_alone(tmp_path):
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db)
    holder.execute("CREATE TABLE other_program (x)")
    holder.commit()
    # (Read the file before locking: closing any handle on it would drop this process's
    # POSIX locks, SQLite's included.)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    holder.execute("BEGIN EXCLUSIVE")  # another program in the middle of a write
    try:
        proc = run_script("run_study.py", "--trials", "1", *QUICK, "--storage", f"sqlite:///{db}")
    finally:
        holder.close()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "locked by another program" in lines[0], proc.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_damaged_sqlite_file_is_one_line_exit_2(tmp_path):
    db = tmp_path / "damaged.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    proc = run_script("run_study.py", "--trials", "1", *QUICK, "--storage", f"sqlite:///{db}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a usable SQLite database" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers 0 must be at least 1"),
        (["--workers-per-gpu", "2"], "--workers-per-gpu needs --gpus"),
        (["--gpus", "0,0"], "list distinct GPU ids"),
        (["--gpus", "0,1", "--workers", "3"], "contradicts --gpus 0,1"),
        (["--gpus", "0", "--device", "cpu"], "use --device cuda or auto"),
    ],
)
def test_bad_worker_flags_are_one_line_exit_2(tmp_path, args, message):
    proc = run_script("run_study.py", *QUICK, "--storage", f"sqlite:///{tmp_path}/s.db", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "s.db").exists()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without GPUs"
)
def test_gpus_without_a_gpu_is_one_line_exit_2(tmp_path):
    proc = run_script(
        "run_study.py", *QUICK, "--storage", f"sqlite:///{tmp_path}/s.db", "--gpus", "0"
    )
    assert proc.returncode == 2 and "no CUDA GPU is visible" in proc.stderr


def test_one_worker_per_gpu_sees_only_its_gpu():
    from study.workers import plan_workers, worker_env

    specs = plan_workers(1, ("0", "3"), workers_per_gpu=2)
    assert [(s.name, s.gpu) for s in specs] == [
        ("w0-gpu0", "0"),
        ("w1-gpu0", "0"),
        ("w2-gpu3", "3"),
        ("w3-gpu3", "3"),
    ]
    env = worker_env(specs[2], len(specs), {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert [s.gpu for s in plan_workers(3)] == [None, None, None]


@pytest.mark.slow
def test_journal_storage_runs_a_study(tmp_path):
    url = f"journal:///{tmp_path}/s.log"
    proc = run_script("run_study.py", "--trials", "4", *QUICK, "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert f"optuna-dashboard {tmp_path}/s.log" in proc.stdout
    from study.storage import open_storage

    trials = optuna.load_study(study_name="batch-size", storage=open_storage(url)).trials
    assert counts(trials) == {"COMPLETE": 4}


def test_waiting_retries_run_first_and_are_dropped_once_the_budget_is_spent():
    from study.runner import run_trials

    def make() -> optuna.Study:
        study = optuna.create_study(direction="maximize")
        for x in (0.1, 0.2):
            study.add_trial(
                optuna.create_trial(
                    params={"x": x},
                    distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                    value=x,
                )
            )
        study.enqueue_trial({"x": 0.9})  # as a retry of a dead worker's trial waits
        return study

    def objective(trial):
        return trial.suggest_float("x", 0, 1)

    study = make()
    assert run_trials(study, objective, 3) == 1
    assert [t.params["x"] for t in study.trials] == [0.1, 0.2, 0.9]  # the waiting one ran
    study = make()
    assert run_trials(study, objective, 2) == 0  # spent: nothing runs, nothing waits
    assert counts(study.trials) == {"COMPLETE": 2, "FAIL": 1}
    assert study.trials[2].user_attrs["dropped"] == "budget spent"


def test_journal_files_get_heartbeats_so_dead_workers_trials_are_retried(tmp_path):
    from study.budget import claim_trial, fail_stale
    from study.locks import storage_lock
    from study.storage import open_storage

    url = f"journal:///{tmp_path}/h.log"
    study = optuna.create_study(study_name="h", storage=open_storage(url, 1, 2))
    claim = claim_trial(study, 5, storage_lock(url))  # records a first heartbeat
    claim.trial.suggest_float("x", 0, 1)
    fail_stale(study)
    assert counts(study.trials) == {"RUNNING": 1}  # alive: within the grace period
    time.sleep(2.5)  # its worker "died": no heartbeat since
    fail_stale(study)
    assert counts(study.trials) == {"FAIL": 1, "WAITING": 1}
    assert study.trials[1].system_attrs["failed_trial"] == 0
    assert study.trials[1].params == study.trials[0].params


def test_a_checkpoint_is_only_resumed_by_its_own_run(tmp_path):
    from objectives.checkpoint import CheckpointStore
    from objectives.train import EpochResult, TrainResult

    store = CheckpointStore(tmp_path)
    model = torch.nn.Linear(2, 2)
    result = TrainResult(epochs=[EpochResult(1, 0.5, 0.75, 0.1)], train_time_s=0.1)
    store.save(3, "study/3/2025-01-01T00:00:00", model, None, result, micro_batch_size=16)
    saved = store.load(3, "study/3/2025-01-01T00:00:00", "cpu")
    assert saved.epoch == 1 and saved.micro_batch_size == 16
    assert saved.result.epochs[0].val_metric == 0.75
    assert torch.equal(saved.model_state["weight"], model.weight.detach())
    # A new study of the same name (its database deleted and started again) starts over.
    assert store.load(3, "study/3/2025-06-01T00:00:00", "cpu") is None
    store.keep_only(set())
    assert store.load(3, "study/3/2025-01-01T00:00:00", "cpu") is None


def test_a_worker_is_handed_the_backend_by_its_import_name_and_refuses_a_bad_one(capsys):
    from objectives.backend import TorchBackend
    from study.orchestrate import worker_command
    from study.worker_process import backend_named, main

    command = worker_command(TorchBackend())
    assert command[1:] == [
        "-m",
        "study.worker_process",
        "--backend",
        "objectives.backend:TorchBackend",
    ]
    assert isinstance(backend_named(command[-1]), TorchBackend)
    for bad in ("objectives.backend", "objectives.backend:NoSuchBackend", "no_such_module:X"):
        assert main(["--backend", bad, "--worker-index", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"worker: error: --backend {bad!r}")
