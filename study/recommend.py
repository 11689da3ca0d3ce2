"""The answer of a study: cells, their statistics, and the recommendation stored with it.

A **cell** is what one configuration of the space means to a user: ``(batch_size,
scaling_rule)``, and, where the study searches the learning rate (``--lr-search-width`` above
1), the bucket of the learning-rate multiplier. Buckets are half-octaves: the multiplier's
log2 rounded to the nearest 0.5 (``round(2 * log2(m)) / 2``), so a bucket spans a factor of
about 1.41 and is labelled by its centre ``2 ** bucket`` (x0.71, x1, x1.41, ...). Trials of
different rules are never pooled.

Per cell (:func:`cell_stats`): complete runs, the validation metric's mean, SD and 95%
interval, the test mean (shown, never used to choose), medians of training time and
throughput, the peak memory, the micro-batch/accumulation split, the learning rate, and the
pruned and diverged counts. The interval is Student's t: ``mean +- t(0.975, n-1) * sd /
sqrt(n)``, clipped to the metric's bounds (accuracy stays within 0-1); with n = 1 there is
none (``None``). Runs of a cell are assumed independent (each trial has its own seed).

**The answer** (:func:`recommend`, stored by :func:`store_recommendation` as the study user
attribute ``recommendation``):

* ``most_accurate``: among *confirmed* cells (at least ``confirm_runs`` complete runs), the
  one with the best mean (in the metric's direction).
* ``fastest_within``: among confirmed cells, the fastest (median training time; or a
  dedicated timing measurement, see ``speeds``) whose mean is within ``tolerance`` of the most
  accurate cell's mean *after allowing for the uncertainty of the difference*: with
  ``d = sign * (best_mean - cell_mean)`` (how much worse the cell is) and
  ``se = sqrt(sd_best^2 / n_best + sd_cell^2 / n_cell)`` (Welch's standard error of ``d``),
  a cell qualifies when ``d + UNCERTAINTY_Z * se <= tolerance``. With ``UNCERTAINTY_Z = 1``
  the cell's shortfall is within tolerance at about one standard error of margin (a
  one-sided ~84% bound for large n). The most accurate cell always qualifies, so
  ``fastest_within`` exists whenever ``most_accurate`` does, and is the same cell when
  nothing faster is close enough. ``docs/answer.md`` (and the
  README) give the measurements behind this rule.
* A study where no cell has ``confirm_runs`` complete runs names no winner: both are
  ``None``, ``reason`` says why and ``statement`` says so.

Nothing here imports torch.

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
import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from study.record import ACCURACY, MetricInfo, TrialRecord, read_record, study_metric

#: Margin, in standard errors of the difference, that ``fastest_within`` keeps below the
#: tolerance (see the module docstring and ``docs/answer.md``).
UNCERTAINTY_Z = 1.0
#: How the standard error of a shortfall is estimated: ``"welch"`` (each cell's own SD) or
#: ``"pooled"`` (one single-run SD pooled over the confirmed cells; measured worse where cells
#: differ in spread, ``docs/answer.md``; kept for ``benchmarks/bench_confirm.py``).
SE_METHOD = "welch"
#: Whether the most accurate cell's mean is corrected for having been picked as the best of
#: several noisy means (the winner's curse) before the other cells' shortfalls are measured
#: from it: ``"none"`` or ``"bootstrap"`` (:func:`selection_bias`). Measured, the correction
#: found the fast cell more often where many cells tie, but named cells truly outside the
#: tolerance far more often elsewhere (``docs/answer.md``): kept for
#: ``benchmarks/bench_confirm.py`` only.
SELECTION_CORRECTION = "none"
#: Draws of :func:`selection_bias`'s bootstrap (seeded: the same cells, the same answer).
SELECTION_DRAWS = 1000
#: Above this many runs a cell and the most accurate would each need to be decided, the
#: statement says the cell sits at the tolerance rather than quoting a number.
RUNS_TO_DECIDE_CAP = 100

#: How many undecided faster cells the statement names (``undecided_faster`` keeps all).
UNDECIDED_SHOWN = 3
#: Buckets of the learning-rate multiplier per octave (2: half-octave buckets).
LR_BUCKETS_PER_OCTAVE = 2
#: Default ``confirm_runs`` and ``tolerance`` of studies whose config stores none.
DEFAULT_CONFIRM_RUNS = 3
DEFAULT_TOLERANCE = 0.01

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30.
_T975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)
_Z975 = 1.959964


def t975(df: int) -> float:
    """Student's t quantile at 0.975 with ``df`` degrees of freedom (two-sided 95%).

    Exact to 6 decimals up to 30 degrees of freedom (a table), then the Cornish-Fisher
    expansion (error below 1e-4).

    Example:
        >>> t975(2), round(t975(1000), 3)
        (4.302653, 1.962)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, tuple[float, float] | None]:
    """``(mean, sample SD, 95% t-interval)``; SD 0 and no interval for one value.

    Example:
        >>> mean, sd, (lo, hi) = mean_ci95([0.90, 0.92, 0.94])
        >>> round(mean, 4), round(sd, 4), round(lo, 4), round(hi, 4)
        (0.92, 0.02, 0.8703, 0.9697)
    """
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, None
    sd = statistics.stdev(values)
    half = t975(len(values) - 1) * sd / math.sqrt(len(values))
    return mean, sd, (mean - half, mean + half)


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

    @property
    def label(self) -> str:
        """``batch 64 linear`` (with ``lr x1.41`` for a bucket)."""
        text = f"batch {self.batch_size} {self.scaling_rule}"
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
    return CellKey(record.batch_size, record.scaling_rule or "none", bucket)


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
        micro_batch_size: Micro-batch most complete runs trained with.
        accumulation_steps: Its accumulation steps.
        lr: Median learning rate of the complete runs (of all trials if none completed).
        pruned: Pruned trials (diverged ones included).
        diverged: Trials stopped as diverged (NaN/inf or collapse).
        confirm_runs: Complete runs of the confirmation phase.
        trials: Numbers of the cell's complete and pruned trials.
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

    @property
    def key(self) -> CellKey:
        return CellKey(self.batch_size, self.scaling_rule, self.lr_bucket)

    @property
    def label(self) -> str:
        return self.key.label


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _mode(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def _stats(key: CellKey, records: Sequence[TrialRecord], metric: MetricInfo) -> CellStats:
    complete = [r for r in records if r.state == "COMPLETE" and r.val_metric is not None]
    values = tuple(float(r.val_metric) for r in complete)  # type: ignore[arg-type]
    mean = sd = ci = None
    if values:
        mean, sd, ci = mean_ci95(values)
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
        train_time_s_median=_median([r.train_time_s for r in complete]),
        samples_per_s_median=_median([r.samples_per_s for r in complete]),
        samples_median=statistics.median(samples) if samples else None,
        peak_memory_bytes=max(memory) if memory else None,
        micro_batch_size=_mode([r.micro_batch_size for r in chosen]),
        accumulation_steps=_mode([r.accumulation_steps for r in chosen]),
        lr=_median([r.lr for r in chosen]),
        pruned=sum(r.state == "PRUNED" for r in records),
        diverged=sum(bool(r.diverged) for r in records),
        confirm_runs=sum(r.phase == "confirm" for r in complete),
        trials=tuple(r.number for r in records),
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
        key=lambda k: (k.batch_size, k.scaling_rule, k.lr_bucket if k.lr_bucket else 0.0),
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


# ---------------------------------------------------------------------------- the answer


@dataclass(frozen=True)
class Speed:
    """A cell's training speed: units per second, and the time a run takes at that rate."""

    samples_per_s: float | None
    train_time_s: float | None
    source: str  # "trials" (the trials' own timings) or "timing" (a dedicated measurement)
    spread: float | None = None


def cell_speed(
    cell: CellStats, speeds: Mapping[tuple[int, int], Mapping[str, Any]] | None = None
) -> Speed:
    """The speed the answer uses for ``cell``.

    With ``speeds`` (a dedicated timing measurement keyed by ``(batch_size,
    micro_batch_size)``, e.g. ``{"samples_per_s": ..., "seconds_per_sample": ...,
    "spread": ...}``), its rate replaces the trials' single timings, and the time of a run is
    the cell's median units trained over that rate. Otherwise the trials' medians.
    """
    measured = None
    if speeds is not None and cell.micro_batch_size is not None:
        measured = speeds.get((cell.batch_size, cell.micro_batch_size))
    if measured:
        rate = _rate(measured)
        if rate is not None:
            time = cell.samples_median / rate if cell.samples_median else None
            if time is None and cell.train_time_s_median and cell.samples_per_s_median:
                time = cell.train_time_s_median * cell.samples_per_s_median / rate
            spread = measured.get("spread")
            return Speed(
                rate,
                time,
                "timing",
                float(spread) if isinstance(spread, int | float) else None,
            )
    return Speed(cell.samples_per_s_median, cell.train_time_s_median, "trials")


def _rate(measured: Mapping[str, Any]) -> float | None:
    rate = measured.get("samples_per_s")
    if isinstance(rate, int | float) and rate > 0:
        return float(rate)
    per = measured.get("seconds_per_sample")
    if isinstance(per, int | float) and per > 0:
        return 1.0 / float(per)
    return None


def pooled_sd(cells: Sequence[CellStats]) -> float | None:
    """The pooled within-cell SD of single runs over ``cells`` with 2+ runs, or ``None``."""
    dof = sum(c.runs - 1 for c in cells if c.runs >= 2)
    if dof == 0:
        return None
    return math.sqrt(sum((c.runs - 1) * (c.val_sd or 0.0) ** 2 for c in cells if c.runs >= 2) / dof)


def answer_sigma(confirmed: Sequence[CellStats]) -> float | None:
    """The single-run SD the answer's standard errors use (``SE_METHOD``): the pooled SD of
    the confirmed cells, or ``None`` for each cell's own SD (Welch)."""
    return pooled_sd(confirmed) if SE_METHOD != "welch" else None


def selection_bias(
    cells: Sequence[CellStats], metric: MetricInfo, draws: int = SELECTION_DRAWS
) -> float:
    """How much better than its true mean the best of ``cells``' means is expected to look,
    for having been picked as the best (the winner's curse), in the metric's units (>= 0).

    A parametric bootstrap: each cell's observed mean is taken as its true mean and redrawn
    as normal with standard error ``pooled_sd / sqrt(runs)``; the cell with the best redrawn
    mean is picked and the amount by which its redrawn mean beats its own true mean is
    averaged over ``draws`` (seeded). Near-tied cells give about the expected best of their
    noise, one clear winner about 0. Taking the observed means (spread by their own noise) as
    the truth makes the estimate err low. 0 for fewer than two cells, no pooled SD, or
    ``SELECTION_CORRECTION = "none"``.
    """
    if SELECTION_CORRECTION == "none":
        return 0.0
    scored = [c for c in cells if c.runs > 0 and c.val_mean is not None]
    sigma = pooled_sd(scored)
    if len(scored) < 2 or not sigma:
        return 0.0
    means = [metric.sign * (c.val_mean or 0.0) for c in scored]
    ses = [sigma / math.sqrt(c.runs) for c in scored]
    rng = random.Random(0)
    total = 0.0
    for _ in range(draws):
        drawn = [rng.gauss(m, s) for m, s in zip(means, ses, strict=True)]
        top = max(range(len(drawn)), key=drawn.__getitem__)
        total += drawn[top] - means[top]
    return max(0.0, total / draws)


def shortfall(
    best: CellStats,
    cell: CellStats,
    metric: MetricInfo,
    sigma: float | None = None,
    bias: float = 0.0,
) -> tuple[float, float]:
    """``(d, se)``: how much worse ``cell``'s mean is than ``best``'s (in the metric's units,
    positive = worse), less ``bias`` (:func:`selection_bias`: how much better ``best``'s mean
    looks than it is for having been picked), and the standard error of that difference:
    ``sigma * sqrt(1/n_best + 1/n_cell)`` with a pooled single-run SD ``sigma``, else Welch's
    from each cell's own SD."""
    d = metric.sign * ((best.val_mean or 0.0) - (cell.val_mean or 0.0)) - bias
    var = 0.0
    for c in (best, cell):
        if c.runs >= 2 and c.val_sd is not None:
            var += c.val_sd**2 / c.runs
    if sigma is None:
        return d, math.sqrt(var)
    return d, sigma * math.sqrt(1 / max(1, best.runs) + 1 / max(1, cell.runs))


def qualifies(
    best: CellStats,
    cell: CellStats,
    metric: MetricInfo,
    tolerance: float,
    z: float = UNCERTAINTY_Z,
    sigma: float | None = None,
    bias: float = 0.0,
) -> bool:
    """Whether ``cell`` is within ``tolerance`` of ``best`` allowing for the uncertainty:
    ``d + z * se <= tolerance`` (see :func:`shortfall`). The best cell itself always does."""
    if cell.key == best.key:
        return True
    d, se = shortfall(best, cell, metric, sigma, bias)
    return d + z * se <= tolerance


def _pick(
    cell: CellStats, speed: Speed, reference_time: float | None, metric: MetricInfo
) -> dict[str, Any]:
    """One of the answer's two cells, as stored."""
    speedup = None
    if reference_time and speed.train_time_s:
        speedup = round(reference_time / speed.train_time_s, 3)
    return {
        "batch_size": cell.batch_size,
        "micro_batch_size": cell.micro_batch_size,
        "accumulation_steps": cell.accumulation_steps,
        "scaling_rule": cell.scaling_rule,
        "lr": cell.lr,
        "lr_multiplier": cell.lr_multiplier,
        "metric": metric.name,
        "val_mean": cell.val_mean,
        "val_sd": cell.val_sd,
        "val_ci95": list(cell.val_ci95) if cell.val_ci95 is not None else None,
        "test_mean": cell.test_mean,
        "runs": cell.runs,
        "train_time_s_median": speed.train_time_s,
        "samples_per_s": speed.samples_per_s,
        "speed_source": speed.source,
        "speed_spread": speed.spread,
        "peak_memory_bytes": cell.peak_memory_bytes,
        "speedup": speedup,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _describe(cell: CellStats, metric: MetricInfo) -> str:
    lo_hi = ""
    if cell.val_ci95 is not None:
        lo_hi = f", 95% CI {_fmt(cell.val_ci95[0])}-{_fmt(cell.val_ci95[1])}"
    return f"{cell.label} ({metric.name} {_fmt(cell.val_mean)}{lo_hi}, {cell.runs} runs)"


def recommend_cells(
    cells: Sequence[CellStats],
    metric: MetricInfo = ACCURACY,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    confirm_runs: int = DEFAULT_CONFIRM_RUNS,
    speeds: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
    budget: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer from cell statistics (the store-free core of :func:`recommend`).

    Args:
        cells: :func:`cell_stats` of the study.
        metric: The study's metric (its direction decides "best").
        tolerance: How far (metric units) ``fastest_within`` may be from ``most_accurate``.
        confirm_runs: Complete runs a cell needs to be named.
        speeds: A dedicated timing measurement (see :func:`cell_speed`); used to pick the
            fastest and shown in place of the trials' timings.
        budget: What the study spent (stored as ``budget``).

    Returns:
        The JSON-ready answer: ``most_accurate``, ``fastest_within``, ``tolerance``,
        ``confirm_runs``, ``budget``, ``statement`` and, when no winner is named,
        ``reason``.
    """
    needed = max(2, int(confirm_runs))
    answer: dict[str, Any] = {
        "most_accurate": None,
        "fastest_within": None,
        "tolerance": tolerance,
        "confirm_runs": needed,
        "metric": metric.to_dict(),
        "rule": f"fastest confirmed cell with d + {UNCERTAINTY_Z:g} se <= tolerance",
        "budget": dict(budget or {}),
    }
    scored = [c for c in cells if c.runs > 0 and c.val_mean is not None]
    if not scored:
        answer["reason"] = "no complete trials"
        answer["statement"] = (
            "No trial has completed yet, so there is no answer: run the study (more --trials)."
        )
        return answer
    confirmed = [c for c in scored if c.runs >= needed]
    if not confirmed:
        most = max(c.runs for c in scored)
        leader = max(scored, key=lambda c: metric.sign * (c.val_mean or 0.0))
        answer["reason"] = "too few runs to confirm"
        answer["statement"] = (
            f"Too small to name a winner: no cell has {needed} complete runs (the most is "
            f"{most}); the best single estimate so far is {_describe(leader, metric)}, "
            "unconfirmed. Run more --trials (or lower --confirm-runs)."
        )
        return answer
    best = max(confirmed, key=lambda c: (metric.sign * (c.val_mean or 0.0), c.runs))
    speed = {c.key: cell_speed(c, speeds) for c in confirmed}
    reference = speed[best.key].train_time_s
    sigma = answer_sigma(confirmed)
    bias = selection_bias(confirmed, metric)
    within = [c for c in confirmed if qualifies(best, c, metric, tolerance, sigma=sigma, bias=bias)]
    timed = sorted(
        (c for c in within if speed[c.key].train_time_s is not None),
        key=lambda c: speed[c.key].train_time_s or 0.0,
    )
    # A speed-up inside the timing's spread is flagged, not used: the fastest cell whose
    # gain over the most accurate one the timing can tell (else the most accurate itself).
    uncertain = [
        c for c in timed if c.key != best.key and _speed_uncertain(speed[best.key], speed[c.key])
    ]
    usable = [c for c in timed if c not in uncertain]
    fast = usable[0] if usable else best
    skipped = [c for c in uncertain if speed[c.key].train_time_s < speed[fast.key].train_time_s]
    answer["most_accurate"] = _pick(best, speed[best.key], reference, metric)
    answer["fastest_within"] = _pick(fast, speed[fast.key], reference, metric)
    answer["fastest_within"]["speed_uncertain"] = bool(skipped)
    if skipped:
        answer["speed_uncertain_cells"] = [c.label for c in skipped]
    open_ = _undecided_faster(confirmed, best, fast, speed, metric, tolerance, sigma, bias)
    if open_:
        answer["undecided_faster"] = open_
    answer["statement"] = _statement(
        best, fast, answer, metric, tolerance, len(confirmed)
    ) + _undecided_words(answer, tolerance)
    unconfirmed_better = [
        c for c in scored if c.runs < needed and metric.better(c.val_mean or 0.0, best.val_mean)
    ]
    if unconfirmed_better:
        answer["unconfirmed_better"] = [
            {"cell": c.label, "val_mean": c.val_mean, "runs": c.runs} for c in unconfirmed_better
        ]
    return answer


def _undecided_faster(
    confirmed: Sequence[CellStats],
    best: CellStats,
    fast: CellStats,
    speed: Mapping[CellKey, Speed],
    metric: MetricInfo,
    tolerance: float,
    sigma: float | None,
    bias: float,
) -> list[dict[str, Any]]:
    """Confirmed cells measurably faster than ``fast`` that neither qualify nor are ruled
    out (``d - z * se < tolerance < d + z * se``): the runs so far cannot tell, more would.
    A cell of ``fast``'s batch size is not faster (the rule changes only the learning rate),
    nor is one whose speed-up is inside the timing's spread."""
    limit = speed[fast.key].train_time_s
    if limit is None:
        return []
    found: list[tuple[float, dict[str, Any]]] = []
    for cell in confirmed:
        seconds = speed[cell.key].train_time_s
        if cell.key == best.key or seconds is None or seconds >= limit:
            continue
        if cell.batch_size == fast.batch_size or _speed_uncertain(speed[fast.key], speed[cell.key]):
            continue
        d, se = shortfall(best, cell, metric, sigma, bias)
        if d + UNCERTAINTY_Z * se > tolerance > d - UNCERTAINTY_Z * se:
            entry = {"cell": cell.label, "shortfall": d, "se": se, "runs": cell.runs}
            needed = runs_to_decide(best, cell, d, tolerance, sigma)
            if needed is not None:
                entry["runs_to_decide"] = needed
            found.append((seconds, entry))
    return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]


def runs_to_decide(
    best: CellStats, cell: CellStats, d: float, tolerance: float, sigma: float | None
) -> int | None:
    """About how many runs each of ``cell`` and ``best`` would let the rule decide ``cell``
    (``|tolerance - d| >= z * se``) if its shortfall ``d`` and the runs' SDs held: ``n =
    z² (sd_best² + sd_cell²) / (tolerance - d)²`` (``2 z² sigma² / (tolerance - d)²`` with a
    pooled SD), at least one more than either has. ``None`` without an SD for both; a
    shortfall at the tolerance itself gives a very large number, which is the point: no
    affordable number of runs decides a cell whose true shortfall is the tolerance."""
    if sigma is not None:
        variance = 2 * sigma**2
    elif best.val_sd is not None and cell.val_sd is not None and min(best.runs, cell.runs) >= 2:
        variance = best.val_sd**2 + cell.val_sd**2
    else:
        return None
    gap = max(abs(tolerance - d), 1e-12)
    needed = math.ceil(UNCERTAINTY_Z**2 * variance / gap**2)
    return min(max(needed, min(best.runs, cell.runs) + 1), RUNS_TO_DECIDE_CAP)


def _speed_uncertain(best: Speed, fast: Speed) -> bool:
    """Whether the timing's spread (relative) is as wide as the speedup it claims."""
    if not best.train_time_s or not fast.train_time_s:
        return False
    gain = best.train_time_s / fast.train_time_s - 1.0
    spread = max(best.spread or 0.0, fast.spread or 0.0)
    return gain > 0 and spread >= gain


def _decide_words(needed: int | None) -> str:
    if needed is None:
        return ""
    if needed >= RUNS_TO_DECIDE_CAP:
        return f"; over {RUNS_TO_DECIDE_CAP} runs each to decide: it sits at the tolerance"
    return f"; decided at ~{needed} runs each"


def _undecided_words(answer: Mapping[str, Any], tolerance: float) -> str:
    """`` Faster, not yet decided: ...`` for the cells more runs could still qualify."""
    entries = answer.get("undecided_faster") or []
    if not entries:
        return ""
    shown = "; ".join(
        f"{e['cell']} ({e['shortfall']:.2g} ± {e['se']:.2g} behind, {e['runs']} runs"
        f"{_decide_words(e.get('runs_to_decide'))})"
        for e in entries[:UNDECIDED_SHOWN]
    )
    if len(entries) > UNDECIDED_SHOWN:
        shown += f"; {len(entries) - UNDECIDED_SHOWN} more"
    if all(e.get("runs_to_decide", 0) >= RUNS_TO_DECIDE_CAP for e in entries):
        ending = "no affordable number of --trials would settle it"
    else:
        ending = "more --trials would settle it"
    return f" Faster and not yet decided (could be within {tolerance:g} or not): {shown}; {ending}."


def _statement(
    best: CellStats,
    fast: CellStats,
    answer: dict[str, Any],
    metric: MetricInfo,
    tolerance: float,
    confirmed: int,
) -> str:
    if fast.key == best.key:
        unsure = answer.get("speed_uncertain_cells")
        if unsure:
            return (
                f"Most accurate: {_describe(best, metric)}; {', '.join(unsure)} "
                f"{'is' if len(unsure) == 1 else 'are'} within {tolerance:g} of it but not "
                "measurably faster (the speed-up is inside the timing's spread)."
            )
        return (
            f"Most accurate: {_describe(best, metric)}; no faster cell of the {confirmed} "
            f"confirmed is within {tolerance:g} of it once the uncertainty is allowed for."
        )
    speedup = answer["fastest_within"]["speedup"]
    faster = f"{speedup:.3g}x faster" if speedup else "faster"
    return (
        f"{_describe(fast, metric)} is within {tolerance:g} of the most accurate, "
        f"{_describe(best, metric)}, and trains {faster}."
    )


def study_budget(study: optuna.Study) -> dict[str, Any]:
    """What the study spent: its trial budget, finished trials by phase, the per-trial budget."""
    config = study.user_attrs.get("config") or {}
    records = study_records(study)
    finished = [r for r in records if r.state in ("COMPLETE", "PRUNED")]
    budget: dict[str, Any] = {
        "trials": config.get("trials"),
        "finished": len(finished),
        "search_trials": sum(r.phase != "confirm" for r in finished),
        "confirm_trials": sum(r.phase == "confirm" for r in finished),
    }
    if config.get("budget") == "steps":
        budget["steps_per_trial"] = config.get("steps")
    elif config.get("epochs") is not None:
        budget["epochs_per_trial"] = config.get("epochs")
    return budget


def recommend(
    study: optuna.Study,
    speeds: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
    *,
    tolerance: float | None = None,
    confirm_runs: int | None = None,
) -> dict[str, Any]:
    """The answer of a stored study (see the module docstring and :func:`recommend_cells`).

    ``tolerance`` and ``confirm_runs`` default to the study's stored config
    (``--tolerance``, ``--confirm-runs``), else 0.01 and 3.
    """
    config = study.user_attrs.get("config") or {}
    if tolerance is None:
        tolerance = float(config.get("tolerance", DEFAULT_TOLERANCE))
    if confirm_runs is None:
        confirm_runs = int(config.get("confirm_runs", DEFAULT_CONFIRM_RUNS))
    return recommend_cells(
        study_cells(study),
        study_metric(study),
        tolerance=tolerance,
        confirm_runs=confirm_runs,
        speeds=speeds,
        budget=study_budget(study),
    )


def store_recommendation(
    study: optuna.Study,
    speeds: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compute :func:`recommend` and store it as the study user attribute
    ``recommendation``; return it."""
    answer = recommend(study, speeds)
    study.set_user_attr("recommendation", answer)
    return answer
