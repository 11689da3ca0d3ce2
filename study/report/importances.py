"""Optuna's parameter importances for the report, or the sentence that says why there are
none (fewer than two complete trials, or fewer than two parameters that vary).

Example:
    >>> import optuna
    >>> importance_problem(optuna.create_study())
    'Parameter importances need at least 2 complete trials; this study has 0.'
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from study.record import study_metric
from study.report.words import MetricText


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
