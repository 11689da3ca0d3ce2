"""``plan``: a study's cost before it runs, without training, storing or writing a file."""

from __future__ import annotations

import json
import time

import optuna

from tests.conftest import run_script

FLAGS = ["--task", "digits", "--model", "mlp", "--hidden", "64", "--epochs", "10",
         "--min-batch-size", "8", "--max-batch-size", "128", "--scaling", "sqrt",
         "--pruner", "none", "--trials", "8", "--device", "cpu"]  # fmt: skip


def test_plan_prints_the_cost_without_training_storing_or_writing(tmp_path):
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    proc = run_script("plan.py", *FLAGS, "--scaling", "search", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no study, no storage file, no folder
    out = proc.stdout
    assert "Memory cap: batch 128 (from --max-batch-size)" in out
    assert "Space: 5 batch sizes x 3 rule(s) (linear, sqrt, none) = 15 cells." in out
    assert "Expected: 8 trainings" in out and "at most 8 trainings (--trials)" in out
    assert "--scaling sqrt" in out and "--min-batch-size 32" in out and "--epochs 2" in out
    bad = run_script("plan.py", "--epochs", "0", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


#: The timed check trains the CNN: with trials of a few tenths of a second (the MLP) the study's
#: fixed costs per trial and per evaluation, not training, decide the figure, and they differ
#: between an idle and a loaded machine.
TIMED = [*FLAGS[:2], "--model", "cnn", *FLAGS[4:]]


def test_the_plans_estimate_is_within_30_percent_of_the_studys_measured_time(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    planned = run_script("plan.py", *TIMED, "--storage", url, "--json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    started = time.perf_counter()
    ran = run_script("run_study.py", *TIMED, "--storage", url, cwd=tmp_path)
    wall = time.perf_counter() - started
    assert ran.returncode == 0, ran.stderr
    study = optuna.load_study(study_name="batch-size", storage=url)
    trials = [t for t in study.trials if t.state.is_finished()]
    measured = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    estimated = sum(plan["trial_seconds"][str(t.params["batch_size"])] for t in trials)
    estimated += plan["first_trial_extra_s"]  # the run's first trial pays lazy imports
    print(f"trials {len(trials)}: estimated {estimated:.2f} s, measured {measured:.2f} s")
    print(f"whole run: estimated {plan['estimate']['seconds']:.2f} s, measured {wall:.2f} s")
    assert abs(estimated - measured) <= 0.3 * measured
    assert abs(plan["estimate"]["seconds"] - wall) <= 0.3 * wall  # start-up, answer, report
    # four search runs (three quarters of five cells) and the leader's three confirmation runs;
    # the last trial cannot pay a candidate's look
    assert plan["estimate"]["trainings"] == len(trials) == 7


def test_plan_from_python_costs_a_task_object_without_storing_it(tmp_path):
    import torch
    from torch.utils.data import TensorDataset

    from batchsize_study.api import plan_study
    from objectives import Task

    data = TensorDataset(torch.randn(256, 8), torch.arange(256) % 4)
    task = Task("blobs", lambda: torch.nn.Linear(8, 4), data, data, data)
    url = f"sqlite:///{tmp_path / 's.db'}"
    found = plan_study(task=task, max_batch_size=64, min_batch_size=16, storage=url, epochs=4)
    assert list(tmp_path.iterdir()) == []
    assert found.space.batch_sizes == [16, 32, 64] and found.cost.cells == 9
    assert set(found.trial_seconds()) == {16, 32, 64} and "Expected:" in found.text()
