"""The report's cells: one row per (batch size, scaling rule[, multiplier bucket]) cell.

:func:`cell_rows` turns a study's trial records into :class:`CellRow` rows with the
statistics the answer is chosen from (:func:`study.cells.cell_stats`) and the counts of
every state, in the order every table lists them (batch size, then rule: linear, sqrt,
none, others by name).

Example:
    >>> cell_rows([])
    []
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from study.record import MetricInfo, TrialRecord
from study.report.words import MetricText
from study.stats import median

#: Order in which scaling rules are listed; other names follow alphabetically.
RULE_ORDER = ("linear", "sqrt", "none")


#: Confirmation runs a cell needs before the report draws a conclusion from it, for a study
#: whose config stores no ``confirm_runs`` (the default of ``--confirm-runs``).
MIN_RUNS = 3


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
