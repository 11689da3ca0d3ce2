"""The objective inside a real in-process study: pruning, records, seeds."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from objectives import BatchSizeObjective, load_task, trial_seed
from study.config import StudyConfig
from study.space import build_space


def _objective(epochs: int = 3) -> BatchSizeObjective:
    config = StudyConfig(trials=2, epochs=epochs, model="mlp", hidden=(16,)).validate()
    task = load_task("digits", model="mlp", hidden=(16,))
    space = build_space(16, 32, 2, len(task.train), "search", "test")
    return BatchSizeObjective(task, config, space, "cpu")


def test_pruned_trials_keep_what_they_measured():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01)
    )
    study.optimize(_objective(), n_trials=2)
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["epochs_completed"] == 1 and list(t.intermediate_values) == [1]
        assert t.user_attrs["val_accuracy"] == t.intermediate_values[1]
        assert t.user_attrs["train_time_s"] > 0 and t.user_attrs["samples_per_s"] > 0
        assert "test_accuracy" not in t.user_attrs  # not measured for a stopped run


def test_each_trial_seeds_its_own_run_from_the_study_seed_and_number():
    assert trial_seed(0, 1) != trial_seed(0, 2) != trial_seed(1, 1)
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        study.enqueue_trial({"batch_size": 64, "scaling_rule": "none"})
    objective = _objective(epochs=1)
    study.optimize(objective, n_trials=2)
    a, b = study.trials
    assert a.params == b.params and a.user_attrs["seed"] != b.user_attrs["seed"]
    assert a.user_attrs["micro_batch_size"] == 32 and a.user_attrs["accumulation_steps"] == 2
