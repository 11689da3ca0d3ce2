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
from optuna.trial import TrialState

from study.record import TrialRecord, int_or_none, number_or_none, read_record
from study.units import format_percent

#: Order in which scaling rules are listed; other names follow alphabetically.
RULE_ORDER = ("linear", "sqrt", "none")

#: Practitioners' starting ranges by training-set size: (fewer than N samples, low, high).
RULES_OF_THUMB = ((1_000, 16, 32), (100_001, 32, 256), (math.inf, 256, 2048))

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

#: The one multi-objective shape a batch-size study takes (``--objectives accuracy,time``):
#: its metric names, directions and the ``config["objectives"]`` that asks for it.
TWO_OBJECTIVES = ("val_accuracy", "train_time_s")
TWO_DIRECTIONS = (optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE)
TWO_OBJECTIVES_CONFIG = ("accuracy", "time")


@dataclass(frozen=True)
class GroupRow:
    """Results of one (batch size, scaling rule) pair.

    ``best_val``, ``median_val`` and ``median_test`` use complete trials only: a pruned trial
    stopped early, so its accuracy is not comparable. ``lr`` is the rule's learning rate (before
    a searched multiplier); ``best_multiplier`` the multiplier of the best complete trial.
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
            f"validation accuracy {format_percent(self.optimum_median_val, 'n/a')})"
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
    metric_names: list[str] = field(default_factory=list)
    front: list[TrialRecord] = field(default_factory=list)
    noise_scale: NoiseScale | None = None

    @property
    def multi_objective(self) -> bool:
        """The study also minimises training time (``--objectives accuracy,time``)."""
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
        lrs = [t.rule_lr for t in members if t.rule_lr is not None]
        best = max(complete, key=lambda t: t.val_accuracy or 0.0, default=None)
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
                best_multiplier=best.lr_multiplier if best else None,
            )
        )
    return rows


def _folklore(task_info: dict[str, Any], groups: Sequence[GroupRow]) -> Folklore | None:
    train_size = int_or_none(task_info.get("train_size"))
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
    """Optuna's parameter importances (default evaluator) and a note; ``None`` if unavailable.

    For a two-objective study (accuracy and time) the importances are those of reaching the
    Pareto front (Optuna's default evaluator on a multi-objective study).
    """
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
            "validation accuracy and training time (Optuna's default importance evaluator, "
            "complete trials)."
        )
    return dict(importances), (
        "Share of the variation in final validation accuracy explained by each parameter "
        "(Optuna's default importance evaluator, complete trials)."
    )


def study_shape_problem(study: optuna.Study) -> str | None:
    """Why ``study`` is not a batch-size study's shape (``it ...``), or ``None`` if it is.

    A batch-size study maximises ``val_accuracy``; with ``--objectives accuracy,time`` it
    maximises ``val_accuracy`` and minimises ``train_time_s``. Any other shape is refused.
    """
    directions = tuple(study.directions)
    if directions == (optuna.study.StudyDirection.MAXIMIZE,):
        return None
    if len(directions) == 1:
        return "minimises its objective"
    config = study.user_attrs.get("config")
    asked = config.get("objectives") if isinstance(config, dict) else None
    names = study.metric_names
    named = names is not None and tuple(names) == TWO_OBJECTIVES
    if directions == TWO_DIRECTIONS and (
        named or (names is None and asked is not None and tuple(asked) == TWO_OBJECTIVES_CONFIG)
    ):
        return None
    if len(directions) == 2:
        shown = ", ".join(
            f"{n} ({d.name.lower()})"
            for n, d in zip(names or ["objective 0", "objective 1"], directions, strict=False)
        )
        return f"has the objectives {shown}, not val_accuracy (maximize), train_time_s (minimize)"
    return f"has {len(directions)} objectives"


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
        raise ValueError(
            f"study {study.study_name!r} {problem}: a batch-size study maximises val_accuracy "
            "(and, with --objectives accuracy,time, minimises train_time_s)"
        )
    attrs = study.user_attrs
    config = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    space = attrs.get("space") if isinstance(attrs.get("space"), dict) else {}
    task_info = attrs.get("task_info") if isinstance(attrs.get("task_info"), dict) else {}
    probe = attrs.get("probe") if isinstance(attrs.get("probe"), dict) else None
    default_rule = config.get("scaling") if config.get("scaling") != "search" else None
    multi = len(study.directions) > 1
    metric_names = list(study.metric_names or (TWO_OBJECTIVES if multi else ["value"]))
    trials = [read_record(t, default_rule, metric_names) for t in study.get_trials(deepcopy=False)]
    counts = {state: sum(t.state == state for t in trials) for state in STATES}
    complete = [t for t in trials if t.state == "COMPLETE" and t.val_accuracy is not None]
    best = None
    if not multi:  # two objectives have no single best: the Pareto front stands in
        best = max(complete, key=lambda t: (t.val_accuracy, -t.number), default=None)
    groups = group_rows(trials)
    rules = sorted({t.scaling_rule for t in trials if t.scaling_rule}, key=rule_sort_key)
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
        groups=groups,
        folklore=_folklore(task_info, groups),
        rules=rules,
        metric_names=metric_names,
        front=_front(study, trials) if multi else [],
        noise_scale=_noise_scale(attrs, trials),
    )
    if importances:
        data.importances, data.importance_note = compute_importances(study)
    else:
        data.importance_note = importance_problem(study) or ""
    return data
