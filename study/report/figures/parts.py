"""The figures' shared parts: the log2 batch axis, colours, marks, notes and layout.

What every figure of the report draws the same way: a scaling rule's colour
(:func:`rule_color`), a batch-size axis on a log2 scale whose ticks read as batch sizes
(:func:`batch_ticks`), rules drawn slightly apart (:func:`rule_offset`), the gradient noise
scale and the answer's cells marked (:func:`mark_noise_scale`, :func:`mark_answer`), the
probe's cap and knee (:func:`cap_and_knee`), and one layout (:func:`finish`). The figures
themselves are in the other modules of :mod:`study.report.figures`.

Example:
    >>> batch_ticks([8, 64])["ticktext"]
    ['8', '64']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from study.record import MetricInfo, read_record
from study.report.cellrows import CellRow
from study.report.data import ReportData
from study.report.narratives import NoiseScale

RULE_COLORS = {"linear": "#1f77b4", "sqrt": "#ff7f0e", "none": "#2ca02c"}


OTHER_COLOR = "#7f7f7f"


#: Rules are drawn slightly apart on the log2 axis so their points do not hide each other.
RULE_OFFSET = 0.07


MIB = 1024**2


#: How a trial measured its peak memory, in words for the axis title.
MEMORY_SOURCES = {
    "cuda_max_memory_allocated": "CUDA peak allocated",
    "cpu_allocator_profile": "CPU allocator peak of a step",
    "cpu_step_tensors": "tensors of a CPU step",  # studies recorded before 2026-11-26
}


BATCH_AXIS = "Batch size (samples per update, log2 scale)"


@dataclass
class ReportFigure:
    """One figure of the report, or the sentence that stands in for it.

    Args:
        key: Short stable name (``accuracy``, ``learning-curves``, ...), used for ids and files.
        title: Section heading.
        figure: The Plotly figure, ``None`` when there is nothing to draw.
        note: What the figure shows (or why it is missing), one or two sentences.
    """

    key: str
    title: str
    figure: go.Figure | None
    note: str


def rule_color(rule: str | None) -> str:
    """The colour of a scaling rule, the same in every figure."""
    return RULE_COLORS.get(rule or "", OTHER_COLOR)


def log2(batch: float) -> float:
    return math.log2(batch)


def batch_ticks(batches: Sequence[float], extend: Sequence[float] = ()) -> dict:
    """A log2 batch axis: ticks at the batch sizes, the same range in every subplot.

    ``extend``: other positions (in samples) the range must show, without a tick.
    """
    sizes = sorted({int(b) for b in batches if b and b > 0})
    axis: dict = {
        "tickmode": "array",
        "tickvals": [log2(b) for b in sizes],
        "ticktext": [str(b) for b in sizes],
        "title": {"text": BATCH_AXIS},
    }
    ends = [log2(b) for b in sizes] + [log2(v) for v in extend if v and v > 0]
    if ends:
        axis["range"] = [min(ends) - 0.4, max(ends) + 0.4]
    return axis


#: How far (in doublings) past the batch sizes the axis stretches to show B_simple.
NOISE_STRETCH = 3


NOISE_COLOR = "#9467bd"


def noise_extend(data: ReportData, batches: Sequence[float]) -> list[float]:
    """B_simple (and its recommended range) when close enough to the batches to be drawn."""
    ns = data.noise_scale
    sizes = [b for b in batches if b and b > 0]
    if ns is None or not sizes:
        return []
    low, high = log2(min(sizes)) - NOISE_STRETCH, log2(max(sizes)) + NOISE_STRETCH
    if not low <= log2(ns.value) <= high:
        return []
    marks = [ns.value]
    if ns.recommended_range:
        marks += [float(b) for b in ns.recommended_range if low <= log2(b) <= high]
    return marks


def mark_noise_scale(
    fig: go.Figure,
    data: ReportData,
    batches: Sequence[float],
    cols: Sequence[int],
    *,
    annotate: bool = True,
) -> str:
    """Draw B_simple on every subplot in ``cols``; return a sentence for the figure's note.

    The line is labelled in the legend and, with ``annotate``, at its top on the first subplot.
    """
    ns = data.noise_scale
    if ns is None:
        return ""
    if not noise_extend(data, batches):
        return _noise_off_scale(fig, ns, batches)
    band = ns.recommended_range
    for i, col in enumerate(cols):
        if band:
            fig.add_vrect(
                x0=log2(band[0]),
                x1=log2(band[1]),
                fillcolor=NOISE_COLOR,
                opacity=0.08,
                line_width=0,
                row=1,
                col=col,
            )
        label = {}
        if annotate and i == 0:
            label = {
                "annotation_text": ns.label,
                "annotation_position": "top right",
                "annotation_font": {"size": 10, "color": NOISE_COLOR},
            }
        fig.add_vline(
            x=log2(ns.value),
            line={"color": NOISE_COLOR, "dash": "dashdot", "width": 2},
            row=1,
            col=col,
            **label,
        )
    fig.add_trace(legend_line(ns.label, NOISE_COLOR, "dashdot"), row=1, col=cols[0])
    note = f" The purple dash-dot line is {ns.label} ({ns.basis})"
    if band:
        note += ", the faint purple band the range scripts/noise_scale.py recommended"
    return note + "."


def _noise_off_scale(fig: go.Figure, ns: NoiseScale, batches: Sequence[float]) -> str:
    """B_simple beyond the drawn batch sizes: a note in the first subplot's corner."""
    sizes = [b for b in batches if b and b > 0]
    side = "right" if sizes and ns.value > max(sizes) else "left"
    fig.add_annotation(
        text=f"{ns.label} (off the scale, {side})",
        x=0.99 if side == "right" else 0.01,
        y=0.98,
        xref="x domain",
        yref="y domain",
        xanchor="right" if side == "right" else "left",
        showarrow=False,
        font={"size": 10, "color": NOISE_COLOR},
    )
    return f" {ns.label}, off the scale of the batch sizes tried."


def legend_line(name: str, color: str, dash: str) -> go.Scatter:
    """A legend entry for a line drawn as a shape (a shape has none of its own)."""
    return go.Scatter(
        x=[None],
        y=[None],
        mode="lines",
        name=name,
        line={"color": color, "dash": dash, "width": 2},
        hoverinfo="skip",
    )


def all_batches(data: ReportData) -> list[float]:
    batches: list[float] = [t.batch_size for t in data.trials if t.batch_size]
    batches += [b for b in data.space.get("batch_sizes") or [] if isinstance(b, int | float)]
    return batches


def rule_offset(data: ReportData, rule: str | None) -> float:
    if len(data.rules) < 2 or rule not in data.rules:
        return 0.0
    return (data.rules.index(rule) - (len(data.rules) - 1) / 2) * RULE_OFFSET


def budget_label(data: ReportData) -> str:
    return data.budget_words() or "budget unknown"


def finish(fig: go.Figure, title: str, height: int = 480) -> go.Figure:
    fig.update_layout(
        title={"text": title},
        height=height,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 80, "b": 130},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.2, "yanchor": "top"},
    )
    return fig


def metric_axis(data: ReportData, split: str, budget: bool = True) -> str:
    """``Accuracy (% of samples, after 4 epochs)`` or ``val mse (lower is better, after ...)``."""
    m = data.metric
    after = f", after {budget_label(data)}" if budget else ""
    if m.percent:
        return f"Accuracy (% of samples{after})"
    return f"{split} {m.name} ({m.direction_words}{after})"


def cell_line(data: ReportData, rule: str | None) -> list[CellRow]:
    """The rule's cells by batch size (the best multiplier bucket where several)."""
    by_batch: dict[int, CellRow] = {}
    for c in data.cells:
        if (rule is not None and c.scaling_rule != rule) or c.mean_val is None:
            continue
        held = by_batch.get(c.batch_size)
        if held is None or data.metric.better_than(c.mean_val, held.mean_val):
            by_batch[c.batch_size] = c
    return [by_batch[b] for b in sorted(by_batch)]


def mark_answer(fig: go.Figure, data: ReportData) -> str:
    """Stars on the validation panel at the recommended cells; a sentence for the note."""
    rec = data.recommendation or {}
    marks = []
    for which, label, color in (
        ("most_accurate", "answer: most accurate", "#111111"),
        ("fastest_within", "answer: fastest within tolerance", "#e0b000"),
    ):
        cell = rec.get(which)
        if not isinstance(cell, dict) or not cell.get("batch_size"):
            continue
        mean = cell.get("val_mean")
        if not isinstance(mean, int | float):
            continue
        shift = rule_offset(data, cell.get("scaling_rule"))
        fig.add_trace(
            go.Scatter(
                x=[log2(cell["batch_size"]) + shift],
                y=[mean],
                mode="markers",
                name=label,
                marker={"symbol": "star", "size": 17, "color": color, "line": {"width": 1}},
                hovertemplate=(
                    f"{label}: batch {cell['batch_size']}, rule {cell.get('scaling_rule')}"
                    f"<br>mean %{{y:{data.metric.hover}}}<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
        marks.append(label)
    if not marks:
        return ""
    return " Stars: the answer's cells (" + "; ".join(m.split(": ")[1] for m in marks) + ")."


def batch_colors(batches: Sequence[int]) -> dict[int, str]:
    ordered = sorted(set(batches))
    if len(ordered) == 1:
        return {ordered[0]: "#1f77b4"}
    colors = sample_colorscale(
        "Viridis", [0.9 * i / (len(ordered) - 1) for i in range(len(ordered))]
    )
    return dict(zip(ordered, colors, strict=True))


def probe_rows(data: ReportData) -> list[dict]:
    rows = (data.probe or {}).get("rows") or []
    return [r for r in rows if isinstance(r, dict) and r.get("batch_size")]


def cap_and_knee(data: ReportData) -> list[tuple[str, float, str, str]]:
    """The probe's batch cap and throughput knee: (kind, batch, label, where it came from)."""
    marks = []
    probe = data.probe or {}
    cap = probe.get("max_batch_size") or data.space.get("memory_cap")
    if isinstance(cap, int | float) and cap > 0:
        source = data.space.get("cap_source") or ("probe" if probe else "")
        marks.append(("cap", float(cap), f"cap {int(cap)}", str(source or "")))
    knee = probe.get("knee_batch_size")
    if isinstance(knee, int | float) and knee > 0:
        marks.append(("knee", float(knee), f"knee {int(knee)}", "probe"))
    return marks


def first_time(shown: set[str], group: str) -> bool:
    """True the first time ``group`` is seen: show each legend entry once across subplots."""
    new = group not in shown
    shown.add(group)
    return new


def log_ticks(values: Sequence[float]) -> dict:
    """Ticks at 1, 2 and 5 times the powers of ten that span ``values``, written in full."""
    positive = [v for v in values if v > 0]
    if not positive:
        return {}
    low, high = min(positive) / 1.5, max(positive) * 1.5
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for m in (1, 2, 5)
        if low <= m * 10.0**e <= high
    ]
    return {"tickmode": "array", "tickvals": ticks, "ticktext": [f"{v:g}" for v in ticks]}


def val_metric(trial: optuna.trial.FrozenTrial, metric: MetricInfo) -> float:
    """A trial's validation metric as its record reads it (NaN where there is none)."""
    value = read_record(trial, metric=metric).val_metric
    return float("nan") if value is None else value
