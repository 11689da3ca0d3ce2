"""The decision: which cell is most accurate, which faster cells are within tolerance of it, at
a stated confidence, and which run (if any) the study still needs to decide.

One procedure, re-derived from the stored trials at every claim (so workers and a resume see
the same state), in three stages:

1. **Explore.** The sampler runs the first :attr:`Plan.exploration` trials (three quarters
   of the space's cells, rounded up, every cell with the grid sampler, at most the budget:
   :func:`exploration_trials`); the pruner may stop them. These *search* runs select; they
   are never used to estimate.
2. **Select, then estimate.** The cells are ranked by their shrunken search means
   (:func:`ranked`); the first is the **leader**, the next :attr:`Plan.contenders` its
   contenders, together the **references** (:func:`references`). Each gets ``confirm_runs``
   fresh, unpruned confirmation runs (``phase = "confirm"``). The **most accurate** cell is
   the reference with the best mean over those first runs (:func:`most_accurate`); it gets
   ``confirm_runs`` more before the study stops, and its reported mean and interval come from
   those later runs only, so the runs that picked it do not flatter it (sample splitting).
   With one reference the leader is the most accurate, chosen on the search runs.
3. **A fixed sequence of non-inferiority tests.** The faster candidates are the cells of
   batch sizes above the most accurate cell's (speed enters through this fixed order, never
   through timings): at each batch size the cell with the best search mean. A candidate is
   dropped when its search runs already put it confidently more than the tolerance behind the
   leader (its lower bound, one-sided at the confidence, above the tolerance). The sequence
   starts at the largest candidate whose *shrunken* search shortfall (the empirical-Bayes
   means that rank the leader, :func:`shrunken_means`) is within the tolerance (the smallest
   candidate when none is) and goes up the batch sizes. Each candidate is tested on
   confirmation runs only, against **every** reference but itself: shortfall ``d`` (Welch's
   ``se`` and degrees of freedom); it **passes** when ``d + t * se <= tolerance`` against
   each (an intersection-union test, so no level is split), is **ruled out** when ``d - t *
   se >= tolerance`` against the leader. Up to :attr:`Plan.looks` looks (two by default): at
   ``confirm_runs`` runs of each, and, while undecided, at ``2 * confirm_runs``, ...; each
   look tests at Pocock's per-look level (:func:`study.stats.pocock_level`) so that passing at
   any look errs at ``1 - confidence`` at most. The sequence stops at the first candidate that
   does not pass (ruled out, undecided, or a confirmation run that diverged), so the
   familywise chance of naming a cell truly outside the tolerance stays at ``1 - confidence``
   (the order was fixed by the search runs before any confirmation run was looked at).

The study is **decided** when the sequence has ended on a pass of its last candidate or on a
candidate ruled out, and stops there, whatever budget is left. It **stops undecided** when a
look needs more runs than the budget has left, when a candidate is still undecided after its
last look, or when a look says that the last could not decide it (about
:func:`runs_to_decide` runs each would, more than the last look's); the open comparison is
named with the runs it would need. ``--trials`` stays the cap. Which trials run depends only
on the seed and the metric values.

Every run counts: a confirmation run that diverged (NaN loss or collapse) stays one of the
cell's runs (it is never re-run away); a candidate with one fails its test, and the leader's
divergences are reported with the answer.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from study.cells import CellKey, cell_key
from study.record import ACCURACY, CONFIRM, MetricInfo, TrialRecord, study_metric
from study.stats import Welch, pocock_level, t_quantile, welch

#: Above this many runs each, the runs a comparison would need are reported as "over" it.
RUNS_TO_DECIDE_CAP = 100
#: The search trials before any confirmation, as a share of the space's cells. Replayed on the
#: saved grids (400 studies each, docs/answer.md): digits 0.968 truly within at 28% of a 5-seed
#: grid's trials (as many trials as cells: 0.975 at 32%; a half: 0.960 at 22%), regression 0.983
#: at 32% (0.958 at 37%; 0.965 at 27%).
EXPLORATION_SHARE = 0.75
#: The single-run SD the candidates' screen assumes before any cell has two search runs, in
#: tolerances.
FALLBACK_SIGMA_TOLERANCES = 2.0


@dataclass(frozen=True)
class Sample:
    """The finished runs of one cell in one phase, in trial order: a final value, or ``None``
    for a run stopped as diverged."""

    outcomes: tuple[float | None, ...] = ()

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(v for v in self.outcomes if v is not None)

    @property
    def diverged(self) -> int:
        return sum(v is None for v in self.outcomes)

    @property
    def runs(self) -> int:
        """Finished runs: those with a final value and those that diverged."""
        return len(self.outcomes)

    @property
    def mean(self) -> float | None:
        values = self.values
        return sum(values) / len(values) if values else None

    def first(self, n: int) -> Sample:
        """The first ``n`` runs: a look tests a fixed number of runs, never more."""
        return Sample(self.outcomes[:n])


@dataclass(frozen=True)
class Comparison:
    """One candidate of the sequence against the leader.

    Attributes:
        key: The candidate cell.
        search_shortfall: Its shortfall on the search runs (positive: worse), which placed it.
        status: ``pass``, ``out`` (ruled out), ``undecided`` (both looks done, or the budget
            cannot pay the next look), ``diverged`` (a confirmation run diverged) or ``open``
            (its current look still needs runs).
        looks: Looks taken.
        test: The last look's Welch comparison on confirmation runs (``None`` before one).
        runs: The candidate's finished confirmation runs.
        runs_to_decide: About how many runs each of it and the leader would decide it at the
            plan's confidence, if its shortfall and SDs held (undecided only).
    """

    key: CellKey
    search_shortfall: float | None
    status: str
    looks: int = 0
    test: Welch | None = None
    runs: int = 0
    runs_to_decide: int | None = None


@dataclass(frozen=True)
class Decision:
    """Where the study stands (see the module docstring).

    Attributes:
        stage: ``explore`` (the sampler's turn), ``wait`` (the exploration is spent and its
            last runs are in flight elsewhere), ``confirm`` (a confirmation run is due or in
            flight) or ``done`` (nothing more to run: decided, or stopped undecided).
        leader: The most accurate cell by its search runs (``None`` before one completes).
        comparisons: The candidates reached so far, in the sequence's order.
        next_cell: The cell whose confirmation run should be enqueued next, if any.
        decided: Whether the answer is decided at the plan's confidence.
        reason: Why the study stops (``done``), in words.
        references: The leader and its contenders (:func:`references`), once the
            confirmation has begun.
        most_accurate: The reference with the best mean over its first ``confirm_runs``
            confirmation runs (the leader while only one reference is confirmed).
        selection_runs: How many of ``most_accurate``'s first confirmation runs chose it
            (``confirm_runs`` among several references, 0 for the leader alone): its reported
            mean and interval come from its runs after them.
    """

    stage: str
    leader: CellKey | None = None
    comparisons: tuple[Comparison, ...] = ()
    next_cell: CellKey | None = None
    decided: bool = False
    reason: str = ""
    references: tuple[CellKey, ...] = ()
    most_accurate: CellKey | None = None
    selection_runs: int = 0

    @property
    def passed(self) -> list[CellKey]:
        """The candidates shown within tolerance, in the sequence's (batch size) order."""
        return [c.key for c in self.comparisons if c.status == "pass"]

    @property
    def open(self) -> list[Comparison]:
        """The comparison that ended the sequence without a decision (at most one)."""
        return [c for c in self.comparisons if c.status == "undecided"]


@dataclass(frozen=True)
class Plan:
    """The decision's settings, one frozen object passed explicitly: what a user sets and the
    study stores in its ``config`` (``--confidence``, ``--tolerance``, ``--confirm-runs``,
    ``--trials``), the space's cells, and the settings a study pins in its ``plan`` attribute
    when it is created (:func:`plan_settings`).

    Args:
        total: The study's ``--trials`` (the cap).
        confirm_runs: Runs a look needs of each cell (``--confirm-runs``, at least 2).
        tolerance: ``--tolerance``, in the metric's units.
        confidence: ``--confidence``: one minus the chance of naming a cell truly outside.
        metric: The study's metric (its direction).
        exploration: Search trials before any confirmation (:func:`exploration_trials`).
        scaling_rules: The space's rules (a ``scaling_rule`` parameter only with several).
        lr_search_width: ``--lr-search-width`` (above 1, cells split by LR bucket).
        contenders: Cells after the leader (by the search runs) that a candidate must also be
            shown within the tolerance of (:func:`references`).
        looks: The most looks a comparison gets, at ``confirm_runs``, ``2 * confirm_runs``,
            ... runs of each cell; each look tests at Pocock's level for that many.
    """

    total: int
    confirm_runs: int = 3
    tolerance: float = 0.01
    confidence: float = 0.95
    metric: MetricInfo = ACCURACY
    exploration: int = 1
    scaling_rules: tuple[str, ...] = ("linear",)
    lr_search_width: float = 1.0
    contenders: int = 2
    looks: int = 2

    @property
    def reference_count(self) -> int:
        """The leader and the contenders a candidate is held against: as many contenders as
        the budget after the exploration can give a first look beside the leader and one
        candidate."""
        room = (self.total - self.exploration) // max(2, self.confirm_runs) - 2
        return 1 + max(0, min(self.contenders, room))

    @property
    def look_level(self) -> float:
        """The one-sided confidence each look tests at (Pocock's, for :attr:`looks` looks)."""
        return 1.0 - pocock_level(1.0 - self.confidence, self.looks)

    @classmethod
    def of_study(cls, study: optuna.Study, total: int) -> Plan | None:
        """The plan of a study made by this tool, from its stored ``config`` and ``space``;
        ``None`` for a study without ``confirm_runs`` (at least 2) or without a space."""
        attrs = study.user_attrs
        config, space = attrs.get("config") or {}, attrs.get("space") or {}
        runs = config.get("confirm_runs")
        if not isinstance(runs, int) or runs < 2 or not space:
            return None
        rules = tuple(space.get("scaling_rules") or ("linear",))
        choices = len(space.get("batch_sizes") or ()) + len(space.get("schedules") or ())
        cells = choices * len(rules)
        pinned = {**plan_settings(), **(attrs.get("plan") or {})}
        every_cell = config.get("sampler") == "grid"
        share = float(pinned["exploration_share"])
        return cls(
            total=int(total),
            confirm_runs=runs,
            tolerance=float(config.get("tolerance", 0.01)),
            confidence=float(config.get("confidence", 0.95)),
            metric=study_metric(study),
            exploration=exploration_trials(int(total), cells, every_cell, share),
            scaling_rules=rules,
            lr_search_width=float(config.get("lr_search_width") or 1.0),
            contenders=int(pinned["contenders"]),
            looks=int(pinned["looks"]),
        )

    @classmethod
    def for_reading(cls, study: optuna.Study) -> Plan:
        """The plan the answer of a stored study is read with: :meth:`of_study` at its stored
        ``--trials``, else (a study made before the decision plan existed, or by plain
        Optuna) the defaults with its space's rules and no exploration."""
        config = study.user_attrs.get("config") or {}
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        total = int(config.get("trials") or finished or 1)
        plan = cls.of_study(study, total)
        if plan is not None:
            return plan
        space = study.user_attrs.get("space") or {}
        rules = tuple(space.get("scaling_rules") or ("linear",))
        return cls(
            total=total,
            tolerance=float(config.get("tolerance", 0.01)),
            confidence=float(config.get("confidence", 0.95)),
            metric=study_metric(study),
            exploration=0,
            scaling_rules=rules,
            lr_search_width=float(config.get("lr_search_width") or 1.0),
        )

    def params(self, key: CellKey) -> dict[str, Any]:
        """The fixed parameters of a confirmation run of ``key`` (those the objective asks)."""
        params: dict[str, Any] = {"batch_size": key.schedule or key.batch_size}
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
        if key.schedule is not None:
            attrs["batch_schedule"] = key.schedule
        if self.lr_search_width > 1:
            attrs["lr_multiplier"] = self.params(key)["lr_multiplier"]
        return attrs


def plan_settings() -> dict[str, Any]:
    """The decision's settings a new study stores as its ``plan`` user attribute, so that a
    resume, a worker or a later reading decides it as it began, whatever a newer version's
    defaults: :attr:`Plan.contenders`, :attr:`Plan.looks` and :data:`EXPLORATION_SHARE`. A
    study without one is read with these."""
    return {
        "contenders": Plan.contenders,
        "looks": Plan.looks,
        "exploration_share": EXPLORATION_SHARE,
    }


def exploration_trials(
    total: int, cells: int, every_cell: bool = False, share: float = EXPLORATION_SHARE
) -> int:
    """The search trials of a study of ``total`` trials over ``cells`` cells: ``share`` of the
    cells, rounded up (every cell with ``every_cell``, the grid sampler's promise), at least 1
    and at most ``total``.

    Example:
        >>> exploration_trials(50, 24), exploration_trials(50, 18), exploration_trials(10, 24)
        (18, 14, 10)
    """
    return max(1, min(total, math.ceil((1.0 if every_cell else share) * cells)))


def samples(records: Sequence[TrialRecord], plan: Plan, phase: str) -> dict[CellKey, Sample]:
    """Finished runs per cell of one phase (``confirm``, or anything else for the search):
    complete runs with a value, and runs stopped as diverged. Runs the pruner stopped are
    left out (they have no final value)."""
    found: dict[CellKey, list[float | None]] = {}
    for r in sorted(records, key=lambda r: r.number if r.number is not None else -1):
        if (r.phase == CONFIRM) != (phase == CONFIRM):
            continue
        key = cell_key(r, plan.lr_search_width)
        if key is None:
            continue
        if r.state == "COMPLETE" and r.val_metric is not None and math.isfinite(r.val_metric):
            found.setdefault(key, []).append(float(r.val_metric))
        elif r.state in ("PRUNED", "COMPLETE") and r.diverged:
            found.setdefault(key, []).append(None)
    return {k: Sample(tuple(v)) for k, v in found.items()}


def _in_flight(records: Sequence[TrialRecord], plan: Plan) -> Counter[CellKey]:
    pending: Counter[CellKey] = Counter()
    for r in records:
        if r.state in ("RUNNING", "WAITING") and r.phase == CONFIRM:
            key = cell_key(r, plan.lr_search_width)
            if key is not None:
                pending[key] += 1
    return pending


def _pooled(search: dict[CellKey, Sample]) -> tuple[float | None, int]:
    """Pooled single-run SD of the search runs and its degrees of freedom."""
    dof = sum(len(s.values) - 1 for s in search.values() if len(s.values) >= 2)
    if dof == 0:
        return None, 0
    ss = 0.0
    for s in search.values():
        if len(s.values) >= 2:
            m = sum(s.values) / len(s.values)
            ss += sum((v - m) ** 2 for v in s.values)
    return math.sqrt(ss / dof), dof


def shrunken_means(search: dict[CellKey, Sample]) -> dict[CellKey, float]:
    """The cells' search means, each pulled towards the mean of all cells (see :func:`ranked`)."""
    scored = [(k, s) for k, s in search.items() if s.values]
    means = {k: s.mean or 0.0 for k, s in scored}
    shrunk = dict(means)
    sigma, _ = _pooled(search)
    if sigma is not None and len(scored) >= 3:
        grand = sum(means.values()) / len(means)
        spread = sum((m - grand) ** 2 for m in means.values()) / (len(means) - 1)
        noise = sum(sigma**2 / len(s.values) for _, s in scored) / len(scored)
        tau2 = max(spread - noise, 1e-12)
        for k, s in scored:
            shrunk[k] = grand + tau2 / (tau2 + sigma**2 / len(s.values)) * (means[k] - grand)
    return shrunk


def ranked(search: dict[CellKey, Sample], metric: MetricInfo) -> list[CellKey]:
    """The cells with a search value, best first by their shrunken search means (more runs,
    then the smaller batch, on a tie).

    Each cell's mean is pulled towards the mean of all cells by the share of its variance that
    is signal, ``tau² / (tau² + sigma² / n)`` (empirical Bayes, normal-normal: ``sigma`` the
    pooled single-run SD of the search runs, ``tau²`` the spread of the cells' true means by
    the method of moments), so that one lucky run does not outrank a cell that was good
    several times.
    """
    scored = [(k, s) for k, s in search.items() if s.values]
    shrunk = shrunken_means(search)
    order = sorted(
        scored,
        key=lambda ks: (metric.sign * shrunk[ks[0]], len(ks[1].values), -ks[0].batch_size),
        reverse=True,
    )
    return [k for k, _ in order]


def leader_of(search: dict[CellKey, Sample], metric: MetricInfo) -> CellKey | None:
    """The most accurate cell by the search runs: the first of :func:`ranked`."""
    order = ranked(search, metric)
    return order[0] if order else None


def references(search: dict[CellKey, Sample], plan: Plan) -> list[CellKey]:
    """The cells a candidate must be within the tolerance of: the leader, then the next cells
    of :func:`ranked`, :attr:`Plan.reference_count` in all."""
    return ranked(search, plan.metric)[: plan.reference_count]


def candidates(
    search: dict[CellKey, Sample], refs: Sequence[CellKey], plan: Plan, floor: int | None = None
) -> list[tuple[CellKey, float]]:
    """The sequence of faster candidates with their search shortfalls from the leader
    (``refs[0]``): the cells of batch sizes above ``floor``, the most accurate cell's (default:
    the smallest reference's); a reference of a larger batch, the leader included, is a
    candidate too (see the module docstring)."""
    leader = refs[0]
    if floor is None:
        floor = min(ref.batch_size for ref in refs)
    sign = plan.metric.sign
    sigma, dof = _pooled(search)
    if sigma is None:
        sigma = FALLBACK_SIGMA_TOLERANCES * plan.tolerance
    t = t_quantile(plan.confidence, dof) if dof else t_quantile(plan.confidence, 1e6)
    lead = search[leader]
    by_batch: dict[int, tuple[CellKey, Sample]] = {}
    for key, s in search.items():
        if key.batch_size <= floor or not s.values:
            continue
        best = by_batch.get(key.batch_size)
        if best is None or (sign * (s.mean or 0.0), len(s.values)) > (
            sign * (best[1].mean or 0.0),
            len(best[1].values),
        ):
            by_batch[key.batch_size] = (key, s)
    listed: list[tuple[CellKey, float]] = []
    for batch in sorted(by_batch):
        key, s = by_batch[batch]
        d = sign * ((lead.mean or 0.0) - (s.mean or 0.0))
        se = sigma * math.sqrt(1 / len(lead.values) + 1 / len(s.values))
        if d - t * se < plan.tolerance:  # not already ruled out by the search runs
            listed.append((key, d))
    shrunk = shrunken_means(search)
    within = [
        i
        for i, (k, _) in enumerate(listed)
        if sign * (shrunk[leader] - shrunk[k]) <= plan.tolerance
    ]
    start = within[-1] if within else 0
    return listed[start:]


def runs_to_decide(leader: Sample, cell: Sample, d: float, plan: Plan) -> int | None:
    """About how many runs each would decide a comparison at the look's level if the
    shortfall ``d`` and the SDs held: ``t² (sd_leader² + sd_cell²) / (tolerance - d)²``."""
    if len(leader.values) < 2 or len(cell.values) < 2:
        return None
    var = _var(leader.values) + _var(cell.values)
    gap = max(abs(plan.tolerance - d), 1e-12)
    z = t_quantile(plan.look_level, 1e6)
    needed = math.ceil(z**2 * var / gap**2)
    return min(max(needed, min(len(leader.values), len(cell.values)) + 1), RUNS_TO_DECIDE_CAP)


def _var(values: Sequence[float]) -> float:
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def most_accurate(
    confirm: dict[CellKey, Sample], refs: Sequence[CellKey], plan: Plan
) -> tuple[CellKey, int]:
    """The most accurate reference and the runs that chose it: with several references, the
    one with the best mean over its first ``confirm_runs`` confirmation runs (the leader on a
    tie or when none has a value), chosen on those runs, so its estimate comes from its later
    runs; with one reference, the leader, chosen on the search runs."""
    if len(refs) == 1:
        return refs[0], 0
    r = max(2, plan.confirm_runs)
    valued = [k for k in refs if k in confirm and confirm[k].first(r).values]
    if not valued:
        return refs[0], r
    best = max(
        valued, key=lambda k: (plan.metric.sign * (confirm[k].first(r).mean or 0.0), -refs.index(k))
    )
    return best, r


def decide(plan: Plan, records: Sequence[TrialRecord]) -> Decision:
    """The study's state under ``plan`` (see the module docstring)."""
    finished = sum(r.state in ("COMPLETE", "PRUNED") for r in records)
    in_flight = sum(r.state in ("RUNNING", "WAITING") for r in records)
    left = plan.total - finished - in_flight
    explored = sum(
        r.phase != CONFIRM and r.state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
        for r in records
    )
    search = samples(records, plan, "search")
    leader = leader_of(search, plan.metric)
    if explored < plan.exploration:
        return Decision("explore", leader)
    if leader is None:
        if any(r.phase != CONFIRM and r.state in ("RUNNING", "WAITING") for r in records):
            return Decision("wait")  # the exploration's last runs are in flight elsewhere
        return Decision("explore", reason="no search run has completed yet")
    confirm = samples(records, plan, CONFIRM)
    pending = _in_flight(records, plan)
    r = max(2, plan.confirm_runs)
    sign = plan.metric.sign

    def got(key: CellKey) -> Sample:
        return confirm.get(key, Sample())

    def need(key: CellKey, n: int) -> int:
        return max(0, n - got(key).runs - pending[key])

    refs = references(search, plan)
    chosen: tuple[CellKey | None, int] = (None, 0)

    def state(stage: str, comparisons: list[Comparison], **kw) -> Decision:
        best, selection = chosen
        return Decision(
            stage,
            leader,
            tuple(comparisons),
            references=tuple(refs),
            most_accurate=best,
            selection_runs=selection,
            **kw,
        )

    def finish(comparisons: list[Comparison], **kw) -> Decision:
        """Done, once the most accurate cell has ``r`` runs after those that chose it (when
        the budget pays them; else its estimate rests on the runs that chose it)."""
        best, selection = chosen
        if best is not None and selection:
            if need(best, selection + r):
                if need(best, selection + r) <= left:
                    return state("confirm", comparisons, next_cell=best)
            elif got(best).runs < selection + r:
                return state("confirm", comparisons)  # its runs are in flight elsewhere
        return state("done", comparisons, **kw)

    for ref in refs:
        if need(ref, r):
            if need(ref, r) > left:
                why = f"the budget has no room for the {r} confirmation runs of the references"
                return state("done", [], reason=why)
            return state("confirm", [], next_cell=ref)
    if any(got(ref).runs < r for ref in refs):
        return state("confirm", [])  # its runs are in flight elsewhere
    chosen = most_accurate(confirm, refs, plan)
    done: list[Comparison] = []
    level = plan.look_level
    for key, search_d in candidates(search, refs, plan, floor=chosen[0].batch_size):
        primary = leader if key != leader else next(ref for ref in refs if ref != key)
        last: Welch | None = None
        for look in range(1, plan.looks + 1):
            n = look * r
            others = [ref for ref in refs if ref != key]
            missing = need(key, n) + sum(need(ref, n) for ref in others)
            if missing:
                if missing > left:
                    needed = None
                    if last is not None:
                        needed = runs_to_decide(got(primary), got(key), last.d, plan)
                    done.append(
                        Comparison(
                            key, search_d, "undecided", look - 1, last, got(key).runs, needed
                        )
                    )
                    why = "the budget has no room for the runs the open comparison needs"
                    return finish(done, reason=why)
                target = max([key, *others], key=lambda k: need(k, n))
                done.append(Comparison(key, search_d, "open", look - 1, last, got(key).runs))
                return state("confirm", done, next_cell=target)
            lead, cell = got(primary).first(n), got(key).first(n)
            if cell.runs < n or any(got(ref).runs < n for ref in others):  # in flight elsewhere
                done.append(Comparison(key, search_d, "open", look - 1, last, cell.runs))
                return state("confirm", done)
            if cell.diverged:
                done.append(Comparison(key, search_d, "diverged", look, None, cell.runs))
                return finish(done, decided=True, reason="a candidate's run diverged")
            if len(lead.values) < 2 or len(cell.values) < 2:
                done.append(Comparison(key, search_d, "undecided", look, None, cell.runs))
                return finish(done, reason="too few runs with a value to compare")
            last = welch([sign * v for v in lead.values], [sign * v for v in cell.values])
            tests = [
                welch([sign * v for v in got(ref).first(n).values], [sign * v for v in cell.values])
                for ref in others
                if len(got(ref).first(n).values) >= 2
            ]
            if all(w.upper(level) <= plan.tolerance for w in tests):
                done.append(Comparison(key, search_d, "pass", look, last, cell.runs))
                break
            if last.lower(level) >= plan.tolerance:
                done.append(Comparison(key, search_d, "out", look, last, cell.runs))
                return finish(done, decided=True, reason="a candidate is ruled out")
            needed = runs_to_decide(lead, cell, last.d, plan)
            if look == plan.looks or (needed is not None and needed > plan.looks * r):
                done.append(Comparison(key, search_d, "undecided", look, last, cell.runs, needed))
                why = (
                    "a candidate is still undecided after its last look"
                    if look == plan.looks
                    else "a candidate would need more runs than its last look to be decided"
                )
                return finish(done, reason=why)
    return finish(done, decided=True, reason="every candidate was decided")
