"""What one training step holds in memory, measured rather than guessed.

On CUDA the allocator's own peak counter is the truth. On CPU there is no such counter, so a
step's footprint is the parameters, gradients and optimizer state held when it starts
(:func:`state_bytes`) plus the peak of the CPU allocator's own allocation and free events
during it (:class:`PeakMemory`, read from ``torch.profiler``): the backward pass's transient
buffers and the optimizer's temporaries are in it, not only the tensors autograd saves.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator

import torch

from objectives.compat import allocation_events


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        if t is not None and t.device.type != "meta":
            key = _storage_key(t)
            seen[key] = key[1]
    return sum(seen.values())


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of parameters, buffers, gradients and optimizer state, each storage once."""
    tensors: list[torch.Tensor] = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def _cpu_allocation_peak(prof: torch.profiler.profile) -> int:
    """Highest net bytes the CPU allocator held during ``prof``, above its level at the start.

    Reads the allocator's own allocation and free events (``profile_memory=True``) in time
    order. Blocks allocated before profiling started and freed during it are not reported by
    the profiler, so the caller should free them first (the peak would otherwise be too high,
    never too low).
    """
    events = allocation_events(prof)  # torch's private event tree: objectives.compat
    # At equal timestamps count allocations before frees: a tie can only raise the peak.
    events.sort(key=lambda e: (e[0], -e[1]))
    level = peak = 0
    for _, size in events:
        level += size
        peak = max(peak, level)
    return peak


@contextlib.contextmanager
def _quiet_profiler_log() -> Iterator[None]:
    """Silence the native stderr while the profiler starts or stops.

    Kineto writes a ``profiler_start`` / ``profiler_stop`` line to stderr on each start and
    stop unless ``KINETO_LOG_LEVEL`` was set before torch loaded, which a library cannot
    arrange. Only those two calls are silenced (file descriptor 2 for a few milliseconds),
    and nothing is silenced when the user has set ``KINETO_LOG_LEVEL``.
    """
    if "KINETO_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class PeakMemory:
    """The peak bytes the device's allocator held while the context was open, above entry.

    On CUDA this is the caching allocator's own peak of *reserved* memory (what the device
    had to give the process, fragmentation included; ``allocated_bytes`` has the peak of live
    tensors). On CPU it is the peak of the c10 CPU allocator's allocation and free events,
    read from ``torch.profiler`` with ``profile_memory=True``; memory that libraries allocate
    outside torch's allocator (BLAS scratch buffers) is not in it.

    ``bytes`` is filled in when the block exits without an exception.

    Example:
        >>> with PeakMemory("cpu") as peak:
        ...     y = torch.ones(1024, 256).sum()
        >>> peak.bytes >= 1024 * 256 * 4
        True

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"PeakMemory measures cpu or cuda devices, not {self.device}")
        self.bytes = 0
        self.allocated_bytes = 0
        self.source = (
            "cuda_max_memory_reserved" if self.device.type == "cuda" else "cpu_allocator_profile"
        )
        self._profile: torch.profiler.profile | None = None
        self._start_reserved = 0
        self._start_allocated = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_reserved = torch.cuda.memory_reserved(self.device)
            self._start_allocated = torch.cuda.memory_allocated(self.device)
        else:
            self._profile = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            with _quiet_profiler_log():
                self._profile.__enter__()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if self.device.type == "cuda":
            if exc_type is None:
                torch.cuda.synchronize(self.device)
                peak_reserved = torch.cuda.max_memory_reserved(self.device)
                peak_allocated = torch.cuda.max_memory_allocated(self.device)
                self.bytes = max(0, peak_reserved - self._start_reserved)
                self.allocated_bytes = max(0, peak_allocated - self._start_allocated)
            return
        profile, self._profile = self._profile, None
        with _quiet_profiler_log():
            profile.__exit__(exc_type, *exc)
        if exc_type is None:
            self.bytes = self.allocated_bytes = _cpu_allocation_peak(profile)
