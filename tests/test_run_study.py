"""run_study.py end to end: real SQLite files, real trials, real processes and signals."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.report.data import study_recommendation
from tests.conftest import ROOT, run_script, script_env

FAST = ["--model", "mlp", "--hidden", "32", "--epochs", "2", "--max-batch-size", "64"]
TRIAL_ATTRS = {
    "batch_size",
    "micro_batch_size",
    "accumulation_steps",
    "lr",
    "scaling_rule",
    "val_accuracy",
    "test_accuracy",
    "train_accuracy",
    "epochs_completed",
    "train_time_s",
    "samples_per_s",
    "peak_memory_bytes",
    "seed",
}


def load(url: str, name: str = "batch-size") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The 4-trial study with accumulation that ``finished_study`` runs (and reruns compare with).
FINISHED_STUDY = ["--trials", "4", *FAST, "--max-batch-size", "32", "--max-accumulation", "4"]
FINISHED_STUDY += ["--pruner", "none"]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> tuple[str, Path, subprocess.CompletedProcess]:
    """A 4-trial study with accumulation, run once for several tests to read."""
    db = tmp_path_factory.mktemp("study") / "s.db"
    url = f"sqlite:///{db}"
    proc = run_script("run_study.py", *FINISHED_STUDY, "--storage", url)
    assert proc.returncode == 0, proc.stderr
    return url, db, proc


def test_a_study_records_every_trial_and_its_setup(finished_study):
    url, _, proc = finished_study
    study = load(url)
    assert study.metric_names == ["val_accuracy"]
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 4
    for t in trials:
        assert TRIAL_ATTRS <= set(t.user_attrs), TRIAL_ATTRS - set(t.user_attrs)
        a = t.user_attrs
        assert (
            a["batch_size"]
            == t.params["batch_size"]
            == a["micro_batch_size"] * a["accumulation_steps"]
        )
        assert a["micro_batch_size"] <= 32 and 0 <= a["test_accuracy"] <= 1
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == a["val_accuracy"] == t.intermediate_values[2]
        assert a["scaling_rule"] == t.params["scaling_rule"]
    assert len({t.user_attrs["seed"] for t in trials}) == 4  # distinct runs, not copies
    attrs = study.user_attrs
    assert attrs["config"]["epochs"] == 2 and attrs["config"]["task"] == "digits"
    assert attrs["space"]["batch_sizes"] == [8, 16, 32, 64, 128]
    assert attrs["space"]["memory_cap"] == 32 and attrs["space"]["cap_source"] == "--max-batch-size"
    assert attrs["task_info"]["train_size"] > 1000
    assert "per cell" in proc.stdout and "optuna-dashboard" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if re.match(r"\[\d/4\] trial", line)]
    assert [line[:5] for line in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    for t, line in zip(trials, lines, strict=True):  # each trial's own line, with its results
        assert f"trial {t.number:>3} complete" in line
        assert f"batch {t.params['batch_size']:>5}" in line
        assert f"val {t.value:.4f}" in line


def test_rerunning_a_finished_study_prints_the_summary_and_changes_nothing(finished_study):
    url, db, _ = finished_study
    before = digest(db)
    proc = run_script("run_study.py", *FINISHED_STUDY, "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\nAnswer") == 1 and "per cell" in proc.stdout
    assert len(load(url).trials) == 4 and digest(db) == before


def test_contradicting_settings_are_refused_and_nothing_changes(finished_study):
    url, db, _ = finished_study
    before = digest(db)
    proc = run_script(
        "run_study.py",
        "--trials",
        "6",
        *FAST,
        "--max-batch-size",
        "32",
        "--max-accumulation",
        "4",
        "--epochs",
        "3",
        "--pruner",
        "none",
        "--storage",
        url,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--epochs 2 (stored) vs 3 (now)" in lines[0], proc.stderr
    assert digest(db) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "--trials 0 must be at least 1"),
        (["--min-batch-size", "12"], "--min-batch-size 12 is not a power of two"),
        (["--max-batch-size", "-4"], "--max-batch-size -4 is not a power of two"),
        (["--min-batch-size", "128", "--max-batch-size", "64"], "is above --max-batch-size"),
        (["--task", "cifar100"], "is not a built-in task"),
        (["--optimizer", "lamb"], "invalid choice: 'lamb'"),
        (["--scaling", "cubic"], "invalid choice: 'cubic'"),
        (["--memory-budget", "lots"], "is not understood"),
        (["--storage", "not a url"], "is not a database URL"),
        (["--storage", "mysql://u:hunter2@127.0.0.1/x"], "driver is missing"),
        (["--storage", "postgresql://u:hunter2@127.0.0.1:9/x"], "cannot connect"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_stored_study_untouched(finished_study, args, message):
    url, db, _ = finished_study
    before = digest(db)
    base = ["--trials", "5", *FAST, "--max-batch-size", "32", "--max-accumulation", "4"]
    base += ["--pruner", "none", "--storage", url]
    proc = run_script("run_study.py", *base, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert digest(db) == before


def test_corrupt_sqlite_file_is_one_line_exit_2_and_left_as_it_was(tmp_path):
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not sqlite at all" * 10)
    before = digest(db)
    proc = run_script("run_study.py", "--trials", "1", *FAST, "--storage", f"sqlite:///{db}")
    assert proc.returncode == 2 and "not an SQLite database" in proc.stderr
    assert digest(db) == before


@pytest.mark.parametrize("scheme", ["sqlite:///", "journal:///"])
def test_a_storage_folder_that_cannot_be_made_is_one_line_exit_2(tmp_path, scheme):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    url = f"{scheme}{blocker / 'studies' / 's.db'}"
    proc = run_script("run_study.py", "--trials", "1", *FAST, "--storage", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot create folder {blocker / 'studies'}" in lines[0], lines
    assert blocker.read_text() == "in the way"


def test_resume_continues_to_the_total_without_redoing_finished_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_script("run_study.py", "--trials", "2", *FAST, "--storage", url).returncode == 0
    first = {t.number: (t.params, t.user_attrs, t.datetime_complete) for t in load(url).trials}
    proc = run_script("run_study.py", "--trials", "4", *FAST, "--storage", url)
    assert proc.returncode == 0, proc.stderr
    trials = load(url).trials
    assert len(trials) == 4
    for t in trials[:2]:
        assert (t.params, t.user_attrs, t.datetime_complete) == first[t.number]
    study = load(url)
    assert study.user_attrs["config"]["trials"] == 4  # the budget raised on the resume
    stale = {**study.user_attrs["recommendation"], "budget": {"trials": 2, "finished": 2}}
    study.set_user_attr("recommendation", stale)  # as an answer stored by an earlier run
    budget = study_recommendation(load(url))["budget"]
    assert (budget["trials"], budget["finished"]) == (4, 4)  # the report's budget is current


def _start(url: str, trials: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts/run_study.py"),
            "--trials",
            str(trials),
            "--model",
            "mlp",
            "--hidden",
            "32",
            "--max-batch-size",
            "64",
            "--min-batch-size",
            "8",
            "--pruner",
            "none",
            "--storage",
            url,
            *extra,
        ],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_running_after_complete(url: str, proc: subprocess.Popen, timeout=120) -> None:
    """Wait until one trial has finished and the next one is running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            states = [t.state for t in load(url).trials]
        except Exception:  # the study may not exist yet
            states = []
        if TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING:
            return
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = _start(url, 3, "--epochs", "30", "--min-batch-size", "8", "--max-batch-size", "8")
    _wait_for_running_after_complete(url, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    states = [t.state for t in load(url).trials]
    assert TrialState.RUNNING not in states and TrialState.COMPLETE in states
    rerun = _start(url, 3, "--epochs", "30", "--min-batch-size", "8", "--max-batch-size", "8")
    rerun.communicate(timeout=300)
    assert rerun.returncode == 0
    finished = load(url).get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])
    assert len(finished) == 3


def test_a_killed_run_resumes_and_its_dead_trial_is_failed(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    beat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    args = ["--epochs", "30", "--min-batch-size", "8", "--max-batch-size", "8", *beat]
    proc = _start(url, 3, *args)
    _wait_for_running_after_complete(url, proc)
    done_before = {
        t.number: t.user_attrs for t in load(url).trials if t.state == TrialState.COMPLETE
    }
    proc.kill()
    proc.communicate()
    time.sleep(2.5)  # past the grace period: the killed trial's heartbeat is stale
    rerun = _start(url, 3, *args)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    trials = load(url).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 3
    assert TrialState.FAIL in states and TrialState.RUNNING not in states
    for number, attrs in done_before.items():
        assert trials[number].user_attrs == attrs


def test_diverging_trials_are_pruned_and_recorded_not_a_crash(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = run_script(
        "run_study.py",
        "--trials",
        "2",
        *FAST,
        "--optimizer",
        "sgd",
        "--base-lr",
        "1e6",
        "--scaling",
        "none",
        "--pruner",
        "none",
        "--storage",
        url,
    )
    assert proc.returncode == 0, proc.stderr
    trials = load(url).trials
    assert all(t.state == TrialState.PRUNED for t in trials)
    assert all(t.user_attrs["diverged"] is True for t in trials)
    assert "diverged" in proc.stdout


def test_grid_sampler_covers_the_grid(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = run_script(
        "run_study.py",
        "--trials",
        "6",
        "--model",
        "mlp",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--min-batch-size",
        "16",
        "--max-batch-size",
        "32",
        "--sampler",
        "grid",
        "--pruner",
        "none",
        "--storage",
        url,
    )
    assert proc.returncode == 0, proc.stderr
    pairs = {(t.params["batch_size"], t.params["scaling_rule"]) for t in load(url).trials}
    assert pairs == {(b, r) for b in (16, 32) for r in ("linear", "sqrt", "none")}
