"""One trial on several devices: its process group, its helper ranks and their teardown.

The process that runs the Optuna trial (a worker, or the command itself) is rank 0. For an
attempt on K devices, :class:`TrialGroup` opens a ``TCPStore`` on 127.0.0.1 on a port the
operating system picks (port 0: concurrent trials and studies never clash), starts K - 1
helper processes (:data:`HELPER_COMMAND`, each told its rank on stdin, each
ended by SIGTERM if rank 0 dies), and forms a gloo (CPU) or NCCL (GPU) group with them. Rank
0 sends each helper the attempt (:class:`Job`: the settings and, when resuming, the
optimizer's state; the model's state reaches them through DistributedDataParallel, which
broadcasts rank 0's parameters when it wraps the model), and every rank trains its
contiguous share of each update (:mod:`objectives.ranks`, :func:`objectives.train.train_model`).

Faults end the attempt, never hang it: a helper that dies closes its sockets, so rank 0's
next collective fails at once; one that hangs is cut off by the collective timeout
(``--collective-timeout``). Either way :class:`TrialGroup` kills what is left of the group,
and raises :class:`RankFailed` (a :class:`study.runner.TrialRetry`): the trial is FAIL,
queued again and resumed from its last checkpoint.

Why not ``optuna_integration.TorchDistributedTrial``: it makes every Optuna call (suggest,
report, should_prune, set_user_attr) a collective that all ranks run in lockstep, so every
rank would run the whole objective and reach the storage. Here only rank 0 touches Optuna;
the helpers train and hear one decision per epoch (:meth:`objectives.ranks.Ranks.lead`), a
single ``broadcast_object_list``. That is less code than wrapping the trial, keeps the
helpers free of storage and heartbeats, and needs no extra dependency.

Across machines ``torchrun`` starts every rank instead (:mod:`objectives.torchrun`).

Example (not run as a doctest: it starts processes)::

    with TrialGroup(config, "cpu", devices=2) as group:
        step = make_step(model, settings, task)
        on_epoch = group.start(model, step, Job(settings, 0, None), on_epoch)
        train_model(model, train, val, settings, on_epoch, step=step, parallel=group.ranks)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from objectives.oom import is_out_of_memory
from objectives.ranks import Ranks, Stopped, collective_device
from objectives.train import Diverged, Step, TrainResult, TrainSettings, make_step, train_model
from study.config import StudyConfig, config_from_json, config_to_json
from study.runner import TrialRetry
from study.workers import describe_exit, parent_death_signal

#: How a helper rank is started (its settings come on stdin). Not ``-m``: the package's
#: ``__init__`` already imports this module.
HELPER_COMMAND = [
    sys.executable,
    "-c",
    "from objectives.distributed import helper_main; helper_main()",
]
#: Seconds helpers get to exit by themselves once the attempt ended at an epoch boundary.
EXIT_GRACE_S = 10.0
#: Seconds a fault waits for a rank that died to be seen dead, before the rest are killed.
FAULT_GRACE_S = 2.0
#: What the backends' errors say when a peer is gone (DDP's hooks raise plain RuntimeError).
COLLECTIVE_ERRORS = ("gloo", "nccl", "connection reset", "connection closed", "timed out")
#: Where the rendezvous listens: this machine only.
HOST = "127.0.0.1"


class RankFailed(TrialRetry):
    """A rank of the trial died, timed out or ran out of memory: the trial is retried."""


@dataclass
class Job:
    """What rank 0 sends every helper at the start of an attempt.

    Args:
        settings: The attempt's training settings (global batch, micro-batch, seed, ...).
        start_epoch: Epochs done before (a resumed trial).
        optimizer_state: The optimizer's state to resume from (``None``: fresh).
    """

    settings: TrainSettings
    start_epoch: int
    optimizer_state: dict | None


def is_collective_error(error: BaseException) -> bool:
    """Whether ``error`` came from the group's communication (a peer gone, a timeout)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(word in text for word in COLLECTIVE_ERRORS)


def rank_device(device: str, rank: int) -> str:
    """Rank ``rank``'s device: the CPU, or the ``rank``-th GPU the worker sees."""
    return f"cuda:{rank}" if torch.device(device).type == "cuda" else "cpu"


def backend_of(device: str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def wrap(model: torch.nn.Module, step: Step, device: str) -> None:
    """Train ``step`` through DistributedDataParallel around ``model`` (compiled if asked)."""
    where = torch.device(device)
    ids = [where.index or 0] if where.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids)
    step.model = torch.compile(ddp) if step.settings.compile else ddp


def lead_attempt(
    ranks: Ranks,
    model: torch.nn.Module,
    step: Step,
    job: Job,
    on_epoch: Callable[[Any], None] | None,
) -> Callable[[Any], None]:
    """Rank 0 starts an attempt: send ``job`` to the other ranks, wrap the model; return
    rank 0's ``on_epoch`` (its decisions broadcast to the others)."""
    dist.broadcast_object_list([job], src=0, device=collective_device(ranks.device))
    wrap(model, step, ranks.device)
    return ranks.lead(on_epoch)


class TrialGroup:
    """Rank 0's side of one attempt on ``devices`` devices: a context manager.

    Entering starts the helpers and forms the group (:attr:`ranks` is rank 0's
    :class:`~objectives.ranks.Ranks`); :meth:`start` sends the attempt and wraps the
    model; leaving lets the helpers end by themselves (after a completed attempt or a
    broadcast stop), or kills them (any other exception), destroys the group and turns a
    fault into :class:`RankFailed`.

    Args:
        config: The study's settings (helpers build the task from them).
        device: Rank 0's device (``cpu``, or ``cuda``: the worker's first visible GPU).
        devices: Processes in the group.
        timeout_s: The collective timeout, and how long helpers may take to join.
    """

    def __init__(
        self, config: StudyConfig, device: str, devices: int, timeout_s: float = 300.0
    ) -> None:
        self.config = config
        self.device = rank_device(device, 0)
        self.devices = devices
        self.timeout_s = timeout_s
        self.helpers: list[subprocess.Popen] = []
        self.ranks = Ranks(0, devices, self.device)

    def __enter__(self) -> TrialGroup:
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(HOST, 0, self.devices, True, timeout, wait_for_workers=False)
        try:
            self._spawn(store.port)
            self._await_ready(store)
            dist.init_process_group(
                backend_of(self.device),
                store=dist.PrefixStore("group", store),
                rank=0,
                world_size=self.devices,
                timeout=timeout,
            )
        except BaseException:
            self._kill()
            raise
        self.store = store
        return self

    def _spawn(self, port: int) -> None:
        preexec = parent_death_signal()
        for rank in range(1, self.devices):
            spec = {
                "host": HOST,
                "port": port,
                "rank": rank,
                "ranks": self.devices,
                "device": rank_device(self.device, rank),
                "timeout_s": self.timeout_s,
                "config": config_to_json(self.config),
            }
            proc = subprocess.Popen(
                HELPER_COMMAND,
                stdin=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                text=True,
                preexec_fn=preexec,
            )
            self.helpers.append(proc)
            try:
                proc.stdin.write(json.dumps(spec))  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

    def _await_ready(self, store: dist.TCPStore) -> None:
        """Wait until every helper has loaded its data, failing at once if one exits."""
        keys = [f"ready/{rank}" for rank in range(1, self.devices)]
        deadline = time.monotonic() + self.timeout_s
        while not store.check(keys):
            ended = self._ended()
            if ended:
                raise RankFailed(f"{ended} before joining the group")
            if time.monotonic() > deadline:
                raise RankFailed(
                    f"the trial's {self.devices - 1} helper ranks did not join within "
                    f"{self.timeout_s:g} s (--collective-timeout)"
                )
            time.sleep(0.05)

    def start(
        self,
        model: torch.nn.Module,
        step: Step,
        job: Job,
        on_epoch: Callable[[Any], None] | None,
    ) -> Callable[[Any], None]:
        """Send the attempt to the helpers, wrap the model; return rank 0's ``on_epoch``."""
        return lead_attempt(self.ranks, model, step, job, on_epoch)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        at_boundary = kind is None or self.ranks.stopped or isinstance(error, Diverged)
        if at_boundary and dist.is_initialized():  # every rank done: all close together
            with contextlib.suppress(Exception):  # a helper gone meanwhile: reaped below
                dist.barrier()
        # At an epoch boundary the helpers end by themselves (rank 0 keeps its side of the
        # group open meanwhile: a helper whose peer closes first can abort in gloo's teardown);
        # after a fault, a rank that died is given a moment to be seen dead (its sockets close
        # before it is reaped).
        deadline = time.monotonic() + (EXIT_GRACE_S if at_boundary else FAULT_GRACE_S)
        while time.monotonic() < deadline and self._alive():
            if not at_boundary and self._ended():
                break
            time.sleep(0.02)
        ended = self._ended()  # before the kill: who died by itself
        self._kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        if error is None or at_boundary or isinstance(error, KeyboardInterrupt):
            return
        if ended or is_collective_error(error) or is_out_of_memory(error):
            what = ended or f"rank 0 failed ({type(error).__name__}: {error})"
            raise RankFailed(
                f"{what}; the trial on {self.devices} devices is retried from its last checkpoint"
            ) from error

    def _alive(self) -> bool:
        return any(proc.poll() is None for proc in self.helpers)

    def _ended(self) -> str:
        """``rank 1 (pid N) was killed by SIGKILL``, for helpers that ended with an error."""
        return "; ".join(
            f"rank {rank} (pid {proc.pid}) {describe_exit(proc.returncode)}"
            for rank, proc in enumerate(self.helpers, start=1)
            if proc.poll() not in (None, 0)
        )

    def _kill(self) -> None:
        """SIGKILL any helper still running and reap them all: none is left behind."""
        for proc in self.helpers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.helpers:
            proc.wait()


def train_job(job: Job, task: Any, train: Any, val: Any, parallel: Ranks) -> None:
    """Train one attempt as a rank other than 0, until it ends or rank 0 stops it."""
    job.settings.device = parallel.device
    model = task.build_model().to(parallel.device)
    step = make_step(model, job.settings, task)
    if job.optimizer_state is not None:
        step.optimizer.load_state_dict(job.optimizer_state)
    wrap(model, step, parallel.device)
    try:
        train_model(
            model,
            train,
            val,
            job.settings,
            parallel.follow,
            TrainResult(),
            step=step,
            start_epoch=job.start_epoch,
            task=task,
            parallel=parallel,
        )
    except (Stopped, Diverged):  # rank 0 stopped the trial, or every rank saw the NaN
        pass


def helper_main() -> NoReturn:
    """A helper rank: join the group, train the attempt rank 0 sends, exit (code 0).

    Reads ``{"host", "port", "rank", "ranks", "device", "timeout_s", "config"}`` on stdin.
    """
    from objectives.data import place
    from objectives.loading import build_task

    spec = json.loads(sys.stdin.read())
    rank, ranks, device = int(spec["rank"]), int(spec["ranks"]), str(spec["device"])
    timeout = datetime.timedelta(seconds=float(spec["timeout_s"]))
    store = dist.TCPStore(spec["host"], int(spec["port"]), ranks, False, timeout)
    config = config_from_json(spec["config"])
    task = build_task(config)
    train, val = (place(getattr(task, s), device, task.collate, s) for s in ("train", "val"))
    store.set(f"ready/{rank}", "1")
    dist.init_process_group(
        backend_of(device),
        store=dist.PrefixStore("group", store),
        rank=rank,
        world_size=ranks,
        timeout=timeout,
    )
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, device=collective_device(device))
    train_job(box[0], task, train, val, Ranks(rank, ranks, device))
    # Rank 0 meets this barrier when it leaves the attempt (after its final train and test
    # evaluation), so every rank closes together; past the collective timeout, exit anyway.
    with contextlib.suppress(Exception):
        dist.barrier()
    dist.destroy_process_group()
    # The work is done: leave without the interpreter's teardown, in which torch's store and
    # its threads can end the process with SIGABRT ("terminate called without an active
    # exception", about one exit in ten here) and turn a clean end into a failed rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
