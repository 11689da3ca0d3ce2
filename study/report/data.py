"""What a report says about a study, read once from its trials and attributes.

Everything the HTML page, the terminal tables, the dashboard note and the figures show comes
from :func:`collect_report_data`, so they agree with each other. Nothing here needs torch, and
nothing fails on a study that is still running or has no complete trial: missing numbers
stay ``None`` and the callers say so.

Example:
    >>> import optuna
    >>> study = optuna.create_study(direction="maximize")
    >>> data = collect_report_data(study)
    >>> data.best is None, data.counts["COMPLETE"]
    (True, 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from study.record import (
    CONFIRM,
    MetricInfo,
    TrialRecord,
    int_or_none,
    number_or_none,
    read_record,
    study_metric,
)
from study.schedule import LRSchedule
from study.stats import median
from study.units import format_percent

#: Order in which scaling rules are listed; other names follow alphabetically.
RULE_ORDER = ("linear", "sqrt", "none")

#: Practitioners' starting ranges by training-set size: (fewer than N samples, low, high).
RULES_OF_THUMB = ((1_000, 16, 32), (100_001, 32, 256), (math.inf, 256, 2048))

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

#: The ``config["objectives"]`` that ask for the two-objective shape (metric and time).
TWO_OBJECTIVES_CONFIG = (("metric", "time"), ("accuracy", "time"))

#: Confirmation runs a cell needs before the report draws a conclusion from it, for a study
#: whose config stores no ``confirm_runs`` (the default of ``--confirm-runs``).
MIN_RUNS = 3


@dataclass(frozen=True)
class MetricText:
    """How the report writes the study's metric: names, direction, values and differences.

    The default metric (accuracy, maximised) keeps the report's wording ("validation
    accuracy", percentages); any other metric is written by its name and direction,
    e.g. ``val mse (lower is better)``, its values as plain numbers.

    Example:
        >>> mse = MetricText(MetricInfo("mse", "minimize", "samples"))
        >>> mse.full, mse.value(0.01234), mse.best([0.3, 0.1])
        ('val mse (lower is better)', '0.01234', 0.1)
        >>> acc = MetricText(MetricInfo())
        >>> acc.full, acc.value(0.9), acc.difference(0.028)
        ('validation accuracy (higher is better)', '90.0%', '2.8 points')
    """

    info: MetricInfo

    @property
    def name(self) -> str:
        """The metric's own name (``accuracy``, ``mse``, ``bits_per_char``)."""
        return self.info.name

    @property
    def percent(self) -> bool:
        """Values are fractions written as percentages (the accuracy metric)."""
        return self.info.name == "accuracy"

    @property
    def sign(self) -> int:
        """``+1`` when higher is better, ``-1`` when lower is."""
        return 1 if self.info.direction == "maximize" else -1

    @property
    def direction_words(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return "higher is better" if self.sign > 0 else "lower is better"

    @property
    def val(self) -> str:
        """``validation accuracy`` or ``val mse``: the metric on the validation split."""
        return "validation accuracy" if self.percent else f"val {self.name}"

    @property
    def test(self) -> str:
        """``test accuracy`` or ``test mse``."""
        return f"test {self.name}"

    @property
    def full(self) -> str:
        """``val mse (lower is better)``: the label every heading and axis uses."""
        return f"{self.val} ({self.direction_words})"

    @property
    def stored(self) -> str:
        """The study's metric name, ``val_accuracy`` or ``val_mse``."""
        return f"val_{self.name}"

    @property
    def maximised(self) -> str:
        """``maximised`` or ``minimised``."""
        return "maximised" if self.sign > 0 else "minimised"

    @property
    def unit(self) -> str:
        """What throughput counts: ``samples``, ``tokens``, ``sequences``."""
        return self.info.unit or "samples"

    @property
    def rate(self) -> str:
        """``samples/s`` or ``tokens/s``."""
        return f"{self.unit}/s"

    @property
    def axis_unit(self) -> str:
        """The unit an axis of the metric shows: ``% of samples`` or the metric's name."""
        return "% of samples" if self.percent else self.name

    @property
    def tickformat(self) -> str | None:
        """Plotly's tick format for the metric's axis (percentages for accuracy)."""
        return ".0%" if self.percent else None

    @property
    def hover(self) -> str:
        """Plotly's number format in hover text."""
        return ".1%" if self.percent else ".4g"

    def value(self, value: float | None, missing: str = "-") -> str:
        """``89.8%`` for accuracy, ``0.01234`` for others; ``missing`` where there is none."""
        if value is None:
            return missing
        return format_percent(value) if self.percent else f"{value:.4g}"

    def difference(self, diff: float | None, missing: str = "-") -> str:
        """A difference of two values: ``2.8 points`` for accuracy, ``0.012`` for others."""
        if diff is None:
            return missing
        return f"{100 * diff:.1f} points" if self.percent else f"{diff:.3g}"

    def interval(self, ci: Sequence[float] | None, missing: str = "-") -> str:
        """``87.1%-91.2%``: a 95% interval; ``missing`` without one."""
        if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
            return missing
        return f"{self.value(ci[0])}-{self.value(ci[1])}"

    def key(self, value: float) -> float:
        """A sort key under which larger is better."""
        return self.sign * value

    def best(self, values: Iterable[float]) -> float | None:
        """The best of ``values`` (``None`` when there are none)."""
        finite = [v for v in values if v is not None]
        return max(finite, key=self.key) if finite else None

    def better_than(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b``."""
        return self.key(a) > self.key(b)


@dataclass(frozen=True)
class CellRow:
    """Results of one cell: a (batch size, scaling rule) pair, and the learning-rate multiplier
    bucket when ``--lr-search-width`` searched one.

    The statistics are :func:`study.cells.cell_stats`' (the ones the answer is chosen
    from), over complete trials only (a pruned trial stopped early, so its value is not
    comparable): ``complete`` runs, their ``mean_val`` with a 95% interval ``ci95``
    (Student's t; ``None`` under 2 runs), ``best_val`` and ``median_val`` by the metric's
    direction. ``lr`` is the median learning rate the cell trained with; ``lr_bucket`` the
    centre of its multiplier bucket (``None`` unless searched); ``best_multiplier`` the
    multiplier of the best complete trial; ``confirm`` the complete runs of the confirmation
    phase; the other counts are over every trial of the cell.
    """

    batch_size: int
    scaling_rule: str
    lr: float | None
    complete: int
    pruned: int
    failed: int
    running: int
    best_val: float | None
    median_val: float | None
    median_test: float | None
    median_samples_per_s: float | None
    peak_memory_bytes: float | None
    best_multiplier: float | None = None
    lr_bucket: float | None = None
    mean_val: float | None = None
    ci95: tuple[float, float] | None = None
    mean_test: float | None = None
    median_time_s: float | None = None
    diverged: int = 0
    confirm: int = 0
    needed: int = MIN_RUNS
    batch_schedule: str | None = None  # a batch-size schedule's cell (batch_size: its largest)

    @property
    def runs(self) -> int:
        """Complete runs: what the cell's statistics rest on."""
        return self.complete

    @property
    def confirmed(self) -> bool:
        """The cell has the study's ``--confirm-runs`` complete confirmation runs (made after
        it was chosen): what "confirmed" means in the answer, the summary and the report."""
        return self.confirm >= self.needed and self.ci95 is not None

    @property
    def key(self) -> tuple[int, str, float | None]:
        """``(batch_size, scaling_rule, lr_bucket)``."""
        return (self.batch_size, self.scaling_rule, self.lr_bucket)

    @property
    def label(self) -> str:
        """``64 linear`` or, with a searched multiplier, ``64 linear x1.41``."""
        text = f"{self.batch_size} {self.scaling_rule}"
        if self.batch_schedule is not None:
            text = f"schedule {self.batch_schedule} {self.scaling_rule}"
        return text + (f" x{self.lr_bucket:.3g}" if self.lr_bucket is not None else "")


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
        return f"B_simple (gradient noise scale) \u2248 {_round_samples(self.value)}"

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
        text = f"median {_round_samples(median(values) or 0.0)} samples over {len(values)} trial(s)"
        if len(values) > 1:
            text += f" (range {_round_samples(min(values))}-{_round_samples(max(values))}"
            text += f"; typical s.e. \u00b1{_round_samples(ses)})" if ses is not None else ")"
        elif ses is not None:
            text += f" (s.e. \u00b1{_round_samples(ses)})"
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
            parts.append(f"{_estimate(first)} at initialisation")
        if last is not None and number_or_none(last.get("b_simple")) is not None:
            parts.append(f"{_estimate(last)} after epoch {last.get('epoch')}")
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


def _round_samples(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _estimate(entry: dict[str, Any]) -> str:
    value = number_or_none(entry.get("b_simple")) or 0.0
    se = number_or_none(entry.get("b_simple_se"))
    return _round_samples(value) + (f" \u00b1 {_round_samples(se)}" if se is not None else "")


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


@dataclass
class ReportData:
    """Everything a report shows about one study."""

    study_name: str
    metric_name: str
    config: dict[str, Any]
    space: dict[str, Any]
    task_info: dict[str, Any]
    probe: dict[str, Any] | None
    trials: list[TrialRecord]
    counts: dict[str, int]
    best: TrialRecord | None
    cells: list[CellRow]
    folklore: Folklore | None
    importances: dict[str, float] | None = None
    importance_note: str = ""
    rules: list[str] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    front: list[TrialRecord] = field(default_factory=list)
    noise_scale: NoiseScale | None = None
    metric: MetricText = field(default_factory=lambda: MetricText(MetricInfo()))
    recommendation: dict[str, Any] | None = None

    @property
    def confirm_runs(self) -> int:
        """The study's ``--confirm-runs``: confirmation runs a confirmed cell has."""
        return int_or_none(self.config.get("confirm_runs")) or MIN_RUNS

    @property
    def confirmed_optimum(self) -> int | None:
        """The batch size of the best cell with :data:`MIN_RUNS` complete runs (the
        recommendation's most accurate when there is one); ``None`` when no cell has them."""
        chosen = (self.recommendation or {}).get("most_accurate")
        if isinstance(chosen, dict) and int_or_none(chosen.get("batch_size")):
            return int_or_none(chosen.get("batch_size"))
        confirmed = [c for c in self.cells if c.confirmed and c.mean_val is not None]
        best = max(confirmed, key=lambda c: self.metric.key(c.mean_val), default=None)
        return best.batch_size if best else None

    @property
    def phases(self) -> bool:
        """Some trial belongs to the confirmation phase."""
        return any(t.phase == CONFIRM for t in self.trials)

    @property
    def multi_objective(self) -> bool:
        """The study also minimises training time (``--objectives metric,time``)."""
        return len(self.metric_names) > 1

    @property
    def epochs(self) -> int | None:
        """The epoch budget of every trial, from the study's config (epoch budget only)."""
        if self.step_budget:
            return None
        value = self.config.get("epochs")
        return int(value) if isinstance(value, int | float) else None

    @property
    def step_budget(self) -> bool:
        """Every trial ran a fixed number of optimizer steps (config ``budget`` ``steps``)."""
        return self.config.get("budget") == "steps"

    @property
    def steps(self) -> int | None:
        """The optimizer steps every trial made under a step budget, from the config."""
        value = self.config.get("steps") if self.step_budget else None
        return int_or_none(value)

    def budget_words(self) -> str | None:
        """``20 epochs`` or ``500 optimizer steps``; ``None`` when the config has neither."""
        if self.step_budget:
            return f"{self.steps:,} optimizer steps" if self.steps else "a step budget"
        return f"{self.epochs} epochs" if self.epochs else None

    def budget_phrase(self) -> str | None:
        """``20 epochs per trial`` or ``a budget of 500 optimizer steps per trial``."""
        if self.step_budget:
            if not self.steps:
                return "a budget of optimizer steps per trial (count not recorded)"
            return f"a budget of {self.steps:,} optimizer steps per trial"
        return f"{self.epochs} epochs per trial" if self.epochs else None

    @property
    def warmup_epochs(self) -> int:
        """Epochs of learning-rate warm-up (config ``warmup_epochs``; 0 = none)."""
        return int_or_none(self.config.get("warmup_epochs")) or 0

    @property
    def lr_search_width(self) -> float:
        """``F``: the multiplier on the rule's learning rate is searched in [1/F, F] (1 = off)."""
        return number_or_none(self.config.get("lr_search_width")) or 1.0

    @property
    def searched_multiplier(self) -> bool:
        """The study searched a multiplier on the rule's learning rate."""
        return self.lr_search_width > 1 or any(t.lr_multiplier for t in self.trials)

    def schedule_words(self) -> str | None:
        """The learning-rate schedule in words (config ``lr_schedule``, ``final_lr_fraction``,
        ``warmup_steps``); ``None`` for a constant rate without a warm-up in updates."""
        kind = self.config.get("lr_schedule") or "constant"
        warmup = int_or_none(self.config.get("warmup_steps")) or 0
        if kind == "constant" and not warmup:
            return None
        fraction = self.config.get("final_lr_fraction") or 0.0
        try:
            return LRSchedule(str(kind), float(fraction), warmup).describe()
        except (TypeError, ValueError):
            return f"{kind} (stored as {kind!r}, final fraction {fraction!r})"

    def warmup_advice(self) -> str | None:
        """A sentence suggesting warm-up where linear scaling diverged at the largest batches."""
        sizes = sorted(
            {int(b) for b in self.space.get("batch_sizes") or [] if isinstance(b, int | float)}
            | {t.batch_size for t in self.trials if t.batch_size}
        )
        if not sizes:
            return None
        large = sizes[-max(1, len(sizes) // 2) :]  # the largest half (at least the largest)
        diverged = sorted(
            {
                t.batch_size
                for t in self.trials
                if t.diverged and t.scaling_rule == "linear" and t.batch_size in large
            }
        )
        if not diverged:
            return None
        count = sum(
            t.diverged and t.scaling_rule == "linear" and t.batch_size in large for t in self.trials
        )
        where = (
            f"Linear scaling diverged at batch {', '.join(str(b) for b in diverged)} "
            f"({count} trial{'s' if count != 1 else ''})"
        )
        if self.warmup_epochs == 0:
            return (
                f"{where} and the study used no warm-up: a large learning rate from the first "
                "step often diverges. Try --warmup-epochs 2 to 5 (Goyal et al. 2017 ramp the "
                "learning rate up linearly over the first 5 epochs to train with linear "
                "scaling at batch 8192)."
            )
        return (
            f"{where} even with {self.warmup_epochs} warm-up epoch(s): a longer warm-up, a "
            "lower --base-lr or the sqrt rule may help."
        )

    def state_summary(self) -> str:
        """``12 trials: 9 complete, 2 pruned, 1 failed`` (states with no trial left out)."""
        total = sum(self.counts.values())
        parts = [f"{self.counts[s]} {_STATE_WORDS[s]}" for s in STATES if self.counts.get(s, 0) > 0]
        return f"{total} trial{'s' if total != 1 else ''}" + (
            ": " + ", ".join(parts) if parts else ""
        )

    def status_sentence(self) -> str | None:
        """A warning when the results are partial, else ``None``."""
        if not self.trials:
            return "The study has no trials yet: run scripts/run_study.py first."
        notes = []
        if self.counts.get("RUNNING", 0):
            notes.append(
                f"The study is still running ({self.counts['RUNNING']} trial(s) in progress): "
                "this report is a snapshot."
            )
        if self.counts.get("COMPLETE", 0) == 0:
            notes.append(
                "No trial completed (all were pruned, failed or are still running): there is "
                f"no best trial and no final {self.metric.val} yet; the learning curves show "
                "how far the trials got."
            )
        return " ".join(notes) or None


_STATE_WORDS = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


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


def rule_sort_key(rule: str) -> tuple[int, str]:
    """Sort key that lists ``linear, sqrt, none`` first, other rules after by name."""
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), rule)


def cell_rows(
    trials: Sequence[TrialRecord],
    metric: MetricText | None = None,
    *,
    lr_search_width: float = 1.0,
    confirm_runs: int = MIN_RUNS,
) -> list[CellRow]:
    """One row per cell that any trial used, sorted by batch, rule, then multiplier bucket.

    The statistics come from :func:`study.cells.cell_stats` (complete and pruned trials);
    cells whose trials all failed or are still running get a row of counts.

    Args:
        trials: The study's records.
        metric: The study's metric (default: accuracy, maximised).
        lr_search_width: The study's ``--lr-search-width``: above 1, cells split by the
            learning-rate multiplier's bucket.
        confirm_runs: The study's ``--confirm-runs``: a cell with that many confirmation runs
            is confirmed.
    """
    from study.cells import cell_key, cell_stats

    metric = metric or MetricText(MetricInfo())
    members_of: dict[Any, list[TrialRecord]] = {}
    for t in trials:
        key = cell_key(t, lr_search_width)
        if key is not None:
            members_of.setdefault(key, []).append(t)
    stats = {s.key: s for s in cell_stats(trials, metric.info, lr_search_width=lr_search_width)}
    order = sorted(
        members_of,
        key=lambda k: (
            k.batch_size,
            k.schedule or "",
            rule_sort_key(k.scaling_rule),
            k.lr_bucket or 0,
        ),
    )
    rows = []
    for cell in order:
        members = members_of[cell]
        s = stats.get(cell)
        scored = [t for t in members if t.state == "COMPLETE" and t.val_metric is not None]
        best = max(scored, key=lambda t: (metric.key(t.val_metric), -t.number), default=None)
        values = list(s.values) if s else []
        lrs = [t.lr for t in members if t.lr is not None]
        rows.append(
            CellRow(
                batch_size=cell.batch_size,
                batch_schedule=cell.schedule,
                scaling_rule=cell.scaling_rule,
                lr_bucket=2**cell.lr_bucket if cell.lr_bucket is not None else None,
                lr=s.lr if s and s.lr is not None else (median(lrs) if lrs else None),
                complete=s.runs if s else 0,
                pruned=sum(t.state == "PRUNED" for t in members),
                failed=sum(t.state == "FAIL" for t in members),
                running=sum(t.state in ("RUNNING", "WAITING") for t in members),
                best_val=metric.best(values),
                median_val=median(values),
                median_test=median(t.test_metric for t in scored),
                mean_val=s.val_mean if s else None,
                ci95=tuple(s.val_ci95) if s and s.val_ci95 else None,
                mean_test=s.test_mean if s else None,
                median_time_s=s.train_time_s_median if s else None,
                median_samples_per_s=s.samples_per_s_median if s else None,
                peak_memory_bytes=s.peak_memory_bytes if s else None,
                best_multiplier=best.lr_multiplier if best else None,
                diverged=sum(t.diverged for t in members),
                confirm=s.confirm_runs if s else 0,
                needed=confirm_runs,
            )
        )
    return rows


def _folklore(
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


def varying_params(study: optuna.Study) -> list[str]:
    """Parameters that took more than one value among the complete trials."""
    values: dict[str, set[str]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(repr(value))
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def importance_problem(study: optuna.Study) -> str | None:
    """Why parameter importances cannot be computed for ``study``, or ``None`` if they can."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < 2:
        return f"Parameter importances need at least 2 complete trials; this study has {complete}."
    varying = varying_params(study)
    if len(varying) < 2:
        which = f"only {varying[0]} varies" if varying else "no parameter varies"
        if varying == ["batch_size"]:
            which += " (the scaling rule was fixed)"
        return (
            "Parameter importances compare at least 2 parameters that vary; here "
            f"{which}, so its importance would trivially be 100%."
        )
    return None


def compute_importances(
    study: optuna.Study, metric: MetricText | None = None
) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances (default evaluator) and a note; ``None`` if unavailable.

    For a two-objective study (metric and time) the importances are those of reaching the
    Pareto front (Optuna's default evaluator on a multi-objective study).
    """
    metric = metric or MetricText(study_metric(study))
    problem = importance_problem(study)
    if problem is not None:
        return None, problem
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"Optuna could not compute parameter importances ({exc})."
    if len(study.directions) > 1:
        return dict(importances), (
            "How much each parameter decides whether a trial reaches the Pareto front of "
            f"{metric.val} and training time (Optuna's default importance evaluator, "
            "complete trials)."
        )
    return dict(importances), (
        f"Share of the variation in final {metric.full} explained by each parameter "
        "(Optuna's default importance evaluator, complete trials)."
    )


def _direction(name: str) -> optuna.study.StudyDirection:
    return optuna.study.StudyDirection[name.upper()]


def study_shape_problem(study: optuna.Study) -> str | None:
    """Why ``study`` is not a batch-size study's shape (``it ...``), or ``None`` if it is.

    A batch-size study optimises its metric (``val_<name>``) in the metric's direction
    (the study attribute ``metric``; accuracy, maximised, when absent); with
    ``--objectives metric,time`` it also minimises ``train_time_s``. Any other shape is
    refused.
    """
    metric = study_metric(study)
    first = _direction(metric.direction)
    directions = tuple(study.directions)
    if directions == (first,):
        return None
    if len(directions) == 1:
        word = "minimises" if directions[0] == optuna.study.StudyDirection.MINIMIZE else "maximises"
        return f"{word} its objective, but its metric {metric.name} is to be {metric.direction}d"
    config = study.user_attrs.get("config")
    asked = config.get("objectives") if isinstance(config, dict) else None
    names = study.metric_names
    expected = (f"val_{metric.name}", "train_time_s")
    named = names is not None and tuple(names) == expected
    asked_two = asked is not None and tuple(asked) in TWO_OBJECTIVES_CONFIG
    two = (first, optuna.study.StudyDirection.MINIMIZE)
    if directions == two and (named or (names is None and asked_two)):
        return None
    if len(directions) == 2:
        shown = ", ".join(
            f"{n} ({d.name.lower()})"
            for n, d in zip(names or ["objective 0", "objective 1"], directions, strict=False)
        )
        return (
            f"has the objectives {shown}, not {expected[0]} ({metric.direction}), "
            "train_time_s (minimize)"
        )
    return f"has {len(directions)} objectives"


def shape_words(study: optuna.Study) -> str:
    """What a batch-size study of this metric optimises, for error messages."""
    metric = study_metric(study)
    return (
        f"a batch-size study {metric.direction}s val_{metric.name} (and, with --objectives "
        "metric,time, minimises train_time_s)"
    )


def study_recommendation(study: optuna.Study) -> dict[str, Any] | None:
    """The study's answer: the stored ``recommendation`` attribute, else computed now by
    :func:`study.recommend.recommend` (a study from an older version stores none); ``None``
    when neither is available. Its ``budget`` is the study's now (the trial budget of the
    latest run, the trials finished so far), not the one stored with the answer. Never
    writes to the study."""
    from study.recommend import recommend, study_budget

    stored = study.user_attrs.get("recommendation")
    if isinstance(stored, dict):
        return {**stored, "budget": study_budget(study)}
    return recommend(study).to_dict()


def _front(study: optuna.Study, trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The Pareto front (``study.best_trials``), fastest first."""
    numbers = {t.number for t in study.best_trials}
    front = [t for t in trials if t.number in numbers]
    return sorted(front, key=lambda t: (t.train_time_s or math.inf, t.number))


def _noise_scale(attrs: dict[str, Any], trials: Sequence[TrialRecord]) -> NoiseScale | None:
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


def collect_report_data(study: optuna.Study, *, importances: bool = True) -> ReportData:
    """Read ``study`` once into a :class:`ReportData`.

    Args:
        study: A study in the core's record format (other studies work, with less to show).
        importances: Compute Optuna's parameter importances (about a second).
    """
    problem = study_shape_problem(study)
    if problem is not None:
        raise ValueError(f"study {study.study_name!r} {problem}: {shape_words(study)}")
    metric = MetricText(study_metric(study))
    attrs = study.user_attrs
    config = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    space = attrs.get("space") if isinstance(attrs.get("space"), dict) else {}
    task_info = attrs.get("task_info") if isinstance(attrs.get("task_info"), dict) else {}
    probe = attrs.get("probe") if isinstance(attrs.get("probe"), dict) else None
    default_rule = config.get("scaling") if config.get("scaling") != "search" else None
    multi = len(study.directions) > 1
    default_names = [metric.stored, "train_time_s"] if multi else [metric.stored]
    metric_names = list(study.metric_names or default_names)
    trials = [
        read_record(t, default_rule, metric_names, metric=metric.info)
        for t in study.get_trials(deepcopy=False)
    ]
    counts = {state: sum(t.state == state for t in trials) for state in STATES}
    complete = [t for t in trials if t.state == "COMPLETE" and t.val_metric is not None]
    best = None
    if not multi:  # two objectives have no single best: the Pareto front stands in
        best = max(complete, key=lambda t: (metric.key(t.val_metric), -t.number), default=None)
    width = number_or_none(config.get("lr_search_width")) or 1.0
    needed = int_or_none(config.get("confirm_runs")) or MIN_RUNS
    cells = cell_rows(trials, metric, lr_search_width=width, confirm_runs=needed)
    rules = sorted({t.scaling_rule for t in trials if t.scaling_rule}, key=rule_sort_key)
    recommendation = study_recommendation(study)
    data = ReportData(
        study_name=study.study_name,
        metric_name=metric_names[0],
        config=config,
        space=space,
        task_info=task_info,
        probe=probe,
        trials=trials,
        counts=counts,
        best=best,
        cells=cells,
        folklore=_folklore(task_info, cells, metric, recommendation),
        rules=rules,
        metric_names=metric_names,
        front=_front(study, trials) if multi else [],
        noise_scale=_noise_scale(attrs, trials),
        metric=metric,
        recommendation=recommendation,
    )
    if importances:
        data.importances, data.importance_note = compute_importances(study, metric)
    else:
        data.importance_note = importance_problem(study) or ""
    return data
