"""The training loop of one trial: epochs of exact gradient accumulation, evaluated each epoch.

Read top to bottom: each epoch shuffles, walks the training set in groups of exactly
``batch_size`` samples (one optimizer update each; the short tail of the shuffled order,
:func:`samples_left_out` samples, sits that epoch out and the next shuffle covers it), splits
each group into micro-batches of at most ``micro_batch_size``, weights each micro-batch's
summed per-sample loss by ``1 / samples in the group`` (so a short last micro-batch counts for
what it holds), then evaluates the task's metric on the validation split and hands the epoch
to ``on_epoch`` (the objective reports and prunes there). Every optimizer update, here, in the
hardware probe and in the critical-batch measurement, is :meth:`Step.update`; a task's
:class:`StepHook` changes the loss or the gradients inside it, never the accumulation.

:func:`train_model` reads on one screen: the periods (epochs, a step budget's shares, a
batch-size schedule's phases) are fixed before the loop (:func:`plan_periods`), the updates
come from an :class:`UpdateSource`, the learning rate of each from :func:`learning_rate`, and
one :class:`Meter` measures time, loss, samples, units and memory around the update.

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
    >>> 0.0 <= result.val_metric <= 1.0
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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from objectives.batch import batch_len, call_model, micro_batches, to_device
from objectives.contract import StepHook, Update, takes_update
from objectives.data import Tensors, make_loader, place
from objectives.memory import PeakMemory, state_bytes
from objectives.metrics import ACCURACY, SplitMetric, cross_entropy
from study.config import EVALUATION_PERIODS, OPTIMIZERS, ConfigError, check_precision
from study.schedule import LRSchedule

if TYPE_CHECKING:
    from objectives.ranks import Ranks
    from objectives.tasks import Task

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
        first_step: Updates done before this call (a resumed trial), for the schedule.
        weight_decay: The optimizer's weight decay (``None``: torch's default for it).
        lr_schedule: ``constant``, ``cosine`` or ``linear`` (:mod:`study.schedule`): the
            learning rate of every update, from ``lr`` (the peak) over ``total_steps``.
        final_lr_fraction: Where ``cosine`` and ``linear`` end, a fraction of ``lr``.
        total_steps: The trial's updates, over which the schedule runs (``None``: the
            updates of this call plus ``first_step``).
        batch_phases: A batch-size schedule (:mod:`study.batch_schedule`): for each epoch of
            this call, ``(batch_size, micro_batch_size, peak lr)``; ``None``: ``batch_size``,
            ``micro_batch_size`` and ``lr`` for every epoch. Epoch budgets only.

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
    weight_decay: float | None = None
    lr_schedule: str = "constant"
    final_lr_fraction: float = 0.0
    total_steps: int | None = None
    batch_phases: tuple[tuple[int, int, float], ...] | None = None

    @property
    def schedule(self) -> LRSchedule:
        """The trial's :class:`~study.schedule.LRSchedule` (warm-up, then the decay)."""
        return LRSchedule(self.lr_schedule, self.final_lr_fraction, self.warmup_steps)

    def lr_at(self, step: int, total: int | None = None) -> float:
        """The learning rate of update number ``step`` (0-based, counted over the trial) of
        ``total`` (default :attr:`total_steps`; a constant schedule needs none)."""
        total = total if total is not None else self.total_steps or step + 1
        return self.schedule.lr(step, total, self.lr, self.warmup_start_lr)

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
    """What one epoch measured: the mean training loss per sample, the task's metric on the
    validation split, and the epoch's training time in seconds."""

    epoch: int
    train_loss: float
    val_metric: float
    train_time_s: float


@dataclass
class TrainResult:
    """What a whole training run measured (times in seconds, memory in bytes).

    ``train_metric`` and ``test_metric`` are the task's metric (accuracy by default) on those
    splits after training. ``samples_seen`` counts training samples; ``units_seen`` what the
    task counts (``unit``: samples, or e.g. tokens), from which :attr:`units_per_s` (the
    record's ``samples_per_s``, "units per second") is computed.
    """

    epochs: list[EpochResult] = field(default_factory=list)
    train_metric: float | None = None
    test_metric: float | None = None
    train_time_s: float = 0.0
    samples_seen: int = 0
    units_seen: int = 0
    unit: str = "samples"
    optimizer_steps: int = 0
    peak_memory_bytes: int = 0
    memory_source: str = ""

    @property
    def val_metric(self) -> float:
        """The metric on the validation split after the last epoch (0.0 before any)."""
        return self.epochs[-1].val_metric if self.epochs else 0.0

    @property
    def samples_per_s(self) -> float:
        """Training samples per second."""
        return self.samples_seen / self.train_time_s if self.train_time_s > 0 else 0.0

    @property
    def units_per_s(self) -> float:
        """Training units (:attr:`unit`) per second: samples, or what the task counts."""
        return self.units_seen / self.train_time_s if self.train_time_s > 0 else 0.0


def make_optimizer(
    name: str, params, lr: float, fused: bool = False, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (one of ``study.config.OPTIMIZERS``) over ``params``.

    ``sgd`` has momentum 0.9; ``weight_decay`` ``None`` keeps torch's default (0 for SGD and
    Adam, 0.01 for AdamW). ``fused`` (used on CUDA) updates all parameters in one kernel and,
    with a gradient scaler, checks for infinite gradients without waiting for the device.

    Example:
        >>> make_optimizer("adamw", torch.nn.Linear(2, 1).parameters(), 1e-3,
        ...                weight_decay=0.1).param_groups[0]["weight_decay"]
        0.1
    """
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if weight_decay is not None:
        extra["weight_decay"] = weight_decay
    if name == "sgd":
        if "fused" not in inspect.signature(torch.optim.SGD).parameters:  # torch < 2.3
            extra.pop("fused", None)
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


Batch = tuple[Any, Any]
#: ``loss(outputs, targets)`` -> one loss per sample, shape ``[n]``.
LossFn = Callable[[Any, Any], torch.Tensor]


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
        loss: The task's per-sample loss (default: cross-entropy).
        hook: The task's :class:`StepHook` (``None``: none).

    :meth:`update` is the one optimizer update of the project (the training loop, the probe
    and the critical-batch measurement all call it); calling the step runs it on a single
    batch: ``loss = step(x, y)`` (the batch's summed loss, still on the device).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    settings: TrainSettings
    loss: LossFn = cross_entropy
    hook: StepHook | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.settings.device, self.settings.precision)

    def update(
        self, micro_batches: Iterable[Batch], samples: int, update: Update | None = None
    ) -> torch.Tensor:
        """One optimizer update over the micro-batches of one group of ``samples`` samples.

        Exact gradient accumulation: each micro-batch's summed per-sample loss is divided by
        ``samples`` (the whole group's size, not the micro-batch's), so the gradient is that
        of the group's mean loss however the group is split, short last micro-batch
        included. The forward pass and loss (and the hook's ``loss``) run under the
        settings' autocast; with ``fp16`` the loss is scaled, the gradients are unscaled
        before the hook's ``before_update``, and the update is skipped on infinite
        gradients. The gradients stay until the next update (cleared at its start).
        ``update`` (the training loop's) says where the update sits in its trial, for a hook
        that takes it.

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
        hook_loss = self.hook.loss if self.hook is not None else None
        fast = self.loss is cross_entropy and hook_loss is None
        total: torch.Tensor | None = None
        for last, (x, y) in _marked_last(micro_batches):
            sync = _gradient_sync(self.model, last)  # several devices: all-reduce at the last
            with self.autocast():
                outputs = call_model(self.model, x)
                if (  # the default loss on a tensor of class scores
                    fast
                    and isinstance(outputs, torch.Tensor)
                    and outputs.dim() == 2
                    and y.dtype == torch.long
                ):
                    loss = F.cross_entropy(outputs, y, reduction="sum")  # one kernel fewer
                else:
                    losses = self.loss(outputs, y)
                    if hook_loss is not None:
                        losses = hook_loss(losses, outputs, y, self.model)
                    loss = losses.sum()
            self.scaler.scale(loss / samples).backward()
            sync.close()
            loss = loss.detach()
            total = loss if total is None else total + loss
        if total is None:
            raise ValueError("an update needs at least one micro-batch")
        if self.hook is not None and self.hook.before_update is not None:
            self.scaler.unscale_(self.optimizer)  # the hook sees the true gradients
            if takes_update(self.hook.before_update):
                if update is None:
                    update = Update(0, 0, float(self.optimizer.param_groups[0]["lr"]))
                self.hook.before_update(self.model, self.optimizer, update)
            else:
                self.hook.before_update(self.model, self.optimizer)
        self.scaler.step(self.optimizer)  # optimizer.step(), skipped on inf/NaN grads in fp16
        self.scaler.update()
        return total

    def __call__(self, x: Any, y: Any) -> torch.Tensor:
        return self.update(((x, y),), batch_len(y))


def _marked_last(items: Iterable[Batch]) -> Iterator[tuple[bool, Batch]]:
    """``(is_last, item)`` for each item, looking one ahead."""
    iterator = iter(items)
    item = next(iterator, None)
    while item is not None:
        following = next(iterator, None)
        yield following is None, item
        item = following


def _gradient_sync(model: torch.nn.Module, last: bool) -> contextlib.ExitStack:
    """Inside DistributedDataParallel, every micro-batch but an update's last runs under
    ``no_sync`` (its gradients accumulate locally); the last one's backward all-reduces the
    sum. Close the returned stack after the backward pass. A plain module: nothing."""
    stack = contextlib.ExitStack()
    no_sync = getattr(model, "no_sync", None)
    if not last and no_sync is not None:
        stack.enter_context(no_sync())
    return stack


def _grad_scaler(device_type: str, enabled: bool) -> torch.amp.GradScaler:
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def make_step(model: torch.nn.Module, settings: TrainSettings, task: Task | None = None) -> Step:
    """The module, optimizer, gradient scaler and autocast one trial trains with.

    ``model`` must already be on ``settings.device``. The hardware probe builds its steps
    here too, so that the memory cap it measures holds for the trials. ``task`` gives the
    loss, the step hook and, when it has one, its own ``optimizer(params, lr)`` (which then
    replaces ``settings.optimizer`` and ``settings.weight_decay``); ``None``: cross-entropy,
    no hook.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> step = make_step(model, TrainSettings(epochs=1, batch_size=8, micro_batch_size=8,
        ...                                       lr=0.1, precision="bf16"))
        >>> loss = step(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    """
    device = torch.device(settings.device)
    on_cuda = device.type == "cuda"
    own = getattr(task, "optimizer", None) if task is not None else None
    if own is not None:
        optimizer = own(model.parameters(), settings.lr)
    else:
        optimizer = make_optimizer(
            settings.optimizer, model.parameters(), settings.lr, on_cuda, settings.weight_decay
        )
    scaler = _grad_scaler(device.type, enabled=settings.precision == "fp16")
    runner = torch.compile(model) if settings.compile else model
    if task is None:
        return Step(runner, optimizer, scaler, settings)
    return Step(runner, optimizer, scaler, settings, task.loss, task.step)


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
    """Optimizer updates in one pass over ``train_size`` samples: each uses exactly
    ``batch_size`` samples, so the tail (:func:`samples_left_out`) makes none.

    Example:
        >>> steps_per_epoch(1078, 64), samples_left_out(1078, 64)
        (16, 54)
    """
    return train_size // batch_size


def samples_left_out(train_size: int, batch_size: int) -> int:
    """Samples each epoch leaves out so that every update uses exactly ``batch_size``.

    Which samples sit out changes with every epoch's shuffle.

    Raises:
        ValueError: ``batch_size`` is above ``train_size`` (no update could be made).
    """
    check_batch_fits(train_size, batch_size)
    return train_size % batch_size


def check_batch_fits(train_size: int, batch_size: int) -> None:
    """Raise :class:`ValueError` when ``batch_size`` is not in ``1..train_size``."""
    if not 1 <= batch_size <= train_size:
        raise ValueError(
            f"batch size {batch_size} is not in 1..{train_size} (the training set): every "
            "update uses exactly batch_size samples; choose a batch size up to the training set"
        )


def update_groups(
    data: Tensors | Dataset,
    batch_size: int,
    micro_batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    loader: DataLoader | None = None,
    collate: Callable[[list], Batch] | None = None,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Iterator[Batch], int]]:
    """Yield one epoch of ``(micro_batches, samples_in_group)``, one item per update.

    ``share`` ``(rank, ranks)``: a trial on several devices trains each group's contiguous
    ``rank``-th of ``ranks`` equal parts here (every rank draws the same shuffled order), and
    ``samples_in_group`` is that part's size.

    Every group has exactly ``batch_size`` samples: the last ``len(data) % batch_size`` of
    the epoch's shuffled order are left out of this epoch (the next shuffle covers them).
    :class:`Tensors` already on the device are sliced with a shuffled index; other datasets
    are read in groups through ``loader`` (a shuffling DataLoader of ``batch_size`` that drops
    the short last batch, with the task's ``collate``; built here when not given), copied to
    the device without blocking and split there. Micro-batches are sliced one at a time, as
    they are trained, so memory holds one micro-batch of inputs.
    """
    if isinstance(data, Tensors):
        usable = len(data) - len(data) % batch_size
        order = torch.randperm(len(data), generator=generator)[:usable].to(device)
        for group in order.split(batch_size):
            if share[1] > 1:  # this rank's contiguous part of the group
                group = group.tensor_split(share[1])[share[0]]
            yield ((data.x[i], data.y[i]) for i in group.split(micro_batch_size)), len(group)
        return
    if loader is None:
        loader = make_loader(data, batch_size, device, generator, drop_last=True, collate=collate)
    non_blocking = device.type == "cuda"
    for x, y in loader:
        x = to_device(x, device, non_blocking)
        y = to_device(y, device, non_blocking)
        if share[1] > 1:  # this rank's contiguous part of the group
            parts = micro_batches((x, y), batch_len(y) // share[1])
            x, y = next(itertools.islice(parts, share[0], None))
        yield micro_batches((x, y), micro_batch_size), batch_len(y)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: Tensors | Dataset,
    batch_size: int,
    device,
    precision: str = "fp32",
    task: Task | None = None,
    combine: Callable[[SplitMetric], None] | None = None,
) -> float:
    """The task's metric (default: accuracy) of ``model`` on ``data``, in batches of
    ``batch_size``: the mean of its per-sample values, or its value over the whole split
    (:class:`~objectives.metrics.SplitMetric`). ``combine`` adds other processes' parts of
    the split into the sums before the value is read (a trial on several devices).

    Runs under the autocast of ``precision``; a sum stays on the device until the end.
    """
    device = torch.device(device)
    total = SplitMetric(task.metric if task is not None else ACCURACY, device)
    was_training = model.training
    model.eval()
    if isinstance(data, Tensors):
        batches = zip(data.x.split(batch_size), data.y.split(batch_size), strict=True)
    else:
        collate = task.collate if task is not None else None
        batches = make_loader(data, batch_size, device, shuffle=False, collate=collate)
    non_blocking = device.type == "cuda"
    with autocast(device, precision):
        for x, y in batches:
            x = to_device(x, device, non_blocking)
            y = to_device(y, device, non_blocking)
            total.add(call_model(model, x), y)
    model.train(was_training)
    if combine is not None:
        combine(total)
    return total.value()


@dataclass(frozen=True)
class Period:
    """One evaluation period of a trial, fixed before its loop runs.

    An epoch (``steps`` ``None``: one pass over the data in groups of ``batch_size``) or,
    under a step budget, ``steps`` updates that walk on across epoch boundaries. A batch-size
    schedule gives each epoch its own batch, micro-batch and peak learning rate.
    """

    epoch: int
    batch_size: int
    micro_batch_size: int
    peak_lr: float
    steps: int | None = None


def plan_periods(
    settings: TrainSettings, train_size: int, start_epoch: int = 0
) -> tuple[list[Period], int]:
    """The periods one call of :func:`train_model` trains, numbered from ``start_epoch + 1``,
    and the trial's total updates (what the learning-rate schedule runs over).

    Example:
        >>> s = TrainSettings(epochs=2, batch_size=64, micro_batch_size=32, lr=0.1)
        >>> periods, total = plan_periods(s, 1078)
        >>> [(p.epoch, p.batch_size, p.steps) for p in periods], total
        ([(1, 64, None), (2, 64, None)], 32)
    """
    b, m, lr = settings.batch_size, settings.micro_batch_size, settings.lr
    if settings.batch_phases is not None:
        shapes = [(pb, pm, plr, None) for pb, pm, plr in settings.batch_phases]
    elif settings.period_steps:
        shapes = [(b, m, lr, steps) for steps in settings.period_steps]
    else:
        shapes = [(b, m, lr, None)] * settings.epochs
    periods = [Period(start_epoch + i, *shape) for i, shape in enumerate(shapes, 1)]
    for size in {b} | {p.batch_size for p in periods}:
        check_batch_fits(train_size, size)
    updates = sum(
        p.steps if p.steps is not None else steps_per_epoch(train_size, p.batch_size)
        for p in periods
    )
    return periods, settings.total_steps or settings.first_step + updates


class UpdateSource:
    """Where a trial's updates come from: groups of exactly the period's batch (this rank's
    share of each on several devices), split into micro-batches (:func:`update_groups`).

    One generator shuffles every epoch of the trial; streamed data is read through one
    loader per batch size; a step budget's periods walk on through one endless stream of
    epochs at the trial's batch size.
    """

    def __init__(
        self,
        train: Tensors | Dataset,
        settings: TrainSettings,
        task: Task | None,
        parallel: Ranks | None,
    ) -> None:
        self.train, self.settings = train, settings
        self.device = torch.device(settings.device)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.collate = task.collate if task is not None else None
        self.share = (parallel.rank, parallel.ranks) if parallel is not None else (0, 1)
        self.loaders: dict[int, DataLoader] = {}
        self.stream = self._forever()

    def period(self, period: Period) -> Iterator[tuple[Iterator[Batch], int]]:
        """The period's updates: ``(micro_batches, samples_in_group)`` each."""
        if period.steps is None:
            return self._epoch(period.batch_size, period.micro_batch_size)
        return itertools.islice(self.stream, period.steps)

    def _epoch(self, batch: int, micro: int) -> Iterator[tuple[Iterator[Batch], int]]:
        loader = None if isinstance(self.train, Tensors) else self._loader(batch)
        return update_groups(
            self.train, batch, micro, self.generator, self.device, loader, share=self.share
        )

    def _forever(self) -> Iterator[tuple[Iterator[Batch], int]]:
        while True:
            yield from self._epoch(self.settings.batch_size, self.settings.micro_batch_size)

    def _loader(self, batch: int) -> DataLoader:
        if batch not in self.loaders:  # streamed through workers and pinned memory
            self.loaders[batch] = make_loader(
                self.train,
                batch,
                self.device,
                self.generator,
                workers=self.settings.loader_workers,
                drop_last=True,
                collate=self.collate,
            )
        return self.loaders[batch]


class Meter:
    """What a trial measures around its updates, a period at a time: the wall time, the
    training loss (summed on the device, read once a period), samples, the task's units
    (its ``count``, e.g. tokens) and the peak memory: the CUDA allocator's, or on CPU the
    first update's, measured as the probe measures a step."""

    def __init__(self, model: torch.nn.Module, device: torch.device, task: Task | None):
        self.model, self.device = model, device
        self.count = task.count if task is not None else None
        self.on_cuda = device.type == "cuda"
        self.cpu_peak_bytes = 0
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.start()

    def start(self) -> None:
        """Open a period."""
        self.started = time.perf_counter()
        self.loss_sum = torch.zeros((), device=self.device)
        self.seen = 0
        self.units: Any = 0  # what ``count`` returns, summed (an int, or a device tensor)

    def update(self, step: Step, batches: Iterator[Batch], samples: int, where: Update) -> None:
        """Run one update through ``step``, measuring it."""
        if self.count is not None:  # units counted as the batches go by
            batches = self._counted(batches)
        if not self.on_cuda and self.cpu_peak_bytes == 0:
            step.optimizer.zero_grad(set_to_none=True)  # freed before, not during
            held = state_bytes(self.model, step.optimizer)
            with PeakMemory(self.device) as peak:
                self.loss_sum += step.update(batches, samples, where)
            self.cpu_peak_bytes = held + peak.bytes
        else:
            self.loss_sum += step.update(batches, samples, where)
        self.seen += samples

    def finish(self, result: TrainResult, updates: int, parallel: Ranks | None) -> float:
        """Close the period: the whole group's figures added to ``result``; its seconds in
        :attr:`seconds`; returns its mean training loss."""
        loss_sum, seen, units = self.loss_sum, self.seen, self.units
        if parallel is not None:  # the whole group's loss, samples and units
            loss_sum, seen, units = parallel.all_sum(loss_sum, seen, units)
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.started
        result.train_time_s += self.seconds
        result.samples_seen += seen
        result.units_seen += seen if self.count is None else int(units)
        result.optimizer_steps = updates
        if self.on_cuda:
            result.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device)
            result.memory_source = "cuda_max_memory_allocated"
        else:
            result.peak_memory_bytes = self.cpu_peak_bytes
            result.memory_source = "cpu_allocator_profile"
        return loss_sum.item() / seen

    def _counted(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for x, y in batches:
            self.units = self.units + self.count(x, y)
            yield x, y


def learning_rate(
    settings: TrainSettings, task: Task | None, total_steps: int
) -> Callable[[int, float], float] | None:
    """The learning rate of update ``index`` from a period's peak, or ``None`` when it never
    changes (``settings.lr`` throughout): the task's own schedule (a factor of the peak per
    update), else the settings' warm-up and decay."""
    own = getattr(task, "lr_schedule", None) if task is not None else None
    if own is not None:
        return lambda index, peak: peak * float(own(index, total_steps))
    schedule = settings.schedule
    if not schedule.varies and settings.batch_phases is None:
        return None
    return lambda index, peak: schedule.lr(index, total_steps, peak, settings.warmup_start_lr)


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
    task: Task | None = None,
    parallel: Ranks | None = None,
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
        task: The task's contract: loss and step hook (when ``step`` is built here),
            ``collate`` for streamed data, ``count`` and ``unit`` for throughput, and the
            metric evaluated. ``None``: cross-entropy, accuracy, samples.
        parallel: This process's place in a trial on several devices
            (:mod:`objectives.ranks`): it trains its share of each update (``step.model``
            is then the DistributedDataParallel wrapper), the epoch's loss and samples are
            summed over the ranks, and the ranks evaluate ``val`` together
            (:meth:`~objectives.ranks.Ranks.evaluate`, on the unwrapped ``model``).

    Raises:
        ValueError: ``settings.batch_size`` is above the training set (every update uses
            exactly ``batch_size`` samples, so no update could be made).
    """
    device = torch.device(settings.device)
    periods, total_steps = plan_periods(settings, len(train), start_epoch)
    if step is None:
        step = make_step(model, settings, task)
    elif not _optimizes(step.optimizer, model):
        raise ValueError("train_model: the step's optimizer is not over this model's parameters")
    result = result if result is not None else TrainResult()
    result.unit = task.unit if task is not None else "samples"
    source = UpdateSource(train, settings, task, parallel)
    meter = Meter(model, device, task)
    lr_of = learning_rate(settings, task, total_steps)
    index = settings.first_step  # the trial's update count, over which the schedule runs
    model.train()
    with torch_flags(device):
        for period in periods:
            meter.start()
            for batches, samples in source.period(period):
                lr = settings.lr if lr_of is None else lr_of(index, period.peak_lr)
                if lr_of is not None:
                    for group in step.optimizer.param_groups:
                        group["lr"] = lr
                meter.update(step, batches, samples, Update(index, total_steps, lr))
                index += 1
            train_loss = meter.finish(result, index, parallel)
            if not math.isfinite(train_loss):
                raise Diverged(period.epoch)
            if parallel is None:
                val_metric = evaluate(
                    step.model, val, settings.eval_batch, device, settings.precision, task
                )
            else:  # over the ranks' shards of the split, on the unwrapped model
                val_metric = parallel.evaluate(
                    evaluate, model, val, settings.eval_batch, settings.precision, task
                )
            epoch = EpochResult(period.epoch, train_loss, val_metric, meter.seconds)
            result.epochs.append(epoch)
            if on_epoch is not None:
                on_epoch(epoch)
    return result


def _optimizes(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
    """Whether ``optimizer`` updates ``model``'s (first) parameter."""
    first = next(model.parameters(), None)
    return first is None or any(p is first for g in optimizer.param_groups for p in g["params"])


def train_task(
    task: Task,
    settings: TrainSettings,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Build a fresh model for ``task``, train it, and measure the metric on the training and
    test splits at the end."""
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = task.build_model().to(device)
    train, val, test = (
        place(getattr(task, name), device, task.collate, name) for name in ("train", "val", "test")
    )
    with torch_flags(device):
        result = train_model(model, train, val, settings, on_epoch, task=task)
        finish(result, model, train, test, settings.eval_batch, device, settings.precision, task)
    return result


def finish(
    result: TrainResult,
    model: torch.nn.Module,
    train: Tensors | Dataset,
    test: Tensors | Dataset,
    batch_size: int,
    device: torch.device | str,
    precision: str = "fp32",
    task: Task | None = None,
) -> None:
    """Record the trained model's metric (``task``'s; default accuracy) on the training and
    test splits."""
    result.train_metric = evaluate(model, train, batch_size, device, precision, task)
    result.test_metric = evaluate(model, test, batch_size, device, precision, task)


def training_loss(
    model: torch.nn.Module,
    dataset: Any,
    limit: int = 4096,
    loss: Callable[[Any, Any], torch.Tensor] | None = None,
    collate: Callable[[list], Any] | None = None,
) -> float:
    """Mean per-sample loss of ``model`` on (the first ``limit`` items of) ``dataset``.

    ``loss`` is the task's (``loss(outputs, targets)`` -> per-sample values; default
    cross-entropy); items are batched with ``collate`` (default: stacked). Used to tell a
    diverged model (loss far above its start, or not finite) from a trained one.
    """
    from torch.utils.data import Subset

    loss = loss or cross_entropy
    device = next(iter(model.parameters()), torch.empty(0)).device
    items = Subset(dataset, range(min(limit, len(dataset))))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for inputs, targets in DataLoader(items, batch_size=512, collate_fn=collate):
                inputs, targets = to_device(inputs, device), to_device(targets, device)
                values = loss(call_model(model, inputs), targets).float()
                total += float(values.sum())
                count += values.numel()
    finally:
        model.train(was_training)
    return total / count if count else float("nan")
