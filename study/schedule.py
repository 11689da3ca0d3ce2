"""The learning rate of every update: warm-up, then constant, cosine or linear decay.

The scaling rule gives a trial its peak learning rate; the schedule shapes it over the trial's
own number of updates, so every batch size gets the same shape of schedule over its budget
(a batch of 8 decays over eight times as many updates as a batch of 64, both from their own
peak to ``final_fraction`` of it). Torch-free: the trainer asks it for a float per update.

* **Warm-up** (``warmup_steps`` updates): the rate ramps linearly from ``start_lr`` to the
  peak, reaching the peak at update ``warmup_steps - 1`` (Goyal et al. 2017).
* **Decay** over the updates after the warm-up: ``constant`` keeps the peak; ``cosine`` follows
  half a cosine from the peak towards ``final_fraction`` x peak; ``linear`` falls in a
  straight line to it. The last update's rate is one step short of the final value: the
  schedule reaches ``final_fraction`` x peak where the budget ends.

Example:
    >>> schedule = LRSchedule("cosine", final_fraction=0.1)
    >>> [round(schedule.lr(i, 4, 1.0), 3) for i in range(4)]
    [1.0, 0.868, 0.55, 0.232]
    >>> LRSchedule("linear", warmup_steps=2).lr(0, 10, 1.0, start_lr=0.5)
    0.75
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The ``--lr-schedule`` choices.
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """How the learning rate moves over one trial's updates.

    Args:
        kind: ``constant``, ``cosine`` or ``linear`` (:data:`SCHEDULES`).
        final_fraction: Where ``cosine`` and ``linear`` end, as a fraction of the peak (0 to
            1); ``constant`` ignores it.
        warmup_steps: Updates of linear warm-up before the decay starts (0: none).

    Raises:
        ValueError: an unknown kind, a fraction outside [0, 1] or a negative warm-up.
    """

    kind: str = "constant"
    final_fraction: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule {self.kind!r} is not one of: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.final_fraction <= 1.0:
            raise ValueError(f"final fraction {self.final_fraction} is not in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError(f"warm-up of {self.warmup_steps} updates: use 0 or more")

    @property
    def varies(self) -> bool:
        """Whether the rate ever differs from the peak (warm-up or a decay)."""
        return self.warmup_steps > 0 or self.kind != "constant"

    def factor(self, step: int, total: int) -> float:
        """The decay's share of the peak at update ``step`` (0-based) of ``total``; 1 during
        the warm-up (which :meth:`lr` ramps on its own)."""
        if self.kind == "constant" or step < self.warmup_steps:
            return 1.0
        span = max(1, total - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.final_fraction + (1.0 - self.final_fraction) * shape

    def lr(self, step: int, total: int, peak: float, start_lr: float | None = None) -> float:
        """The learning rate of update ``step`` (0-based) of a trial of ``total`` updates.

        Args:
            step: The update's index over the whole trial (a resumed trial counts on).
            total: The trial's updates (its epochs' updates, or its step budget).
            peak: The rule's learning rate (times the trial's multiplier).
            start_lr: Where the warm-up starts (``None``: at the peak, no ramp).
        """
        if step < self.warmup_steps and start_lr is not None:
            return start_lr + (peak - start_lr) * (step + 1) / self.warmup_steps
        return peak * self.factor(step, total)

    def describe(self) -> str:
        """In words, for the report: ``cosine to 0.1 of the peak, 100 warm-up updates``."""
        text = "constant" if self.kind == "constant" else f"{self.kind} to {self.final_fraction:g}"
        if self.kind != "constant":
            text += " of the peak over each trial's updates"
        if self.warmup_steps:
            text += f", {self.warmup_steps} warm-up updates"
        return text
