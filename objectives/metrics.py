"""Per-sample losses and metrics: what a task is trained on and what the study selects on.

A task's ``loss(outputs, targets)`` returns one loss per sample, shape ``[n]``: the tool sums
them and divides by the size of the update's group, so the update is the group's mean loss
however it is split into micro-batches. A :class:`Metric` has a name, a direction and
``fn(outputs, targets)`` returning one value per sample, shape ``[n]``; a split's metric is
their mean. Class scores are in the last dimension of ``outputs``: ``[n, classes]`` with
targets ``[n]``, or ``[n, tokens, classes]`` with targets ``[n, tokens]`` for a sequence
model (a sample's value is then its mean over its tokens, targets equal to
:data:`IGNORE_INDEX` left out).

Ready to use:

* :data:`ACCURACY` (the default; maximised): the fraction of samples (or tokens) whose
  largest score is the target.
* :data:`MSE` (minimised): squared error per sample, averaged over its output values.
* :data:`BITS_PER_CHAR` (minimised): a character model's cross-entropy per token in bits.
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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: The target value that token losses and metrics leave out (padding), as in PyTorch.
IGNORE_INDEX = -100
#: The directions a metric may have.
DIRECTIONS = ("maximize", "minimize")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Metric:
    """What the study selects on: a name, a direction and a per-sample function.

    The study's objective is the metric's mean on the validation split (stored as
    ``val_<name>``, with ``test_<name>`` beside it), maximised or minimised as
    ``direction`` says.

    Example:
        >>> def absolute_error(outputs, targets):
        ...     return (outputs.squeeze(-1) - targets).abs()
        >>> MAE = Metric("mae", "minimize", absolute_error)

    Args:
        name: Letters, digits and underscores, starting with a letter (``accuracy``, ``mse``).
        direction: ``"maximize"`` or ``"minimize"``.
        fn: ``fn(outputs, targets)`` -> one value per sample, shape ``[n]``.
        bounds: ``(lower, upper)`` the metric cannot leave (``None`` for an open side), or
            ``None``: intervals are clipped to them (accuracy: ``(0, 1)``; MSE: ``(0, None)``).

    Raises:
        ValueError: a bad name, direction or bounds, or ``fn`` not callable.
    """

    name: str
    direction: str
    fn: Callable[[object, object], torch.Tensor]
    bounds: tuple[float | None, float | None] | None = None

    def __post_init__(self) -> None:
        problem = metric_problem(self)
        if problem:
            raise ValueError(problem)


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
    if not callable(getattr(metric, "fn", None)):
        return f"metric {name!r}: fn must be callable as fn(outputs, targets) -> [n]"
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


def token_cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy per sample of a sequence model: the mean over the sample's tokens.

    ``outputs`` ``[n, tokens, classes]``, ``targets`` ``[n, tokens]``; tokens whose target is
    ``ignore_index`` (padding) are left out of their sample's mean.
    """
    targets = targets.long()
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
    if outputs.dim() > 2:
        return token_cross_entropy(outputs, targets)
    return F.cross_entropy(outputs, targets.long(), reduction="none")


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: 1.0 where the largest score is the target, else 0.0 (over a sequence: the
    fraction of its tokens right, padding with :data:`IGNORE_INDEX` left out)."""
    right = outputs.argmax(dim=-1) == targets
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
    return token_cross_entropy(outputs.float(), targets) / math.log(2)


#: Fraction right (the default metric), maximised.
ACCURACY = Metric("accuracy", "maximize", accuracy, bounds=(0.0, 1.0))
#: Mean squared error, minimised.
MSE = Metric("mse", "minimize", mse, bounds=(0.0, None))
#: Validation bits per character of a character-level language model, minimised.
BITS_PER_CHAR = Metric("bits_per_char", "minimize", bits_per_char, bounds=(0.0, None))
