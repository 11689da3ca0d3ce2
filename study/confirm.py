"""Search, then confirm: the part of the budget that trains promising cells again.

A study's ``--trials`` budget is split. The first :attr:`ConfirmPlan.search_budget` trials
(``SEARCH_FRACTION`` of the budget, rounded up; with ``--sampler grid`` at least the whole
grid) are the **search**: the sampler chooses them
and the pruner may stop them. Every later claim first asks :func:`next_confirm` whether a
cell still needs runs (below); if one does, the claim enqueues a **confirmation** trial
of that cell (fixed parameters, user attribute ``phase = "confirm"``, a fresh seed from its
own trial number, never pruned) and runs it; otherwise it runs one more search trial. So the
confirmation phase lasts as long as there is something to confirm, and what is left of the
budget goes back to the search (whose new finds may become candidates in turn).

**What is confirmed** (:func:`next_confirm`), re-planned at every claim from the complete
trials, in this order:

1. the cell with the best mean so far, until it has ``confirm_runs`` runs (when it falls
   behind after its new runs, the new leader is next: the winner's curse is paid here);
2. the speed side (:func:`fastest_open`): the *plausible* cells, those whose mean is at most
   ``tolerance + PLAUSIBLE_SDS * sigma`` behind the best mean (``sigma``: the pooled
   within-cell SD of single runs, ``FALLBACK_SIGMA_TOLERANCES * tolerance`` before any cell
   has two runs; :func:`confirm_order`) whose trials ran faster than the best cell's, taken
   largest batch first until one settles the answer. A plausible cell gets ``confirm_runs``
   runs; then, against the most accurate confirmed cell, it either qualifies (``d + z * se <=
   tolerance``, the answer's rule), is ruled out (``d - z * se >= tolerance``: the next cell
   is looked at) or is undecided. A cell that qualifies or is undecided and the most
   accurate cell take turns at more runs, up to ``MAX_RUNS_FACTOR * confirm_runs`` each
   (``VERIFY_QUALIFIED``: a qualifying cell too, so that it is named on those runs, not on
   the luck of a small SD in its first few); a cell that still qualifies then settles the
   answer (nothing further needs runs), one still undecided is passed.

So runs go to the two cells the answer names and to the fast cells that might beat the
current pick, not to plausible cells slower than the answer. A cell needs runs until it has
enough complete ones counting those still running or queued. ``STRATEGY = "all"`` restores
the earlier plan (every plausible cell to ``confirm_runs``, best and fastest alternately) for
``benchmarks/bench_confirm.py``, which measured both (``docs/answer.md``).

Confirmation trials are ordinary trials: the exact budget, resume, workers and the dashboard
treat them as any other. Enqueueing happens inside the budget's claim, under the storage lock
(:func:`study.budget.claim_trial`), and only when no trial is WAITING, so several workers never
enqueue the same run twice and a resume recomputes the same need from the stored trials.
The cells' user attributes (``batch_size``, ``scaling_rule``, ``lr_multiplier``) are stored
when the trial is enqueued, so a queued or just-started run already counts for its cell.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.recommend import (
    UNCERTAINTY_Z,
    CellKey,
    CellStats,
    answer_sigma,
    cell_key,
    cell_stats,
    pooled_sd,
    selection_bias,
    shortfall,
)
from study.record import ACCURACY, MetricInfo, TrialRecord, read_record, study_metric

#: Share of ``--trials`` the search gets before confirmation starts (rounded up); see
#: ``docs/answer.md`` for the measurements behind it.
SEARCH_FRACTION = 0.65
#: A cell is a candidate while its mean is within ``tolerance + PLAUSIBLE_SDS * sigma`` of
#: the best mean (sigma: pooled SD of single runs).
PLAUSIBLE_SDS = 2.0
#: ``sigma`` in tolerances while no cell has two complete runs.
FALLBACK_SIGMA_TOLERANCES = 2.0
#: An undecided fast cell (and the most accurate cell beside it) gets more runs, up to
#: ``MAX_RUNS_FACTOR * confirm_runs`` (1: no extra runs); see :func:`fastest_open`.
MAX_RUNS_FACTOR = 2
#: How confirmation runs are chosen: ``"sequential"`` (the best cell, then the faster
#: plausible cells until one settles the answer; :func:`next_confirm`) or ``"all"`` (every
#: plausible cell to ``confirm_runs``, as studies did before; kept for
#: ``benchmarks/bench_confirm.py``).
STRATEGY = "sequential"
#: The order of the speed side's walk: ``"batch"`` (larger batches first, among the cells
#: whose trials ran faster than the best cell's) or ``"time"`` (the trials' median times,
#: fastest first). A trial's time is one noisy measurement, and beyond the hardware's knee the
#: large batches' times are nearly equal, so ordering by them often stopped the walk at the
#: best cell before the largest batches were looked at (``docs/answer.md``).
WALK_ORDER = "batch"
#: Whether the walk also gives one unpruned run to a cell whose every trial was pruned (not
#: as diverged) and whose batch is larger than the best cell's: a pruned trial has no final
#: value, so without it such a cell never enters the answer (``docs/answer.md``).
WALK_PRUNED = True
#: Whether a faster cell that qualifies gets more runs before the walk stops at it: it and the
#: most accurate cell take turns, up to ``MAX_RUNS_FACTOR * confirm_runs`` each, and the cell
#: is named only if it still qualifies then (a pass on 3 runs is often the luck of a small
#: SD; ``docs/answer.md``).
VERIFY_QUALIFIED = True
#: User attribute values of the two phases.
SEARCH, CONFIRM = "search", "confirm"


@dataclass(frozen=True)
class ConfirmPlan:
    """How one study splits its budget between search and confirmation.

    Args:
        total: The study's ``--trials``.
        confirm_runs: Complete runs each candidate cell needs (``--confirm-runs``).
        tolerance: ``--tolerance``, in the metric's units.
        metric: The study's metric (its direction).
        scaling_rules: The space's rules (a ``scaling_rule`` parameter only with several).
        lr_search_width: ``--lr-search-width`` (above 1: an ``lr_multiplier`` parameter).
        search_fraction: Share of ``total`` for the search (rounded up, at least 1 trial).
        min_search: The fewest search trials (``--sampler grid``: the grid's size, so that
            the grid is covered before anything is confirmed).
    """

    total: int
    confirm_runs: int
    tolerance: float
    metric: MetricInfo = ACCURACY
    scaling_rules: tuple[str, ...] = ("linear",)
    lr_search_width: float = 1.0
    search_fraction: float = SEARCH_FRACTION
    min_search: int = 1

    @property
    def search_budget(self) -> int:
        """Trials of the search before any confirmation: ``ceil(fraction * total)``, at least
        ``min_search``, at most ``total``."""
        share = math.ceil(self.search_fraction * self.total - 1e-9)
        return max(1, min(self.total, max(share, self.min_search)))

    @classmethod
    def of_study(
        cls, study: optuna.Study, total: int, search_fraction: float = SEARCH_FRACTION
    ) -> ConfirmPlan | None:
        """The plan of a study made by this tool, from its stored ``config`` and ``space``;
        ``None`` for a study without ``confirm_runs`` in its config (made before the
        confirmation phase existed) or with ``confirm_runs`` below 2 (an interval needs 2)."""
        attrs = study.user_attrs
        config, space = attrs.get("config") or {}, attrs.get("space") or {}
        runs = config.get("confirm_runs")
        if not isinstance(runs, int) or runs < 2 or not space:
            return None
        rules = tuple(space.get("scaling_rules") or ("linear",))
        grid = 1
        if config.get("sampler") == "grid":  # as runner.make_sampler: batch sizes x rules
            grid = len(space.get("batch_sizes") or ()) * (len(rules) if len(rules) > 1 else 1)
        return cls(
            total=int(total),
            confirm_runs=runs,
            tolerance=float(config.get("tolerance", 0.01)),
            metric=study_metric(study),
            scaling_rules=rules,
            lr_search_width=float(config.get("lr_search_width") or 1.0),
            search_fraction=search_fraction,
            min_search=grid,
        )

    def params(self, key: CellKey) -> dict[str, Any]:
        """The fixed parameters of a confirmation run of ``key`` (those the objective asks)."""
        params: dict[str, Any] = {"batch_size": key.batch_size}
        if len(self.scaling_rules) > 1:
            params["scaling_rule"] = key.scaling_rule
        if self.lr_search_width > 1:
            width = self.lr_search_width
            centre = 2 ** (key.lr_bucket or 0.0)
            params["lr_multiplier"] = min(width, max(1 / width, centre))
        return params

    def user_attrs(self, key: CellKey) -> dict[str, Any]:
        """The user attributes a confirmation run is enqueued with: its phase and cell."""
        attrs: dict[str, Any] = {
            "phase": CONFIRM,
            "batch_size": key.batch_size,
            "scaling_rule": key.scaling_rule,
        }
        if self.lr_search_width > 1:
            attrs["lr_multiplier"] = self.params(key)["lr_multiplier"]
        return attrs


def confirm_order(
    cells: Sequence[CellStats], metric: MetricInfo, tolerance: float
) -> list[CellStats]:
    """Candidate cells, most urgent first (see the module docstring)."""
    scored = [c for c in cells if c.runs > 0 and c.val_mean is not None]
    if not scored:
        return []
    best = max(metric.sign * (c.val_mean or 0.0) for c in scored)
    sigma = pooled_sd(scored)
    if sigma is None:
        sigma = FALLBACK_SIGMA_TOLERANCES * tolerance
    margin = tolerance + PLAUSIBLE_SDS * sigma
    plausible = [c for c in scored if best - metric.sign * (c.val_mean or 0.0) <= margin]
    by_mean = sorted(plausible, key=lambda c: -metric.sign * (c.val_mean or 0.0))
    by_time = sorted(
        plausible,
        key=lambda c: c.train_time_s_median if c.train_time_s_median is not None else math.inf,
    )
    order: list[CellStats] = []
    for pair in zip(by_mean, by_time, strict=True):
        for cell in pair:
            if cell not in order:
                order.append(cell)
    return order


def search_trials(records: Sequence[TrialRecord]) -> int:
    """Search trials that count towards (or will soon count towards) the search budget:
    finished, running or queued again (FAIL attempts do not count)."""
    states = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
    return sum(r.phase != CONFIRM and r.state in states for r in records)


def next_confirm(plan: ConfirmPlan, records: Sequence[TrialRecord]) -> CellKey | None:
    """The cell the next trial should confirm, or ``None`` (search instead).

    ``None`` while the search has not used its share, and once every candidate has
    ``confirm_runs`` complete runs counting the running and queued ones.
    """
    if search_trials(records) < plan.search_budget:
        return None
    cells = cell_stats(records, plan.metric, lr_search_width=plan.lr_search_width)
    pending: Counter[CellKey] = Counter()
    for r in records:
        if r.state in ("RUNNING", "WAITING"):
            key = cell_key(r, plan.lr_search_width)
            if key is not None:
                pending[key] += 1
    if STRATEGY == "all":
        for cell in confirm_order(cells, plan.metric, plan.tolerance):
            if cell.runs + pending[cell.key] < plan.confirm_runs:
                return cell.key
        return None
    return _top_needs_runs(cells, plan, pending) or fastest_open(cells, plan, pending)


def _top_needs_runs(
    cells: Sequence[CellStats], plan: ConfirmPlan, pending: Counter[CellKey]
) -> CellKey | None:
    """The cell with the best mean so far, while it has fewer than ``confirm_runs`` runs
    (counting queued and running ones)."""
    scored = [c for c in cells if c.runs > 0 and c.val_mean is not None]
    if not scored:
        return None
    top = max(scored, key=lambda c: (plan.metric.sign * (c.val_mean or 0.0), c.runs))
    return top.key if top.runs + pending[top.key] < plan.confirm_runs else None


def fastest_open(
    cells: Sequence[CellStats], plan: ConfirmPlan, pending: Counter[CellKey]
) -> CellKey | None:
    """The next run the speed side of the answer needs, or ``None``.

    Walks the plausible cells (see :func:`confirm_order`) whose trials ran faster than the
    best cell's, largest batch first (``WALK_ORDER``), and stops at the first that settles the
    question: the cell with the best mean, the most accurate confirmed cell, or a confirmed
    cell that qualifies (``d + z * se <= tolerance`` against the most accurate confirmed
    cell) with ``MAX_RUNS_FACTOR * confirm_runs`` runs each (``confirm_runs`` without
    ``VERIFY_QUALIFIED``). On the way, a cell with fewer than
    ``confirm_runs`` runs gets one (``None`` while its runs are queued or running); a
    confirmed cell that is ruled out (``d - z * se >= tolerance``) is passed; a qualifying or
    undecided one gets more runs, it and the most accurate cell taking turns (the one with
    fewer runs first, the cell on a tie), each up to ``MAX_RUNS_FACTOR * confirm_runs``; one
    still undecided then is passed. A cell larger than the best whose every trial was pruned
    (not as diverged) gets one unpruned run at its place in the walk (``WALK_PRUNED``), then
    is walked like the others. Cells slower than the answer never get confirmation runs.
    """
    plausible = confirm_order(cells, plan.metric, plan.tolerance)
    if not plausible:
        return None
    sign = plan.metric.sign
    top = max(plausible, key=lambda c: (sign * (c.val_mean or 0.0), c.runs))
    confirmed = [c for c in plausible if c.runs >= plan.confirm_runs]
    best = max(confirmed, key=lambda c: (sign * (c.val_mean or 0.0), c.runs), default=None)
    cap = max(plan.confirm_runs, MAX_RUNS_FACTOR * plan.confirm_runs)
    sigma = answer_sigma(confirmed)
    bias = selection_bias(confirmed, plan.metric)
    reference = (best or top).train_time_s_median
    anchor = (best or top).batch_size
    unknown = [c for c in cells if _pruned_only(c) and c.batch_size > anchor] if WALK_PRUNED else []
    for cell in sorted([*plausible, *unknown], key=_walk_key):
        if cell.key == top.key or (best is not None and cell.key == best.key):
            return None
        if cell.runs == 0:  # every trial pruned: one unpruned run tells where it ends
            return None if pending[cell.key] else cell.key
        if WALK_ORDER == "batch" and not _faster(cell, reference):
            continue  # its trials were no faster than the best's: confirming it cannot pay
        if cell.runs < plan.confirm_runs:
            return cell.key if cell.runs + pending[cell.key] < plan.confirm_runs else None
        if best is None:
            return None  # nothing to compare with until the best cell is confirmed
        d, se = shortfall(best, cell, plan.metric, sigma, bias)
        qualified = d + UNCERTAINTY_Z * se <= plan.tolerance
        if qualified and not VERIFY_QUALIFIED:
            return None
        if not qualified and d - UNCERTAINTY_Z * se >= plan.tolerance:
            continue  # ruled out
        runs = {c.key: c.runs + pending[c.key] for c in (cell, best)}
        for choice in sorted((cell, best), key=lambda c: runs[c.key]):
            if runs[choice.key] < cap:
                return choice.key
        if qualified:
            return None  # it still qualifies on the cap's runs: the answer is settled
    return None


def _pruned_only(cell: CellStats) -> bool:
    """Whether all of ``cell``'s trials were pruned, none as diverged."""
    return cell.runs == 0 and cell.pruned > 0 and cell.diverged == 0


def _walk_key(cell: CellStats) -> float:
    """Where ``cell`` comes in the walk: larger batches first (``WALK_ORDER = "batch"``), or
    by the trials' median time (``"time"``)."""
    if WALK_ORDER == "batch":
        return -cell.batch_size
    return cell.train_time_s_median if cell.train_time_s_median is not None else math.inf


def _faster(cell: CellStats, reference: float | None) -> bool:
    """Whether ``cell``'s trials ran faster than ``reference`` seconds (``True`` without one)."""
    if reference is None:
        return True
    return cell.train_time_s_median is not None and cell.train_time_s_median < reference


def _records(study: optuna.Study, trials: Sequence[FrozenTrial], plan: ConfirmPlan) -> list:
    default_rule = plan.scaling_rules[0] if len(plan.scaling_rules) == 1 else None
    names = study.metric_names or None
    return [
        read_record(t, default_rule=default_rule, metric_names=names, metric=plan.metric)
        for t in trials
    ]


def enqueue_confirm(
    study: optuna.Study, trials: Sequence[FrozenTrial], plan: ConfirmPlan
) -> CellKey | None:
    """Enqueue the next confirmation run if one is due; return its cell (else ``None``).

    Call under the study's claim lock (:func:`study.budget.claim_trial` does), with
    ``trials`` read under that lock. Nothing is enqueued while a trial is WAITING (that
    one is claimed first), so at most one confirmation run is ever queued and not running.
    """
    if any(t.state == TrialState.WAITING for t in trials):
        return None
    key = next_confirm(plan, _records(study, trials, plan))
    if key is None:
        return None
    study.enqueue_trial(plan.params(key), user_attrs=plan.user_attrs(key))
    return key
