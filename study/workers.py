"""Worker processes on one machine: N on the CPU, or one (or K) per GPU, on one study.

The parent creates the study first (new SQLite files and new PostgreSQL schemas race when
several processes create them at once), then starts the workers as real processes, each
running the same claim loop (:func:`study.runner.run_trials`). A worker of ``--gpus 0,1`` sees
only its GPU through ``CUDA_VISIBLE_DEVICES``. While they run, the parent fails the trials of
workers that died (no heartbeat for the grace period) so that the others retry them. Ctrl-C
(or SIGTERM) to the parent is relayed once to every worker, which marks its running trial FAIL
and exits; workers also stop when the parent dies.

Nothing here imports torch: what a worker runs is the ``command`` it is given.

Example:
    >>> [w.name for w in plan_workers(workers=1, gpus=("0", "1"), workers_per_gpu=2)]
    ['w0-gpu0', 'w1-gpu0', 'w2-gpu1', 'w3-gpu1']
    >>> [w.name for w in plan_workers(1, ("0", "1", "2", "3"), devices_per_trial=2)]
    ['w0-gpu0,1', 'w1-gpu2,3']
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

#: Seconds the parent gives interrupted workers to mark their trials FAIL before killing them.
STOP_GRACE_S = 30.0
#: Exit codes of a worker and of every command: done, a user's mistake (a bad flag, storage,
#: study or task; also argparse's code), interrupted.
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


#: Signals a worker process received (see :func:`stop_on_signals`).
_RECEIVED: list[int] = []


def stop_on_signals() -> None:
    """In a worker process: SIGINT and SIGTERM raise KeyboardInterrupt, and are remembered.

    Raised at an arbitrary point, the interrupt can land in a garbage collector's finalizer
    (SQLAlchemy has some), where Python prints and ignores it; :func:`raise_if_interrupted`,
    called between epochs and before each claim, stops the worker all the same.
    """

    def handler(signum: int, _frame: object) -> None:
        _RECEIVED.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if this worker was told to stop (a no-op elsewhere)."""
    if _RECEIVED:
        raise KeyboardInterrupt


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: its index on this machine and the GPU it sees (``None``: all)."""

    index: int
    gpu: str | None = None

    @property
    def name(self) -> str:
        return f"w{self.index}" + (f"-gpu{self.gpu}" if self.gpu is not None else "")


def plan_workers(
    workers: int,
    gpus: Sequence[str] | None = None,
    workers_per_gpu: int = 1,
    devices_per_trial: int = 1,
) -> list[WorkerSpec]:
    """``workers`` CPU/any-device workers, or ``workers_per_gpu`` per GPU of ``gpus``; with
    ``devices_per_trial`` K, per group of K GPUs (the worker sees all K, ``gpu`` ``"0,1"``)."""
    if gpus:
        k = devices_per_trial
        groups = [",".join(gpus[i : i + k]) for i in range(0, len(gpus) - k + 1, k)]
        return [
            WorkerSpec(i * workers_per_gpu + w, group)
            for i, group in enumerate(groups)
            for w in range(workers_per_gpu)
        ]
    return [WorkerSpec(i) for i in range(workers)]


def worker_env(spec: WorkerSpec, n_workers: int, base: dict[str, str]) -> dict[str, str]:
    """The environment of one worker: its GPU, unbuffered output, a share of the CPU threads
    (``n_workers``: the processes that train at once, helper ranks included)."""
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"
    env["BATCHSIZE_WORKER"] = spec.name
    if spec.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.gpu
    if "OMP_NUM_THREADS" not in base:  # N workers each using every core would thrash
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_workers))
    return env


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no imports, no locks
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def describe_exit(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerPool:
    """Start, watch and stop worker processes.

    Args:
        command: The worker's command line; ``--worker-index I`` is appended.
        specs: The workers (see :func:`plan_workers`).
        payload: Written to each worker's stdin (its settings; stdin keeps a password in a
            storage URL out of the process list).
        env: The base environment (default: this process's).
        log: Where the parent reports workers that end early.
        processes_per_worker: Processes each worker trains with (its trial's devices), for
            the share of CPU threads.
    """

    def __init__(
        self,
        command: Sequence[str],
        specs: Sequence[WorkerSpec],
        payload: str,
        env: dict[str, str] | None = None,
        log: TextIO | None = None,
        processes_per_worker: int = 1,
    ) -> None:
        self.processes_per_worker = processes_per_worker
        self.command = list(command)
        self.specs = list(specs)
        self.payload = payload
        self.env = dict(os.environ if env is None else env)
        self.log = log or sys.stderr
        self.procs: list[subprocess.Popen] = []
        self.codes: dict[int, int] = {}

    def start(self) -> None:
        preexec = parent_death_signal()
        for spec in self.specs:
            proc = subprocess.Popen(
                [*self.command, "--worker-index", str(spec.index)],
                stdin=subprocess.PIPE,
                env=worker_env(spec, len(self.specs) * self.processes_per_worker, self.env),
                text=True,
                start_new_session=True,  # a terminal's Ctrl-C reaches the parent, which relays
                preexec_fn=preexec,
            )
            self.procs.append(proc)
            try:
                proc.stdin.write(self.payload)
                proc.stdin.close()
            except BrokenPipeError:  # it died at once; wait() reports its exit code
                pass

    def wait(self, tick: Callable[[], None] | None = None, tick_s: float = 1.0) -> dict[int, int]:
        """Wait for every worker; call ``tick`` about every ``tick_s`` seconds meanwhile.

        Returns ``{worker index: exit code}`` (negative: killed by that signal). On Ctrl-C
        or SIGTERM, stops the workers (:meth:`stop`) and raises KeyboardInterrupt.

        While waiting, SIGINT and SIGTERM only set a flag that the loop reads: raised as an
        exception at an arbitrary point, an interrupt can land in a garbage collector's
        finalizer (SQLAlchemy's, during ``tick``), where Python prints and ignores it, and the
        workers would never hear of it.
        """
        interrupted: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda signum, _frame: interrupted.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        try:
            return self._wait(interrupted, tick, tick_s)
        except KeyboardInterrupt:
            restore()  # a second Ctrl-C while stopping cuts the grace period short
            self.stop()
            raise
        finally:
            restore()

    def _wait(
        self, interrupted: list[int], tick: Callable[[], None] | None, tick_s: float
    ) -> dict[int, int]:
        last_tick = time.monotonic()
        while len(self.codes) < len(self.procs):
            if interrupted:
                raise KeyboardInterrupt
            for spec, proc in zip(self.specs, self.procs, strict=True):
                code = proc.poll()
                if code is None or spec.index in self.codes:
                    continue
                self.codes[spec.index] = code
                if code != EXIT_OK:
                    print(
                        f"worker {spec.name} (pid {proc.pid}) {describe_exit(code)}",
                        file=self.log,
                        flush=True,
                    )
            if tick is not None and time.monotonic() - last_tick >= tick_s:
                last_tick = time.monotonic()
                tick()
            time.sleep(0.1)
        return dict(self.codes)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGINT to every running worker, then SIGKILL to any still running after ``grace_s``."""
        alive = [p for p in self.procs if p.poll() is None]
        for proc in alive:
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for proc in alive:
            while True:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    break
                except subprocess.TimeoutExpired:
                    proc.kill()
                except KeyboardInterrupt:  # a second Ctrl-C: do not wait any longer
                    for p in alive:
                        if p.poll() is None:
                            p.kill()
        for spec, proc in zip(self.specs, self.procs, strict=True):
            self.codes.setdefault(spec.index, proc.wait())
