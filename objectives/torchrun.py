"""One trial across machines: every rank started by ``torchrun``, the group kept for the run.

Under ``torchrun`` (its ``TORCHELASTIC_RUN_ID``, ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``)
every process runs the same command. :func:`join_launched` checks the settings against the
launch and forms the group from torchrun's rendezvous; rank 0 then runs the study as usual,
each attempt on the whole group (:class:`LaunchedGroup`, chosen by
:func:`objectives.groups.trial_group`), and the other ranks train what it sends
(:func:`serve_launched`) until :func:`release_launched` tells them the run is over.

A rank that fails breaks the group: rank 0 marks its trial FAIL and queues it, and the run
stops as if interrupted (:class:`GroupLost`); torchrun's restart (``--max-restarts``) forms a
new group and the new run resumes the trial from its checkpoint.

Example (a shell command; see docs/workers.md for several machines and Slurm)::

    torchrun --standalone --nproc-per-node 2 scripts/run_study.py --devices-per-trial 2
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist

from objectives.distributed import Job, backend_of, is_collective_error, lead_attempt, train_job
from objectives.oom import is_out_of_memory
from objectives.ranks import Ranks, collective_device
from objectives.train import Diverged, Step
from study.config import ConfigError, StudyConfig


def launched() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` when ``torchrun`` started this process as one of
    two or more (its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); else ``None``."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def join_launched(config: StudyConfig) -> None:
    """Under ``torchrun``: check the settings against the launch and form the group (every
    rank calls it first). Elsewhere: nothing."""
    where = launched()
    if where is None:
        return
    rank, world, local = where
    if config.devices_per_trial != world:
        raise ConfigError(
            f"--devices-per-trial {config.devices_per_trial} under torchrun with {world} "
            f"processes in all: give --devices-per-trial {world} (one trial on every process)"
        )
    if config.workers > 1 or config.gpus:
        raise ConfigError(
            "under torchrun each launch runs one trial at a time on all its processes: drop "
            "--workers and --gpus (start more launches against the same study instead)"
        )
    device = "cpu"
    if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_of(device), timeout=datetime.timedelta(seconds=config.collective_timeout)
    )


def release_launched() -> None:
    """Rank 0 under ``torchrun``, its run over: tell the other ranks (they exit)."""
    where = launched()
    if where is None or where[0] != 0 or not dist.is_initialized():
        return
    with contextlib.suppress(Exception):  # a broken group: the others time out instead
        device = f"cuda:{where[2]}" if dist.get_backend() == "nccl" else "cpu"
        dist.broadcast_object_list([None], src=0, device=collective_device(device))
    dist.destroy_process_group()


class GroupLost(KeyboardInterrupt):
    """Under ``torchrun``, a rank failed: this run stops as if interrupted (the trial is FAIL
    and queued again); torchrun's restart (``--max-restarts``) resumes it on a new group."""


class LaunchedGroup:
    """Rank 0's side of an attempt when ``torchrun`` started every rank: the group lives for
    the whole run (:func:`join_launched`); the other ranks wait in :func:`serve_launched`."""

    def __init__(self, device: str) -> None:
        rank, world, local = launched() or (0, 1, 0)
        self.device = f"cuda:{local}" if torch.device(device).type == "cuda" else "cpu"
        self.ranks = Ranks(0, world, self.device)

    def __enter__(self) -> LaunchedGroup:
        return self

    def start(
        self,
        model: torch.nn.Module,
        step: Step,
        job: Job,
        on_epoch: Callable[[Any], None] | None,
    ) -> Callable[[Any], None]:
        """Send the attempt to the other ranks, wrap the model; return the ``on_epoch``."""
        return lead_attempt(self.ranks, model, step, job, on_epoch)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        at_boundary = kind is None or self.ranks.stopped or isinstance(error, Diverged)
        if at_boundary:
            return
        dist.destroy_process_group()  # mid-update: unusable; the run ends, torchrun restarts
        if isinstance(error, KeyboardInterrupt):
            return
        if is_collective_error(error) or is_out_of_memory(error):
            raise GroupLost(f"a rank of the torchrun group failed: {error}") from error


def serve_launched(config: StudyConfig) -> int:
    """A rank other than 0 under ``torchrun``: train each attempt rank 0 sends, until it
    sends ``None`` (its run is over)."""
    from objectives.data import place
    from objectives.loading import build_task

    rank, world, local = launched() or (0, 1, 0)
    device = f"cuda:{local}" if dist.get_backend() == "nccl" else "cpu"
    task = build_task(config)
    train, val = (place(getattr(task, s), device, task.collate, s) for s in ("train", "val"))
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, device=collective_device(device))
        if box[0] is None:
            break
        train_job(box[0], task, train, val, Ranks(rank, world, device))
    dist.destroy_process_group()
    return 0
