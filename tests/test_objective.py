"""The objective inside a real in-process study: pruning, records, seeds."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives import BatchSizeObjective, load_task, trial_seed
from objectives.checkpoint import CheckpointStore
from objectives.data import as_tensors
from objectives.oom import is_out_of_memory
from objectives.train import TrainSettings, make_step, steps_per_epoch, train_model
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


def test_long_trials_log_progress_lines_at_a_modest_rate_and_short_ones_stay_silent():
    lines: list[str] = []
    objective = _objective(epochs=2)
    objective.log, objective.log_interval_s = lines.append, 0.0  # every epoch is "long"
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"batch_size": 64, "scaling_rule": "none"})
    study.optimize(objective, n_trials=1)
    assert [line.split(",")[0] for line in lines] == ["trial 0: epoch 1/2", "trial 0: epoch 2/2"]
    assert "val accuracy" in lines[0] and "batch 64" in lines[0]
    quiet: list[str] = []
    objective.log, objective.log_interval_s = quiet.append, 10.0  # a trial of a second or so
    study.optimize(objective, n_trials=1)
    assert quiet == []


def test_a_resumed_run_numbers_its_epochs_on_and_continues_the_checkpointed_optimizer(tmp_path):
    task = load_task("digits", model="mlp", hidden=(16,))
    train, val = (as_tensors(d) for d in (task.train, task.val))
    settings = TrainSettings(epochs=1, batch_size=64, micro_batch_size=32, lr=1e-3)
    torch.manual_seed(0)
    model = task.build_model()
    step = make_step(model, settings)
    first = train_model(model, train, val, settings, step=step)
    store = CheckpointStore(tmp_path)
    store.save(7, "run", model, step.optimizer, first, settings.micro_batch_size)

    saved = store.load(7, "run", "cpu")
    resumed = task.build_model()
    resumed.load_state_dict(saved.model_state)
    resumed_step = make_step(resumed, settings)
    resumed_step.optimizer.load_state_dict(saved.optimizer_state)
    seen: list[int] = []
    result = train_model(
        resumed,
        train,
        val,
        settings,
        lambda epoch: seen.append(epoch.epoch),
        saved.result,
        step=resumed_step,
        start_epoch=saved.epoch,
    )
    assert seen == [2] and [e.epoch for e in result.epochs] == [1, 2]
    updates = 2 * steps_per_epoch(len(train), 64)  # Adam counts on from the checkpoint
    assert all(s["step"].item() == updates for s in resumed_step.optimizer.state.values())
    with pytest.raises(ValueError, match="not over this model"):
        train_model(task.build_model(), train, val, settings, step=resumed_step)


def test_out_of_memory_is_recognised_from_cuda_cpu_and_python_alike():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] not enough memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's error


def test_a_trial_that_collapses_to_chance_stops_as_diverged_with_its_reason():
    config = StudyConfig(trials=1, epochs=8, model="mlp", hidden=(16,), base_lr=3.0).validate()
    task = load_task("digits", model="mlp", hidden=(16,))
    space = build_space(16, 16, 1, len(task.train), "none", "test")
    study = optuna.create_study(direction="maximize")
    study.optimize(BatchSizeObjective(task, config, space, "cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["diverged"] is True
    reason = trial.user_attrs["stop_reason"]
    assert "at chance" in reason or "above its start" in reason, reason
    assert 2 <= trial.user_attrs["epochs_completed"] < 8  # a quarter of the budget, not all


def test_a_flat_run_too_short_to_judge_early_is_judged_at_the_end_of_its_budget():
    # batch 1024 at the default learning rate: 4 updates in 4 epochs, still at chance. It
    # never reaches the updates the rule waits for, so it is judged at its last epoch,
    # by the same rule as any batch: diverged, not an ordinary complete run
    config = StudyConfig(trials=1, epochs=4, model="mlp", hidden=(16,)).validate()
    task = load_task("digits", model="mlp", hidden=(16,))
    space = build_space(1024, 1024, 1, len(task.train), "none", "test")
    study = optuna.create_study(direction="maximize")
    study.optimize(BatchSizeObjective(task, config, space, "cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["diverged"] is True
    assert "after 4 of 4 epochs" in trial.user_attrs["stop_reason"]


def test_a_healthy_trial_is_not_taken_for_collapsed():
    config = StudyConfig(trials=1, epochs=4, model="mlp", hidden=(16,), base_lr=0.05).validate()
    task = load_task("digits", model="mlp", hidden=(16,))
    space = build_space(1024, 1024, 1, len(task.train), "none", "test")  # slow per epoch
    study = optuna.create_study(direction="maximize")
    study.optimize(BatchSizeObjective(task, config, space, "cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and "diverged" not in trial.user_attrs
    assert trial.user_attrs["samples_left_out"] == len(task.train) - 1024
