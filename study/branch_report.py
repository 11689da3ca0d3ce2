"""The critical batch by branching, read from the branches' losses: statistics and answer.

The torch side (:mod:`objectives.branch`) trains one reference run at a small batch and, at
several points of it, branches into larger batches for a window of samples, each comparison
repeated with ``repeats`` data orders (repeat ``k`` of a branch and of the reference's own
continuation see the same samples in the same order: a paired comparison). This module turns
those losses into decisions, torch-free:

* **The stated test.** A branch at batch ``B`` (rule ``r``) *keeps up* with the reference at a
  point when, at ``confidence`` (one-sided t over the repeats' paired differences), its
  held-out loss after the window exceeds the reference's by at most ``loss_tolerance`` of
  the reference's loss, and its metric falls short of the reference's by at most
  ``tolerance`` (the study's ``--tolerance``, in the metric's units).
* **The critical batch at a point** is the largest batch that keeps up, tested along the
  powers of two (a fixed sequence: up from the smallest batch above the reference's at the
  first point, up from the previous point's critical batch at the later ones, stopping at
  the first batch where no rule keeps up, or down from there to the first batch that keeps
  up when that one falls behind). Its interval runs from there to the largest batch tested
  that is not clearly behind (the lower bound of its excess within the tolerances).
* **The recommended constant batch** for the whole budget is the lower median of the
  critical batches of the points after the first (at initialisation the critical batch is
  near the smallest; Merrill et al. 2025), with the rule that kept up there at the most of
  those points (ties: the lowest mean loss excess; rules are branched in turn, the
  reference's first, so another rule is measured only where the one before it fell
  behind); **the schedule** runs each point's phase at the largest critical batch measured
  up to it (the critical batch grows as training goes on; a lower later reading is taken
  for noise).

Example:
    >>> c = Comparison(64, "linear", 0.002, 1024, branch_loss=[0.50, 0.52, 0.51],
    ...                reference_loss=[0.50, 0.51, 0.50], branch_metric=[0.9, 0.9, 0.9],
    ...                reference_metric=[0.9, 0.9, 0.9])
    >>> round(c.loss_excess_mean, 4)
    0.0132
    >>> c.keeps_up(loss_tolerance=0.05, tolerance=0.01, confidence=0.95, sign=1.0)
    True
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from study.stats import t_quantile

#: The study user attribute that holds the branch command's answer (with ``--storage``).
BRANCH_ATTR = "branch"


def _upper(values: list[float], confidence: float) -> float:
    """One-sided upper bound of the mean of ``values`` (t over ``len - 1`` degrees)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return math.inf
    se = statistics.stdev(values) / math.sqrt(len(values))
    return mean + t_quantile(confidence, len(values) - 1) * se


def _lower(values: list[float], confidence: float) -> float:
    return -_upper([-v for v in values], confidence)


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.inf


@dataclass
class Comparison:
    """A branch at one batch size and rule against the reference, at one point.

    The lists hold one value per repeat (the same data order for the branch and the
    reference's continuation). Losses are the task's mean loss on held-out batches after
    ``window`` samples; metrics the task's metric on the same batches.
    """

    batch_size: int
    scaling_rule: str
    lr: float
    window: int
    branch_loss: list[float] = field(default_factory=list)
    reference_loss: list[float] = field(default_factory=list)
    branch_metric: list[float] = field(default_factory=list)
    reference_metric: list[float] = field(default_factory=list)

    @property
    def loss_excess(self) -> list[float]:
        """Per repeat: (branch loss - reference loss) / reference loss (not finite: inf)."""
        out = []
        for b, r in zip(self.branch_loss, self.reference_loss, strict=True):
            excess = (b - r) / abs(r) if r and math.isfinite(b) and math.isfinite(r) else math.inf
            out.append(excess if math.isfinite(excess) else math.inf)
        return out

    @property
    def loss_excess_mean(self) -> float:
        return statistics.fmean(self.loss_excess)

    def shortfall(self, sign: float) -> list[float]:
        """Per repeat: how far the branch's metric is behind the reference's (``sign`` 1 for
        a metric maximised, -1 minimised); positive is worse."""
        return [
            sign * (r - b) if math.isfinite(b) else math.inf
            for b, r in zip(self.branch_metric, self.reference_metric, strict=True)
        ]

    def keeps_up(self, loss_tolerance: float, tolerance: float, confidence: float, sign: float):
        """The stated test (module docstring): both upper bounds within their tolerances."""
        excess, short = self.loss_excess, self.shortfall(sign)
        if not all(map(math.isfinite, excess + short)):
            return False
        return (
            _upper(excess, confidence) <= loss_tolerance and _upper(short, confidence) <= tolerance
        )

    def clearly_behind(
        self, loss_tolerance: float, tolerance: float, confidence: float, sign: float
    ) -> bool:
        """Behind even by the lower bounds: the excess or the shortfall beyond tolerance."""
        excess, short = self.loss_excess, self.shortfall(sign)
        if not all(map(math.isfinite, excess + short)):
            return True
        return _lower(excess, confidence) > loss_tolerance or _lower(short, confidence) > tolerance

    def summary(self, sign: float) -> dict[str, Any]:
        """JSON-ready: the means, standard errors and per-repeat values."""
        excess, short = self.loss_excess, self.shortfall(sign)
        finite = all(map(math.isfinite, excess + short))
        return {
            "batch_size": self.batch_size,
            "scaling_rule": self.scaling_rule,
            "lr": self.lr,
            "window_samples": self.window,
            "loss": statistics.fmean(self.branch_loss),
            "reference_loss": statistics.fmean(self.reference_loss),
            "loss_excess": statistics.fmean(excess) if finite else None,
            "loss_excess_se": _se(excess) if finite else None,
            "metric": statistics.fmean(self.branch_metric),
            "reference_metric": statistics.fmean(self.reference_metric),
            "metric_shortfall": statistics.fmean(short) if finite else None,
            "metric_shortfall_se": _se(short) if finite else None,
            "repeats": len(self.branch_loss),
            "per_repeat": {
                k: v for k, v in asdict(self).items() if k.startswith(("branch_", "reference_"))
            },
        }


@dataclass
class Tolerances:
    """The stated test's settings: relative loss excess, metric shortfall, confidence, and the
    metric's sign (1: maximised, -1: minimised)."""

    loss_tolerance: float
    tolerance: float
    confidence: float
    sign: float = 1.0

    def keeps_up(self, comparison: Comparison) -> bool:
        return comparison.keeps_up(self.loss_tolerance, self.tolerance, self.confidence, self.sign)

    def clearly_behind(self, comparison: Comparison) -> bool:
        return comparison.clearly_behind(
            self.loss_tolerance, self.tolerance, self.confidence, self.sign
        )


@dataclass
class BranchPoint:
    """One branch point: where it is on the reference run and what its branches measured."""

    fraction: float
    samples: int
    reference_batch: int
    comparisons: list[Comparison] = field(default_factory=list)

    def best_rule(self, batch_size: int, tol: Tolerances) -> Comparison | None:
        """At ``batch_size``, the comparison that keeps up with the lowest loss excess (or,
        when none keeps up, the lowest excess); ``None`` when none was branched."""
        here = [c for c in self.comparisons if c.batch_size == batch_size]
        if not here:
            return None
        return min(here, key=lambda c: (not tol.keeps_up(c), c.loss_excess_mean))

    def critical(self, tol: Tolerances) -> tuple[int, int]:
        """``(critical batch, largest batch not clearly behind)`` by the fixed sequence."""
        critical = high = self.reference_batch
        failed = False
        for size in sorted({c.batch_size for c in self.comparisons}):
            best = self.best_rule(size, tol)
            if best is None:
                continue
            if not failed and tol.keeps_up(best):
                critical = size
            else:
                failed = True
            if not tol.clearly_behind(best):
                high = max(high, size)
            else:
                break
        return critical, max(high, critical)

    def to_dict(self, tol: Tolerances) -> dict[str, Any]:
        critical, high = self.critical(tol)
        return {
            "fraction": self.fraction,
            "samples": self.samples,
            "reference_batch_size": self.reference_batch,
            "critical_batch_size": critical,
            "interval": [critical, high],
            "branches": [
                {**c.summary(tol.sign), "keeps_up": tol.keeps_up(c)}
                for c in sorted(self.comparisons, key=lambda c: c.batch_size)
            ],
        }


@dataclass
class BranchResult:
    """What a branch command measured, and its answer (:meth:`answer`)."""

    task: str
    metric: str
    direction: str
    reference_batch: int
    reference_rule: str
    cap: int
    budget_samples: int
    samples_trained: int
    points: list[BranchPoint]
    tolerances: Tolerances
    base_lr: float
    base_batch_size: int
    unit: str = "samples"
    seconds: float = 0.0
    reference_metric: float | None = None
    settings: dict = field(default_factory=dict)

    @property
    def trainings(self) -> float:
        """Samples trained in all, as a multiple of one training of the budget."""
        return self.samples_trained / self.budget_samples if self.budget_samples else math.nan

    def recommended(self) -> tuple[int, str]:
        """The recommended constant batch size and its rule (module docstring)."""
        later = self.points[1:] or self.points
        criticals = sorted(p.critical(self.tolerances)[0] for p in later)
        batch = criticals[(len(criticals) - 1) // 2]  # the lower median: one noisy point
        return batch, self._rule_at(batch, later)  # moves it no further than its neighbours

    def _rule_at(self, batch: int, points: list[BranchPoint]) -> str:
        """The rule that kept up at ``batch`` at the most of ``points``, then the one with the
        lowest mean loss excess there (the reference's rule at its own batch)."""
        if batch == self.reference_batch:
            return self.reference_rule
        kept: dict[str, int] = {}
        excess: dict[str, list[float]] = {}
        for point in points:
            for c in point.comparisons:
                if c.batch_size == batch:
                    excess.setdefault(c.scaling_rule, []).append(c.loss_excess_mean)
                    kept[c.scaling_rule] = kept.get(c.scaling_rule, 0) + self.tolerances.keeps_up(c)
        if not excess:
            return self.reference_rule
        return min(excess, key=lambda r: (-kept[r], statistics.fmean(excess[r])))

    def schedule(self) -> list[dict]:
        """Phases ``{"batch_size", "start_fraction"}``: at each point the largest critical
        batch measured so far (the critical batch grows as training goes on, Merrill et al.
        2025; a lower later measurement is read as noise), equal neighbours merged."""
        phases: list[dict] = []
        size = self.reference_batch
        for point in self.points:
            size = max(size, point.critical(self.tolerances)[0])
            if not phases or phases[-1]["batch_size"] != size:
                start = 0.0 if not phases else round(point.fraction, 2)
                phases.append({"batch_size": size, "start_fraction": start})
        return phases

    def answer(self) -> dict[str, Any]:
        """The JSON of the branch command: ``recommended``, ``schedule``, ``points``,
        ``trainings`` and what they were measured with."""
        batch, rule = self.recommended()
        from study.scaling import scaled_lr

        return {
            "recommended": {
                "batch_size": batch,
                "scaling_rule": rule,
                "lr": scaled_lr(rule, self.base_lr, self.base_batch_size, batch),
            },
            "schedule": self.schedule(),
            "points": [p.to_dict(self.tolerances) for p in self.points],
            "trainings": round(self.trainings, 3),
            "curve": [
                {"fraction": p.fraction, "critical_batch_size": p.critical(self.tolerances)[0]}
                for p in self.points
            ],
            "task": self.task,
            "metric": {"name": self.metric, "direction": self.direction},
            "unit": self.unit,
            "reference": {
                "batch_size": self.reference_batch,
                "scaling_rule": self.reference_rule,
                "final_metric": self.reference_metric,
            },
            "cap": self.cap,
            "budget_samples": self.budget_samples,
            "samples_trained": self.samples_trained,
            "seconds": round(self.seconds, 2),
            "test": {
                "loss_tolerance": self.tolerances.loss_tolerance,
                "tolerance": self.tolerances.tolerance,
                "confidence": self.tolerances.confidence,
            },
            "settings": self.settings,
        }


def format_answer(answer: dict[str, Any]) -> str:
    """The branch command's printed table and answer, from :meth:`BranchResult.answer`."""
    test = answer["test"]
    metric = answer["metric"]["name"]
    ref = answer["reference"]
    lines = [
        f"critical batch by branching: {answer['task']}, reference batch {ref['batch_size']} "
        f"({ref['scaling_rule']}), cap {answer['cap']}, budget {answer['budget_samples']:,} "
        f"samples; a branch keeps up when its held-out loss is within "
        f"{test['loss_tolerance']:.0%} of the reference's and its {metric} within "
        f"{test['tolerance']:g} (one-sided t at {test['confidence']:.0%} over the repeats)",
        f"{'point':>6} {'samples':>9} {'batch':>6} {'rule':<6} {'loss excess':>15} "
        f"{metric + ' shortfall':>22} {'keeps up':>8}",
    ]
    for point in answer["points"]:
        for b in point["branches"]:
            excess = (
                f"{b['loss_excess']:+.3f} ± {b['loss_excess_se']:.3f}"
                if b["loss_excess"] is not None
                else "not finite"
            )
            short = (
                f"{b['metric_shortfall']:+.4f} ± {b['metric_shortfall_se']:.4f}"
                if b["metric_shortfall"] is not None
                else "not finite"
            )
            lines.append(
                f"{point['fraction']:>6.2f} {point['samples']:>9,} {b['batch_size']:>6} "
                f"{b['scaling_rule']:<6} {excess:>15} {short:>22} "
                f"{'yes' if b['keeps_up'] else 'no':>8}"
            )
    lines.append(
        "critical batch: "
        + ", ".join(
            f"{p['critical_batch_size']} [{p['interval'][0]}-{p['interval'][1]}] at "
            f"{p['fraction']:.2f}"
            for p in answer["points"]
        )
    )
    rec = answer["recommended"]
    lines.append(
        f"recommended constant batch: {rec['batch_size']} with the {rec['scaling_rule']} rule "
        f"(lr {rec['lr']:.3g}) for the whole budget"
    )
    schedule = ",".join(f"{p['batch_size']}@{p['start_fraction']:g}" for p in answer["schedule"])
    lines.append(f"recommended schedule: {schedule}  (--batch-schedule {schedule})")
    lines.append(
        f"trained {answer['samples_trained']:,} samples = {answer['trainings']:.2f} trainings "
        f"({answer['seconds']:.0f} s)"
    )
    return "\n".join(lines)
