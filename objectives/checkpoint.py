"""Checkpoints of a trial after its epochs, so that a retried trial resumes where its worker died.

After an epoch the objective writes ``<dir>/trial-<N>.pt``, where ``N`` is the number of the
trial's first attempt (Optuna's retries carry it as the system attribute ``failed_trial``):
the model's and the optimizer's state, the epochs done, what they measured, and the
micro-batch (an out-of-memory retry may have halved it). Files are replaced atomically, so a
worker killed while writing leaves the previous checkpoint. A finished trial's file is
removed; a retried trial that finds one resumes after its last epoch and records
``resumed_from_epoch``.

Writes are paced by their cost (:class:`SavePace`): after the first epoch, then after every
epoch that ends at least :data:`SAVE_COST_RATIO` times the last write's seconds of training
after the last write. Epochs of a second or more are each saved; a task whose epochs take
milliseconds saves every few epochs, so that writing costs at most about 2% of training and a
killed trial loses at most that much training or one epoch.

The objective builds the trial's step (:func:`objectives.train.make_step`), loads a saved
optimizer state into ``step.optimizer`` before training, hands the step to
:func:`objectives.train.train_model`, and saves that same optimizer with each checkpoint.

Example (not run as a doctest: it needs a study, files or a server)::

    store = CheckpointStore("storage/checkpoints/batch-size")
    store.load(7, "batch-size/7/2025-01-01T12:00:00", "cpu") is None
    True
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from objectives.train import EpochResult, TrainResult
from study.compat import trial_system_attrs
from study.disk import disk_full, free_bytes, is_disk_full
from study.outputs import OutputError, storage_kind


def first_attempt(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The number of the trial's first attempt (itself, unless it retries a dead one)."""
    return int(trial_system_attrs(trial).get("failed_trial", trial.number))


def run_id(trial: optuna.Trial, first: int) -> str:
    """Names the run of first attempt ``first`` across its retries, and only that run.

    (The study's name, the number and the first attempt's start time: a new study of the same
    name, say after its database was deleted, never resumes an old study's checkpoint.)
    """
    if first == trial.number:
        started = trial.datetime_start
    else:
        trials = trial.study.get_trials(deepcopy=False)
        started = next((t.datetime_start for t in trials if t.number == first), None)
    return f"{trial.study.study_name}/{first}/{started.isoformat() if started else '-'}"


@dataclass
class Checkpoint:
    """A trial's state after ``epoch`` epochs."""

    epoch: int
    model_state: dict
    optimizer_state: dict | None
    result: TrainResult
    micro_batch_size: int


def _result_to_dict(result: TrainResult) -> dict:
    data = dataclasses.asdict(result)
    data["epochs"] = [dataclasses.asdict(e) for e in result.epochs]
    return data


def _result_from_dict(data: dict) -> TrainResult:
    known = {f.name for f in dataclasses.fields(TrainResult)}
    epoch_fields = {f.name for f in dataclasses.fields(EpochResult)}
    renamed = {"val_accuracy": "val_metric", "test_accuracy": "test_metric"}  # older files
    renamed["train_accuracy"] = "train_metric"
    data = {renamed.get(k, k): v for k, v in data.items()}
    values = {k: v for k, v in data.items() if k in known and k != "epochs"}
    epochs = [
        EpochResult(
            **{renamed.get(k, k): v for k, v in e.items() if renamed.get(k, k) in epoch_fields}
        )
        for e in data["epochs"]
    ]
    return TrainResult(epochs=epochs, **values)


def _state_bytes(state: object) -> int:
    """Bytes of the tensors in ``state`` (nested dicts and lists): what a save writes."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_state_bytes(v) for v in state)
    return 0


#: Training seconds between checkpoints, as a multiple of the last write's seconds.
SAVE_COST_RATIO = 50


class SavePace:
    """When an attempt's next checkpoint is due: the first epoch, then once the training since
    the last write reaches :data:`SAVE_COST_RATIO` times that write's seconds.

    Example:
        >>> pace = SavePace()
        >>> pace.due(0.01), pace.saved(0.002), pace.due(0.05), pace.due(0.05)
        (True, None, False, True)
    """

    def __init__(self) -> None:
        self.trained_s = 0.0
        self.write_s = 0.0

    def due(self, epoch_train_s: float) -> bool:
        """Whether to write after an epoch that trained ``epoch_train_s`` seconds."""
        self.trained_s += epoch_train_s
        return self.trained_s >= SAVE_COST_RATIO * self.write_s

    def saved(self, write_s: float) -> None:
        """A checkpoint was written in ``write_s`` seconds."""
        self.trained_s, self.write_s = 0.0, write_s


class CheckpointStore:
    """The checkpoint files of one study, in ``directory`` (created when first written)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: int) -> Path:
        return self.directory / f"trial-{key}.pt"

    def save(
        self,
        key: int,
        run: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        result: TrainResult,
        micro_batch_size: int,
    ) -> None:
        """Write the state after ``len(result.epochs)`` epochs, replacing the previous one.

        ``run`` (see :func:`run_id`) is checked by :meth:`load`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        kind = storage_kind(path) if path.exists() else None
        if kind is not None:
            raise OutputError(
                f"--checkpoint-dir: {path} is {kind} (a study storage), not a checkpoint; "
                "move it away or choose another --checkpoint-dir"
            )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        state = {
            "run": run,
            "epoch": len(result.epochs),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "result": _result_to_dict(result),
            "micro_batch_size": micro_batch_size,
        }
        try:
            torch.save(state, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)  # the previous epoch's checkpoint stays whole
            needed = _state_bytes(state)
            space = free_bytes(self.directory)
            if isinstance(exc, Exception) and (
                is_disk_full(exc) or (space is not None and space[0] < needed)
            ):
                raise disk_full(path, "a checkpoint", needed=needed) from None
            raise

    def load(self, key: int, run: str, device: torch.device | str) -> Checkpoint | None:
        """The checkpoint of ``key`` for ``run``, or ``None`` (none, another run's, or
        unreadable: then the trial starts over)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location=device, weights_only=True)
            if data.get("run") != run:
                return None
            return Checkpoint(
                epoch=int(data["epoch"]),
                model_state=data["model"],
                optimizer_state=data["optimizer"],
                result=_result_from_dict(data["result"]),
                micro_batch_size=int(data["micro_batch_size"]),
            )
        except Exception as exc:  # a damaged file costs the epochs, not the trial
            warnings.warn(f"ignoring unreadable checkpoint {path} ({exc})", stacklevel=2)
            return None

    def remove(self, key: int) -> None:
        self.path(key).unlink(missing_ok=True)

    def keep_only(self, keys: set[int]) -> None:
        """Remove the checkpoints of trials not in ``keys`` (those that cannot resume)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.glob("trial-*.pt"):
            try:
                key = int(path.stem.removeprefix("trial-"))
            except ValueError:
                continue
            if key not in keys:
                path.unlink(missing_ok=True)
