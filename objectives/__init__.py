"""The PyTorch side: what one trial trains, measures and reports.

Public names: :class:`Task` (data plus a model factory), :func:`load_task`, the training loop
(:func:`train_model`, :class:`TrainSettings`) and the Optuna objective
(:class:`BatchSizeObjective`).
"""

from objectives.objective import BatchSizeObjective, trial_seed
from objectives.tasks import Task, TaskError, load_task
from objectives.train import Diverged, TrainResult, TrainSettings, train_model, train_task

__all__ = [
    "BatchSizeObjective",
    "Diverged",
    "Task",
    "TaskError",
    "TrainResult",
    "TrainSettings",
    "load_task",
    "train_model",
    "train_task",
    "trial_seed",
]
