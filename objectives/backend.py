"""The PyTorch side of a run, handed to :func:`study.orchestrate.run_study`.

:class:`TorchBackend` answers the orchestrator's questions: where to train, which task, how
large a micro-batch fits (the hardware probe) and which objective to run. Nothing here opens
storage, starts workers or prints; the orchestrator does.

Example:
    >>> from study.config import StudyConfig
    >>> TorchBackend().device(StudyConfig(device="cpu"))
    'cpu'
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from sqlalchemy.engine import make_url

from objectives.checkpoint import CheckpointStore, first_attempt
from objectives.datacheck import DataItemError
from objectives.fingerprint import data_fingerprint
from objectives.loading import build_task
from objectives.models import ModelError
from objectives.objective import BatchSizeObjective, task_metric
from objectives.probe_memory import ProbeError
from objectives.tasks import Task, TaskError
from objectives.train import training_loss
from study.config import ConfigError, StudyConfig, check_precision
from study.record import MetricInfo
from study.safety import JOURNAL_PREFIX
from study.space import BatchSpace

__all__ = ["TorchBackend", "build_task", "resolve_device", "training_loss"]


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is there, else ``cpu``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return device


def checkpoint_folder(config: StudyConfig) -> Path | None:
    """The folder of the study's checkpoints (``None`` with ``--checkpoint-dir none``).

    Default: ``checkpoints/<study>`` next to an SQLite or journal file, else
    ``storage/checkpoints/<study>`` (workers on several machines need ``--checkpoint-dir``
    on a filesystem they share).
    """
    if config.checkpoint_dir is not None:
        if config.checkpoint_dir.lower() == "none":
            return None
        return Path(config.checkpoint_dir) / config.study_name
    url = config.storage or ""
    base = Path("storage")
    if url.startswith(JOURNAL_PREFIX):
        base = Path(url[len(JOURNAL_PREFIX) :]).parent
    elif url.startswith("sqlite"):
        base = Path(make_url(url).database or "storage/x.db").parent
    return base / "checkpoints" / config.study_name


def checkpoint_store(config: StudyConfig) -> CheckpointStore | None:
    """Where the study's trials checkpoint each epoch (see :func:`checkpoint_folder`)."""
    folder = checkpoint_folder(config)
    return None if folder is None else CheckpointStore(folder)


def _units_per_sample(task: Task, data: Any) -> float:
    """What one sample counts in the task's unit (tokens per sequence, ...; 1 for samples)."""
    if task.count is None:
        return 1.0
    n = min(8, len(data))
    return float(task.count(data.x[:n], data.y[:n])) / n


def _streamed_units(task: Task) -> float:
    """What one sample counts in the task's unit, from a batch of up to 8 items collated as
    training collates them (1 for samples)."""
    if task.count is None:
        return 1.0
    from objectives.batch import stack_items

    items = [task.train[i] for i in range(min(8, len(task.train)))]
    inputs, targets = (task.collate or stack_items)(items)
    return float(task.count(inputs, targets)) / len(items)


class TorchBackend:
    """Trains with PyTorch: the backend of the scripts and the console command."""

    user_errors: tuple[type[Exception], ...] = (
        ConfigError,
        TaskError,
        ModelError,
        ProbeError,
        DataItemError,
    )

    def __init__(self, task: Task | None = None) -> None:
        """``task``: a task given as an object (``batchsize_study.api.run_study(task=...)``), used
        instead of building the one the config names."""
        self._task = task

    def device(self, config: StudyConfig) -> str:
        """Where this process trains or probes: with ``--gpus``, the first listed GPU."""
        device = self._parent_device(config)
        check_precision(config.precision, device)
        return device

    def _parent_device(self, config: StudyConfig) -> str:
        if not config.gpus:
            return resolve_device(config.device)
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--gpus {','.join(config.gpus)}: no CUDA GPU is visible; use --workers N on "
                "the CPU"
            )
        first = config.gpus[0]
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        if first in visible:
            return resolve_device(f"cuda:{visible.index(first)}")
        count = torch.cuda.device_count()
        missing = [g for g in config.gpus if g.isdigit() and int(g) >= count]
        if missing and "CUDA_VISIBLE_DEVICES" not in os.environ:
            raise ConfigError(
                f"--gpus {','.join(config.gpus)}: this machine has {count} GPU(s), "
                f"ids 0-{count - 1}; drop {','.join(missing)}"
            )
        return resolve_device(f"cuda:{first}" if first.isdigit() else "cuda")

    def worker_device(self, config: StudyConfig) -> str:
        """A worker of ``--gpus`` sees only its GPU: ``cuda``, never a silent CPU."""
        return resolve_device("cuda" if config.gpus else config.device)

    def build_task(self, config: StudyConfig) -> Task:
        return self._task if self._task is not None else build_task(config)

    def metric(self, task: Task) -> MetricInfo:
        """The task's metric (accuracy, maximised, by default) and what it counts."""
        return task_metric(task)

    def fingerprint(self, task: Task) -> dict:
        """The fingerprint of the task's data (:func:`objectives.fingerprint.data_fingerprint`)."""
        return data_fingerprint(task)

    def memory_cap(self, config: StudyConfig, task: Task, device: str) -> tuple[int, str, dict]:
        """The hardware probe's cap for the trials' settings, and its table to store."""
        from objectives.probe import log_to_stderr, probe_batch_size

        result = probe_batch_size(
            task,
            optimizer=config.optimizer,
            device=device,
            memory_budget=config.memory_budget,
            memory_margin=config.memory_margin,
            min_batch_size=config.min_batch_size,
            precision=config.precision,  # the trials' settings, so the cap holds for them
            compile=config.compile,
            log=log_to_stderr if sys.stderr.isatty() else None,  # redirected: errors only
        )
        return result.max_batch_size, f"probe ({device})", {"probe": result.to_dict()}

    def objective(
        self,
        config: StudyConfig,
        task: Task,
        space: BatchSpace,
        device: str,
        log: Callable[[str], None],
    ) -> BatchSizeObjective:
        return BatchSizeObjective(task, config, space, device, checkpoint_store(config), log=log)

    def measure_speed(
        self,
        config: StudyConfig,
        task: Task,
        device: str,
        space: BatchSpace,
        batch_sizes: list[int],
    ) -> dict:
        """Throughput of the answer's candidate batch sizes, timed side by side for it.

        One interleaved measurement on a fresh model (:func:`objectives.speed.measure_speed`):
        every candidate is timed once per round, each at the micro-batch the study trains it
        with, so the answer's speed-ups are per-round ratios of one measurement. Returns the
        timing's JSON (``SpeedResult.to_dict()``) plus ``per_batch``: ``{batch_size:
        {"samples_per_s", "rates", "spread", "micro_batch_size"}}`` in the task's unit
        (``rates``: one per round), and ``units_per_sample``
        (what one sample counts in it). Data held as tensors is sliced; any other dataset is
        fetched item by item and collated as training does (:func:`dataset_batches`), so
        every task gets a timing.
        """
        import torch

        from objectives.data import as_tensors
        from objectives.speed import dataset_batches, measure_speed
        from objectives.train import TrainSettings

        if not batch_sizes or config.devices_per_trial > 1:
            # Several devices per trial: a timing in this one process would leave out the
            # group's communication; the trials' own group throughput stands in.
            return {}
        data = as_tensors(task.train, split="train")
        micro = {b: space.split(b)[0] for b in batch_sizes}
        make_batch, units = None, 1.0
        if data is None:  # streamed: the rates come out in the task's unit already
            make_batch = dataset_batches(
                task.train,
                micro,
                torch.Generator().manual_seed(config.seed),
                device,
                collate=task.collate,
                count=task.count,
            )
        else:
            units = _units_per_sample(task, data)
        settings = TrainSettings(
            epochs=1,
            batch_size=max(batch_sizes),
            micro_batch_size=max(micro.values()),
            lr=config.base_lr,
            optimizer=config.optimizer,
            seed=config.seed,
            device=device,
            precision=config.precision,
            compile=config.compile,
        )
        result = measure_speed(
            task.build_model,
            data,
            sorted(batch_sizes),
            settings,
            min_seconds=0.1,
            task=task,
            micro_batch_sizes=micro,
            make_batch=make_batch,
        )
        per_batch: dict[int, dict] = {}
        for b in batch_sizes:
            row = result.row(b)
            if row.units_per_s:
                per_batch[b] = {
                    "samples_per_s": row.units_per_s * units,
                    "rates": [r * units if r else None for r in row.rates],
                    "spread": row.relative_spread,
                    "micro_batch_size": micro[b],
                }
        return {
            "per_batch": per_batch,
            "timings": [result.to_dict()],
            "units_per_sample": units if data is not None else _streamed_units(task),
        }

    def branch(
        self,
        task: Task,
        settings: dict,
        tolerance: float,
        loss_tolerance: float,
        confidence: float,
        log: Callable[[str], None] | None = None,
    ) -> Any:
        """The branch command's training (:func:`objectives.branch.branch_run`): a
        :class:`~study.branch_report.BranchResult`."""
        from objectives.branch import BranchSettings, branch_run

        return branch_run(
            task, BranchSettings(**settings), tolerance, loss_tolerance, confidence, log
        )

    def tidy(self, config: StudyConfig, study: optuna.Study) -> None:
        """Keep only the checkpoints that a RUNNING or WAITING retry may resume."""
        checkpoints = checkpoint_store(config)
        if checkpoints is None:
            return
        unfinished = study.get_trials(
            deepcopy=False,
            states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING),
        )
        checkpoints.keep_only({first_attempt(t) for t in unfinished})
