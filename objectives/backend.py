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
from objectives.models import ModelError
from objectives.objective import BatchSizeObjective
from objectives.probe import ProbeError
from objectives.tasks import Task, TaskError, load_task
from study.config import ConfigError, StudyConfig, check_precision
from study.space import BatchSpace
from study.storage import JOURNAL_PREFIX


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is there, else ``cpu``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return device


def build_task(config: Any) -> Task:
    """The task the config names, built with its model settings.

    Any object with the same field names works, such as the namespace of a script that
    declared its flags with :func:`study.cli.add_task_arguments`.
    """
    return load_task(
        config.task,
        model=config.model,
        hidden=tuple(config.hidden),
        seed=config.seed,
        synthetic_samples=config.synthetic_samples,
        synthetic_features=config.synthetic_features,
        synthetic_classes=config.synthetic_classes,
        data_dir=config.data_dir,
        download=getattr(config, "download", False),
    )


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


def training_loss(model: torch.nn.Module, dataset: Any, limit: int = 4096) -> float:
    """Mean cross-entropy of ``model`` on (the first ``limit`` samples of) ``dataset``.

    Used to tell a diverged model (loss far above its start, or not finite) from a trained one.
    """
    from objectives.data import as_tensors

    data = as_tensors(dataset)
    if data is None:
        return float("nan")
    device = next(iter(model.parameters()), torch.empty(0)).device
    x, y = data.x[:limit].to(device), data.y[:limit].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x).float(), y).item())
    finally:
        model.train(was_training)


class TorchBackend:
    """Trains with PyTorch: the backend of the scripts and the console command."""

    user_errors: tuple[type[Exception], ...] = (ConfigError, TaskError, ModelError, ProbeError)

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
        return build_task(config)

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
