"""Beyond the plain sweep, in real studies: accuracy-vs-time fronts, step budgets, warm-up,
LR multipliers, and the per-trial noise scale."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch.optim.optimizer import register_optimizer_step_pre_hook

from objectives.data import Tensors
from objectives.models import mlp
from objectives.train import TrainSettings, step_periods, train_model
from tests.conftest import run_script

FAST = ["--model", "mlp", "--hidden", "32", "--max-batch-size", "64", "--artifact-dir", "none"]


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="batch-size", storage=url)


@pytest.mark.slow
def test_accuracy_and_time_make_a_two_objective_study_with_a_pareto_front(sqlite_url):
    proc = run_script(
        "run_study.py",
        "--trials",
        "4",
        *FAST,
        "--epochs",
        "2",
        "--objectives",
        "accuracy,time",
        "--storage",
        sqlite_url,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Optuna cannot prune multi-objective trials: pruning is off" in proc.stdout
    assert "Pareto front of validation accuracy against training time" in proc.stdout
    study = load(sqlite_url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "train_time_s"]
    assert study.user_attrs["config"]["objectives"] == ["metric", "time"]  # accuracy: an alias
    for t in study.get_trials(states=[TrialState.COMPLETE]):
        assert t.values == [t.user_attrs["val_accuracy"], t.user_attrs["train_time_s"]]
        assert len(t.user_attrs["val_accuracy_per_epoch"]) == 2
    assert 1 <= len(study.best_trials) <= 4
    for t in study.best_trials:
        assert f"trial {t.number}, batch size" in proc.stdout


def test_multi_objective_help_says_pruning_is_off():
    proc = run_script("run_study.py", "--help")
    assert "cannot prune trials of two objectives" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_a_step_budget_gives_every_batch_size_the_same_number_of_updates(sqlite_url):
    proc = run_script(
        "run_study.py",
        "--trials",
        "4",
        *FAST,
        "--budget",
        "steps",
        "--steps",
        "30",
        "--min-batch-size",
        "8",
        "--sampler",
        "grid",
        "--scaling",
        "sqrt",
        "--pruner",
        "none",
        "--storage",
        sqlite_url,
    )
    assert proc.returncode == 0, proc.stderr
    study = load(sqlite_url)
    assert study.user_attrs["config"]["budget"] == "steps"
    trials = study.trials
    assert {t.params["batch_size"] for t in trials} == {8, 16, 32, 64}
    for t in trials:
        assert t.user_attrs["optimizer_steps"] == 30
        assert sorted(t.intermediate_values) == list(range(1, 11))  # tenths of the budget
        passes = 30 * t.params["batch_size"] / study.user_attrs["task_info"]["train_size"]
        assert t.user_attrs["passes_completed"] == pytest.approx(passes, abs=0.05)
        epochs = t.user_attrs["epochs_completed"]  # whole passes, stored as an int
        assert isinstance(epochs, int) and epochs == int(t.user_attrs["passes_completed"])
    assert "30 optimizer steps per trial" in proc.stdout


def test_step_periods_split_the_budget():
    assert step_periods(25) == (3, 3, 3, 3, 3, 2, 2, 2, 2, 2) and sum(step_periods(7)) == 7
    assert step_periods(3) == (1, 1, 1)


def test_warm_up_ramps_the_learning_rate_from_the_base_to_the_rule_value():
    torch.manual_seed(0)
    data = Tensors(torch.randn(40, 6), torch.randint(0, 3, (40,)))
    model = mlp((6,), 3, (8,))
    settings = TrainSettings(
        epochs=2,
        batch_size=10,
        micro_batch_size=10,
        lr=0.4,
        optimizer="sgd",
        warmup_steps=4,
        warmup_start_lr=0.1,
    )
    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"])
    )
    try:
        train_model(model, data, data, settings)
    finally:
        hook.remove()
    assert seen == pytest.approx([0.175, 0.25, 0.325, 0.4, 0.4, 0.4, 0.4, 0.4])


@pytest.mark.slow
def test_lr_multiplier_is_searched_around_the_rule_and_the_noise_scale_recorded(sqlite_url):
    proc = run_script(
        "run_study.py",
        "--trials",
        "3",
        *FAST,
        "--epochs",
        "2",
        "--scaling",
        "linear",
        "--lr-search-width",
        "4",
        "--warmup-epochs",
        "1",
        "--noise-scale",
        "--pruner",
        "none",
        "--storage",
        sqlite_url,
    )
    assert proc.returncode == 0, proc.stderr
    study = load(sqlite_url)
    assert study.user_attrs["config"]["warmup_epochs"] == 1
    for t in study.trials:
        m = t.params["lr_multiplier"]
        assert 0.25 <= m <= 4 and t.user_attrs["lr_multiplier"] == m
        rule_lr = 1e-3 * t.params["batch_size"] / 32
        assert math.isclose(t.user_attrs["lr"], rule_lr * m, rel_tol=1e-9)
        assert t.user_attrs["b_simple"] > 0 and t.user_attrs["b_simple_se"] >= 0
    assert "gradient noise scale B_simple" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "steps"], "--budget steps needs --steps"),
        (["--steps", "100"], "--steps 100 needs --budget steps"),
        (["--objectives", "accuracy,memory"], "use metric, or metric,time"),
        (["--warmup-epochs", "20"], "--warmup-epochs 20"),
        (["--lr-search-width", "0.5"], "--lr-search-width 0.5"),
    ],
)
def test_bad_budget_objective_and_lr_flags_are_one_line_exit_2(args, message, sqlite_url):
    proc = run_script("run_study.py", "--trials", "1", "--storage", sqlite_url, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
