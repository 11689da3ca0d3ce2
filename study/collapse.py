"""Collapse: a trial that has stopped learning is divergence too, not only a NaN loss.

Adam with linear scaling at batch 1024 can fall to chance accuracy (0.10 on digits) with a
finite loss and run its whole budget there. :func:`collapse_reason`
looks at a trial's curves after each evaluation period and, once at least a quarter of the
budget is done, returns why the trial has collapsed (the objective then stops it as
``diverged`` and stores the reason as ``stop_reason``), else ``None``:

- **at chance**: the validation metric is no better than the chance level (``chance``, within
  ``band``) at the last two evaluations, after at least :data:`MIN_UPDATES` optimizer
  updates, while the training loss shows no learning: it has not fallen below half its loss
  at initialisation (where that is known) and the last period's mean is not
  :data:`STILL_FALLING` of its value half the periods so far ago (a model whose loss falls is
  learning something, however badly it generalises). A batch of 1024 on a small
  training set makes one update per epoch: after a quarter of 4 epochs it has made one
  update and is still at chance, so it is not judged;
- **loss above its start**: after at least :data:`MIN_UPDATES` updates, the training loss of
  the last period is more than :data:`ABOVE_START` times the loss at the start (at
  initialisation, or of the first period).

A large batch that learns slowly is not collapsed: its training loss falls and its metric
moves off chance. Nothing here imports torch.

Example:
    >>> collapse_reason([0.35, 0.11, 0.10], [2.1, 2.3, 2.3], first_loss=2.3, chance=0.1,
    ...                 done=3, total=12)
    'validation accuracy 0.10 at chance (0.10) after 3 of 12 epochs'
    >>> collapse_reason([0.2, 0.4, 0.6], [2.2, 1.9, 1.5], first_loss=2.3, chance=0.1,
    ...                 done=3, total=12) is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence

from study.record import number_or_none

#: A training loss at most this fraction of its value half the periods ago is still falling.
STILL_FALLING = 0.98
#: Updates a trial makes before "at chance" can be told from "not started yet".
MIN_UPDATES = 30
#: A last period's training loss above this multiple of the start is "above its start" (a
#: period's mean over random batches differs from the loss at initialisation by noise).
ABOVE_START = 1.1


def collapse_reason(
    val_curve: Sequence[float],
    train_losses: Sequence[float],
    first_loss: float | None,
    chance: float | None,
    done: int,
    total: int,
    direction: str = "maximize",
    *,
    metric: str = "accuracy",
    unit: str = "epoch",
    band: float | None = None,
    updates: int | None = None,
) -> str | None:
    """Why the trial has collapsed, or ``None`` (also before a quarter of the budget).

    Args:
        val_curve: The validation metric after each period so far, first first.
        train_losses: The mean training loss of each period so far, first first.
        first_loss: The training loss at initialisation (before any update); ``None``: the
            first period's loss stands in.
        chance: The metric of a model that learned nothing (``1 / classes`` or the majority
            class's share for accuracy, the targets' variance for MSE); ``None``: unknown,
            only the loss is checked.
        done: Evaluation periods done (epochs, or shares of a step budget).
        total: Evaluation periods planned.
        direction: ``maximize`` or ``minimize`` (the metric's).
        metric: The metric's name, for the message.
        unit: What a period is called in the message (``epoch``, ``evaluation``).
        band: How close to ``chance`` counts as at chance (default: for a maximised metric
            ``max(0.02, 0.1 * chance)``, for a minimised one ``0.02 * |chance|``).
        updates: Optimizer updates made so far (``None``: unknown, taken as enough); the
            rules wait for :data:`MIN_UPDATES`, or for the last period.

    Raises:
        ValueError: an unknown direction or ``total`` below 1.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction {direction!r}: use maximize or minimize")
    if total < 1:
        raise ValueError(f"total {total}: a trial plans at least one period")
    if done < 1 or 4 * done < total:
        return None
    after = f"after {done} of {total} {unit}{'s' if total != 1 else ''}"
    losses = [x for x in (number_or_none(v) for v in train_losses) if x is not None]
    start = (
        number_or_none(first_loss) if first_loss is not None else (losses[0] if losses else None)
    )
    values = [x for x in (number_or_none(v) for v in val_curve) if x is not None]
    chance_value = number_or_none(chance) if chance is not None else None
    # A batch too large to make MIN_UPDATES updates in its budget is judged at its end: the
    # rule is the same at every batch size, never waived.
    enough = updates is None or updates >= MIN_UPDATES or done >= total
    if chance_value is not None and enough and len(values) >= 2 and len(losses) >= 2:
        recent = values[-2:]
        init = number_or_none(first_loss) if first_loss is not None else None  # not a period's mean
        fitting = init is not None and init > 0 and losses[-1] < 0.5 * init
        earlier = losses[(len(losses) - 1) // 2]  # half the periods so far ago
        learning = fitting or losses[-1] <= STILL_FALLING * earlier
        if not learning and all(_at_chance(v, chance_value, direction, band) for v in recent):
            return (
                f"validation {metric} {_fmt(values[-1])} at chance ({_fmt(chance_value)}) {after}"
            )
    if enough and start is not None and losses and losses[-1] > ABOVE_START * start:
        return f"training loss {_fmt(losses[-1])} above its start {_fmt(start)} {after}"
    return None


def chance_accuracy(labels: Sequence[int], num_classes: int | None = None) -> float:
    """The accuracy of always answering the most frequent label (``1 / num_classes`` if there
    are no labels).

    Example:
        >>> chance_accuracy([0, 1, 1, 2]), chance_accuracy([], num_classes=10)
        (0.5, 0.1)
    """
    if not labels:
        if not num_classes:
            raise ValueError("no labels and no number of classes: the chance level is unknown")
        return 1.0 / num_classes
    counts: dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    return max(counts.values()) / len(labels)


def _at_chance(value: float, chance: float, direction: str, band: float | None) -> bool:
    if direction == "maximize":
        width = band if band is not None else max(0.02, 0.1 * abs(chance))
        return value <= chance + width
    width = band if band is not None else 0.02 * abs(chance)
    return value >= chance - width


def _fmt(value: float) -> str:
    """Two decimals, or three significant digits where two decimals would say nothing."""
    if value != 0 and abs(value) < 0.1:
        return f"{value:.3g}"
    return f"{value:.2f}"
