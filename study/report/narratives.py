"""What the report sets beside the measured cells: the rule of thumb and the noise scale.

:class:`Folklore` is the batch-size range practitioners quote for the training set's size
(:func:`rule_of_thumb`) beside the measured optimum, with a verdict only where the runs and
intervals support one; :class:`NoiseScale` is the gradient noise scale B_simple the trials
or ``scripts/noise_scale.py`` measured. Each says itself in a sentence.

Example:
    >>> rule_of_thumb(1_078)
    (32, 256)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from study.record import MetricInfo, TrialRecord, int_or_none, number_or_none
from study.report.cellrows import MIN_RUNS, CellRow
from study.report.words import MetricText, estimate_words, round_samples
from study.stats import median

#: Practitioners' starting ranges by training-set size: (fewer than N samples, low, high).
RULES_OF_THUMB = ((1_000, 16, 32), (100_001, 32, 256), (math.inf, 256, 2048))


@dataclass(frozen=True)
class NoiseScale:
    """The gradient noise scale B_simple (McCandlish et al. 2018), as the study recorded it.

    Args:
        value: The batch size the figures mark (samples): the median of the trials' B_simple
            when trials measured it, else the recommended batch of ``scripts/noise_scale.py``.
        source: ``trials`` or ``study`` (the study attribute ``noise_scale``).
        trials: ``(trial number, b_simple, b_simple_se)`` of every trial that measured it.
        study: The study attribute ``noise_scale`` (``scripts/noise_scale.py --json``), if any.
    """

    value: float
    source: str
    trials: tuple[tuple[int, float, float | None], ...] = ()
    study: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """``B_simple (gradient noise scale) ≈ 412``: what the figures write on the mark."""
        return f"B_simple (gradient noise scale) \u2248 {round_samples(self.value)}"

    @property
    def recommended_range(self) -> tuple[int, int] | None:
        """The batch range ``scripts/noise_scale.py`` recommended, when the study records it."""
        pair = (self.study or {}).get("recommended_range")
        if isinstance(pair, list | tuple) and len(pair) == 2:
            low, high = number_or_none(pair[0]), number_or_none(pair[1])
            if low and high and 0 < low <= high:
                return int(low), int(high)
        return None

    def trials_sentence(self) -> str | None:
        """The trials' measurements in one line (median, range, typical standard error)."""
        if not self.trials:
            return None
        values = [b for _, b, _ in self.trials]
        ses = median(se for _, _, se in self.trials)
        text = f"median {round_samples(median(values) or 0.0)} samples over {len(values)} trial(s)"
        if len(values) > 1:
            text += f" (range {round_samples(min(values))}-{round_samples(max(values))}"
            text += f"; typical s.e. \u00b1{round_samples(ses)})" if ses is not None else ")"
        elif ses is not None:
            text += f" (s.e. \u00b1{round_samples(ses)})"
        return text

    def study_sentence(self) -> str | None:
        """What ``scripts/noise_scale.py`` recorded: estimates over training, recommendation."""
        ns = self.study
        if not ns:
            return None
        parts = []
        epochs = [e for e in ns.get("per_epoch") or [] if isinstance(e, dict)]
        first = epochs[0] if epochs else ns
        last = epochs[-1] if len(epochs) > 1 else None
        if number_or_none(first.get("b_simple")) is not None:
            parts.append(f"{estimate_words(first)} at initialisation")
        if last is not None and number_or_none(last.get("b_simple")) is not None:
            parts.append(f"{estimate_words(last)} after epoch {last.get('epoch')}")
        recommended = int_or_none(ns.get("recommended_batch_size"))
        if recommended:
            text = f"recommended batch {recommended}"
            if self.recommended_range:
                text += " (range {}-{})".format(*self.recommended_range)
            parts.append(text)
        return "B_simple " + ", ".join(parts) if parts else None

    @property
    def basis(self) -> str:
        """Where :attr:`value` came from, in words."""
        if self.source == "trials":
            return "the median over the trials' final models"
        if number_or_none((self.study or {}).get("recommended_batch_size")) == self.value:
            return "the batch scripts/noise_scale.py recommended"
        return "the latest estimate of scripts/noise_scale.py"

    def sentence(self, optimum: int | None = None) -> str:
        """One paragraph: the noise scale, where it came from, and the optimum beside it."""
        text = f"{self.label} ({self.basis})."
        if optimum is not None:
            ratio = optimum / self.value
            side = "near" if 0.5 <= ratio <= 2 else ("below" if ratio < 1 else "above")
            text += f" The measured optimum, batch {optimum}, is {side} it."
        return text + (
            " Below B_simple, doubling the batch nearly halves the optimizer steps a result "
            "needs; far above it, larger batches mostly spend more compute per step for little "
            "gain (McCandlish et al. 2018)."
        )


@dataclass(frozen=True)
class Folklore:
    """The rule of thumb for this training-set size beside the measured optimum.

    The optimum is the best cell by mean among the cells with :data:`MIN_RUNS` complete runs
    (the recommendation's most accurate cell when the study has one). A verdict is given only
    when that cell has enough runs and no cell on the other side of the range is within its
    95% interval.

    Args:
        train_size: Training samples.
        low: The range's smallest batch.
        high: Its largest batch.
        optimum: The best cell's batch size (``None``: no complete trial).
        optimum_rule: Its scaling rule.
        optimum_mean_val: Its mean validation metric.
        optimum_runs: Its complete runs.
        optimum_ci95: Its 95% interval.
        tied: Batch sizes of other confirmed cells whose interval overlaps the optimum's.
        metric: How to write the metric.
    """

    train_size: int
    low: int
    high: int
    optimum: int | None
    optimum_rule: str | None
    optimum_mean_val: float | None
    optimum_runs: int = 0
    optimum_ci95: tuple[float, float] | None = None
    tied: tuple[int, ...] = ()
    metric: MetricText = field(default_factory=lambda: MetricText(MetricInfo()))

    def _side(self, batch: int) -> str:
        return "below" if batch < self.low else ("above" if batch > self.high else "inside")

    @property
    def verdict(self) -> str:
        """``inside``, ``below``, ``above``; ``unknown`` (no complete trial yet),
        ``unconfirmed`` (the best cell has fewer than :data:`MIN_RUNS` runs) or
        ``inconclusive`` (cells on both sides of the range are within its interval)."""
        if self.optimum is None:
            return "unknown"
        if self.optimum_runs < MIN_RUNS or self.optimum_ci95 is None:
            return "unconfirmed"
        if {self._side(b) for b in (self.optimum, *self.tied)} != {self._side(self.optimum)}:
            return "inconclusive"
        return self._side(self.optimum)

    @property
    def conclusive(self) -> bool:
        """The measurement supports a verdict (held or missed)."""
        return self.verdict in ("inside", "below", "above")

    def sentence(self) -> str:
        """One line a person reads: the range, the optimum, and whether the folklore held
        (only when the runs and intervals support it)."""
        start = (
            f"Rule of thumb for {self.train_size:,} training samples: batch {self.low}-{self.high}."
        )
        verdict = self.verdict
        if verdict == "unknown":
            return start + " No complete trial yet, so no measured optimum to compare."
        m = self.metric
        runs = f"{self.optimum_runs} run{'s' if self.optimum_runs != 1 else ''}"
        measured = (
            f" Best cell: batch {self.optimum} (rule {self.optimum_rule}, mean {m.val} "
            f"{m.value(self.optimum_mean_val, 'n/a')}"
        )
        if verdict == "unconfirmed":
            return (
                start + measured + f", {runs}): fewer than {MIN_RUNS} complete runs, so no "
                "verdict on the rule of thumb."
            )
        measured += f", 95% interval {m.interval(self.optimum_ci95)}, {runs})"
        if verdict == "inconclusive":
            others = sorted(set(self.tied))
            names = ", ".join(str(b) for b in others[:-1]) + " and " if len(others) > 1 else ""
            verb = "are" if len(others) > 1 else "is"
            return (
                start + measured + f", but batch {names}{others[-1]} {verb} within its interval "
                "(some on the other side of the range): the difference is inside the noise, so "
                "no verdict."
            )
        if verdict == "inside":
            return start + measured + ", inside the range: the folklore held."
        return start + measured + f", {verdict} the range: the folklore missed here."


def rule_of_thumb(train_size: int) -> tuple[int, int]:
    """The batch-size range practitioners quote for ``train_size`` training samples.

    Fewer than 1k samples: 16-32; 1k to 100k: 32-256; more than 100k: 256-2048.

    Example:
        >>> rule_of_thumb(500), rule_of_thumb(50_000), rule_of_thumb(1_000_000)
        ((16, 32), (32, 256), (256, 2048))
    """
    if train_size < 0:
        raise ValueError(f"train_size {train_size} is negative: give the number of samples")
    for below, low, high in RULES_OF_THUMB:
        if train_size < below:
            return low, high
    raise AssertionError("unreachable")  # pragma: no cover


def folklore(
    task_info: dict[str, Any],
    cells: Sequence[CellRow],
    metric: MetricText,
    recommendation: dict[str, Any] | None = None,
) -> Folklore | None:
    train_size = int_or_none(task_info.get("train_size"))
    if train_size is None or train_size < 0:
        return None
    low, high = rule_of_thumb(train_size)
    scored = [c for c in cells if c.mean_val is not None]
    confirmed = [c for c in scored if c.confirmed]
    pool = confirmed or scored
    best = max(pool, key=lambda c: (metric.key(c.mean_val), c.runs), default=None)
    chosen = (recommendation or {}).get("most_accurate")
    if isinstance(chosen, dict):
        best = next(
            (
                c
                for c in confirmed
                if c.batch_size == chosen.get("batch_size")
                and c.scaling_rule == chosen.get("scaling_rule")
            ),
            best,
        )
    tied: tuple[int, ...] = ()
    if best is not None and best.ci95 is not None:
        lo, hi = best.ci95
        tied = tuple(  # any cell with an interval: a verdict must not rest on the noise
            c.batch_size
            for c in scored
            if c is not best and c.ci95 is not None and c.ci95[0] <= hi and lo <= c.ci95[1]
        )
    return Folklore(
        train_size=train_size,
        low=low,
        high=high,
        optimum=best.batch_size if best else None,
        optimum_rule=best.scaling_rule if best else None,
        optimum_mean_val=best.mean_val if best else None,
        optimum_runs=best.runs if best else 0,
        optimum_ci95=best.ci95 if best else None,
        tied=tied,
        metric=metric,
    )


def noise_scale_of(attrs: dict[str, Any], trials: Sequence[TrialRecord]) -> NoiseScale | None:
    study_ns = attrs.get("noise_scale") if isinstance(attrs.get("noise_scale"), dict) else None
    measured = tuple(
        (t.number, t.b_simple, t.b_simple_se)
        for t in trials
        if t.state in ("COMPLETE", "PRUNED") and t.b_simple is not None and t.b_simple > 0
    )
    if measured:
        value = median(b for _, b, _ in measured)
        return NoiseScale(value or 0.0, "trials", measured, study_ns)
    if study_ns is None:
        return None
    epochs = [e for e in study_ns.get("per_epoch") or [] if isinstance(e, dict)]
    candidates = (
        study_ns.get("recommended_batch_size"),
        epochs[-1].get("b_simple") if epochs else None,
        study_ns.get("b_simple"),
    )
    value = next((v for v in map(number_or_none, candidates) if v is not None and v > 0), None)
    return NoiseScale(value, "study", (), study_ns) if value is not None else None
