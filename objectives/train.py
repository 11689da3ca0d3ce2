"""The training loop of one trial: epochs of exact gradient accumulation, evaluated each epoch.

Read top to bottom: each epoch shuffles, walks the training set in groups of ``batch_size``
samples (one optimizer update each), splits each group into micro-batches of at most
``micro_batch_size``, weights each micro-batch's summed loss by ``1 / samples in the group``
(so a short last group or micro-batch counts for what it holds), then evaluates on the
validation split and hands the epoch to ``on_epoch`` (the objective reports and prunes there).

Example:
    >>> from objectives.tasks import load_task
    >>> task = load_task("digits")
    >>> settings = TrainSettings(epochs=1, batch_size=64, micro_batch_size=32, lr=1e-3)
    >>> result = train_task(task, settings)
    >>> 0.0 <= result.val_accuracy <= 1.0
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from objectives.data import Tensors, as_tensors
from objectives.memory import SavedTensorCounter, state_bytes, tensor_bytes

OPTIMIZERS = ("sgd", "adam", "adamw")


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
    """

    epochs: int
    batch_size: int
    micro_batch_size: int
    lr: float
    optimizer: str = "adam"
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int | None = None

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
    peak_memory_bytes: int = 0
    memory_source: str = ""

    @property
    def val_accuracy(self) -> float:
        return self.epochs[-1].val_accuracy if self.epochs else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples_seen / self.train_time_s if self.train_time_s > 0 else 0.0


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (see :data:`OPTIMIZERS`) over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


Batch = tuple[torch.Tensor, torch.Tensor]


def update_groups(
    data: Tensors | Dataset,
    batch_size: int,
    micro_batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[tuple[list[Batch], int]]:
    """Yield one epoch of ``(micro_batches, samples_in_group)``, one item per update.

    :class:`Tensors` already on the device are sliced with a shuffled index; other datasets
    are read through a shuffling DataLoader in groups and split after loading.
    """
    if isinstance(data, Tensors):
        order = torch.randperm(len(data), generator=generator).to(device)
        for group in order.split(batch_size):
            yield [(data.x[i], data.y[i]) for i in group.split(micro_batch_size)], len(group)
        return
    pin = device.type == "cuda"
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=generator, pin_memory=pin
    )
    for x, y in loader:
        x = x.to(device, non_blocking=pin)
        y = y.to(device, non_blocking=pin)
        yield list(zip(x.split(micro_batch_size), y.split(micro_batch_size), strict=True)), len(y)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Tensors | Dataset, batch_size: int, device) -> float:
    """Accuracy (fraction correct) of ``model`` on ``data``, in batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    if isinstance(data, Tensors):
        batches = zip(data.x.split(batch_size), data.y.split(batch_size), strict=True)
    else:
        batches = DataLoader(data, batch_size=batch_size)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(dim=1) == y).sum()
    model.train(was_training)
    return correct.item() / len(data)


def place(dataset: Dataset, device: torch.device) -> Tensors | Dataset:
    """The dataset as device tensors when it fits in memory, else the dataset itself."""
    tensors = as_tensors(dataset)
    return tensors.to(device) if tensors is not None else dataset


def _measured_backward(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, group_size: int
) -> tuple[int, torch.Tensor]:
    """One micro-batch's forward and backward, returning the activation bytes it held.

    Activation bytes are the tensors autograd saved plus the inputs and outputs.
    """
    with SavedTensorCounter(model) as saved:
        out = model(x)
        loss = F.cross_entropy(out, y, reduction="sum")
    activations = saved.bytes + tensor_bytes([x, y, out])
    (loss / group_size).backward()
    return activations, loss


def train_model(
    model: torch.nn.Module,
    train: Tensors | Dataset,
    val: Tensors | Dataset,
    settings: TrainSettings,
    on_epoch: Callable[[EpochResult], None] | None = None,
    result: TrainResult | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` as ``settings`` say, evaluating on ``val`` each epoch.

    ``on_epoch`` is called after each epoch; it may raise (for example ``optuna.TrialPruned``)
    to stop training. ``result`` (filled in place, epoch by epoch) keeps what was measured
    when training stops early. Raises :class:`Diverged` when the loss becomes NaN or infinite.
    """
    device = torch.device(settings.device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr)
    result = result if result is not None else TrainResult()
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    activation_bytes = 0
    model.train()
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for micro_batches, group_size in update_groups(
            train, settings.batch_size, settings.micro_batch_size, generator, device
        ):
            optimizer.zero_grad(set_to_none=True)
            for x, y in micro_batches:
                if not on_cuda and activation_bytes == 0:  # count the first step's tensors
                    activation_bytes, loss = _measured_backward(model, x, y, group_size)
                else:
                    out = model(x)
                    loss = F.cross_entropy(out, y, reduction="sum")
                    (loss / group_size).backward()
                loss_sum += loss.detach()
            optimizer.step()
            seen += group_size
        if on_cuda:
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - started
        result.train_time_s += epoch_time
        result.samples_seen += seen
        if on_cuda:
            result.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
            result.memory_source = "cuda_max_memory_allocated"
        else:
            result.peak_memory_bytes = state_bytes(model, optimizer) + activation_bytes
            result.memory_source = "cpu_step_tensors"
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise Diverged(epoch)
        val_accuracy = evaluate(model, val, settings.eval_batch, device)
        epoch_result = EpochResult(epoch, train_loss, val_accuracy, epoch_time)
        result.epochs.append(epoch_result)
        if on_epoch is not None:
            on_epoch(epoch_result)
    return result


def train_task(task, settings: TrainSettings, on_epoch=None) -> TrainResult:
    """Build a fresh model for ``task``, train it, and measure test accuracy at the end."""
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = task.build_model().to(device)
    train, val, test = (place(d, device) for d in (task.train, task.val, task.test))
    result = train_model(model, train, val, settings, on_epoch)
    finish(result, model, train, test, settings.eval_batch, device)
    return result


def finish(result: TrainResult, model, train, test, batch_size: int, device) -> None:
    """Record the trained model's accuracy on the training and test splits."""
    result.train_accuracy = evaluate(model, train, batch_size, device)
    result.test_accuracy = evaluate(model, test, batch_size, device)
