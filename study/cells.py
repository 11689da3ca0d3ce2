"""Cells: what one configuration of the space means to a user, and its statistics.

A **cell** is ``(batch_size, scaling_rule)`` and, where the study searches the learning rate
(``--lr-search-width`` above 1), the bucket of the learning-rate multiplier. Buckets are
half-octaves: the multiplier's log2 rounded to the nearest 0.5 (``round(2 * log2(m)) / 2``),
so a bucket spans a factor of about 1.41 and is labelled by its centre ``2 ** bucket`` (x0.71,
x1, x1.41, ...). Trials of different rules are never pooled.

Per cell (:func:`cell_stats`): complete runs, the validation metric's mean, SD and 95%
interval (Student's t, clipped to the metric's bounds; none under 2 runs), the test mean, the
medians of training time and throughput, the peak memory, the micro-batch/accumulation split,
the learning rate, the pruned and diverged counts, and how many complete runs came from the
confirmation phase. A cell is **confirmed** (:func:`is_confirmed`) when it has at least the
study's ``--confirm-runs`` complete confirmation runs: the one meaning of the word that the
answer, the summary and the report all use. Runs of a cell are assumed independent (each
trial has its own seed). Nothing here imports torch.

Example:
    >>> from study.record import TrialRecord
    >>> records = [
    ...     TrialRecord(batch_size=16, scaling_rule="linear", val_metric=v, train_time_s=10.0,
    ...                 state="COMPLETE")
    ...     for v in (0.95, 0.96, 0.97)
    ... ]
    >>> [c.label for c in cell_stats(records)]
    ['batch 16 linear']
    >>> round(cell_stats(records)[0].val_mean, 3)
    0.96
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna

from study.record import (
    ACCURACY,
    CONFIRM,
    MetricInfo,
    TrialRecord,
    read_record,
    study_metric,
)
from study.stats import mean_interval, median

#: Buckets of the learning-rate multiplier per octave (2: half-octave buckets).
LR_BUCKETS_PER_OCTAVE = 2


def lr_bucket(multiplier: float | None) -> float | None:
    """The half-octave bucket of a learning-rate multiplier: ``round(2 * log2(m)) / 2``.

    Example:
        >>> lr_bucket(1.0), lr_bucket(1.3), lr_bucket(0.3), lr_bucket(None)
        (0.0, 0.5, -1.5, None)
    """
    if multiplier is None or not multiplier > 0:
        return None
    return round(LR_BUCKETS_PER_OCTAVE * math.log2(multiplier)) / LR_BUCKETS_PER_OCTAVE


@dataclass(frozen=True)
class CellKey:
    """Which cell a trial belongs to (``lr_bucket`` is ``None`` unless the LR is searched)."""

    batch_size: int
    scaling_rule: str
    lr_bucket: float | None = None
    schedule: str | None = None  # a batch-size schedule's label; batch_size is its largest

    @property
    def label(self) -> str:
        """``batch 64 linear`` (with ``lr x1.41`` for a bucket), or ``schedule 32@0,128@0.5
        linear`` for a batch-size schedule."""
        text = f"batch {self.batch_size} {self.scaling_rule}"
        if self.schedule is not None:
            text = f"schedule {self.schedule} {self.scaling_rule}"
        if self.lr_bucket is not None:
            text += f" lr x{2**self.lr_bucket:.3g}"
        return text


def cell_key(record: TrialRecord, lr_search_width: float = 1.0) -> CellKey | None:
    """The cell of a record, or ``None`` when it has no batch size yet (a fresh trial)."""
    if record.batch_size is None:
        return None
    bucket = None
    if lr_search_width > 1:
        bucket = lr_bucket(record.lr_multiplier)
        if bucket is None:
            bucket = 0.0
    return CellKey(record.batch_size, record.scaling_rule or "none", bucket, record.batch_schedule)


@dataclass(frozen=True)
class CellStats:
    """One cell's statistics over its trials (see the module docstring).

    Args:
        batch_size: Effective batch size (samples per update).
        scaling_rule: The learning-rate scaling rule.
        lr_bucket: Half-octave bucket of the LR multiplier (``None`` unless searched).
        lr_multiplier: The bucket's centre, ``2 ** lr_bucket`` (``None`` unless searched).
        runs: Complete trials.
        values: Their validation metric values (trial order).
        val_mean: Mean of ``values`` (``None`` without a complete run).
        val_sd: Sample SD (0 for one run).
        val_ci95: 95% t-interval ``(lo, hi)``; ``None`` under 2 runs.
        test_mean: Mean test metric of the complete runs (shown, never used to choose).
        train_time_s_median: Median training time of the complete runs.
        samples_per_s_median: Median training throughput of the complete runs.
        samples_median: Median units trained per complete run (time x throughput).
        peak_memory_bytes: Largest peak memory over the cell's trials.
        micro_batch_size: Micro-batch (per device) most complete runs trained with.
        accumulation_steps: Its accumulation steps.
        devices: Devices per trial (``batch_size = micro x devices x accumulation``).
        lr: Median learning rate of the complete runs (of all trials if none completed).
        pruned: Pruned trials (diverged ones included).
        diverged: Trials stopped as diverged (NaN/inf or collapse).
        confirm_runs: Complete runs of the confirmation phase.
        trials: Numbers of the cell's complete and pruned trials.
        batch_schedule: The cell's batch-size schedule (``None``: a constant batch).
    """

    batch_size: int
    scaling_rule: str
    lr_bucket: float | None
    lr_multiplier: float | None
    runs: int
    values: tuple[float, ...]
    val_mean: float | None
    val_sd: float | None
    val_ci95: tuple[float, float] | None
    test_mean: float | None
    train_time_s_median: float | None
    samples_per_s_median: float | None
    samples_median: float | None
    peak_memory_bytes: int | None
    micro_batch_size: int | None
    accumulation_steps: int | None
    lr: float | None
    pruned: int
    diverged: int
    confirm_runs: int = 0
    trials: tuple[int, ...] = field(default=())
    devices: int = 1
    batch_schedule: str | None = None

    @property
    def key(self) -> CellKey:
        return CellKey(self.batch_size, self.scaling_rule, self.lr_bucket, self.batch_schedule)

    @property
    def label(self) -> str:
        return self.key.label


def _mode(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def _stats(key: CellKey, records: Sequence[TrialRecord], metric: MetricInfo) -> CellStats:
    complete = [r for r in records if r.state == "COMPLETE" and r.val_metric is not None]
    values = tuple(float(r.val_metric) for r in complete)  # type: ignore[arg-type]
    mean = sd = ci = None
    if values:
        mean, sd, ci = mean_interval(values, 0.95)
        if ci is not None:
            ci = metric.clip(*ci)
    tests = [r.test_metric for r in complete if r.test_metric is not None]
    samples = [
        r.train_time_s * r.samples_per_s
        for r in complete
        if r.train_time_s is not None and r.samples_per_s is not None
    ]
    memory = [r.peak_memory_bytes for r in records if r.peak_memory_bytes is not None]
    chosen = complete or list(records)
    return CellStats(
        batch_size=key.batch_size,
        scaling_rule=key.scaling_rule,
        lr_bucket=key.lr_bucket,
        lr_multiplier=2**key.lr_bucket if key.lr_bucket is not None else None,
        runs=len(values),
        values=values,
        val_mean=mean,
        val_sd=sd,
        val_ci95=ci,
        test_mean=statistics.fmean(tests) if tests else None,
        train_time_s_median=median([r.train_time_s for r in complete]),
        samples_per_s_median=median([r.samples_per_s for r in complete]),
        samples_median=statistics.median(samples) if samples else None,
        peak_memory_bytes=max(memory) if memory else None,
        micro_batch_size=_mode([r.micro_batch_size for r in chosen]),
        accumulation_steps=_mode([r.accumulation_steps for r in chosen]),
        lr=median([r.lr for r in chosen]),
        pruned=sum(r.state == "PRUNED" for r in records),
        diverged=sum(bool(r.diverged) for r in records),
        confirm_runs=sum(r.phase == CONFIRM for r in complete),
        trials=tuple(r.number for r in records),
        devices=_mode([r.devices for r in chosen]) or 1,
        batch_schedule=key.schedule,
    )


def cell_stats(
    records: Sequence[TrialRecord],
    metric: MetricInfo = ACCURACY,
    *,
    lr_search_width: float = 1.0,
) -> list[CellStats]:
    """Statistics of every cell that has a complete or pruned trial, sorted by batch size,
    rule and LR bucket. Failed, running and waiting trials are left out.

    Args:
        records: The study's records (:func:`study.record.read_record`).
        metric: The study's metric: its bounds clip the intervals (a t-interval of few
            runs can pass 100% accuracy); the statistics do not depend on its direction.
        lr_search_width: The study's ``--lr-search-width``: above 1, cells split by LR bucket.
    """
    groups: dict[CellKey, list[TrialRecord]] = {}
    for record in records:
        if record.state not in ("COMPLETE", "PRUNED"):
            continue
        key = cell_key(record, lr_search_width)
        if key is not None:
            groups.setdefault(key, []).append(record)
    ordered = sorted(
        groups,
        key=lambda k: (
            k.batch_size,
            k.schedule or "",
            k.scaling_rule,
            k.lr_bucket if k.lr_bucket else 0.0,
        ),
    )
    return [_stats(key, groups[key], metric) for key in ordered]


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial's record, read with the study's metric, rule and objective names."""
    metric = study_metric(study)
    rules = (study.user_attrs.get("space") or {}).get("scaling_rules") or []
    default_rule = rules[0] if len(rules) == 1 else None
    names = study.metric_names or None
    return [
        read_record(t, default_rule=default_rule, metric_names=names, metric=metric)
        for t in study.get_trials(deepcopy=False)
    ]


def study_cells(study: optuna.Study) -> list[CellStats]:
    """:func:`cell_stats` of a stored study (its metric and ``--lr-search-width``)."""
    config = study.user_attrs.get("config") or {}
    return cell_stats(
        study_records(study),
        study_metric(study),
        lr_search_width=float(config.get("lr_search_width") or 1.0),
    )


def is_confirmed(cell: CellStats, confirm_runs: int) -> bool:
    """Whether ``cell`` has ``confirm_runs`` complete confirmation runs (made after it was
    chosen, so its mean and interval are not the runs that picked it)."""
    return cell.confirm_runs >= max(2, int(confirm_runs))
