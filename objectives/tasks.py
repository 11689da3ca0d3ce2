"""Tasks: the public names of the task contract, its check and its loading, in one place.

The contract itself is :mod:`objectives.contract` (a leaf: :class:`Task`, :class:`Metric`,
:class:`StepHook`), the check :mod:`objectives.taskcheck`, the small built-in tasks
:mod:`objectives.builtin` and loading by name :mod:`objectives.loading`; this module
re-exports what users import (``from objectives.tasks import Task, load_task``).

Example:
    >>> from objectives.tasks import load_task
    >>> task = load_task("digits", model="mlp")
    >>> len(task.train) + len(task.val) + len(task.test)
    1797
"""

from objectives.builtin import digits_task, load_digits_arrays, synthetic_task
from objectives.contract import Metric, StepHook, Task, TaskError, Update
from objectives.loading import load_task
from objectives.taskcheck import check_task_runs, split_labels, validate_task

__all__ = [
    "Metric",
    "StepHook",
    "Task",
    "TaskError",
    "Update",
    "check_task_runs",
    "digits_task",
    "load_digits_arrays",
    "load_task",
    "split_labels",
    "synthetic_task",
    "validate_task",
]
