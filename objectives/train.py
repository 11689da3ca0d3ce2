"""The training loop of one trial: epochs of exact gradient accumulation, evaluated each epoch.

Read top to bottom: each epoch shuffles, walks the training set in groups of ``batch_size``
samples (one optimizer update each), splits each group into micro-batches of at most
``micro_batch_size``, weights each micro-batch's summed loss by ``1 / samples in the group``
(so a short last group or micro-batch counts for what it holds), then evaluates on the
validation split and hands the epoch to ``on_epoch`` (the objective reports and prunes there).
Every optimizer update, here, in the hardware probe and in the critical-batch measurement, is
:meth:`Step.update`.

GPU efficiency: ``precision`` runs the forward pass and loss under ``torch.autocast``
(``bf16``, or ``fp16`` with a gradient scaler), ``compile`` trains through ``torch.compile``,
optimizers are fused on CUDA, copies to the device are non-blocking, and nothing in the step
loop waits for the device: the loss is summed on the device and read once per epoch, where it
is reported. :func:`make_step` builds the pieces (module, optimizer, scaler, autocast) from
:class:`TrainSettings`, so that other code (the hardware probe) runs steps exactly as trials
do. The process-wide torch flags training wants (``cudnn.benchmark`` on CUDA) are set, and
restored afterwards, by :func:`torch_flags` and nowhere else.

Example:
    >>> from objectives.tasks import load_task
    >>> task = load_task("digits")
    >>> settings = TrainSettings(epochs=1, batch_size=64, micro_batch_size=32, lr=1e-3)
    >>> result = train_task(task, settings)
    >>> 0.0 <= result.val_accuracy <= 1.0
    True
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from objectives.data import Tensors, make_loader, place
from objectives.memory import PeakMemory, state_bytes
from study.config import EVALUATION_PERIODS, OPTIMIZERS, ConfigError, check_precision

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"training loss became NaN or infinite in epoch {epoch}")
        self.epoch = epoch


@dataclass
class TrainSettings:
    """How one trial trains.

    Args:
        epochs: Passes over the training set.
        batch_size: Effective batch: samples per optimizer update.
        micro_batch_size: Samples per forward/backward pass (``batch_size`` or a divisor).
        lr: Learning rate.
        optimizer: ``sgd`` (momentum 0.9), ``adam`` or ``adamw``.
        seed: Seeds model initialisation and the per-epoch shuffles.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        eval_batch_size: Batch of the evaluation passes (default: the micro-batch). The
            study uses its memory cap, which the probe ran an evaluation batch at.
        precision: ``fp32``; ``bf16`` (bfloat16 autocast); ``fp16`` (float16 autocast and a
            gradient scaler, CUDA only). Evaluation runs under the same autocast.
        compile: Run the model through ``torch.compile`` (the first steps compile).
        loader_workers: DataLoader workers for data that is streamed rather than held on
            the device (``None``: automatic, see :func:`objectives.data.loader_workers`).
        period_steps: ``None`` trains ``epochs`` passes over the data, evaluating after each.
            A step budget gives the optimizer updates of each evaluation period instead
            (see :func:`step_periods`); the data is then walked across epoch boundaries.
        warmup_steps: Updates over which the learning rate ramps linearly from
            ``warmup_start_lr`` to ``lr`` (Goyal et al. 2017); 0 turns warm-up off.
        warmup_start_lr: Where the ramp starts (default: ``lr``, i.e. no ramp).
        first_step: Updates done before this call (a resumed trial), for the warm-up ramp.

    Raises:
        ConfigError: an unknown precision, ``fp16`` off CUDA, or ``bf16`` on a GPU without
            bfloat16.
    """

    epochs: int
    batch_size: int
    micro_batch_size: int
    lr: float
    optimizer: str = "adam"
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int | None = None
    precision: str = "fp32"
    compile: bool = False
    loader_workers: int | None = None
    period_steps: tuple[int, ...] | None = None
    warmup_steps: int = 0
    warmup_start_lr: float | None = None
    first_step: int = 0

    def lr_at(self, step: int) -> float:
        """The learning rate of update number ``step`` (0-based, counted over the trial)."""
        if step >= self.warmup_steps or self.warmup_start_lr is None:
            return self.lr
        start = self.warmup_start_lr
        return start + (self.lr - start) * (step + 1) / self.warmup_steps

    def __post_init__(self) -> None:
        device = torch.device(self.device)
        check_precision(self.precision, str(device))
        if (
            self.precision == "bf16"
            and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError(
                "--precision bf16: this GPU has no bfloat16 support; use --precision fp16"
            )

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.micro_batch_size


@dataclass
class EpochResult:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    val_accuracy: float
    train_time_s: float


@dataclass
class TrainResult:
    """What a whole training run measured (times in seconds, memory in bytes)."""

    epochs: list[EpochResult] = field(default_factory=list)
    train_accuracy: float | None = None
    test_accuracy: float | None = None
    train_time_s: float = 0.0
    samples_seen: int = 0
    optimizer_steps: int = 0
    peak_memory_bytes: int = 0
    memory_source: str = ""

    @property
    def val_accuracy(self) -> float:
        return self.epochs[-1].val_accuracy if self.epochs else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples_seen / self.train_time_s if self.train_time_s > 0 else 0.0


def make_optimizer(name: str, params, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (one of ``study.config.OPTIMIZERS``) over ``params``.

    ``fused`` (used on CUDA) updates all parameters in one kernel and, with a gradient scaler,
    checks for infinite gradients without waiting for the device.
    """
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        if "fused" not in inspect.signature(torch.optim.SGD).parameters:  # torch < 2.3
            extra = {}
        return torch.optim.SGD(params, lr=lr, momentum=0.9, **extra)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, **extra)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (nothing for ``fp32``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Step:
    """What runs one trial's training steps, built by :func:`make_step` from its settings.

    Attributes:
        model: The module that runs: the model, or its ``torch.compile`` wrapper (which
            shares the parameters).
        optimizer: Over the model's parameters (fused on CUDA).
        scaler: The gradient scaler; enabled only for ``fp16`` (otherwise ``scale`` returns
            the loss unchanged and ``step`` is ``optimizer.step``).
        settings: The settings it was built from.

    :meth:`update` is the one optimizer update of the project (the training loop, the probe
    and the critical-batch measurement all call it); calling the step runs it on a single
    batch: ``loss = step(x, y)`` (the batch's summed loss, still on the device).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    settings: TrainSettings

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.settings.device, self.settings.precision)

    def update(self, micro_batches: Iterable[Batch], samples: int) -> torch.Tensor:
        """One optimizer update over the micro-batches of one group of ``samples`` samples.

        Exact gradient accumulation: each micro-batch's summed loss is divided by
        ``samples`` (the whole group's size, not the micro-batch's), so the gradient is that
        of the group's mean loss however the group is split, short last micro-batch
        included. The forward pass and loss run under the settings' autocast; with ``fp16``
        the loss is scaled and the update skipped on infinite gradients. The gradients stay
        until the next update (they are cleared at its start).

        Returns:
            The group's summed loss, on the device (reading it would wait for the device).

        Example:
            >>> step = make_step(torch.nn.Linear(4, 3), TrainSettings(1, 6, 3, lr=0.1))
            >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
            >>> loss = step.update([(x[:3], y[:3]), (x[3:], y[3:])], samples=6)
            >>> loss.shape
            torch.Size([])
        """
        self.optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | None = None
        for x, y in micro_batches:
            with self.autocast():
                loss = F.cross_entropy(self.model(x), y, reduction="sum")
            self.scaler.scale(loss / samples).backward()
            loss = loss.detach()
            total = loss if total is None else total + loss
        if total is None:
            raise ValueError("an update needs at least one micro-batch")
        self.scaler.step(self.optimizer)  # optimizer.step(), skipped on inf/NaN grads in fp16
        self.scaler.update()
        return total

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.update(((x, y),), len(y))


def _grad_scaler(device_type: str, enabled: bool) -> torch.amp.GradScaler:
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def make_step(model: torch.nn.Module, settings: TrainSettings) -> Step:
    """The module, optimizer, gradient scaler and autocast one trial trains with.

    ``model`` must already be on ``settings.device``. The hardware probe builds its steps
    here too, so that the memory cap it measures holds for the trials.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> step = make_step(model, TrainSettings(epochs=1, batch_size=8, micro_batch_size=8,
        ...                                       lr=0.1, precision="bf16"))
        >>> loss = step(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    """
    device = torch.device(settings.device)
    on_cuda = device.type == "cuda"
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr, on_cuda)
    scaler = _grad_scaler(device.type, enabled=settings.precision == "fp16")
    runner = torch.compile(model) if settings.compile else model
    return Step(runner, optimizer, scaler, settings)


@contextlib.contextmanager
def torch_flags(device: torch.device | str) -> Iterator[None]:
    """The process-wide torch flags training runs under, set on entry and restored on exit.

    On CUDA, ``torch.backends.cudnn.benchmark`` is on (cuDNN picks the fastest convolution
    algorithm per input shape); on CPU nothing changes. Training (:func:`train_model`,
    :func:`train_task`, the objective's attempts) and the probe run inside it; no other
    code sets global torch flags.

    Example:
        >>> with torch_flags("cpu"):
        ...     pass
    """
    benchmark = torch.backends.cudnn.benchmark
    try:
        if torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


def step_periods(total_steps: int, periods: int = EVALUATION_PERIODS) -> tuple[int, ...]:
    """Split a budget of ``total_steps`` updates into up to ``periods`` evaluation periods.

    Every batch size is evaluated (and pruned) at the same fractions of its budget.

    Example:
        >>> step_periods(25, 10)
        (3, 3, 3, 3, 3, 2, 2, 2, 2, 2)
    """
    periods = max(1, min(periods, total_steps))
    base, extra = divmod(total_steps, periods)
    return tuple(base + (1 if i < extra else 0) for i in range(periods))


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Optimizer updates in one pass over ``train_size`` samples (the last may be short)."""
    return -(-train_size // batch_size)


def update_groups(
    data: Tensors | Dataset,
    batch_size: int,
    micro_batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    loader: DataLoader | None = None,
) -> Iterator[tuple[Iterator[Batch], int]]:
    """Yield one epoch of ``(micro_batches, samples_in_group)``, one item per update.

    :class:`Tensors` already on the device are sliced with a shuffled index; other datasets
    are read in groups through ``loader`` (a shuffling DataLoader of ``batch_size``; built
    here when not given), copied to the device without blocking and split there. Micro-batches
    are sliced one at a time, as they are trained, so memory holds one micro-batch of inputs.
    """
    if isinstance(data, Tensors):
        order = torch.randperm(len(data), generator=generator).to(device)
        for group in order.split(batch_size):
            yield ((data.x[i], data.y[i]) for i in group.split(micro_batch_size)), len(group)
        return
    if loader is None:
        loader = make_loader(data, batch_size, device, generator)
    non_blocking = device.type == "cuda"
    for x, y in loader:
        x = x.to(device, non_blocking=non_blocking)
        y = y.to(device, non_blocking=non_blocking)
        yield zip(x.split(micro_batch_size), y.split(micro_batch_size), strict=True), len(y)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: Tensors | Dataset,
    batch_size: int,
    device,
    precision: str = "fp32",
) -> float:
    """Accuracy (fraction correct) of ``model`` on ``data``, in batches of ``batch_size``.

    Runs under the autocast of ``precision``; the count stays on the device until the end.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    if isinstance(data, Tensors):
        batches = zip(data.x.split(batch_size), data.y.split(batch_size), strict=True)
    else:
        batches = make_loader(data, batch_size, device, shuffle=False)
    non_blocking = device.type == "cuda"
    with autocast(device, precision):
        for x, y in batches:
            x = x.to(device, non_blocking=non_blocking)
            y = y.to(device, non_blocking=non_blocking)
            correct += (model(x).argmax(dim=1) == y).sum()
    model.train(was_training)
    return correct.item() / len(data)


def train_model(
    model: torch.nn.Module,
    train: Tensors | Dataset,
    val: Tensors | Dataset,
    settings: TrainSettings,
    on_epoch: Callable[[EpochResult], None] | None = None,
    result: TrainResult | None = None,
    *,
    step: Step | None = None,
    start_epoch: int = 0,
) -> TrainResult:
    """Train ``model`` on ``train`` as ``settings`` say, evaluating on ``val`` each epoch.

    ``on_epoch`` is called after each epoch; it may raise (for example ``optuna.TrialPruned``)
    to stop training. ``result`` (filled in place, epoch by epoch) keeps what was measured
    when training stops early. Raises :class:`Diverged` when the loss becomes NaN or infinite.

    Args:
        model: The model, on ``settings.device``.
        train: Training data (:class:`Tensors` on the device, or a dataset to stream).
        val: Validation data, evaluated after each epoch (or evaluation period).
        settings: How to train.
        on_epoch: Called with each epoch's :class:`EpochResult`.
        result: Filled in place (a resumed trial passes what its earlier epochs measured).
        step: The optimizer, scaler and module to train with, from
            ``make_step(model, settings)``; the caller keeps it (to checkpoint or restore
            the optimizer's state). ``None`` builds one with a fresh optimizer.
        start_epoch: Epochs (or evaluation periods) done before this call, as when resuming
            a trial: the epochs trained here are numbered from ``start_epoch + 1``.
    """
    device = torch.device(settings.device)
    if step is None:
        step = make_step(model, settings)
    elif not _optimizes(step.optimizer, model):
        raise ValueError("train_model: the step's optimizer is not over this model's parameters")
    generator = torch.Generator().manual_seed(settings.seed)
    loader = None
    if not isinstance(train, Tensors):  # streamed through workers and pinned memory
        loader = make_loader(
            train, settings.batch_size, device, generator, workers=settings.loader_workers
        )
    result = result if result is not None else TrainResult()
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cpu_peak_bytes = 0  # on CPU, measured over the first update as the probe measures a step
    model.train()

    def groups() -> Iterator[tuple[Iterator[Batch], int]]:
        return update_groups(train, settings.batch_size, micro, generator, device, loader)

    def updates_forever() -> Iterator[tuple[Iterator[Batch], int]]:
        while True:
            yield from groups()

    micro = settings.micro_batch_size
    stream = updates_forever()
    plan = settings.period_steps or (None,) * settings.epochs
    global_step = settings.first_step
    with torch_flags(device):
        for epoch, period_steps in enumerate(plan, start_epoch + 1):
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            seen = 0
            if period_steps is None:  # an epoch: one pass over the data
                updates = groups()
            else:  # a share of a step budget, walking on across epochs
                updates = itertools.islice(stream, period_steps)
            for micro_batches, group_size in updates:
                if global_step < settings.warmup_steps + 1:  # the warm-up ramp, then the LR
                    for group in step.optimizer.param_groups:
                        group["lr"] = settings.lr_at(global_step)
                if not on_cuda and cpu_peak_bytes == 0:  # measured as the probe measures
                    step.optimizer.zero_grad(set_to_none=True)  # freed before, not during
                    held = state_bytes(model, step.optimizer)
                    with PeakMemory(device) as peak:
                        loss_sum += step.update(micro_batches, group_size)
                    cpu_peak_bytes = held + peak.bytes
                else:
                    loss_sum += step.update(micro_batches, group_size)
                seen += group_size
                global_step += 1
            if on_cuda:
                torch.cuda.synchronize(device)
            epoch_time = time.perf_counter() - started
            result.train_time_s += epoch_time
            result.samples_seen += seen
            result.optimizer_steps = global_step
            if on_cuda:
                result.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
                result.memory_source = "cuda_max_memory_allocated"
            else:
                result.peak_memory_bytes = cpu_peak_bytes
                result.memory_source = "cpu_allocator_profile"
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise Diverged(epoch)
            val_accuracy = evaluate(
                step.model, val, settings.eval_batch, device, settings.precision
            )
            epoch_result = EpochResult(epoch, train_loss, val_accuracy, epoch_time)
            result.epochs.append(epoch_result)
            if on_epoch is not None:
                on_epoch(epoch_result)
    return result


def _optimizes(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
    """Whether ``optimizer`` updates ``model``'s (first) parameter."""
    first = next(model.parameters(), None)
    return first is None or any(p is first for g in optimizer.param_groups for p in g["params"])


def train_task(task, settings: TrainSettings, on_epoch=None) -> TrainResult:
    """Build a fresh model for ``task``, train it, and measure test accuracy at the end."""
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = task.build_model().to(device)
    train, val, test = (place(d, device) for d in (task.train, task.val, task.test))
    with torch_flags(device):
        result = train_model(model, train, val, settings, on_epoch)
        finish(result, model, train, test, settings.eval_batch, device, settings.precision)
    return result


def finish(
    result: TrainResult, model, train, test, batch_size: int, device, precision: str = "fp32"
) -> None:
    """Record the trained model's accuracy on the training and test splits."""
    result.train_accuracy = evaluate(model, train, batch_size, device, precision)
    result.test_accuracy = evaluate(model, test, batch_size, device, precision)
