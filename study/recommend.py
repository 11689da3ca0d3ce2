"""The answer of a study, built in one place: :class:`Recommendation` (stored by
:func:`store_recommendation` as the study user attribute ``recommendation``, its
:meth:`~Recommendation.to_dict`).

It reads the decision (:mod:`study.decision`) and writes it down with its figures:

* ``most_accurate``: the leader, the cell with the best mean over its search runs; its mean,
  interval (Student's t at ``--confidence``, across seeds on this validation set) and test
  mean with its own interval come from its **confirmation runs only**, made after it was
  chosen, so the runs that picked it do not flatter it.
* ``fastest_within``: the largest batch size that passed the fixed sequence of one-sided
  non-inferiority tests at ``--confidence`` (against the leader and against the next cells
  by the search runs, so that a leader picked by a lucky run does not carry a candidate
  along) and whose speed-up over the most accurate cell is
  measured (the interleaved timing's per-round ratios all above 1); the most accurate cell
  itself when none did. "Within" is "at most ``--tolerance`` behind, at that confidence".
* ``confidence``, ``decided`` (the decision was reached, not stopped by the budget or an
  undecided look), ``trials_used``, ``undecided_faster`` (the open comparison with its
  shortfall, standard error and the runs that would decide it), and a ``statement`` that
  names the confidence, the metric and the budget both cells trained for.
* Every cell shown keeps ``runs`` (all its finished runs, search and confirmation),
  ``confirm_runs`` and ``diverged``; a named cell with a diverged confirmation run is named
  with that warning.

A study whose leader has no ``--confirm-runs`` confirmation runs names no winner: both are
``None``, ``reason`` says why. Nothing here imports torch.

Example:
    >>> from study.decision import Plan
    >>> from study.record import TrialRecord
    >>> runs = [TrialRecord(number=i, batch_size=16, scaling_rule="linear", val_metric=v,
    ...                     state="COMPLETE", phase=p, train_time_s=1.0)
    ...         for i, (v, p) in enumerate([(0.95, "search"), (0.96, "confirm"),
    ...                                     (0.97, "confirm"), (0.95, "confirm")])]
    >>> answer = build_answer(Plan(total=4, exploration=1), runs)
    >>> answer.most_accurate["batch_size"], answer.most_accurate["confirm_runs"]
    (16, 3)
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from study.cells import CellKey, CellStats, cell_key, cell_stats, study_records
from study.decision import Decision, Plan, Sample, decide, samples
from study.record import CONFIRM, MetricInfo, TrialRecord
from study.stats import mean_interval

#: How many undecided faster cells the statement names.
UNDECIDED_SHOWN = 3


@dataclass(frozen=True)
class Speedup:
    """A speed-up of one batch size over another from interleaved timing rounds: the median
    of the per-round throughput ratios, their range, and whether every round agrees."""

    ratio: float | None
    low: float | None = None
    high: float | None = None
    rounds: int = 0
    source: str = "timing"

    @property
    def claimed(self) -> bool:
        """Measured side by side and faster in every round (the range stays above 1)."""
        return self.source == "timing" and self.rounds >= 2 and (self.low or 0.0) > 1.0


def speed_key(key: CellKey) -> int | str:
    """Where a cell's timing is found in the answer's speeds: its batch size, or a
    batch-size schedule's label (:func:`study.batch_schedule.schedule_speeds`)."""
    return key.schedule if key.schedule is not None else key.batch_size


def paired_speedup(
    speeds: Mapping[int, Mapping[str, Any]] | None, fast: int, slow: int
) -> Speedup | None:
    """``fast``'s throughput over ``slow``'s, round by round (``None`` without both timed).

    ``speeds`` maps a batch size to its timing: ``{"samples_per_s": median, "rates": [per
    round, None where not timed]}`` (one interleaved measurement, so round ``i`` of every
    batch size ran in the same stretch of time).
    """
    if not speeds or fast not in speeds or slow not in speeds:
        return None
    pairs = zip(speeds[fast].get("rates") or [], speeds[slow].get("rates") or [], strict=False)
    ratios = [a / b for a, b in pairs if a and b]
    if not ratios:
        return None
    return Speedup(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


@dataclass(frozen=True)
class Recommendation:
    """The answer (see the module docstring); :meth:`to_dict` is what the study stores."""

    most_accurate: dict[str, Any] | None
    fastest_within: dict[str, Any] | None
    tolerance: float
    confidence: float
    confirm_runs: int
    metric: dict[str, Any]
    decided: bool
    trials_used: int
    budget: dict[str, Any]
    statement: str
    rule: str
    reason: str | None = None
    undecided_faster: list[dict[str, Any]] = field(default_factory=list)
    speed_uncertain_cells: list[str] = field(default_factory=list)
    diverged_warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready answer (empty lists and ``None`` extras left out)."""
        data = asdict(self)
        for key in ("reason", "undecided_faster", "speed_uncertain_cells", "diverged_warning"):
            if not data[key]:
                data.pop(key)
        return data


def _budget_words(budget: Mapping[str, Any]) -> str:
    if budget.get("steps_per_trial"):
        return f"at {budget['steps_per_trial']} optimizer updates each"
    if budget.get("epochs_per_trial"):
        epochs = budget["epochs_per_trial"]
        return f"at {epochs} epoch{'s' if epochs != 1 else ''} each"
    return "at the same budget each"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _pick(
    key: CellKey,
    cell: CellStats | None,
    confirm: Sample,
    records: Sequence[TrialRecord],
    plan: Plan,
    speeds: Mapping[int, Mapping[str, Any]] | None,
    skip: int = 0,
) -> dict[str, Any]:
    """One named cell, its figures from its confirmation runs after the first ``skip`` (the
    runs that chose it, when it was chosen on confirmation runs)."""
    finished = sorted(
        (
            r
            for r in records
            if r.phase == CONFIRM
            and r.state in ("COMPLETE", "PRUNED")
            and cell_key(r, plan.lr_search_width) == key
        ),
        key=lambda r: r.number if r.number is not None else -1,
    )[skip:]
    runs = [r for r in finished if r.state == "COMPLETE" and r.val_metric is not None]
    estimate = Sample(confirm.outcomes[skip:])
    mean = sd = ci = None
    if estimate.values:
        mean, sd, ci = mean_interval(estimate.values, plan.confidence)
        if ci is not None:
            ci = plan.metric.clip(*ci)
    tests = [float(r.test_metric) for r in runs if r.test_metric is not None]
    test_mean = test_ci = None
    if tests:
        test_mean, _, test_ci = mean_interval(tests, plan.confidence)
        if test_ci is not None:
            test_ci = plan.metric.clip(*test_ci)
    times = [r.train_time_s for r in runs if r.train_time_s is not None]
    timed = (speeds or {}).get(speed_key(key)) or {}
    schedule = {"batch_schedule": key.schedule} if key.schedule is not None else {}
    return {
        "batch_size": key.batch_size,
        **schedule,
        "micro_batch_size": cell.micro_batch_size if cell else None,
        "devices": cell.devices if cell else None,
        "accumulation_steps": cell.accumulation_steps if cell else None,
        "scaling_rule": key.scaling_rule,
        "lr": cell.lr if cell else None,
        "lr_multiplier": 2**key.lr_bucket if key.lr_bucket is not None else None,
        "metric": plan.metric.name,
        "val_mean": mean,
        "val_sd": sd,
        "val_ci95": list(ci) if ci is not None else None,
        "interval": f"{plan.confidence:.0%} t-interval across seeds on this validation set",
        "estimate_runs": len(estimate.values),
        "test_mean": test_mean,
        "test_ci": list(test_ci) if test_ci is not None else None,
        "runs": cell.runs + cell.pruned if cell else confirm.runs,
        "confirm_runs": confirm.runs,
        "diverged": confirm.diverged,
        # The cell's one median time (all its complete runs), the figure its table row shows.
        "train_time_s_median": (
            cell.train_time_s_median
            if cell is not None and cell.train_time_s_median is not None
            else statistics.median(times)
            if times
            else None
        ),
        "samples_per_s": timed.get("samples_per_s")
        or (cell.samples_per_s_median if cell else None),
        "speed_source": "timing" if timed else "trials",
        "peak_memory_bytes": cell.peak_memory_bytes if cell else None,
        "speedup": None,
    }


def _describe(pick: Mapping[str, Any], plan: Plan, interval: bool = True) -> str:
    text = f"batch {pick['batch_size']} {pick['scaling_rule']}"
    if pick.get("batch_schedule"):
        text = f"schedule {pick['batch_schedule']} {pick['scaling_rule']}"
    if pick.get("lr_multiplier") is not None:
        text += f" lr x{pick['lr_multiplier']:.3g}"
    figures = f"{plan.metric.name} {_fmt(pick['val_mean'])}"
    if interval and pick.get("val_ci95"):
        lo, hi = pick["val_ci95"]
        figures += (
            f", {plan.confidence:.0%} interval {_fmt(lo)}-{_fmt(hi)} across "
            f"{pick.get('estimate_runs', pick['confirm_runs'])} seeds on this validation set"
        )
        if pick.get("estimate_runs", pick["confirm_runs"]) < pick["confirm_runs"]:
            figures += ", run after it was chosen"
    else:
        figures += f", {pick['confirm_runs']} confirmation runs"
    return f"{text} ({figures})"


def build_answer(
    plan: Plan,
    records: Sequence[TrialRecord],
    speeds: Mapping[int, Mapping[str, Any]] | None = None,
    budget: Mapping[str, Any] | None = None,
) -> Recommendation:
    """The answer of a study's records under ``plan`` (see the module docstring).

    Args:
        plan: The study's decision plan.
        records: Every trial's record.
        speeds: The answer's interleaved timing, by batch size (see :func:`paired_speedup`).
        budget: What each trial trained for and what the study spent (``epochs_per_trial`` or
            ``steps_per_trial``, ``trials``).
    """
    budget = dict(budget or {})
    decision = decide(plan, records)
    trials_used = sum(r.state in ("COMPLETE", "PRUNED") for r in records)
    base: dict[str, Any] = {
        "tolerance": plan.tolerance,
        "confidence": plan.confidence,
        "confirm_runs": plan.confirm_runs,
        "metric": plan.metric.to_dict(),
        "trials_used": trials_used,
        "budget": budget,
        "rule": (
            f"fixed-sequence one-sided Welch t-tests at {plan.confidence:.0%} on confirmation "
            f"runs (up to {plan.looks} looks, each at {plan.look_level:.2%}), up the batch "
            "sizes, each candidate against the leader and the next cells by the search"
        ),
    }
    confirm = samples(records, plan, CONFIRM)
    leader = decision.most_accurate or decision.leader
    lead = confirm.get(leader) if leader is not None else None
    if leader is None or lead is None or lead.runs < max(2, plan.confirm_runs):
        reason = "too few runs to confirm" if leader is not None else "no complete trials"
        words = (
            f"Too small to name a winner: the most accurate cell so far needs "
            f"{plan.confirm_runs} confirmation runs and has "
            f"{lead.runs if lead else 0}; run more --trials (or lower --confirm-runs)."
            if leader is not None
            else "No trial has completed yet, so there is no answer: run the study (more --trials)."
        )
        return Recommendation(None, None, decided=False, statement=words, reason=reason, **base)
    stats = {
        c.key: c for c in cell_stats(records, plan.metric, lr_search_width=plan.lr_search_width)
    }
    # its estimate from the runs after those that chose it, if it has two with a value
    skip = (
        decision.selection_runs
        if len(Sample(lead.outcomes[decision.selection_runs :]).values) >= 2
        else 0
    )
    best = _pick(leader, stats.get(leader), lead, records, plan, speeds, skip)
    if decision.selection_runs and not skip:
        best["interval"] += " (including the runs that chose it: the budget paid no others)"
    fast_key, uncertain = leader, []
    faster = [k for k in decision.passed if k.batch_size > leader.batch_size]
    for key in reversed(faster):  # largest batch first
        speedup = paired_speedup(speeds, speed_key(key), speed_key(leader))
        if speedup is None and not speeds:
            fast_key = key  # no timing at all: the trials' times stand, flagged below
            break
        if speedup is not None and speedup.claimed:
            fast_key = key
            break
        uncertain.append(key)
    fast = (
        best
        if fast_key == leader
        else _pick(fast_key, stats.get(fast_key), confirm[fast_key], records, plan, speeds)
    )
    speedup = paired_speedup(speeds, speed_key(fast_key), speed_key(leader))
    if fast is not best:
        if speedup is not None:
            fast["speedup"] = round(speedup.ratio or 0.0, 3)
            fast["speedup_range"] = [round(speedup.low or 0.0, 3), round(speedup.high or 0.0, 3)]
            fast["speedup_rounds"] = speedup.rounds
        elif best["train_time_s_median"] and fast["train_time_s_median"]:
            fast["speedup"] = round(best["train_time_s_median"] / fast["train_time_s_median"], 3)
    fast["speed_uncertain"] = bool(uncertain)
    undecided = _undecided(decision, plan)
    diverged = _diverged_words(best, fast)
    statement = _statement(best, fast, decision, plan, budget, uncertain, undecided, trials_used)
    return Recommendation(
        best,
        fast,
        decided=decision.decided,
        statement=statement + (f" {diverged}" if diverged else ""),
        undecided_faster=undecided,
        speed_uncertain_cells=[k.label for k in uncertain],
        diverged_warning=diverged,
        **base,
    )


def _undecided(decision: Decision, plan: Plan) -> list[dict[str, Any]]:
    entries = []
    for c in decision.comparisons:
        if c.status != "undecided":
            continue
        entry: dict[str, Any] = {"cell": c.key.label, "runs": c.runs}
        if c.test is not None:
            entry.update(shortfall=c.test.d, se=c.test.se)
        if c.runs_to_decide is not None:
            entry["runs_to_decide"] = c.runs_to_decide
        entries.append(entry)
    return entries


def _diverged_words(*picks: Mapping[str, Any]) -> str | None:
    seen, words = set(), []
    for p in picks:
        label = f"batch {p['batch_size']} {p['scaling_rule']}"
        if p.get("diverged") and label not in seen:
            seen.add(label)
            words.append(f"{label}: {p['diverged']} of {p['confirm_runs']} runs diverged")
    return ("Warning: " + "; ".join(words) + ".") if words else None


def _statement(
    best: Mapping[str, Any],
    fast: Mapping[str, Any],
    decision: Decision,
    plan: Plan,
    budget: Mapping[str, Any],
    uncertain: Sequence[CellKey],
    undecided: Sequence[Mapping[str, Any]],
    trials_used: int,
) -> str:
    when = _budget_words(budget)
    conf = f"{plan.confidence:.0%}"
    if fast is best:
        words = f"Most accurate: {_describe(best, plan)}, {when}."
        if uncertain:
            names = ", ".join(f"batch {k.batch_size} {k.scaling_rule}" for k in uncertain)
            words += (
                f" {names} {'is' if len(uncertain) == 1 else 'are'} within "
                f"{plan.tolerance:g} of it with {conf} confidence, but not measurably faster "
                "(the timing's rounds disagree)."
            )
        elif not undecided:
            words += f" No faster cell was shown within {plan.tolerance:g} of it at {conf}."
    else:
        ratio = fast.get("speedup")
        rng = fast.get("speedup_range")
        speed = f"{ratio:.3g}x the throughput" if ratio else "faster"
        if rng:
            speed += f" (range {rng[0]:.3g}-{rng[1]:.3g} over {fast['speedup_rounds']} rounds)"
        named = {(p["batch_size"], p["scaling_rule"]) for p in (best, fast)}
        others = [
            f"batch {k.batch_size} {k.scaling_rule}"
            for k in decision.references
            if (k.batch_size, k.scaling_rule) not in named
        ]
        also = f" (and of {' and '.join(others)}, also confirmed)" if others else ""
        words = (
            f"With {conf} confidence, {_describe(fast, plan, interval=False)} is within "
            f"{plan.tolerance:g} {plan.metric.name} of the most accurate, "
            f"{_describe(best, plan)}{also}; {when}, it trains with {speed}."
        )
    if undecided:
        shown = "; ".join(_undecided_text(e) for e in undecided[:UNDECIDED_SHOWN])
        words += f" Undecided (could be within {plan.tolerance:g} or not): {shown}."
    total = plan.total
    if decision.decided:
        words += f" Decided after {trials_used} of {total} trials."
    else:
        words += f" Stopped after {trials_used} of {total} trials, undecided."
    return words


def _undecided_text(entry: Mapping[str, Any]) -> str:
    text = entry["cell"]
    if "shortfall" in entry:
        text += f" ({entry['shortfall']:.2g} ± {entry['se']:.2g} behind, {entry['runs']} runs"
        needed = entry.get("runs_to_decide")
        if needed is not None:
            text += (
                f"; ~{needed} runs each would decide it"
                if needed < 100
                else ("; over 100 runs each to decide: it sits at the tolerance")
            )
        text += ")"
    else:
        text += f" ({entry['runs']} runs; the budget has no room for the comparison)"
    return text


def study_budget(study: optuna.Study) -> dict[str, Any]:
    """What the study spent: its trial budget, finished trials by phase, the per-trial budget."""
    config = study.user_attrs.get("config") or {}
    records = study_records(study)
    finished = [r for r in records if r.state in ("COMPLETE", "PRUNED")]
    budget: dict[str, Any] = {
        "trials": config.get("trials"),
        "finished": len(finished),
        "search_trials": sum(r.phase != CONFIRM for r in finished),
        "confirm_trials": sum(r.phase == CONFIRM for r in finished),
    }
    if config.get("budget") == "steps":
        budget["steps_per_trial"] = config.get("steps")
    elif config.get("epochs") is not None:
        budget["epochs_per_trial"] = config.get("epochs")
    return budget


def recommend(
    study: optuna.Study, speeds: Mapping[int, Mapping[str, Any]] | None = None
) -> Recommendation:
    """The answer of a stored study (its plan: :meth:`study.decision.Plan.for_reading`)."""
    return build_answer(Plan.for_reading(study), study_records(study), speeds, study_budget(study))


def store_recommendation(
    study: optuna.Study, speeds: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Compute :func:`recommend` and store it as the study user attribute
    ``recommendation``; return its dict."""
    data = recommend(study, speeds).to_dict()
    study.set_user_attr("recommendation", data)
    return data


__all__ = [
    "MetricInfo",
    "Recommendation",
    "Speedup",
    "build_answer",
    "paired_speedup",
    "recommend",
    "store_recommendation",
    "study_budget",
]
