"""The answer a study gives, in words: what the summary, the report and the note open with.

The answer is the study's ``recommendation`` (:mod:`study.recommend` computes and
stores it): the most accurate cell with its mean, 95% interval and runs, and the fastest cell
within the tolerance of it with its speedup and what it costs in the metric; or, for a study
too small to confirm anything, the sentence that says so. This module only writes it down:
it never chooses. Nothing here imports Plotly or torch.

Example:
    >>> from study.report.words import MetricText
    >>> from study.record import MetricInfo
    >>> answer_lines(None, MetricText(MetricInfo()))[0]
    'Answer: none yet (the study stores no recommendation and none could be computed).'
"""

from __future__ import annotations

import math
from typing import Any

from study.record import int_or_none, number_or_none
from study.report.cellrows import MIN_RUNS
from study.report.words import MetricText
from study.units import format_bytes

#: What the answer says when the study holds too few runs and gives no statement itself.
TOO_SMALL = (
    f"The study is too small to confirm an answer: no cell has {MIN_RUNS} complete runs yet, "
    "so no batch size is named; run more trials (--trials) to confirm one."
)
NONE_YET = "none yet (the study stores no recommendation and none could be computed)."

#: The keys of each recommended cell.
CELL_KEYS = (
    "batch_size",
    "micro_batch_size",
    "devices",
    "accumulation_steps",
    "scaling_rule",
    "lr",
    "val_mean",
    "val_ci95",
    "test_mean",
    "runs",
    "train_time_s_median",
    "samples_per_s",
    "peak_memory_bytes",
    "speedup",
)
#: The keys of the recommendation itself.
ANSWER_KEYS = ("most_accurate", "fastest_within", "tolerance", "budget", "statement")


def chosen(rec: dict[str, Any] | None, which: str) -> dict[str, Any] | None:
    """``rec[which]`` when it names a cell (a batch size), else ``None``."""
    cell = (rec or {}).get(which)
    return cell if isinstance(cell, dict) and int_or_none(cell.get("batch_size")) else None


def too_small(rec: dict[str, Any] | None) -> bool:
    """The recommendation names no cell: the study is too small to confirm one."""
    return rec is not None and chosen(rec, "most_accurate") is None


def same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` and ``b`` are the same cell (batch size, rule and learning rate)."""
    keys = ("batch_size", "scaling_rule", "lr", "batch_schedule")
    return all(a.get(k) == b.get(k) for k in keys)


def tolerance_words(rec: dict[str, Any] | None, metric: MetricText) -> str:
    """``within 1.0 points`` (accuracy) or ``within 0.01`` of the most accurate cell."""
    tol = number_or_none((rec or {}).get("tolerance"))
    return f"within {metric.difference(tol)}" if tol is not None else "within the tolerance"


def cost(rec: dict[str, Any] | None, metric: MetricText) -> float | None:
    """How much worse the fastest cell's mean is than the most accurate's (>= 0 is a cost)."""
    best, fast = chosen(rec, "most_accurate"), chosen(rec, "fastest_within")
    if best is None or fast is None:
        return None
    a, b = number_or_none(best.get("val_mean")), number_or_none(fast.get("val_mean"))
    return None if a is None or b is None else metric.sign * (a - b)


def how_trained(micro: int | None, devices: int | None, steps: int | None) -> str:
    """`` (16 x 2 accumulated)``, `` (16 x 2 devices x 2 accumulated)``, or nothing (one
    device, no accumulation): how a global batch was trained.

    Example:
        >>> how_trained(16, 2, 1), how_trained(16, None, 4), how_trained(64, 1, 1)
        (' (16 x 2 devices x 1 accumulated)', ' (16 x 4 accumulated)', '')
    """
    if not micro:
        return ""
    if devices and devices > 1:
        return f" ({micro} x {devices} devices x {steps or 1} accumulated)"
    return f" ({micro} x {steps} accumulated)" if steps and steps > 1 else ""


def cell_words(cell: dict[str, Any], metric: MetricText, *, bold: str = "") -> str:
    """``batch 64 (rule linear, lr 0.05): mean 89.8% (95% interval 88.1%-91.5%, 3 runs),
    median 12.1 s training``; ``bold`` wraps the batch size and the mean (Markdown ``**``)."""
    batch = f"{bold}batch {cell.get('batch_size')}{bold}"
    if cell.get("batch_schedule"):
        batch = f"{bold}schedule {cell['batch_schedule']}{bold}"
    micro, steps = int_or_none(cell.get("micro_batch_size")), cell.get("accumulation_steps")
    how = [f"rule {cell.get('scaling_rule')}"]
    devices = int_or_none(cell.get("devices")) or 1
    if micro and devices > 1:
        how.insert(0, f"{micro} x {devices} devices x {int_or_none(steps) or 1} accumulated")
    elif micro and int_or_none(steps) and int(steps) > 1:
        how.insert(0, f"{micro} x {int(steps)} accumulated")
    lr = number_or_none(cell.get("lr"))
    if lr is not None:
        how.append(f"lr {lr:.3g}")
    confirm = int_or_none(cell.get("confirm_runs"))
    runs = confirm if confirm is not None else int_or_none(cell.get("runs")) or 0
    ci = cell.get("val_ci95")
    spread = f"95% interval {metric.interval(ci)}, " if metric.interval(ci, "") else ""
    text = (
        f"{batch} ({', '.join(how)}): mean {metric.val} "
        f"{bold}{metric.value(number_or_none(cell.get('val_mean')), 'n/a')}{bold} "
        f"({spread}{runs} run{'s' if runs != 1 else ''})"
    )
    time = number_or_none(cell.get("train_time_s_median"))
    if time is not None:
        text += f", median {time:.3g} s training a trial"
    return text


def _speed_source(cells: list[dict[str, Any]]) -> str:
    """What the throughput row holds: the answer's timed rounds, the trials' medians, or both
    (the trials' then marked ``*``)."""
    sources = {c.get("speed_source") for c in cells}
    if sources == {"timing"}:
        return "timed rounds side by side"
    if "timing" not in sources:
        return "median of the trials"
    return "timed rounds side by side; * median of the trials"


def _speed_mark(cell: dict[str, Any], cells: list[dict[str, Any]]) -> str:
    mixed = {c.get("speed_source") for c in cells} > {"timing"}
    return "*" if mixed and cell.get("speed_source") != "timing" else ""


def trade_off_words(rec: dict[str, Any] | None, metric: MetricText) -> str | None:
    """``15.0x faster, costs 2.8 points of validation accuracy``; ``None`` without a fast
    cell."""
    fast = chosen(rec, "fastest_within")
    if fast is None:
        return None
    speedup = number_or_none(fast.get("speedup"))
    parts = [f"{speedup:.1f}x faster" if speedup is not None else "speedup unknown"]
    lost = cost(rec, metric)
    if lost is not None and lost > 0:
        parts.append(f"costs {metric.difference(lost)} of {metric.val} (mean)")
    elif lost is not None:
        parts.append(f"no cost in mean {metric.val}")
    if fast.get("speed_uncertain"):
        skipped = ", ".join(str(c) for c in (rec or {}).get("speed_uncertain_cells") or [])
        parts.append(
            f"faster cells within tolerance{f' ({skipped})' if skipped else ''} not used: "
            "their speed-up is inside the timing's spread"
        )
    return ", ".join(parts)


def unconfirmed_words(rec: dict[str, Any] | None, metric: MetricText) -> str | None:
    """The cells that looked better on fewer runs than a conclusion needs, or ``None``."""
    entries = [e for e in (rec or {}).get("unconfirmed_better") or [] if isinstance(e, dict)]
    if not entries:
        return None
    shown = "; ".join(
        f"{e.get('cell')} ({metric.value(number_or_none(e.get('val_mean')))}, "
        f"{int_or_none(e.get('runs')) or 0} run{'s' if int_or_none(e.get('runs')) != 1 else ''})"
        for e in entries
    )
    return f"Looked better on too few runs to count (not confirmed): {shown}."


def answer_lines(rec: dict[str, Any] | None, metric: MetricText) -> list[str]:
    """The answer as plain-text lines: the statement, then the two cells and the trade-off.

    Args:
        rec: The recommendation, ``None`` when there is none.
        metric: The study's metric.
    """
    if rec is None:
        return [f"Answer: {NONE_YET}"]
    statement = str(rec.get("statement") or "").strip()
    if too_small(rec):
        return [f"Answer: {statement or TOO_SMALL}"]
    best, fast = chosen(rec, "most_accurate"), chosen(rec, "fastest_within")
    lines = [f"Answer, by {metric.full}: {statement}".rstrip()]
    lines.append("  most accurate: " + cell_words(best, metric))
    within = tolerance_words(rec, metric)
    if fast is None or same_cell(best, fast):
        lines.append(f"  fastest {within}: the same cell (no faster cell is {within} of it)")
    else:
        lines.append(f"  fastest {within}: " + cell_words(fast, metric))
        lines.append(f"    trade-off: {trade_off_words(rec, metric)}")
    unconfirmed = unconfirmed_words(rec, metric)
    if unconfirmed:
        lines.append(f"  {unconfirmed}")
    return lines


def answer_markdown(rec: dict[str, Any] | None, metric: MetricText) -> list[str]:
    """The answer as Markdown lines for the dashboard note."""
    if rec is None:
        return [f"Answer: {NONE_YET}"]
    statement = str(rec.get("statement") or "").strip()
    if too_small(rec):
        return [f"**{statement or TOO_SMALL}**"]
    best, fast = chosen(rec, "most_accurate"), chosen(rec, "fastest_within")
    lines = [statement, ""] if statement else []
    lines.append(f"- **Most accurate** by {metric.full}: " + cell_words(best, metric, bold="**"))
    within = tolerance_words(rec, metric)
    if fast is None or same_cell(best, fast):
        lines.append(f"- **Fastest {within}**: the same cell (no faster cell qualifies).")
    else:
        lines.append(f"- **Fastest {within}**: " + cell_words(fast, metric, bold="**"))
        lines.append(f"- Trade-off: {trade_off_words(rec, metric)}.")
    unconfirmed = unconfirmed_words(rec, metric)
    if unconfirmed:
        lines.append(f"- {unconfirmed}")
    return lines


def answer_rows(
    rec: dict[str, Any] | None, metric: MetricText
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the answer's table (one column per recommended cell).

    Returns ``([], [])`` when the recommendation names no cell.
    """
    best, fast = chosen(rec, "most_accurate"), chosen(rec, "fastest_within")
    if best is None:
        return [], []
    cells = [best] + ([fast] if fast is not None and not same_cell(best, fast) else [])
    headers = ["", "Most accurate"]
    headers += [f"Fastest {tolerance_words(rec, metric)}"] if len(cells) > 1 else []

    def batch(c: dict[str, Any]) -> str:
        micro, steps = (
            int_or_none(c.get("micro_batch_size")),
            int_or_none(c.get("accumulation_steps")),
        )
        text = str(c.get("batch_schedule") or c.get("batch_size"))
        return text + how_trained(micro, int_or_none(c.get("devices")), steps)

    def num(value: Any, spec: str, suffix: str = "") -> str:
        number = number_or_none(value)
        return "-" if number is None else format(number, spec) + suffix

    def memory(value: Any) -> str:
        number = number_or_none(value)
        return "-" if number is None else format_bytes(number)

    rows = [
        ["Batch size"] + [batch(c) for c in cells],
        ["Scaling rule"] + [str(c.get("scaling_rule", "-")) for c in cells],
        ["Learning rate"] + [num(c.get("lr"), ".3g") for c in cells],
        [f"Mean {metric.full}"] + [metric.value(number_or_none(c.get("val_mean"))) for c in cells],
        ["95% interval"] + [metric.interval(c.get("val_ci95")) for c in cells],
        ["Runs"] + [str(int_or_none(c.get("runs")) or 0) for c in cells],
        [f"Mean {metric.test} (never used to choose)"]
        + [metric.value(number_or_none(c.get("test_mean"))) for c in cells],
        ["Median training time (a trial)"]
        + [num(c.get("train_time_s_median"), ".3g", " s") for c in cells],
        [f"Throughput ({metric.rate}, {_speed_source(cells)})"]
        + [num(c.get("samples_per_s"), ",.0f") + _speed_mark(c, cells) for c in cells],
        ["Peak memory"] + [memory(c.get("peak_memory_bytes")) for c in cells],
        ["Speedup (vs most accurate)"] + [num(c.get("speedup"), ".1f", "x") for c in cells],
    ]
    return headers, rows


def answer_note(rec: dict[str, Any] | None, metric: MetricText) -> str:
    """The sentence under the answer's table: tolerance, budget and how to read it."""
    if rec is None:
        return f"Answer: {NONE_YET}"
    if too_small(rec):
        return str(rec.get("statement") or TOO_SMALL)
    parts = [str(rec.get("statement") or "").strip()]
    trade = trade_off_words(rec, metric)
    if trade:
        parts.append(f"The fastest cell {tolerance_words(rec, metric)}: {trade}.")
    parts.append(unconfirmed_words(rec, metric) or "")
    budget = rec.get("budget")
    if isinstance(budget, dict) and budget:
        parts.append(
            "Budget: "
            + ", ".join(f"{k.replace('_', ' ')} {_short(v)}" for k, v in budget.items())
            + "."
        )
    elif budget:
        parts.append(f"Budget: {budget}.")
    parts.append(
        f"Means and intervals of the named cells are over their confirmation runs (made after "
        f"they were chosen), across seeds on the validation split; the test {metric.name} is "
        "shown, never used to choose."
    )
    return " ".join(p for p in parts if p)


def _short(value: Any) -> str:
    number = number_or_none(value)
    if number is None:
        return str(value)
    return f"{int(number):,}" if math.isclose(number, round(number)) else f"{number:.3g}"
