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
from collections.abc import Mapping
from typing import Any

import torch

# The contract's half of this module (the Metric type, the default loss and metric, reading
# class scores) is defined in the leaf objectives.contract and re-exported here.
from objectives.contract import (
    ACCURACY,
    IGNORE_INDEX,
    PER,
    Metric,
    OutputsError,
    accuracy,
    as_metric,
    bounds_ok,
    cross_entropy,
    is_accumulating,
    logits_of,
    metric_problem,
    scores,
    token_cross_entropy,
)

__all__ = [
    "ACCURACY",
    "BITS_PER_CHAR",
    "IGNORE_INDEX",
    "MSE",
    "PER",
    "Metric",
    "OutputsError",
    "SplitMetric",
    "accuracy",
    "as_metric",
    "bits_per_char",
    "bounds_ok",
    "cross_entropy",
    "f1",
    "is_accumulating",
    "logits_of",
    "metric_problem",
    "mse",
    "scores",
    "token_cross_entropy",
]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half precision and integers widened; float64 kept)."""
    return t if t.is_floating_point() and t.element_size() >= 4 else t.float()


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
