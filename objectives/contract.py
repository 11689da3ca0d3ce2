"""The task contract: what a user's problem gives the tool, and what it may leave out.

A :class:`Task` is a model factory and three splits of ``(inputs, targets)`` items, with
optionally a per-sample loss, a :class:`Metric` to select on, a ``collate``, a
:class:`StepHook` (changes inside the update, which receives an :class:`Update`) and the unit
throughput counts. What a task leaves out defaults to the loss and metric of classification,
defined here too: :func:`cross_entropy` and :data:`ACCURACY` over class scores read from the
model's outputs (:func:`logits_of`). This module is a leaf: it imports nothing of the project,
so every other module (the training loop, the checks, the built-in tasks, the loading) can
import it without a cycle. See ``docs/tasks.md`` for the contract with examples.

Example:
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.randn(8, 3), torch.arange(8) % 2)
    >>> Task("tiny", lambda: torch.nn.Linear(3, 2), data, data, data).metric.name
    'accuracy'
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

#: The directions a metric may have: Optuna's study directions, as ``study.record`` stores them.
DIRECTIONS = ("maximize", "minimize")
#: The target value that token losses and metrics leave out (padding), as in PyTorch.
IGNORE_INDEX = -100
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


#: The kinds of metric function (``Metric.per``).
PER = ("sample", "split")


@dataclass(frozen=True)
class Metric:
    """What the study selects on: a name, a direction and a function of the outputs.

    The study's objective is the metric on the validation split (stored as ``val_<name>``,
    with ``test_<name>`` beside it), maximised or minimised as ``direction`` says: the mean
    of per-sample values (``per="sample"``), or one value of the whole split
    (``per="split"``). The pruner compares these per-evaluation values and the answer their
    final values over runs, the same way for both kinds.

    Example:
        >>> def absolute_error(outputs, targets):
        ...     return (outputs.squeeze(-1) - targets).abs()
        >>> MAE = Metric("mae", "minimize", absolute_error)
        >>> def worst_error(outputs, targets):  # of the whole split
        ...     return float((outputs.squeeze(-1) - targets).abs().max())
        >>> MAX_ERROR = Metric("max_error", "minimize", worst_error, per="split")

    Args:
        name: Letters, digits and underscores, starting with a letter (``accuracy``, ``mse``).
        direction: ``"maximize"`` or ``"minimize"``.
        fn: ``per="sample"``: ``fn(outputs, targets)`` -> one value per sample, shape
            ``[n]``. ``per="split"``: ``fn(outputs, targets)`` -> a number for the whole
            split, or an object with ``update``/``compute``/``reset`` (a ``torchmetrics``
            metric; then ``per`` is ``"split"`` whatever is given).
        bounds: ``(lower, upper)`` the metric cannot leave (``None`` for an open side), or
            ``None``: intervals are clipped to them (accuracy: ``(0, 1)``; MSE: ``(0, None)``).
        per: ``"sample"`` (default) or ``"split"``.

    Raises:
        ValueError: a bad name, direction, bounds or kind, or ``fn`` neither callable nor an
            update/compute object.
    """

    name: str
    direction: str
    fn: Callable[[object, object], torch.Tensor] | Any
    bounds: tuple[float | None, float | None] | None = None
    per: str = "sample"

    def __post_init__(self) -> None:
        if is_accumulating(self.fn):
            object.__setattr__(self, "per", "split")
        problem = metric_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def per_split(self) -> bool:
        """Whether the metric is one value of the whole split (not a per-sample mean)."""
        return self.per == "split"


def is_accumulating(fn: object) -> bool:
    """Whether ``fn`` follows the ``torchmetrics`` protocol: ``update``, ``compute``,
    ``reset``."""
    return all(callable(getattr(fn, name, None)) for name in ("update", "compute", "reset"))


def as_metric(metric: Any) -> Any:
    """``metric`` as a :class:`Metric`: a ``torchmetrics`` object handed in bare is named by
    its class in snake case (``MulticlassF1Score`` -> ``multiclass_f1_score``) and directed by
    its ``higher_is_better``; anything else is returned as it is (and checked later).

    Example:
        >>> class MeanError:  # the update/compute/reset protocol
        ...     higher_is_better = False
        ...     def update(self, outputs, targets): ...
        ...     def compute(self): ...
        ...     def reset(self): ...
        >>> as_metric(MeanError()).name, as_metric(MeanError()).direction
        ('mean_error', 'minimize')
    """
    if isinstance(metric, Metric) or not is_accumulating(metric):
        return metric
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", type(metric).__name__).lower()
    higher = getattr(metric, "higher_is_better", True)
    return Metric(name, "maximize" if higher is not False else "minimize", metric)


def logits_of(outputs: Any) -> Any:
    """The class scores in a model's outputs: the tensor itself, ``outputs["logits"]`` of a
    dict, or ``outputs.logits`` of an object (a Hugging Face ``ModelOutput``); other outputs
    are returned as they are.

    Example:
        >>> logits_of({"logits": torch.zeros(2, 3), "hidden": None}).shape
        torch.Size([2, 3])
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else outputs


def metric_problem(metric: object) -> str:
    """What is wrong with ``metric`` as a :class:`Metric` ("" when nothing is)."""
    name = getattr(metric, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            f"metric name {name!r} must be letters, digits and underscores starting with a "
            "letter (it names the stored val_<name>)"
        )
    direction = getattr(metric, "direction", None)
    if direction not in DIRECTIONS:
        return f"metric {name!r}: direction {direction!r} must be 'maximize' or 'minimize'"
    per = getattr(metric, "per", "sample")
    if per not in PER:
        return f"metric {name!r}: per {per!r} must be 'sample' or 'split'"
    fn = getattr(metric, "fn", None)
    if not callable(fn) and not is_accumulating(fn):
        return (
            f"metric {name!r}: fn must be callable as fn(outputs, targets) -> [n] "
            "(per='sample') or -> a number (per='split'), or a torchmetrics metric object"
        )
    bounds = getattr(metric, "bounds", None)
    if bounds is not None and not bounds_ok(bounds):
        return (
            f"metric {name!r}: bounds {bounds!r} must be (lower, upper) numbers or None with "
            "lower < upper, e.g. (0, 1)"
        )
    return ""


def bounds_ok(bounds: object) -> bool:
    """Whether ``bounds`` is ``(lower, upper)``, each a number or ``None``, lower < upper."""
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        return False
    if not all(b is None or (isinstance(b, int | float) and math.isfinite(b)) for b in bounds):
        return False
    lower, upper = bounds
    return lower is None or upper is None or lower < upper


class OutputsError(TypeError):
    """A model's outputs hold no scores the ready losses and metrics can read."""


def scores(outputs: Any) -> torch.Tensor:
    """:func:`logits_of`, or :class:`OutputsError` naming the fix when there are none.

    Example:
        >>> scores(("a", "tuple"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        objectives.contract.OutputsError: the model returns tuple, not class scores: ...
    """
    logits = logits_of(outputs)
    if isinstance(logits, torch.Tensor):
        return logits
    raise OutputsError(
        f"the model returns {type(outputs).__name__}, not class scores: return a tensor, a "
        "dict with 'logits' or an object with .logits, or give the task a loss(outputs, "
        "targets) -> [n] (and a metric) that reads your outputs"
    )


def token_cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy per sample of a sequence model: the mean over the sample's tokens.

    ``outputs`` ``[n, tokens, classes]``, ``targets`` ``[n, tokens]``; tokens whose target is
    ``ignore_index`` (padding) are left out of their sample's mean.
    """
    outputs, targets = scores(outputs), targets.long()
    per_token = F.cross_entropy(
        outputs.flatten(0, -2), targets.flatten(), reduction="none", ignore_index=ignore_index
    ).view(targets.shape)
    valid = (targets != ignore_index).flatten(1)
    return per_token.flatten(1).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy per sample (class scores in the last dimension).

    ``[n, classes]`` scores with ``[n]`` class indices, or ``[n, ..., classes]`` with
    ``[n, ...]`` (the sample's mean over its positions, :func:`token_cross_entropy`).
    """
    outputs = scores(outputs)
    if outputs.dim() > 2:
        return token_cross_entropy(outputs, targets)
    return F.cross_entropy(outputs, targets.long(), reduction="none")


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: 1.0 where the largest score is the target, else 0.0 (over a sequence: the
    fraction of its tokens right, padding with :data:`IGNORE_INDEX` left out)."""
    right = scores(outputs).argmax(dim=-1) == targets
    if right.dim() == 1:
        return right.float()
    valid = (targets != IGNORE_INDEX).flatten(1)
    return (right.flatten(1) & valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


#: Fraction right (the default metric), maximised.
ACCURACY = Metric("accuracy", "maximize", accuracy, bounds=(0.0, 1.0))


@dataclass(frozen=True)
class StepHook:
    """A task's changes to the training step; the tool keeps the rest of the step.

    Inside every update (:meth:`Step.update`) the tool runs the forward pass and the task's
    per-sample loss under the trial's precision (autocast), sums the losses and divides by
    the update group's size (exact accumulation), backpropagates through the gradient
    scaler, and steps the optimizer at the learning rate the trial derived; memory and time
    are measured around it. A hook changes two things inside:

    * ``loss(losses, outputs, targets, model) -> [n]``: the per-sample losses the update
      backpropagates, given the task's ``losses`` (shape ``[n]``) for this micro-batch. Return
      per-sample values: a label-smoothed loss, or ``losses + penalty`` for an extra term
      (a batch-level term added to every sample's loss adds exactly ``penalty`` to the
      group's mean, however the group is split). Runs under autocast.
    * ``before_update(model, optimizer)``: after the last micro-batch's backward pass and
      before the optimizer step, with the gradients already unscaled (``fp16``), e.g.
      ``torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)``. Its changes to the
      gradients are what the optimizer applies. A hook that takes a third argument,
      ``before_update(model, optimizer, update)``, also gets the :class:`Update`: the
      update's index over the trial, the trial's total and the learning rate it runs at
      (to build a schedule of its own, or log).

    Example:
        >>> import torch.nn.functional as F
        >>> hook = StepHook(
        ...     loss=lambda losses, out, y, model: F.cross_entropy(
        ...         out, y, label_smoothing=0.1, reduction="none"),
        ...     before_update=lambda model, opt: torch.nn.utils.clip_grad_norm_(
        ...         model.parameters(), 1.0),
        ... )

    Args:
        loss: Replaces or adds to the per-sample losses (``None``: the task's loss as it is).
        before_update: Runs on the unscaled gradients before each optimizer step.
    """

    loss: Callable[[torch.Tensor, Any, Any, torch.nn.Module], torch.Tensor] | None = None
    before_update: Callable[..., object] | None = None


@dataclass(frozen=True)
class Update:
    """Where an update sits in its trial: what a three-argument ``before_update`` receives.

    Attributes:
        index: The update's number over the whole trial, from 0 (a resumed trial counts on).
        total: The trial's updates (its epochs' updates, or its step budget); 0 outside a
            trial (the hardware probe's steps).
        lr: The learning rate of this update (the schedule's, set before the hook runs).
    """

    index: int
    total: int
    lr: float


def takes_update(before_update: Callable[..., object]) -> bool:
    """Whether a hook's ``before_update`` accepts a third argument, the :class:`Update`.

    Asked before every update, so the answer is cached per hook (when it is hashable).

    Example:
        >>> takes_update(lambda model, opt: None), takes_update(lambda model, opt, u: None)
        (False, True)
    """
    try:
        return _takes_update_cached(before_update)
    except TypeError:  # an unhashable callable object: asked each time
        return _takes_update(before_update)


def _takes_update(before_update: Callable[..., object]) -> bool:
    try:
        inspect.signature(before_update).bind(None, None, None)
    except (TypeError, ValueError):  # ValueError: no signature (a builtin), the plain call
        return False
    return True


_takes_update_cached = functools.lru_cache(maxsize=256)(_takes_update)


class TaskError(ValueError):
    """A task could not be built or is malformed; the message says what and how to fix it."""


@dataclass
class Task:
    """Data, a model factory, and how to train and judge the model.

    Items and batches are ``(inputs, targets)``; ``inputs`` and ``targets`` may each be a
    tensor, a tuple/list of tensors or a dict of tensors (targets may also be numbers). The
    model is called ``model(x)``, ``model(*x)`` or ``model(**x)`` accordingly.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from objectives.metrics import MSE, mse
        >>> data = TensorDataset(torch.randn(64, 3), torch.randn(64))
        >>> task = Task("line", lambda: torch.nn.Linear(3, 1), data, data, data,
        ...             loss=mse, metric=MSE)
        >>> task.metric_info()
        {'name': 'mse', 'direction': 'minimize', 'unit': 'samples'}

    Args:
        name: Short name shown in reports and stored in the study.
        build_model: Returns a fresh, untrained ``torch.nn.Module`` on each call.
        train: Training split: a dataset of ``(inputs, targets)`` items.
        val: Validation split (the study selects on its metric).
        test: Test split (recorded for every trial, never used to select).
        loss: ``loss(outputs, targets)`` -> per-sample losses, shape ``[n]`` (the tool sums
            them and divides by the update group's size). Default: cross-entropy over class
            scores in the last dimension (:func:`cross_entropy`).
        metric: The :class:`~objectives.metrics.Metric` the study selects on (its mean over
            the validation split, or its value of the whole split), or a bare
            ``torchmetrics`` object (named by its class, directed by its
            ``higher_is_better``). Default: :data:`ACCURACY`.
        collate: ``collate(list_of_items) -> (inputs, targets)``, for items that need it
            (padding to a common length). Default: items stacked (``default_collate``); plain
            ``(tensor, tensor)`` data is then held as tensors and sliced (the fast path).
        step: A :class:`StepHook` (gradient clipping, a changed or extra
            loss term) run inside the tool's update.
        unit: What throughput counts: ``"samples"`` (default), ``"tokens"``, ...
        count: ``count(inputs, targets)`` -> the units in a batch (an int or a 0-dim tensor,
            which stays on the device). Default: the batch's samples.
        num_classes: Classes of the default loss; inferred from the labels when not given.
        optimizer: ``optimizer(params, lr) -> torch.optim.Optimizer``: the task's own
            optimizer, built at the trial's peak learning rate (replaces ``--optimizer`` and
            ``--weight-decay``; the tool still sets each update's rate, see ``lr_schedule``).
        lr_schedule: ``lr_schedule(index, total) -> factor``: the share of the peak learning
            rate for update ``index`` (from 0) of the trial's ``total`` updates (replaces
            ``--lr-schedule`` and the warm-up flags). The peak is the scaling rule's.
        info: Free-form facts about the task (sizes are added when it is loaded).
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    train: Dataset
    val: Dataset
    test: Dataset
    _: KW_ONLY
    loss: Callable[[Any, Any], torch.Tensor] | None = None
    metric: Metric | None = None
    collate: Callable[[list], tuple[Any, Any]] | None = None
    step: StepHook | None = None
    unit: str = "samples"
    count: Callable[[Any, Any], int | torch.Tensor] | None = None
    num_classes: int | None = None
    optimizer: Callable[[Any, float], torch.optim.Optimizer] | None = None
    lr_schedule: Callable[[int, int], float] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = cross_entropy
        if self.metric is None:
            self.metric = ACCURACY
        self.metric = as_metric(self.metric)  # a bare torchmetrics object, named and directed

    @property
    def classification(self) -> bool:
        """Whether the task trains with the default loss (cross-entropy on class indices)."""
        return self.loss is cross_entropy

    def metric_info(self) -> dict[str, str]:
        """``{"name", "direction", "unit"}``: what the study stores as its ``metric``."""
        return {"name": self.metric.name, "direction": self.metric.direction, "unit": self.unit}
