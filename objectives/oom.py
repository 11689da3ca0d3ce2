"""Out-of-memory errors inside a trial: recognise them, and give the memory back.

A trial that runs out of memory is not a crash of the study: the objective catches the error,
frees what the attempt held, records it, and retries once with half the micro-batch and twice
the accumulation (the same effective batch); a second failure prunes the trial. Out of memory
outside a trial's training (building the task, holding its data) ends the command with one
line and exit code 2 (:func:`batchsize_study.commands.guarded`), never as an internal error.

Example:
    >>> try:
    ...     torch.empty(2**50)  # 4 PiB: the allocator refuses
    ... except RuntimeError as exc:
    ...     is_out_of_memory(exc)
    True
"""

from __future__ import annotations

import gc

import torch

from study.safety import OOM_MESSAGES, is_out_of_memory  # one home, torch-free

__all__ = ["OOM_MESSAGES", "is_out_of_memory", "release_memory", "summary"]


def summary(exc: BaseException, limit: int = 200) -> str:
    """The error's first line, shortened, for the trial's record."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def release_memory(device: torch.device | str | None = None, full: bool = True) -> None:
    """Collect garbage and, on CUDA, return cached blocks and reset the peak counter.

    Call it after the failed attempt's frames are gone (outside the ``except`` block that
    caught the error: the traceback holds the attempt's tensors). ``full=False`` collects
    only the young generations (milliseconds instead of a tenth of a second with torch
    loaded): enough after a trial, whose model and optimizer reference counting frees.
    """
    gc.collect(2 if full else 1)
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()
        if device is not None:
            torch.cuda.reset_peak_memory_stats(device)
