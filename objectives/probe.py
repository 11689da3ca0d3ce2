"""The hardware probe: the largest batch whose training step fits in memory, and its speed.

The probe builds its own model (``task.build_model()``), holds the task's data on the device as
training does, and runs the trials' own step (:func:`objectives.train.make_step`: optimizer,
autocast, gradient scaler): gather the batch, forward, backward, optimizer step, then one
evaluation batch of the same size under ``no_grad`` and the same autocast.
This module is the search; the memory model is :mod:`objectives.probe_memory`, the rig that
runs and times the steps :mod:`objectives.probe_rig`, the result and its table
:mod:`objectives.probe_table`.

1. **Memory model, measured.** Each probing step's peak memory is measured
   (:class:`objectives.memory.PeakMemory`): on CUDA the caching allocator's peak *reserved*
   bytes above what the process held before the probe; on CPU the parameters, gradients and
   optimizer state held at the step's start plus the CPU allocator's peak during the step,
   read from its own allocation events. A line ``fixed_bytes + bytes_per_sample * batch`` is
   fitted through the largest measured step, where the cap is decided (see
   :func:`objectives.probe_memory.fit_memory`).
2. **Budget.** ``memory_budget`` bytes, or the device's free memory (CUDA
   ``torch.cuda.mem_get_info``, CPU ``MemAvailable`` in ``/proc/meminfo``) less
   ``memory_margin``.
3. **Cap.** Starting from ``min_batch_size``, the probe runs the largest power of two that the
   current fit predicts to fit (at most 8x the largest batch that has run), refits with the
   new measurement, and repeats; a step that runs out of memory or measures over the budget
   bounds the search from above. The cap is the largest batch that ran and measured within
   the budget, once the fit predicts the next power of two not to fit. Steps predicted not to
   fit are never run. An out-of-memory error is caught, nothing it referenced is kept, the
   CUDA cache is emptied, and a fresh model and optimizer are built.
4. **Throughput.** Samples per second (or the task's ``unit`` per second, counted by its
   ``count``) at each batch of the ladder up to the cap, measured as the answer's speed
   figures are (:func:`objectives.speed.time_interleaved`): after one measured warm-up step
   per batch, :data:`~objectives.probe_table.SPEED_ROUNDS` interleaved rounds over the batch
   sizes, each measurement at least ``timed_steps`` steps and
   :data:`~objectives.probe_table.MIN_TIMED_SECONDS` (synchronised on CUDA); the table shows
   the median with the min-max range. The knee
   (:func:`objectives.speed.knee_from_timings`) is the smallest batch from which up to the
   fastest every batch is within 10% of the fastest, compared round by round.

**Variable-length data.** When the task has a ``collate`` (items that are padded to a common
length), every probing batch of ``b`` samples is built from the ``b`` largest items of the
training split (sorted by their number of elements, inputs and targets), so the padding
reaches the longest length the data can produce and the cap holds for every batch a trial can
draw. Finding them reads every training item once. Without a ``collate`` all items have one
shape and batches are drawn at random.

Nothing outside the probe changes: the caller's random number generators are restored, the
task's data is only read, and the probe's model, optimizer and device memory are released.
It says what it is doing, one short line per measured batch size and phase, to its ``log``
argument (for example :func:`log_to_stderr`).

Example:
    >>> from objectives.tasks import load_task
    >>> result = probe_batch_size(load_task("digits"), memory_budget=parse_bytes("256MiB"))
    >>> result.max_batch_size
    1024
    >>> sorted(result.to_dict())[:3]
    ['budget_bytes', 'budget_source', 'bytes_per_sample']
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import torch

from objectives.probe_memory import (
    MemoryFit,
    ProbeError,
    available_memory,
    batch_ladder,
    fit_memory,
)
from objectives.probe_rig import StepRig, time_rows
from objectives.probe_table import ProbeResult, ProbeRow
from objectives.speed import KNEE_TOLERANCE, knee_from_timings
from objectives.tasks import Task
from objectives.train import TrainSettings, torch_flags
from study.config import OPTIMIZERS, check_probe_settings
from study.units import format_bytes, parse_bytes

#: The search never runs a batch more than this many times the largest batch that has run.
GROWTH_LIMIT = 8

#: Where the probe says what it is doing: called with one short line at a time.
Log = Callable[[str], None]


def log_to_stderr(line: str) -> None:
    """A ``log`` for :func:`probe_batch_size`: ``probe: <line>`` on standard error."""
    print(f"probe: {line}", file=sys.stderr, flush=True)


def _silent(line: str) -> None:
    """The default ``log``: say nothing."""


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"--device {device!r}: the probe measures cpu or cuda devices")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available here; use --device cpu")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device!r}: there are {torch.cuda.device_count()} CUDA devices "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


def _settings(
    optimizer: str, device: torch.device, precision: str, compile: bool, seed: int
) -> TrainSettings:
    """The trial settings a probing step runs with (batch sizes are given per step)."""
    return TrainSettings(
        epochs=1,
        batch_size=1,
        micro_batch_size=1,
        lr=1e-3,
        optimizer=optimizer,
        seed=seed,
        device=str(device),
        precision=precision,
        compile=compile,
    )


@contextlib.contextmanager
def _no_trace(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the probe's own randomness; restore the caller's generators and grad mode; run
    under the trials' global torch flags (:func:`objectives.train.torch_flags`), restored
    on exit."""
    rng_devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.enable_grad(), torch_flags(device):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


def probe_batch_size(
    task: Task,
    *,
    optimizer: str = "adam",
    device: str | torch.device = "cpu",
    memory_budget: int | str | None = None,
    memory_margin: float = 0.1,
    min_batch_size: int = 1,
    max_batch_size: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    timed_steps: int = 3,
    measure_throughput: bool = True,
    seed: int = 0,
    log: Log | None = None,
) -> ProbeResult:
    """Find the largest batch whose training step fits the memory budget, and its throughput.

    Example:
        >>> from objectives.tasks import load_task
        >>> task = load_task("synthetic", hidden=(2048,), synthetic_features=256)
        >>> result = probe_batch_size(task, memory_budget="40MiB")
        >>> result.max_batch_size, result.predicted_bytes(result.max_batch_size) <= 40 * 2**20
        (1024, True)

    Args:
        task: The task; the probe builds its own model with ``task.build_model()``.
        optimizer: ``sgd``, ``adam`` or ``adamw`` (its state is part of the memory).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        memory_budget: Bytes (or a size string such as ``"6GiB"``) one step may use. Default:
            the device's free memory less ``memory_margin``.
        memory_margin: Fraction of the free memory left unused, in ``[0, 1)``; applies only
            when ``memory_budget`` is not given.
        min_batch_size: The smallest batch to consider; it must fit or :class:`ProbeError` is
            raised.
        max_batch_size: Upper end of the search (rounded down to a power of two); the search
            also stops at the largest power of two not above the training set's size.
        precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA): the trials' autocast, which changes
            what a step holds.
        compile: Probe through ``torch.compile`` as the trials will (each new batch shape
            may compile first; slow, but the memory is the compiled graph's).
        timed_steps: The fewest timed training steps per measurement of the throughput
            table (more while one measurement would last under 50 ms); each batch size is
            measured in :data:`~objectives.probe_table.SPEED_ROUNDS` interleaved rounds.
        measure_throughput: Whether to build the throughput table (and the knee).
        seed: Seeds the probe's model and batches (the caller's generators are restored).
        log: Called with one short line per phase and measured batch size (what the probe
            is doing; a probe can take a minute): e.g. :func:`log_to_stderr`. ``None``:
            silent.

    Returns:
        A :class:`ProbeResult`; ``result.to_dict()`` is the JSON the study stores.

    Raises:
        ProbeError: even ``min_batch_size`` does not fit the budget.
        ValueError: an argument is out of range (the message says which and why); a
            ``study.config.ConfigError`` for a precision the device cannot run.
    """
    if not isinstance(task, Task):
        raise ValueError(f"task must be an objectives.tasks.Task, got {type(task).__name__}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    dev = _check_device(device)
    if memory_budget is not None:
        memory_budget = parse_bytes(memory_budget)
    check_probe_settings(min_batch_size, max_batch_size, timed_steps, memory_margin)
    train_size = len(task.train)
    if min_batch_size > train_size:
        raise ValueError(
            f"--min-batch-size {min_batch_size} is larger than the training set "
            f"({train_size} samples): use a smaller --min-batch-size"
        )
    upper = min(train_size, max_batch_size or train_size)
    ladder = batch_ladder(min_batch_size, upper)

    started = time.perf_counter()
    if memory_budget is not None:
        budget, budget_source = memory_budget, "given memory budget"
    else:
        free, where = available_memory(dev)
        budget = int(free * (1 - memory_margin))
        budget_source = f"{where} {format_bytes(free)} less {memory_margin:.0%}"
    settings = _settings(optimizer, dev, precision, compile, seed)
    log = log or _silent
    log(
        f"budget {format_bytes(budget)} ({budget_source}); searching batch sizes "
        f"{ladder[0]}..{ladder[-1]} on {dev} ({optimizer}, {precision}"
        + (", torch.compile)" if compile else ")")
    )
    with _no_trace(dev, seed):
        rig = StepRig(task, settings)
        try:
            result = _search(rig, ladder, budget, timed_steps, measure_throughput, log)
        finally:
            rig.close()
    result.task = task.name
    result.unit = task.unit
    result.longest_items = task.collate is not None
    result.device = str(dev)
    result.optimizer = optimizer
    result.precision = precision
    result.compiled = compile
    result.budget_source = budget_source
    result.memory_source = (
        "CUDA caching allocator peak reserved bytes (torch.cuda.max_memory_reserved)"
        if dev.type == "cuda"
        else "parameters, gradients and optimizer state + CPU allocator peak (torch.profiler)"
    )
    result.min_batch_size = min_batch_size
    result.search_limit = ladder[-1]
    result.timed_steps = timed_steps
    result.seconds = round(time.perf_counter() - started, 3)
    log(
        f"done in {result.seconds:.1f} s: cap {result.max_batch_size}"
        + (f", knee {result.knee_batch_size}" if result.knee_batch_size is not None else "")
    )
    return result


def _search(
    rig: StepRig,
    ladder: list[int],
    budget: int,
    timed_steps: int,
    measure_throughput: bool,
    log: Log = _silent,
) -> ProbeResult:
    """The cap search and the throughput table (see the module docstring)."""
    measured: dict[int, int | None] = {}  # batch -> peak bytes, None = out of memory
    held: dict[int, int] = {}  # batch -> batch-independent bytes held after its step

    def fits(b: int) -> bool:
        return measured.get(b) is not None and measured[b] <= budget

    def current_fit() -> MemoryFit:
        points = [(b, m) for b, m in measured.items() if m is not None]
        return fit_memory(points, held_bytes=held[max(points)[0]])

    def measure(b: int) -> None:
        measured[b], held[b] = rig.measure(b)
        m = measured[b]
        verdict = "fits" if fits(b) else "over the budget" if m is not None else "out of memory"
        log(
            f"batch {b}: "
            + (f"{format_bytes(m)} measured, {verdict}" if m is not None else verdict)
        )

    smallest = ladder[0]
    measure(smallest)
    if not fits(smallest):
        needed = measured[smallest]
        what = (
            f"needs {format_bytes(needed)} ({needed} bytes, measured)"
            if needed is not None
            else f"ran out of memory on {rig.device}"
        )
        raise ProbeError(
            f"memory budget {format_bytes(budget)} ({budget} bytes) is too small: one training "
            f"step at the smallest batch size {smallest} {what}; give a larger "
            "--memory-budget, a smaller model, or a smaller --min-batch-size",
            budget_bytes=budget,
            batch_size=smallest,
            needed_bytes=needed,
        )

    while True:
        lo = max(b for b in measured if fits(b))
        failed = [b for b in measured if not fits(b)]
        hi = min(failed) if failed else None
        fit = current_fit()
        candidates = [
            b
            for b in ladder
            if lo < b <= GROWTH_LIMIT * lo
            and (hi is None or b < hi)
            and b not in measured
            and fit.predict(b) <= budget
        ]
        if not candidates:
            break
        measure(max(candidates))
    steps_run = rig.steps
    cap = lo

    def stop_reason() -> str:
        index = ladder.index(cap)
        if index == len(ladder) - 1:
            return f"the search limit: no larger batch is allowed (limit {ladder[-1]})"
        nxt = ladder[index + 1]
        if nxt in measured:
            m = measured[nxt]
            if m is None:
                return f"{nxt} ran out of memory"
            return f"{nxt} measured {format_bytes(m)} > budget {format_bytes(budget)}"
        return f"{nxt} is predicted to need {format_bytes(fit.predict(nxt))} > budget"

    reason = stop_reason()
    log(f"cap {cap}: {reason}")
    if measure_throughput:
        log(f"timing throughput at {ladder.index(cap) + 1} batch sizes up to {cap}")

    rows: list[ProbeRow] = []
    for b in ladder[: ladder.index(cap) + 1]:
        row = ProbeRow(b, fit.predict(b), measured.get(b), None)
        if measure_throughput:
            row.measured_bytes, _ = rig.measure(b)  # also a warm-up step
            if row.measured_bytes is None or row.measured_bytes > budget:
                # Not above the cap, yet it did not fit this time (memory not monotone in the
                # batch, or the allocator's cache in steady state): lower the cap to what ran.
                cap = rows[-1].batch_size if rows else cap
                reason = f"{b} did not fit when run again for the throughput table"
                log(f"batch {b} did not fit when run again: cap lowered to {cap}")
                break
        rows.append(row)
    speed = None
    if measure_throughput and rows:
        speed = time_rows(rig, rows, timed_steps)
        for row in rows:
            row.samples_per_s = speed.row(row.batch_size).units_per_s
        timed = [r for r in rows if r.samples_per_s is not None]
        if len(timed) < len(rows):  # ran out of memory while timed: the cap is what ran
            first_failed = next(r.batch_size for r in rows if r.samples_per_s is None)
            rows = [r for r in rows if r.batch_size < first_failed]
            cap = rows[-1].batch_size if rows else cap
            reason = f"{first_failed} did not fit when timed for the throughput table"
            log(f"batch {first_failed} did not fit when timed: cap lowered to {cap}")
        for row in rows:
            timed_row = speed.row(row.batch_size)
            log(
                f"batch {row.batch_size}: range {timed_row.units_per_s_min:,.0f}-"
                f"{timed_row.units_per_s_max:,.0f}, median {row.samples_per_s:,.0f} "
                f"{rig.task.unit}/s"
            )
    rejected = [
        {"batch_size": b, "predicted_bytes": fit.predict(b), "measured_bytes": m}
        for b, m in sorted(measured.items())
        if not fits(b)
    ]
    knee = None
    if speed is not None and rows:
        kept = {r.batch_size for r in rows}
        speed.rows = [r for r in speed.rows if r.batch_size in kept]
        knee = knee_from_timings(speed, KNEE_TOLERANCE)
    return ProbeResult(
        max_batch_size=cap,
        knee_batch_size=knee,
        fixed_bytes=fit.fixed_bytes,
        bytes_per_sample=fit.bytes_per_sample,
        budget_bytes=budget,
        rows=rows,
        stop_reason=reason,
        steps_run=steps_run,
        throughput_steps=rig.steps - steps_run,
        rejected=rejected,
        speed=speed.to_dict() if speed is not None else None,
    )
