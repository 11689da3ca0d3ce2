"""From Python (a notebook, your own script): study a Task object, get the answer back.

The command line names a task (``--task digits``, ``--task package.module:factory``); a
notebook has the task in hand. :func:`run_study` takes it, runs the same study in this process
(probe, trials, confirmation, report) and returns the study and its recommendation as objects.

Worker processes cannot receive an object: with ``workers > 1`` or ``gpus`` the task must be an
importable factory (``config.task = "package.module:factory"``), and passing a ``Task`` object
then is refused with that advice.

Example (not run as a doctest: it trains for a few seconds)::

    from objectives import Task
    from batchsize_study.api import run_study
    from study.config import StudyConfig

    result = run_study(StudyConfig(trials=12, epochs=3), task=my_task)
    print(result.statement)            # the answer in one sentence
    result.recommendation["fastest_within"]["batch_size"]
    result.study.trials_dataframe()
"""

from __future__ import annotations

import dataclasses
import io
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import optuna

from study.config import PYTHON_TASK_PREFIX, ConfigError, StudyConfig
from study.orchestrate import run_study as _run_study


@dataclass
class StudyResult:
    """What :func:`run_study` returns.

    Attributes:
        study: The Optuna study (trials, user attributes, the stored ``recommendation``).
        recommendation: The answer: ``most_accurate``, ``fastest_within``, ``tolerance``,
            ``budget`` and ``statement`` (see docs/answer.md); ``{}`` if none was stored.
        log: What the run printed (when ``out`` was not given).
    """

    study: optuna.Study
    recommendation: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @property
    def statement(self) -> str:
        """The answer in one sentence."""
        return str(self.recommendation.get("statement", "no recommendation was stored"))


def run_study(
    config: StudyConfig | None = None,
    *,
    task: Any = None,
    out: TextIO | None = None,
    verbose: bool | None = None,
    **settings: Any,
) -> StudyResult:
    """Run (or resume) a study in this process and return it with its recommendation.

    Args:
        config: The study's settings (default ``StudyConfig()``); ``settings`` override its
            fields (``run_study(task=t, trials=12, epochs=3, storage="sqlite:///s.db")``).
        task: A :class:`Task` object to study; ``None`` builds the task ``config.task`` names.
        out: Where progress and the summary go (default: kept in ``StudyResult.log``).
        verbose: Also print the progress (a line per finished trial, long trials' epochs)
            and the summary as the run goes, to ``sys.stdout``; they are kept in
            ``StudyResult.log`` all the same. ``None`` (default): on in a Jupyter notebook,
            off elsewhere. Ignored when ``out`` is given.

    Raises:
        ConfigError: a bad setting, or a ``Task`` object with worker processes.
        TaskError: the task breaks the contract (checked before anything is stored).
    """
    from objectives.backend import TorchBackend  # the edge: torch only when a study runs
    from objectives.tasks import Task, TaskError, validate_task

    config = dataclasses.replace(config or StudyConfig(), **settings)
    backend = TorchBackend()
    if task is not None:
        if config.workers > 1 or config.gpus:
            raise ConfigError(
                f"workers={config.workers}, gpus={config.gpus}: worker processes cannot "
                "receive a Task object; give config.task = 'package.module:factory' (an "
                "importable function returning the Task) instead of task=..."
            )
        if not isinstance(task, Task):
            raise TaskError(f"task= must be an objectives.Task, not {type(task).__name__}")
        task = validate_task(task, task.name)
        task.info.setdefault("train_size", len(task.train))
        task.info.setdefault("val_size", len(task.val))
        task.info.setdefault("test_size", len(task.test))
        config = dataclasses.replace(config, task=PYTHON_TASK_PREFIX + task.name)
        backend = TorchBackend(task)
    config = config.validate()
    buffer = io.StringIO() if out is None else None
    if buffer is not None and (in_notebook() if verbose is None else verbose):
        out = Tee(buffer, sys.stdout)
    study = _run_study(config, backend, out or buffer or sys.stdout)
    recommendation = study.user_attrs.get("recommendation")
    return StudyResult(
        study,
        recommendation if isinstance(recommendation, dict) else {},
        buffer.getvalue() if buffer is not None else "",
    )


def plan_study(config: StudyConfig | None = None, *, task: Any = None, **settings: Any) -> Any:
    """What :func:`run_study` with these settings would cost, before it runs: the same as
    ``batchsize-study plan``. Nothing is trained or stored.

    Returns:
        A :class:`study.plan.Plan`: ``text()`` as the command prints it, ``to_dict()``, and
        ``cost`` (expected trainings and seconds).

    Raises:
        ConfigError: a bad setting. TaskError: the task breaks the contract.
    """
    from objectives.backend import TorchBackend
    from objectives.tasks import Task, TaskError, validate_task
    from study.plan import make_plan

    config = dataclasses.replace(config or StudyConfig(), **settings)
    backend = TorchBackend()
    if task is not None:
        if not isinstance(task, Task):
            raise TaskError(f"task= must be an objectives.Task, not {type(task).__name__}")
        task = validate_task(task, task.name)
        config = dataclasses.replace(config, task=PYTHON_TASK_PREFIX + task.name)
        backend = TorchBackend(task)
    return make_plan(config.validate(), backend)


class Tee(io.TextIOBase):
    """A text stream that writes to several: the kept log and the screen.

    Example:
        >>> kept, shown = io.StringIO(), io.StringIO()
        >>> _ = Tee(kept, shown).write("trial 1\\n")
        >>> kept.getvalue() == shown.getvalue() == "trial 1\\n"
        True
    """

    def __init__(self, *streams: TextIO) -> None:
        super().__init__()
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False  # plain counted lines, not a redrawn bar


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell); IPython is never
    imported here, only asked when already loaded."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return type(shell).__name__ == "ZMQInteractiveShell"
