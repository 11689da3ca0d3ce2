"""Per-sample losses and metrics: what a task is trained on and what the study selects on.

A task's ``loss(outputs, targets)`` returns one loss per sample, shape ``[n]``: the tool sums
them and divides by the size of the update's group, so the update is the group's mean loss
however it is split into micro-batches. A :class:`Metric` has a name, a direction and a
function of one of two kinds (``per``):

* ``per="sample"`` (default): ``fn(outputs, targets)`` returns one value per sample, shape
  ``[n]``; a split's metric is their mean (accuracy, squared error, bits per character).
* ``per="split"``: a metric of the whole split (micro-F1, AUC, mAP, BLEU). ``fn`` is either
  a function ``fn(outputs, targets) -> number`` called once on the split's outputs and
  targets concatenated along the first dimension, or an object with the
  ``update(outputs, targets)`` / ``compute()`` / ``reset()`` protocol of ``torchmetrics``
  (updated batch by batch, so the split's outputs are never held at once). An object with
  that protocol makes the metric ``per="split"`` by itself.

Class scores are in the last dimension of ``outputs``: ``[n, classes]`` with targets ``[n]``,
or ``[n, tokens, classes]`` with targets ``[n, tokens]`` for a sequence model (a sample's
value is then its mean over its tokens, targets equal to :data:`IGNORE_INDEX` left out).
A model may return the scores as a tensor, a dict with ``"logits"`` or an object with a
``.logits`` attribute (a Hugging Face ``ModelOutput``): the ready losses and metrics, and
``torchmetrics`` objects, read the scores with :func:`logits_of`.

Ready to use:

* :data:`ACCURACY` (the default; maximised): the fraction of samples (or tokens) whose
  largest score is the target.
* :data:`MSE` (minimised): squared error per sample, averaged over its output values.
* :data:`BITS_PER_CHAR` (minimised): a character model's cross-entropy per token in bits.
* :func:`f1` (micro or macro F1 of a classifier or multi-label model, maximised): a split
  metric computed by ``torchmetrics`` (the ``metrics`` extra).
* losses :func:`cross_entropy` (the default), :func:`mse` and :func:`token_cross_entropy`.

Example:
    >>> outputs, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    >>> ACCURACY.fn(outputs, targets)
    tensor([1., 0.])
    >>> MSE.fn(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0]))
    tensor([0., 4.])
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from study.record import DIRECTIONS

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


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half precision and integers widened; float64 kept)."""
    return t if t.is_floating_point() and t.element_size() >= 4 else t.float()


class OutputsError(TypeError):
    """A model's outputs hold no scores the ready losses and metrics can read."""


def scores(outputs: Any) -> torch.Tensor:
    """:func:`logits_of`, or :class:`OutputsError` naming the fix when there are none.

    Example:
        >>> scores(("a", "tuple"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        objectives.metrics.OutputsError: the model returns tuple, not class scores: ...
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


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error per sample, averaged over its output values (a loss and a metric).

    ``outputs`` ``[n, 1]`` and ``targets`` ``[n]`` are compared value for value (never
    broadcast against each other).

    Raises:
        ValueError: outputs and targets hold different numbers of values per sample.
    """
    outputs = scores(outputs)
    n = outputs.shape[0]
    out, target = outputs.reshape(n, -1), targets.reshape(targets.shape[0], -1)
    if out.shape != target.shape:
        raise ValueError(
            f"mse: the model gives {out.shape[1]} values per sample but the targets have "
            f"{target.shape[1]} (outputs {list(outputs.shape)}, targets {list(targets.shape)})"
        )
    return (_wide(out) - _wide(target)).pow(2).mean(dim=1)


def bits_per_char(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: cross-entropy per token in bits (:func:`token_cross_entropy` / ln 2)."""
    return token_cross_entropy(scores(outputs).float(), targets) / math.log(2)


#: Fraction right (the default metric), maximised.
ACCURACY = Metric("accuracy", "maximize", accuracy, bounds=(0.0, 1.0))
#: Mean squared error, minimised.
MSE = Metric("mse", "minimize", mse, bounds=(0.0, None))
#: Validation bits per character of a character-level language model, minimised.
BITS_PER_CHAR = Metric("bits_per_char", "minimize", bits_per_char, bounds=(0.0, None))


class SplitMetric:
    """A split's metric, accumulated batch by batch: :meth:`add` each batch, then :meth:`value`.

    Per-sample metrics sum their values on the device; a split function gets the outputs
    and targets of all batches concatenated; a ``torchmetrics`` object is reset, moved to
    the device, updated with each batch's scores (:func:`logits_of`) and computed.

    Example:
        >>> total = SplitMetric(ACCURACY, "cpu")
        >>> total.add(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> total.value()
        0.5
    """

    def __init__(self, metric: Metric, device: torch.device | str) -> None:
        self.metric, self.device = metric, torch.device(device)
        self.samples = 0
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.outputs: list[Any] = []
        self.targets: list[Any] = []
        if is_accumulating(metric.fn):
            metric.fn.reset()
            if hasattr(metric.fn, "to"):
                metric.fn.to(self.device)

    def add(self, outputs: Any, targets: Any) -> None:
        """Take one batch's outputs and targets."""
        fn = self.metric.fn
        if not self.metric.per_split:
            values = fn(outputs, targets)
            self.samples += values.shape[0]
            self.total += values.sum()
        elif is_accumulating(fn):
            fn.update(scores(outputs), targets)
        else:
            self.outputs.append(_detached(logits_of(outputs)))
            self.targets.append(_detached(targets))

    def value(self) -> float:
        """The split's metric: the mean of the per-sample values, or the split's value."""
        fn = self.metric.fn
        if not self.metric.per_split:
            return self.total.item() / max(1, self.samples)
        if is_accumulating(fn):
            return float(fn.compute())
        return float(fn(_concatenated(self.outputs), _concatenated(self.targets)))


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _concatenated(parts: list[Any]) -> Any:
    """Batches joined along the first dimension (tensors, or dicts/tuples of them)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: _concatenated([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_concatenated(list(p)) for p in zip(*parts, strict=True))
    return [v for p in parts for v in p]


def f1(
    num_classes: int, average: str = "micro", *, multilabel: bool = False, threshold: float = 0.5
) -> Metric:
    """F1 of a classifier (``[n, classes]`` scores, ``[n]`` labels) or, ``multilabel``, of a
    multi-label model (``[n, labels]`` scores, ``[n, labels]`` 0/1 targets), computed by
    ``torchmetrics`` over the whole split; named ``f1_micro`` or ``f1_macro``, maximised.

    Args:
        num_classes: Classes (or labels, ``multilabel``).
        average: ``micro`` (over all decisions) or ``macro`` (the mean of per-class F1).
        multilabel: Targets are 0/1 per label; scores are logits (``threshold`` applies to
            their sigmoid).
        threshold: The multi-label decision threshold on probabilities.

    Raises:
        ImportError: ``torchmetrics`` is not installed (``pip install -e '.[metrics]'``).
        ValueError: ``average`` is neither ``micro`` nor ``macro``.
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"f1 average {average!r}: use 'micro' or 'macro'")
    try:
        from torchmetrics.classification import MulticlassF1Score, MultilabelF1Score
    except ImportError as exc:
        raise ImportError(
            "objectives.metrics.f1 needs torchmetrics: pip install -e '.[metrics]'"
        ) from exc
    if multilabel:
        fn = MultilabelF1Score(num_classes, threshold=threshold, average=average)
    else:
        fn = MulticlassF1Score(num_classes, average=average, ignore_index=IGNORE_INDEX)
    return Metric(f"f1_{average}", "maximize", fn, bounds=(0.0, 1.0), per="split")
