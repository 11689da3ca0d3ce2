"""The Optuna objective: where the study's space meets the training loop.

One trial samples an effective batch size from the stored space (and the scaling rule when
the study searches it), derives the learning rate, trains with accumulation where the batch is
above the memory cap, reports validation accuracy each epoch so the pruner can stop it, and
records what it measured as user attributes (the study record in the README).

Example:
    >>> objective = BatchSizeObjective(task, config, space)  # doctest: +SKIP
    >>> study.optimize(objective, n_trials=10)               # doctest: +SKIP
"""

from __future__ import annotations

import optuna
import torch

from objectives.tasks import Task
from objectives.train import (
    Diverged,
    EpochResult,
    TrainResult,
    TrainSettings,
    finish,
    place,
    train_model,
)
from study.config import StudyConfig
from study.scaling import scaled_lr
from study.space import BatchSpace


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's run: distinct per trial, reproducible from the study's seed."""
    return (study_seed * 1_000_003 + trial_number * 7_919 + 1) % 2**31


class BatchSizeObjective:
    """Callable objective over one task; data is placed on the device once, not per trial.

    Args:
        task: The task to train.
        config: The study's settings (optimizer, base learning rate and batch, epochs, seed).
        space: The stored batch-size space.
        device: Where to train (``cpu``, ``cuda``, ``cuda:N``).
    """

    def __init__(
        self, task: Task, config: StudyConfig, space: BatchSpace, device: str = "cpu"
    ) -> None:
        self.task = task
        self.config = config
        self.space = space
        self.device = torch.device(device)
        self.train, self.val, self.test = (
            place(d, self.device) for d in (task.train, task.val, task.test)
        )

    def __call__(self, trial: optuna.Trial) -> float:
        space, config = self.space, self.config
        batch_size = trial.suggest_categorical("batch_size", space.batch_sizes)
        if len(space.scaling_rules) > 1:
            rule = trial.suggest_categorical("scaling_rule", space.scaling_rules)
        else:
            rule = space.scaling_rules[0]
        micro, accumulation = space.split(batch_size)
        lr = scaled_lr(rule, config.base_lr, config.base_batch_size, batch_size)
        seed = trial_seed(config.seed, trial.number)
        settings = TrainSettings(
            epochs=config.epochs,
            batch_size=batch_size,
            micro_batch_size=micro,
            lr=lr,
            optimizer=config.optimizer,
            seed=seed,
            device=str(self.device),
            eval_batch_size=space.memory_cap,
        )
        record: dict = {
            "batch_size": batch_size,
            "micro_batch_size": micro,
            "accumulation_steps": accumulation,
            "lr": lr,
            "scaling_rule": rule,
            "seed": seed,
        }

        def on_epoch(epoch: EpochResult) -> None:
            trial.report(epoch.val_accuracy, epoch.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch.epoch}")

        torch.manual_seed(seed)
        model = self.task.build_model().to(self.device)
        result = TrainResult()
        try:
            train_model(model, self.train, self.val, settings, on_epoch, result)
            finish(result, model, self.train, self.test, settings.eval_batch, self.device)
        except Diverged as diverged:
            record["diverged"] = True
            _write(trial, record, result)
            raise optuna.TrialPruned(str(diverged)) from None
        except optuna.TrialPruned:
            _write(trial, record, result)
            raise
        _write(trial, record, result)
        return result.val_accuracy


def _write(trial: optuna.Trial, record: dict, result: TrainResult) -> None:
    """Store the trial's record as user attributes."""
    record.update(
        epochs_completed=len(result.epochs),
        train_time_s=round(result.train_time_s, 4),
    )
    if result.epochs:
        record["val_accuracy"] = result.val_accuracy
    if result.train_accuracy is not None:
        record["train_accuracy"] = result.train_accuracy
    if result.samples_seen:
        record.update(
            samples_per_s=round(result.samples_per_s, 1),
            peak_memory_bytes=result.peak_memory_bytes,
            memory_source=result.memory_source,
        )
    if result.test_accuracy is not None:
        record["test_accuracy"] = result.test_accuracy
    for key, value in record.items():
        trial.set_user_attr(key, value)
