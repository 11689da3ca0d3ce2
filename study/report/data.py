"""What a report says about a study, read once from its trials and attributes.

Everything the HTML page, the terminal tables, the dashboard note and the figures show comes
from :func:`collect_report_data`, so they agree with each other: the trial records, the
cells (:mod:`study.report.cellrows`), the rule of thumb and the noise scale
(:mod:`study.report.narratives`), the importances (:mod:`study.report.importances`) and the
answer, written with :mod:`study.report.words`. Nothing here needs torch, and
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from study.record import (
    CONFIRM,
    MetricInfo,
    TrialRecord,
    int_or_none,
    number_or_none,
    read_record,
    study_metric,
)

# The report's parts, each in its own module, re-exported: study.report.data stays the one
# import for what a report knows about a study.
from study.report.cellrows import MIN_RUNS, CellRow, cell_rows, rule_sort_key
from study.report.importances import compute_importances, importance_problem
from study.report.narratives import Folklore, NoiseScale, folklore, noise_scale_of, rule_of_thumb
from study.report.words import STATE_WORDS, MetricText
from study.schedule import LRSchedule
from study.storage import shape_words, study_shape_problem

__all__ = [
    "MIN_RUNS",
    "STATES",
    "CellRow",
    "Folklore",
    "MetricText",
    "NoiseScale",
    "ReportData",
    "cell_rows",
    "collect_report_data",
    "rule_of_thumb",
    "study_recommendation",
]

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


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
        parts = [f"{self.counts[s]} {STATE_WORDS[s]}" for s in STATES if self.counts.get(s, 0) > 0]
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
        folklore=folklore(task_info, cells, metric, recommendation),
        rules=rules,
        metric_names=metric_names,
        front=_front(study, trials) if multi else [],
        noise_scale=noise_scale_of(attrs, trials),
        metric=metric,
        recommendation=recommendation,
    )
    if importances:
        data.importances, data.importance_note = compute_importances(study, metric)
    else:
        data.importance_note = importance_problem(study) or ""
    return data
