"""The probe's step rig: its own model, optimizer and device-held data, which run and measure
the trials' own step (:func:`objectives.train.make_step`) at a given batch size, and time
batch sizes side by side for the probe's throughput column."""

from __future__ import annotations

import gc

import torch

from objectives.batch import call_model, numel, stack_items, to_device
from objectives.data import Tensors, place
from objectives.memory import PeakMemory, state_bytes, tensor_bytes
from objectives.metrics import SplitMetric
from objectives.oom import is_out_of_memory
from objectives.probe_table import MAX_TIMED_STEPS, MIN_TIMED_SECONDS, SPEED_ROUNDS, ProbeRow
from objectives.speed import SpeedResult, time_interleaved
from objectives.tasks import Task
from objectives.train import Step, TrainSettings, make_step


class StepRig:
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


def time_rows(rig: StepRig, rows: list[ProbeRow], timed_steps: int) -> SpeedResult:
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
