"""Confirmation runs: enqueue the run the decision needs, inside the budget's claim.

:func:`study.decision.decide` says, from the stored trials, which cell needs a confirmation
run next, whether runs are in flight, and whether the study is done (decided, or stopped
undecided). Here that becomes a trial: a confirmation run of a cell is enqueued with fixed
parameters and the user attributes ``phase = "confirm"``, ``batch_size``, ``scaling_rule``
(so a queued or just-started run already counts for its cell); the objective never prunes it
and seeds it from its own trial number.

Enqueueing happens inside the budget's claim, under the storage lock
(:func:`study.budget.claim_trial`), and only when no trial is WAITING, so several workers never
enqueue the same run twice and a resume recomputes the same need from the stored trials.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.decision import Decision, Plan, decide
from study.record import TrialRecord, read_record

__all__ = ["Plan", "enqueue_confirm", "plan_records", "study_decision"]


def plan_records(study: optuna.Study, trials: Sequence[FrozenTrial], plan: Plan) -> list:
    """The records of ``trials`` read with the plan's metric and default rule."""
    default_rule = plan.scaling_rules[0] if len(plan.scaling_rules) == 1 else None
    names = study.metric_names or None
    return [
        read_record(t, default_rule=default_rule, metric_names=names, metric=plan.metric)
        for t in trials
    ]


def study_decision(study: optuna.Study, plan: Plan) -> Decision:
    """:func:`study.decision.decide` on the study's stored trials."""
    records: list[TrialRecord] = plan_records(study, study.get_trials(deepcopy=False), plan)
    return decide(plan, records)


def enqueue_confirm(study: optuna.Study, trials: Sequence[FrozenTrial], plan: Plan) -> Decision:
    """Enqueue the next confirmation run if one is due; return the decision it came from.

    Call under the study's claim lock (:func:`study.budget.claim_trial` does), with
    ``trials`` read under that lock. Nothing is enqueued while a trial is WAITING (that
    one is claimed first), so at most one confirmation run is ever queued and not running.
    """
    decision = decide(plan, plan_records(study, trials, plan))
    if any(t.state == TrialState.WAITING for t in trials):
        return decision
    if decision.next_cell is not None:
        key = decision.next_cell
        study.enqueue_trial(plan.params(key), user_attrs=plan.user_attrs(key))
    return decision
