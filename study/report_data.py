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
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

#: Order in which scaling rules are listed; other names follow alphabetically.
RULE_ORDER = ("linear", "sqrt", "none")

#: Practitioners' starting ranges by training-set size: (fewer than N samples, low, high).
RULES_OF_THUMB = ((1_000, 16, 32), (100_001, 32, 256), (math.inf, 256, 2048))

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the report sees it (``None`` where the trial did not record the value).

    Args:
        number: Optuna's trial number.
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``.
        batch_size: Effective batch size (samples per update).
        scaling_rule: Learning-rate scaling rule the trial used.
        lr: Learning rate the trial used.
        val_accuracy: Validation accuracy after the last epoch it ran (fraction).
        test_accuracy: Test accuracy (complete trials only, usually).
        epochs_completed: Epochs it trained.
        train_time_s: Wall-clock training time in seconds.
        samples_per_s: Training throughput.
        peak_memory_bytes: Peak memory of a training step.
        memory_source: How the peak memory was measured (e.g. CUDA allocator, estimate).
        micro_batch_size: Samples per forward/backward pass.
        accumulation_steps: Micro-batches per update.
        diverged: The loss became NaN or infinite.
        curve: ``(epoch, validation accuracy)`` pairs, epoch 1-based.
    """

    number: int
    state: str
    batch_size: int | None
    scaling_rule: str | None
    lr: float | None
    val_accuracy: float | None
    test_accuracy: float | None
    epochs_completed: int | None
    train_time_s: float | None
    samples_per_s: float | None
    peak_memory_bytes: float | None
    memory_source: str | None
    micro_batch_size: int | None
    accumulation_steps: int | None
    diverged: bool
    curve: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class GroupRow:
    """Results of one (batch size, scaling rule) pair.

    ``best_val``, ``median_val`` and ``median_test`` use complete trials only: a pruned trial
    stopped early, so its accuracy is not comparable.
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


@dataclass(frozen=True)
class Folklore:
    """The rule of thumb for this training-set size beside the measured optimum."""

    train_size: int
    low: int
    high: int
    optimum: int | None
    optimum_rule: str | None
    optimum_median_val: float | None

    @property
    def verdict(self) -> str:
        """``inside``, ``below``, ``above``, or ``unknown`` (no complete trial yet)."""
        if self.optimum is None:
            return "unknown"
        if self.optimum < self.low:
            return "below"
        if self.optimum > self.high:
            return "above"
        return "inside"

    def sentence(self) -> str:
        """One line a person reads: the range, the optimum, and whether the folklore held."""
        start = (
            f"Rule of thumb for {self.train_size:,} training samples: batch {self.low}-{self.high}."
        )
        if self.optimum is None:
            return start + " No complete trial yet, so no measured optimum to compare."
        measured = (
            f" Measured optimum: batch {self.optimum} (rule {self.optimum_rule}, median "
            f"validation accuracy {_pct(self.optimum_median_val)})"
        )
        if self.verdict == "inside":
            return start + measured + ", inside the range: the folklore held."
        return start + measured + f", {self.verdict} the range: the folklore missed here."


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
    groups: list[GroupRow]
    folklore: Folklore | None
    importances: dict[str, float] | None = None
    importance_note: str = ""
    rules: list[str] = field(default_factory=list)

    @property
    def epochs(self) -> int | None:
        """The epoch budget of every trial, from the study's config."""
        value = self.config.get("epochs")
        return int(value) if isinstance(value, int | float) else None

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
                "no best trial and no final accuracy yet; the learning curves show how far "
                "the trials got."
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


def median(values: Iterable[float | None]) -> float | None:
    """Median of the finite values, ``None`` when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def trial_record(trial: FrozenTrial, default_rule: str | None = None) -> TrialRecord:
    """Read one trial in the core's record format (user attributes first, then params)."""
    attrs = trial.user_attrs
    params = trial.params
    curve = tuple(
        (int(step), float(value))
        for step, value in sorted(trial.intermediate_values.items())
        if value is not None and math.isfinite(value)
    )
    val = _number(attrs.get("val_accuracy"))
    if trial.state == TrialState.COMPLETE and trial.values:
        val = _number(trial.values[0])
    if val is None and curve and trial.state != TrialState.COMPLETE:
        val = curve[-1][1]
    rule = attrs.get("scaling_rule", params.get("scaling_rule", default_rule))
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        batch_size=_int(attrs.get("batch_size", params.get("batch_size"))),
        scaling_rule=str(rule) if rule is not None else None,
        lr=_number(attrs.get("lr")),
        val_accuracy=val,
        test_accuracy=_number(attrs.get("test_accuracy")),
        epochs_completed=_int(attrs.get("epochs_completed")) or (curve[-1][0] if curve else None),
        train_time_s=_number(attrs.get("train_time_s")),
        samples_per_s=_number(attrs.get("samples_per_s")),
        peak_memory_bytes=_number(attrs.get("peak_memory_bytes")),
        memory_source=str(attrs["memory_source"]) if attrs.get("memory_source") else None,
        micro_batch_size=_int(attrs.get("micro_batch_size")),
        accumulation_steps=_int(attrs.get("accumulation_steps")),
        diverged=bool(attrs.get("diverged", False)),
        curve=curve,
    )


def group_rows(trials: Sequence[TrialRecord]) -> list[GroupRow]:
    """One row per (batch size, rule) pair that any trial used, sorted by batch then rule."""
    keys = sorted(
        {(t.batch_size, t.scaling_rule or "?") for t in trials if t.batch_size is not None},
        key=lambda k: (k[0], rule_sort_key(k[1])),
    )
    rows = []
    for batch, rule in keys:
        members = [t for t in trials if t.batch_size == batch and (t.scaling_rule or "?") == rule]
        complete = [t for t in members if t.state == "COMPLETE"]
        vals = [t.val_accuracy for t in complete if t.val_accuracy is not None]
        lrs = [t.lr for t in members if t.lr is not None]
        mems = [t.peak_memory_bytes for t in members if t.peak_memory_bytes is not None]
        rows.append(
            GroupRow(
                batch_size=batch,
                scaling_rule=rule,
                lr=lrs[0] if lrs else None,
                complete=len(complete),
                pruned=sum(t.state == "PRUNED" for t in members),
                failed=sum(t.state == "FAIL" for t in members),
                running=sum(t.state in ("RUNNING", "WAITING") for t in members),
                best_val=max(vals) if vals else None,
                median_val=median(vals),
                median_test=median(t.test_accuracy for t in complete),
                median_samples_per_s=median(t.samples_per_s for t in members),
                peak_memory_bytes=max(mems) if mems else None,
            )
        )
    return rows


def _folklore(task_info: dict[str, Any], groups: Sequence[GroupRow]) -> Folklore | None:
    train_size = _int(task_info.get("train_size"))
    if train_size is None or train_size < 0:
        return None
    low, high = rule_of_thumb(train_size)
    scored = [g for g in groups if g.median_val is not None]
    best = max(scored, key=lambda g: (g.median_val, g.best_val or 0.0), default=None)
    return Folklore(
        train_size=train_size,
        low=low,
        high=high,
        optimum=best.batch_size if best else None,
        optimum_rule=best.scaling_rule if best else None,
        optimum_median_val=best.median_val if best else None,
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
        return (
            "Parameter importances compare at least 2 parameters that vary; here "
            f"{which} (the scaling rule was fixed), so its importance would trivially be 100%."
        )
    return None


def compute_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances (default evaluator) and a note; ``None`` if unavailable."""
    problem = importance_problem(study)
    if problem is not None:
        return None, problem
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"Optuna could not compute parameter importances ({exc})."
    return dict(importances), (
        "Share of the variation in final validation accuracy explained by each parameter "
        "(Optuna's default importance evaluator, complete trials)."
    )


def collect_report_data(study: optuna.Study, *, importances: bool = True) -> ReportData:
    """Read ``study`` once into a :class:`ReportData`.

    Args:
        study: A study in the core's record format (other studies work, with less to show).
        importances: Compute Optuna's parameter importances (about a second).
    """
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise ValueError(
            f"study {study.study_name!r} does not maximise one objective: a batch-size study "
            "maximises val_accuracy"
        )
    attrs = study.user_attrs
    config = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    space = attrs.get("space") if isinstance(attrs.get("space"), dict) else {}
    task_info = attrs.get("task_info") if isinstance(attrs.get("task_info"), dict) else {}
    probe = attrs.get("probe") if isinstance(attrs.get("probe"), dict) else None
    default_rule = config.get("scaling") if config.get("scaling") != "search" else None
    trials = [trial_record(t, default_rule) for t in study.get_trials(deepcopy=False)]
    counts = {state: sum(t.state == state for t in trials) for state in STATES}
    complete = [t for t in trials if t.state == "COMPLETE" and t.val_accuracy is not None]
    best = max(complete, key=lambda t: (t.val_accuracy, -t.number), default=None)
    groups = group_rows(trials)
    rules = sorted({t.scaling_rule for t in trials if t.scaling_rule}, key=rule_sort_key)
    metric_names = study.metric_names
    data = ReportData(
        study_name=study.study_name,
        metric_name=metric_names[0] if metric_names else "value",
        config=config,
        space=space,
        task_info=task_info,
        probe=probe,
        trials=trials,
        counts=counts,
        best=best,
        groups=groups,
        folklore=_folklore(task_info, groups),
        rules=rules,
    )
    if importances:
        data.importances, data.importance_note = compute_importances(study)
    else:
        data.importance_note = importance_problem(study) or ""
    return data
