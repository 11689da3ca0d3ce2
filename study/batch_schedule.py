"""Batch-size schedules: which batch a run trains with over its budget, parsed and checked.

A schedule is a list of phases, each a batch size and the fraction of the budget where it
starts: ``32@0,128@0.2,512@0.5`` trains at 32 for the first fifth of the budget, at 128 up to
half of it and at 512 after that (a batch-size warm-up, Merrill et al. 2025). The learning
rate of each phase is the scaling rule's at that phase's batch. With an epoch budget a phase
starts at the first epoch that starts at or after its fraction (``ceil(fraction * epochs)``),
so every update of an epoch has the same, exact batch size.

In a study a schedule is one more cell beside the constant batch sizes: its label (the text
above, :attr:`BatchSchedule.label`) is a choice of the ``batch_size`` parameter of a study
created with ``--batch-schedule``, and the trial record keeps it in ``batch_schedule``.
Studies created without one sample integers only, as before, so they resume unchanged.

Torch-free.

Example:
    >>> schedule = parse_schedule("32@0,128@0.2,512@0.5")
    >>> schedule.label
    '32@0,128@0.2,512@0.5'
    >>> schedule.epoch_batches(10)
    (32, 32, 128, 128, 128, 512, 512, 512, 512, 512)
    >>> schedule.to_list()[1]
    {'batch_size': 128, 'start_fraction': 0.2}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from study.space import BatchSpace, SpaceError, is_power_of_two


class ScheduleError(ValueError):
    """A batch-size schedule that cannot be trained; the message names the fix."""


#: How a schedule is written, for error messages.
SCHEDULE_EXAMPLE = "32@0,128@0.2,512@0.5"


@dataclass(frozen=True)
class Phase:
    """One phase of a schedule: its batch size and where it starts (a fraction of the
    budget, 0 for the first phase)."""

    batch_size: int
    start_fraction: float


@dataclass(frozen=True)
class BatchSchedule:
    """Phases in the order they start; the first starts at 0.

    Raises:
        ScheduleError: no phases, a batch that is not a power of two, a first phase that
            does not start at 0, fractions outside [0, 1) or not increasing.
    """

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ScheduleError(f"a batch-size schedule needs phases, e.g. {SCHEDULE_EXAMPLE}")
        for phase in self.phases:
            size, start = phase.batch_size, phase.start_fraction
            if isinstance(size, bool) or not isinstance(size, int) or not is_power_of_two(size):
                raise ScheduleError(
                    f"batch size {size!r} of the schedule is not a power of two: use 8, 16, "
                    f"32, ... as in {SCHEDULE_EXAMPLE}"
                )
            if not (isinstance(start, int | float) and 0 <= start < 1):
                raise ScheduleError(
                    f"start fraction {start!r} of batch {size} is not in [0, 1): a phase "
                    f"starts at a fraction of the budget, as in {SCHEDULE_EXAMPLE}"
                )
        if self.phases[0].start_fraction != 0:
            raise ScheduleError(
                f"the schedule's first phase starts at {self.phases[0].start_fraction:g}: "
                f"the first must start at 0, as in {SCHEDULE_EXAMPLE}"
            )
        starts = [p.start_fraction for p in self.phases]
        if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            raise ScheduleError(
                f"the schedule's start fractions {','.join(f'{s:g}' for s in starts)} do not "
                f"increase: list the phases in the order they start, as in {SCHEDULE_EXAMPLE}"
            )

    @property
    def label(self) -> str:
        """The schedule as written: ``32@0,128@0.2,512@0.5`` (the study's cell label)."""
        return ",".join(f"{p.batch_size}@{p.start_fraction:g}" for p in self.phases)

    @property
    def batch_sizes(self) -> list[int]:
        """The phases' batch sizes, in order."""
        return [p.batch_size for p in self.phases]

    @property
    def largest(self) -> int:
        return max(self.batch_sizes)

    @property
    def smallest(self) -> int:
        return min(self.batch_sizes)

    def batch_at(self, fraction: float) -> int:
        """The batch size at ``fraction`` of the budget (the last phase started by then)."""
        size = self.phases[0].batch_size
        for phase in self.phases:
            if phase.start_fraction <= fraction:
                size = phase.batch_size
        return size

    def epoch_batches(self, epochs: int) -> tuple[int, ...]:
        """The batch size of each of ``epochs`` epochs: a phase starts at epoch
        ``ceil(start_fraction * epochs)`` (counted from 0); a later phase rounded onto the
        same epoch replaces an earlier one."""
        sizes = [self.phases[0].batch_size] * epochs
        for phase in self.phases:
            first = min(epochs, math.ceil(phase.start_fraction * epochs - 1e-9))
            for epoch in range(first, epochs):
                sizes[epoch] = phase.batch_size
        return tuple(sizes)

    def shares(self, epochs: int) -> dict[int, float]:
        """The share of the budget's samples each batch size trains (epoch budget)."""
        sizes = self.epoch_batches(epochs)
        return {b: sizes.count(b) / len(sizes) for b in dict.fromkeys(sizes)}

    def rate(self, epochs: int, rates: dict[int, float | None]) -> float | None:
        """The schedule's throughput from each batch's (``None`` when one is missing): its
        time per sample is the shares' weighted sum of the phases' times per sample.

        Example:
            >>> parse_schedule("8@0,64@0.5").rate(10, {8: 100.0, 64: 300.0})
            150.0
        """
        seconds = 0.0
        for size, share in self.shares(epochs).items():
            rate = rates.get(size)
            if not rate:
                return None
            seconds += share / rate
        return 1.0 / seconds if seconds else None

    def to_list(self) -> list[dict]:
        """JSON-ready: ``[{"batch_size": 32, "start_fraction": 0.0}, ...]``."""
        return [
            {"batch_size": p.batch_size, "start_fraction": p.start_fraction} for p in self.phases
        ]

    @classmethod
    def from_list(cls, items: list[dict]) -> BatchSchedule:
        """The schedule of :meth:`to_list`'s JSON."""
        return cls(tuple(Phase(int(i["batch_size"]), float(i["start_fraction"])) for i in items))


def parse_schedule(text: str) -> BatchSchedule:
    """``"32@0,128@0.2,512@0.5"`` -> :class:`BatchSchedule`.

    Raises:
        ScheduleError: one line naming the part that is wrong and how it is written.
    """
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"--batch-schedule is empty: write it as {SCHEDULE_EXAMPLE}")
    phases = []
    for part in text.split(","):
        size_text, at, start_text = part.strip().partition("@")
        if not at:
            raise ScheduleError(
                f"--batch-schedule part {part.strip()!r} has no '@': write each phase as "
                f"BATCH@START_FRACTION, e.g. {SCHEDULE_EXAMPLE}"
            )
        try:
            size = int(size_text)
            start = float(start_text)
        except ValueError:
            raise ScheduleError(
                f"--batch-schedule part {part.strip()!r} is not BATCH@START_FRACTION (a whole "
                f"number and a fraction), e.g. {SCHEDULE_EXAMPLE}"
            ) from None
        if not math.isfinite(start):
            raise ScheduleError(
                f"--batch-schedule part {part.strip()!r}: the start fraction must be a number "
                "in [0, 1)"
            )
        phases.append(Phase(size, start))
    try:
        return BatchSchedule(tuple(phases))
    except ScheduleError as exc:
        raise ScheduleError(f"--batch-schedule {text.strip()}: {exc}") from None


def schedule_speeds(
    speeds: dict[int, dict], labels: list[str], epochs: int
) -> dict[str | int, dict]:
    """``speeds`` (the answer's timing by batch size: ``samples_per_s``, ``rates`` per round)
    with an entry for each schedule of ``labels`` whose phases were all timed: its rate in
    each round from its phases' rates of that round (:meth:`BatchSchedule.rate`)."""
    out: dict[str | int, dict] = dict(speeds)
    for label in labels:
        schedule = parse_schedule(label)
        if any(b not in speeds for b in schedule.batch_sizes):
            continue
        rounds = max(len(speeds[b].get("rates") or []) for b in schedule.batch_sizes)
        per_round = []
        for i in range(rounds):
            at = {b: _at(speeds[b].get("rates") or [], i) for b in schedule.batch_sizes}
            per_round.append(schedule.rate(epochs, at))
        middle = schedule.rate(epochs, {b: speeds[b].get("samples_per_s") for b in speeds})
        out[label] = {"samples_per_s": middle, "rates": per_round}
    return out


def _at(values: list, i: int) -> float | None:
    return values[i] if i < len(values) else None


def is_schedule_label(value: object) -> bool:
    """Whether a sampled ``batch_size`` is a schedule's label rather than a batch size."""
    return isinstance(value, str) and "@" in value


def with_schedule(space: BatchSpace, schedule: str) -> BatchSpace:
    """``space`` with the batch-size schedule ``schedule`` as one more cell.

    Raises:
        SpaceError: a phase's batch above the space's largest batch (the cap times the
            accumulation, within the training set).
    """
    parsed = parse_schedule(schedule)
    top = max(space.batch_sizes)
    if parsed.largest > top:
        raise SpaceError(
            f"--batch-schedule {parsed.label}: batch {parsed.largest} is above the space's "
            f"largest batch {top} (memory cap {space.memory_cap} from {space.cap_source} x "
            f"--max-accumulation {space.max_accumulation}): lower it or raise "
            "--max-accumulation"
        )
    return replace(space, schedules=[*space.schedules, parsed.label])
