"""The probe's memory model: the budget a step must fit, and the line fitted through steps.

:func:`available_memory` reads the device's free memory (the default budget);
:func:`fit_memory` fits ``fixed_bytes + bytes_per_sample * batch`` through measured steps
(:class:`MemoryFit`), which the search (:mod:`objectives.probe`) uses to predict the next
power of two of :func:`batch_ladder` before it runs it. :class:`ProbeError` is what the probe
raises when even the smallest batch does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


class ProbeError(ValueError):
    """Even the smallest batch does not fit the memory budget; the message says what to do.

    Attributes:
        budget_bytes: The budget the step had to fit.
        batch_size: The smallest batch size tried.
        needed_bytes: What one step at that batch measured (``None`` if it ran out of memory).
    """

    def __init__(
        self, message: str, budget_bytes: int, batch_size: int, needed_bytes: int | None
    ) -> None:
        super().__init__(message)
        self.budget_bytes = budget_bytes
        self.batch_size = batch_size
        self.needed_bytes = needed_bytes


def available_memory(device: torch.device | str) -> tuple[int, str]:
    """Free memory on ``device`` in bytes, and where the figure comes from.

    CUDA: ``torch.cuda.mem_get_info`` after emptying this process's allocator cache. CPU:
    ``MemAvailable`` from ``/proc/meminfo`` (Linux).

    Raises:
        ProbeError: the figure cannot be read (not Linux); give a memory budget instead.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device} (torch.cuda.mem_get_info)"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except OSError:
        pass
    raise ProbeError(
        "cannot read the available RAM (/proc/meminfo has no MemAvailable on this system): "
        "give --memory-budget, e.g. --memory-budget 4GiB",
        budget_bytes=0,
        batch_size=0,
        needed_bytes=None,
    )


def batch_ladder(min_batch_size: int, upper: int) -> list[int]:
    """``min_batch_size`` followed by every power of two above it, up to ``upper``.

    Example:
        >>> batch_ladder(1, 1078)[-3:], batch_ladder(3, 20)
        ([256, 512, 1024], [3, 4, 8, 16])
    """
    ladder = [min_batch_size]
    size = 1 << min_batch_size.bit_length()  # the smallest power of two above it
    while size <= upper:
        ladder.append(size)
        size *= 2
    return ladder


@dataclass
class MemoryFit:
    """Predicted step memory ``fixed_bytes + bytes_per_sample * batch_size``."""

    fixed_bytes: int
    bytes_per_sample: int

    def predict(self, batch_size: int) -> int:
        return self.fixed_bytes + self.bytes_per_sample * batch_size


def fit_memory(points: Sequence[tuple[int, int]], held_bytes: int = 0) -> MemoryFit:
    """Fit ``fixed + per_sample * batch`` to measured ``(batch_size, bytes)`` steps.

    The line goes through the largest measured batch (the one nearest the cap). Its slope is
    the larger of two estimates: the secant through the two largest batches, and the largest
    step's peak above ``held_bytes`` (parameters, gradients, optimizer state and data, which
    stay between steps) divided by its batch, which counts the optimizer step's temporaries
    as if they grew with the batch. Memory is flat at small batches, where the optimizer
    step's temporaries set the peak, and linear once activations dominate; the first estimate
    is exact on the linear part, the second keeps early extrapolation from the flat part
    cautious. Below the largest batch the line may sit under a measured step: those batches
    are measured, not predicted.

    Example:
        >>> fit_memory([(1, 1100), (8, 1800), (64, 7400)], held_bytes=1000)
        MemoryFit(fixed_bytes=1000, bytes_per_sample=100)

    Args:
        points: Measured steps; at least one.
        held_bytes: Batch-independent bytes held after the largest batch's step.
    """
    if not points:
        raise ValueError("fit_memory needs at least one measured step")
    by_size = sorted(dict(points).items())
    top_batch, top_bytes = by_size[-1]
    slope = (top_bytes - held_bytes) / top_batch
    if len(by_size) > 1:
        (b1, m1), (b2, m2) = by_size[-2:]
        slope = max(slope, (m2 - m1) / (b2 - b1))
    per_sample = max(1, round(slope))
    return MemoryFit(max(0, top_bytes - per_sample * top_batch), per_sample)
