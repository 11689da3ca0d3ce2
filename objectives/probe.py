"""The hardware probe: the largest batch whose training step fits in memory, and its speed.

The probe builds its own model (``task.build_model()``), holds the task's data on the device as
training does, and runs the trials' own step (:func:`objectives.train.make_step`: optimizer,
autocast, gradient scaler): gather the batch, forward, backward, optimizer step, then one
evaluation batch of the same size under ``no_grad`` and the same autocast.

1. **Memory model, measured.** Each probing step's peak memory is measured
   (:class:`objectives.memory.PeakMemory`): on CUDA the caching allocator's peak *reserved*
   bytes above what the process held before the probe; on CPU the parameters, gradients and
   optimizer state held at the step's start plus the CPU allocator's peak during the step,
   read from its own allocation events. A line ``fixed_bytes + bytes_per_sample * batch`` is
   fitted through the largest measured step, where the cap is decided (see
   :func:`fit_memory`).
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
   per batch, :data:`SPEED_ROUNDS` interleaved rounds over the batch sizes, each measurement
   at least ``timed_steps`` steps and :data:`MIN_TIMED_SECONDS` (synchronised on CUDA); the
   table shows the median with the min-max range. The knee
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
import gc
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from objectives.batch import call_model, numel, stack_items, to_device
from objectives.data import Tensors, place
from objectives.memory import PeakMemory, state_bytes, tensor_bytes
from objectives.metrics import SplitMetric
from objectives.oom import is_out_of_memory
from objectives.speed import KNEE_TOLERANCE, SpeedResult, knee_from_timings, time_interleaved
from objectives.tasks import Task
from objectives.train import Step, TrainSettings, make_step, torch_flags
from study.config import OPTIMIZERS, check_probe_settings
from study.units import format_bytes, parse_bytes

#: The search never runs a batch more than this many times the largest batch that has run.
GROWTH_LIMIT = 8
#: Throughput timing goes on past ``timed_steps`` until this many seconds have passed ...
MIN_TIMED_SECONDS = 0.05
#: ... but never past this many steps per batch size and measurement.
MAX_TIMED_STEPS = 50
#: Interleaved timing rounds of the throughput table; its figures are the medians.
SPEED_ROUNDS = 5

#: Where the probe says what it is doing: called with one short line at a time.
Log = Callable[[str], None]


def log_to_stderr(line: str) -> None:
    """A ``log`` for :func:`probe_batch_size`: ``probe: <line>`` on standard error."""
    print(f"probe: {line}", file=sys.stderr, flush=True)


def _silent(line: str) -> None:
    """The default ``log``: say nothing."""


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


@dataclass
class ProbeRow:
    """One batch size of the probe's table (bytes; ``None`` where not measured)."""

    batch_size: int
    predicted_bytes: int
    measured_bytes: int | None
    samples_per_s: float | None  # units (ProbeResult.unit) per second


@dataclass
class ProbeResult:
    """What the probe found. ``to_dict()`` is JSON-ready and the same as ``--json`` prints.

    Args:
        max_batch_size: The cap: the largest batch whose measured step fitted the budget.
        knee_batch_size: Smallest batch from which up to the fastest every batch is within
            :data:`~objectives.speed.KNEE_TOLERANCE` of the fastest's throughput
            (:func:`~objectives.speed.knee_from_timings`; ``None`` when throughput was not
            measured).
        fixed_bytes: The fit's intercept: parameters, optimizer state, data the device
            holds, and what of the gradients is alive at the step's peak.
        bytes_per_sample: The fit's bytes per sample of batch.
        budget_bytes: The memory budget a step had to fit.
        rows: One :class:`ProbeRow` per batch of the ladder up to the cap.
        rejected: Batches that ran out of memory (``measured_bytes`` ``None``) or measured
            over the budget.
        steps_run: Training steps the search ran (each with one evaluation batch).
        throughput_steps: Training steps run for the throughput table (warm-up and timed).
        speed: The interleaved timings behind the table
            (:meth:`objectives.speed.SpeedResult.to_dict`; ``None`` when not measured).
    """

    max_batch_size: int
    knee_batch_size: int | None
    fixed_bytes: int
    bytes_per_sample: int
    budget_bytes: int
    rows: list[ProbeRow]
    task: str = ""
    device: str = "cpu"
    optimizer: str = "adam"
    precision: str = "fp32"
    compiled: bool = False
    budget_source: str = ""
    memory_source: str = ""
    min_batch_size: int = 1
    search_limit: int = 0
    stop_reason: str = ""
    unit: str = "samples"
    longest_items: bool = False
    steps_run: int = 0
    throughput_steps: int = 0
    timed_steps: int = 0
    seconds: float = 0.0
    rejected: list[dict] = field(default_factory=list)
    speed: dict | None = None

    def predicted_bytes(self, batch_size: int) -> int:
        """Bytes the fit predicts for one step at ``batch_size``."""
        return self.fixed_bytes + self.bytes_per_sample * batch_size

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the study stores it in its user attributes as ``probe``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProbeResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. read back from a study)."""
        data = dict(data)
        data["rows"] = [ProbeRow(**row) for row in data.get("rows", [])]
        return cls(**data)

    def format_table(self) -> str:
        """The probe's findings as a plain-text table with units and budgets stated."""
        lines = [
            f"Batch-size probe: task {self.task or '?'}, device {self.device}, "
            f"optimizer {self.optimizer}, precision {self.precision}"
            + (", torch.compile" if self.compiled else ""),
            f"Memory budget: {format_bytes(self.budget_bytes)} ({self.budget_source})",
            f"Memory model: {format_bytes(self.fixed_bytes)} fixed + "
            f"{format_bytes(self.bytes_per_sample)} per sample "
            f"(measured: {self.memory_source})",
            f"Search: {self.steps_run} training steps (each with one evaluation batch) over "
            f"batches {self.min_batch_size}..{self.search_limit}; throughput table: "
            f"{self.throughput_steps} steps; {self.seconds:.1f} s in all",
            "",
            f"{'batch':>7}  {'predicted':>11}  {'measured':>11}  {self.unit + '/s':>11}"
            + (f"  {'min-max':>19}" if self.speed else ""),
        ]
        spread = {
            r["batch_size"]: (r.get("units_per_s_min"), r.get("units_per_s_max"))
            for r in (self.speed or {}).get("rows", [])
        }
        for row in self.rows:
            marks = []
            if row.batch_size == self.max_batch_size:
                marks.append("cap")
            if row.batch_size == self.knee_batch_size:
                marks.append("knee")
            speed = f"{row.samples_per_s:,.0f}" if row.samples_per_s is not None else "-"
            low, high = spread.get(row.batch_size, (None, None))
            span = f"{low:,.0f}-{high:,.0f}" if low is not None and high is not None else "-"
            lines.append(
                f"{row.batch_size:>7}  {format_bytes(row.predicted_bytes):>11}  "
                f"{format_bytes(row.measured_bytes):>11}  {speed:>11}"
                + (f"  {span:>19}" if self.speed else "")
                + (f"  <- {', '.join(marks)}" if marks else "")
            )
        for rej in self.rejected:
            measured = rej["measured_bytes"]
            lines.append(
                f"{rej['batch_size']:>7}  {format_bytes(rej['predicted_bytes']):>11}  "
                f"{format_bytes(measured) if measured is not None else 'OOM':>11}  "
                f"{'-':>11}  (does not fit)"
            )
        lines += [
            "",
            f"Cap: {self.max_batch_size} ({self.stop_reason})",
            f"Knee: {self.knee_batch_size} (smallest batch from which every batch up to the "
            f"fastest is within {KNEE_TOLERANCE:.0%} of its {self.unit}/s, round by round)"
            if self.knee_batch_size is not None
            else "Knee: - (throughput not measured)",
            "predicted: the memory model, fitted through the largest measured step; at small "
            "batches the optimizer step's temporaries can set the peak (measured > predicted)",
        ]
        if self.throughput_steps:
            lines += [
                "measured: one training step with its evaluation batch (the warm-up step)",
                f"{self.unit}/s: training steps only, the median of "
                f"{(self.speed or {}).get('rounds', SPEED_ROUNDS)} interleaved rounds "
                f"(min-max beside it), each >= {self.timed_steps} steps and "
                f">= {MIN_TIMED_SECONDS * 1000:.0f} ms after a warm-up step",
            ]
        else:
            lines.append("measured: the search's steps, each with its evaluation batch")
        if self.longest_items:
            lines.append(
                "batches: the longest training items (padded by the task's collate), so the "
                "cap holds for the longest batch the data can produce"
            )
        return "\n".join(lines)


class _StepRig:
    """The probe's own model, optimizer and device-held data; runs and measures steps."""

    def __init__(self, task: Task, settings: TrainSettings) -> None:
        self.task = task
        self.settings = settings
        device = self.device = torch.device(settings.device)
        self.on_cuda = device.type == "cuda"
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.steps = 0
        self.base_reserved = self.base_allocated = 0
        if self.on_cuda:
            gc.collect()
            torch.cuda.empty_cache()
            self.base_reserved = torch.cuda.memory_reserved(device)
            self.base_allocated = torch.cuda.memory_allocated(device)
        # Held as training holds them (on CUDA this is part of what the allocator measures).
        splits = [
            place(getattr(task, name), device, task.collate, name)
            for name in ("train", "val", "test")
        ]
        self.train = splits[0]
        self.held_splits = splits
        self.copy_bytes = 0 if self.on_cuda else _copied_bytes(task, splits)
        self.model: torch.nn.Module | None = None
        self.step: Step | None = None
        self._longest: list[int] | None = None  # training items by size, largest first
        self._build()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    def _build(self) -> None:
        """A fresh model, and the trial's step over it (optimizer, scaler, autocast)."""
        self.model = self.task.build_model().to(self.device)
        self.model.train()
        self.step = make_step(self.model, self.settings, self.task)

    def rebuild(self) -> None:
        """Drop the model and optimizer (after an out-of-memory error) and build fresh ones."""
        self.model = self.step = None
        gc.collect()
        if self.on_cuda:
            torch.cuda.empty_cache()
        self._build()

    def close(self) -> None:
        self.model = self.step = self.train = self.held_splits = None
        gc.collect()
        if self.on_cuda:
            torch.cuda.empty_cache()

    def longest(self, batch_size: int) -> list[int]:
        """The indices of the ``batch_size`` largest training items (elements of inputs and
        targets), found once by reading every item."""
        if self._longest is None:
            sizes = torch.tensor([numel(self.train[i]) for i in range(len(self.train))])
            self._longest = torch.argsort(sizes, descending=True, stable=True).tolist()
        return self._longest[:batch_size]

    def _batch(self, batch_size: int) -> tuple[object, object]:
        """A training batch: the longest items with a ``collate``, else random items."""
        if self.task.collate is not None:
            x, y = self.task.collate([self.train[i] for i in self.longest(batch_size)])
            return to_device(x, self.device), to_device(y, self.device)
        index = torch.randint(len(self.train), (batch_size,), generator=self.generator)
        if isinstance(self.train, Tensors):
            index = index.to(self.device)
            return self.train.x[index], self.train.y[index]
        x, y = stack_items([self.train[i] for i in index.tolist()])
        return to_device(x, self.device), to_device(y, self.device)

    def units(self, x: object, y: object, batch_size: int) -> object:
        """The units of a batch: ``batch_size`` samples, or the task's ``count`` (a tensor
        stays on the device)."""
        return batch_size if self.task.count is None else self.task.count(x, y)

    def train_step(self, batch_size: int) -> tuple[object, object]:
        """One training step as a trial runs it (:func:`objectives.train.make_step`)."""
        x, y = self._batch(batch_size)
        self.step(x, y)
        self.steps += 1
        return x, y

    def eval_batch(self, x: object, y: object) -> None:
        """One evaluation batch as :func:`objectives.train.evaluate` runs it (the metric)."""
        self.model.eval()
        with torch.no_grad(), self.step.autocast():
            total = SplitMetric(self.task.metric, self.device)
            total.add(call_model(self.step.model, x), y)
            total.value()
        self.model.train()

    def _level(self) -> int:
        """Bytes the probe holds on the device right now (the start of a measured step)."""
        if self.on_cuda:
            torch.cuda.empty_cache()
            return torch.cuda.memory_reserved(self.device) - self.base_reserved
        return state_bytes(self.model, self.optimizer) + self.copy_bytes

    def _held(self) -> int:
        """Batch-independent bytes held between steps: parameters, gradients, optimizer
        state and the data (live tensors, not the allocator's cache)."""
        if self.on_cuda:
            return torch.cuda.memory_allocated(self.device) - self.base_allocated
        return state_bytes(self.model, self.optimizer) + self.copy_bytes

    def measure(self, batch_size: int) -> tuple[int | None, int]:
        """Peak bytes of one training step plus one evaluation batch, and the bytes held after.

        The first is ``None`` when the step ran out of memory (the rig is then rebuilt); the
        second is what stays between steps (see :meth:`_held`), 0 after running out of memory.
        """
        self.optimizer.zero_grad(set_to_none=True)  # freed outside the measured window
        level = self._level()
        out_of_memory = False
        try:
            with PeakMemory(self.device) as peak:
                x, y = self.train_step(batch_size)
                self.eval_batch(x, y)
                del x, y
        except Exception as exc:  # only out-of-memory errors are expected here
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True  # leaving the block drops the error and what it references
        if out_of_memory:
            self.rebuild()
            return None, 0
        return level + peak.bytes, self._held()

    def run_steps(self, batch_size: int, steps: int) -> float | None:
        """Run ``steps`` training steps; the units they trained (``None``: out of memory, the
        rig is then rebuilt). Not synchronised: the caller times it."""
        out_of_memory = False
        try:
            units: object = 0
            for _ in range(steps):
                x, y = self.train_step(batch_size)
                units = units + self.units(x, y, batch_size)
                del x, y
            units = float(units)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True
        if out_of_memory:
            self.rebuild()
            return None
        return units


def _copied_bytes(task: Task, placed: list) -> int:
    """Bytes of held tensors that placing the splits copied (CPU: usually none)."""
    originals: list[torch.Tensor] = []
    for dataset in (task.train, task.val, task.test):
        originals += [t for t in getattr(dataset, "tensors", ()) if isinstance(t, torch.Tensor)]
    own = {t.untyped_storage().data_ptr() for t in originals}
    copies = [
        t
        for split in placed
        if isinstance(split, Tensors)
        for t in (split.x, split.y)
        if t.untyped_storage().data_ptr() not in own
    ]
    return tensor_bytes(copies)


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
            measured in :data:`SPEED_ROUNDS` interleaved rounds.
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
        rig = _StepRig(task, settings)
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
    rig: _StepRig,
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
        speed = _time_rows(rig, rows, timed_steps)
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


def _time_rows(rig: _StepRig, rows: list[ProbeRow], timed_steps: int) -> SpeedResult:
    """Throughput of each row's batch, timed as the answer's speed figures are: interleaved
    rounds of at least ``timed_steps`` steps and :data:`MIN_TIMED_SECONDS` per measurement,
    the median over :data:`SPEED_ROUNDS` rounds (:func:`objectives.speed.time_interleaved`)."""

    def run(batch_size: int, steps: int) -> float | None:
        return rig.run_steps(batch_size, steps)

    def sync() -> None:
        if rig.on_cuda:
            torch.cuda.synchronize(rig.device)

    return time_interleaved(
        run,
        [r.batch_size for r in rows],
        rounds=SPEED_ROUNDS,
        updates=timed_steps,
        min_seconds=MIN_TIMED_SECONDS,
        max_updates=MAX_TIMED_STEPS,
        sync=sync,
        unit=rig.task.unit,
    )
