"""The PyTorch side: what one trial trains, measures and reports.

Public names: the task contract (:class:`Task`: data, a model factory, and optionally a
per-sample loss, a :class:`Metric`, a ``collate``, a :class:`StepHook` and a unit; see
``docs/tasks.md``), the ready metrics (:data:`ACCURACY`, :data:`MSE`, :data:`BITS_PER_CHAR`,
:func:`f1` of the whole split; losses in :mod:`objectives.metrics`), :func:`load_task`, the
training loop (:func:`train_model`, :class:`TrainSettings`) and the Optuna objective
(:class:`BatchSizeObjective`).
"""

from objectives.contract import ACCURACY, Metric, StepHook, Task, TaskError, Update
from objectives.loading import load_task
from objectives.metrics import BITS_PER_CHAR, MSE, f1
from objectives.objective import BatchSizeObjective, trial_seed
from objectives.taskcheck import validate_task
from objectives.train import (
    Diverged,
    TrainResult,
    TrainSettings,
    samples_left_out,
    train_model,
    train_task,
)

__all__ = [
    "ACCURACY",
    "BITS_PER_CHAR",
    "MSE",
    "BatchSizeObjective",
    "Diverged",
    "Metric",
    "StepHook",
    "Task",
    "TaskError",
    "TrainResult",
    "TrainSettings",
    "Update",
    "f1",
    "load_task",
    "samples_left_out",
    "train_model",
    "train_task",
    "trial_seed",
    "validate_task",
]
