"""The report's figures, built with Plotly from a :class:`~study.report.data.ReportData`.

Every figure's axes say what is measured and in which unit. Batch size is drawn on a log2
axis: the x coordinate is ``log2(batch)`` and the ticks read as the batch sizes, so the
probe's cap and knee and the rule-of-thumb band are plain lines and bands at the right place.
A builder returns a :class:`ReportFigure` whose ``figure`` is ``None`` (and whose ``note``
says why) when the study has nothing to draw yet.

Example:
    >>> import optuna
    >>> from study.report.data import collect_report_data
    >>> study = optuna.create_study(direction="maximize")
    >>> [f.key for f in build_figures(study, collect_report_data(study)) if f.figure is None][:2]
    ['accuracy', 'learning-curves']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from study.record import MetricInfo, TrialRecord, read_record
from study.report.data import CellRow, ReportData
from study.stats import median

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


def _log2(batch: float) -> float:
    return math.log2(batch)


def _batch_ticks(batches: Sequence[float], extend: Sequence[float] = ()) -> dict:
    """A log2 batch axis: ticks at the batch sizes, the same range in every subplot.

    ``extend``: other positions (in samples) the range must show, without a tick.
    """
    sizes = sorted({int(b) for b in batches if b and b > 0})
    axis: dict = {
        "tickmode": "array",
        "tickvals": [_log2(b) for b in sizes],
        "ticktext": [str(b) for b in sizes],
        "title": {"text": BATCH_AXIS},
    }
    ends = [_log2(b) for b in sizes] + [_log2(v) for v in extend if v and v > 0]
    if ends:
        axis["range"] = [min(ends) - 0.4, max(ends) + 0.4]
    return axis


#: How far (in doublings) past the batch sizes the axis stretches to show B_simple.
NOISE_STRETCH = 3
NOISE_COLOR = "#9467bd"


def _noise_extend(data: ReportData, batches: Sequence[float]) -> list[float]:
    """B_simple (and its recommended range) when close enough to the batches to be drawn."""
    ns = data.noise_scale
    sizes = [b for b in batches if b and b > 0]
    if ns is None or not sizes:
        return []
    low, high = _log2(min(sizes)) - NOISE_STRETCH, _log2(max(sizes)) + NOISE_STRETCH
    if not low <= _log2(ns.value) <= high:
        return []
    marks = [ns.value]
    if ns.recommended_range:
        marks += [float(b) for b in ns.recommended_range if low <= _log2(b) <= high]
    return marks


def _mark_noise_scale(
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
    shown = _noise_extend(data, batches)
    if not shown:
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
    band = ns.recommended_range
    for i, col in enumerate(cols):
        if band:
            fig.add_vrect(
                x0=_log2(band[0]),
                x1=_log2(band[1]),
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
            x=_log2(ns.value),
            line={"color": NOISE_COLOR, "dash": "dashdot", "width": 2},
            row=1,
            col=col,
            **label,
        )
    fig.add_trace(  # the line's legend entry (a shape has none)
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            name=ns.label,
            line={"color": NOISE_COLOR, "dash": "dashdot", "width": 2},
            hoverinfo="skip",
        ),
        row=1,
        col=cols[0],
    )
    note = f" The purple dash-dot line is {ns.label} ({ns.basis})"
    if band:
        note += ", the faint purple band the range scripts/noise_scale.py recommended"
    return note + "."


def _all_batches(data: ReportData) -> list[float]:
    batches: list[float] = [t.batch_size for t in data.trials if t.batch_size]
    batches += [b for b in data.space.get("batch_sizes") or [] if isinstance(b, int | float)]
    return batches


def _rule_offset(data: ReportData, rule: str | None) -> float:
    if len(data.rules) < 2 or rule not in data.rules:
        return 0.0
    return (data.rules.index(rule) - (len(data.rules) - 1) / 2) * RULE_OFFSET


def _budget(data: ReportData) -> str:
    return data.budget_words() or "budget unknown"


def _finish(fig: go.Figure, title: str, height: int = 480) -> go.Figure:
    fig.update_layout(
        title={"text": title},
        height=height,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 80, "b": 130},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.2, "yanchor": "top"},
    )
    return fig


def _metric_axis(data: ReportData, split: str, budget: bool = True) -> str:
    """``Accuracy (% of samples, after 4 epochs)`` or ``val mse (lower is better, after ...)``."""
    m = data.metric
    after = f", after {_budget(data)}" if budget else ""
    if m.percent:
        return f"Accuracy (% of samples{after})"
    return f"{split} {m.name} ({m.direction_words}{after})"


def _cell_line(data: ReportData, rule: str | None) -> list[CellRow]:
    """The rule's cells by batch size (the best multiplier bucket where several)."""
    by_batch: dict[int, CellRow] = {}
    for c in data.cells:
        if (rule is not None and c.scaling_rule != rule) or c.mean_val is None:
            continue
        held = by_batch.get(c.batch_size)
        if held is None or data.metric.better_than(c.mean_val, held.mean_val):
            by_batch[c.batch_size] = c
    return [by_batch[b] for b in sorted(by_batch)]


def _mark_answer(fig: go.Figure, data: ReportData) -> str:
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
        shift = _rule_offset(data, cell.get("scaling_rule"))
        fig.add_trace(
            go.Scatter(
                x=[_log2(cell["batch_size"]) + shift],
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


def accuracy_figure(data: ReportData) -> ReportFigure:
    """The final validation and test metric against batch size: every complete trial a point,
    each cell's mean (with its 95% interval on validation) joined per scaling rule."""
    m = data.metric
    what = "accuracy" if m.percent else m.name
    key, title = "accuracy", f"Final {what} against batch size"
    complete = [t for t in data.trials if t.state == "COMPLETE" and t.batch_size]
    if not complete:
        return ReportFigure(key, title, None, f"No complete trial yet: no final {what} to plot.")
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=(m.val.capitalize(), m.test.capitalize()),
    )
    for col, attr in ((1, "val_metric"), (2, "test_metric")):
        for rule in data.rules or [None]:
            trials = [t for t in complete if rule is None or t.scaling_rule == rule]
            points = [(t, getattr(t, attr)) for t in trials if getattr(t, attr) is not None]
            if not points:
                continue
            shift = _rule_offset(data, rule)
            name = f"rule {rule}" if rule else "trials"
            fig.add_trace(
                go.Scatter(
                    x=[_log2(t.batch_size) + shift for t, _ in points],
                    y=[v for _, v in points],
                    mode="markers",
                    name=f"{name}: trials",
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"color": rule_color(rule), "size": 8, "opacity": 0.45},
                    customdata=[
                        [t.number, t.batch_size, t.lr or float("nan"), t.phase] for t, _ in points
                    ],
                    hovertemplate=(
                        "trial %{customdata[0]} (%{customdata[3]})<br>batch %{customdata[1]}"
                        f"<br>lr %{{customdata[2]:.3g}}<br>{what} %{{y:{m.hover}}}"
                        f"<extra>{name}</extra>"
                    ),
                ),
                row=1,
                col=col,
            )
            cells = _cell_line(data, rule)
            ys = [c.mean_val if col == 1 else c.mean_test for c in cells]
            error = None
            if col == 1:
                error = {
                    "type": "data",
                    "symmetric": False,
                    "array": [c.ci95[1] - c.mean_val if c.ci95 else 0 for c in cells],
                    "arrayminus": [c.mean_val - c.ci95[0] if c.ci95 else 0 for c in cells],
                    "thickness": 1.5,
                    "width": 4,
                }
            fig.add_trace(
                go.Scatter(
                    x=[_log2(c.batch_size) + shift for c in cells],
                    y=ys,
                    mode="lines+markers",
                    name=f"{name}: cell mean",
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": rule_color(rule), "width": 2.5},
                    marker={"size": 5},
                    error_y=error,
                    customdata=[[c.batch_size, c.runs] for c in cells],
                    hovertemplate=(
                        f"batch %{{customdata[0]}}: mean %{{y:{m.hover}}} over "
                        f"%{{customdata[1]}} run(s)<extra>{name}</extra>"
                    ),
                ),
                row=1,
                col=col,
            )
    if data.folklore is not None:
        f = data.folklore
        for col in (1, 2):
            fig.add_vrect(
                x0=_log2(f.low),
                x1=_log2(f.high),
                fillcolor="#bbbbbb",
                opacity=0.18,
                line_width=0,
                row=1,
                col=col,
            )
        fig.add_annotation(
            x=(_log2(f.low) + _log2(f.high)) / 2,
            y=0.02,
            xref="x",
            yref="y domain",
            text=f"rule of thumb for {f.train_size:,} samples",
            showarrow=False,
            font={"size": 11, "color": "#555"},
        )
    answer_note = _mark_answer(fig, data)
    batches = _all_batches(data)
    noise_note = _mark_noise_scale(fig, data, batches, (1, 2))
    fig.update_xaxes(**_batch_ticks(batches, _noise_extend(data, batches)))
    if m.tickformat:
        fig.update_yaxes(tickformat=m.tickformat)
    fig.update_yaxes(title_text=_metric_axis(data, "val"), row=1, col=1)
    fig.update_yaxes(title_text=_metric_axis(data, "test", budget=False), row=1, col=2)
    n = len(complete)
    note = (
        f"{n} complete trial(s) as points, coloured by scaling rule; each cell's mean as a line "
        "per rule (never pooled across rules), with its 95% interval on validation where it "
        f"has 2 runs or more; {m.direction_words}. Pruned trials stopped early and are left "
        "out here (see the learning curves)."
    )
    if data.folklore is not None:
        note += " The grey band is the rule-of-thumb range for this dataset size."
    note += answer_note + noise_note
    return ReportFigure(key, title, _finish(fig, f"{title} ({_budget(data)}, {n} trials)"), note)


def _batch_colors(batches: Sequence[int]) -> dict[int, str]:
    ordered = sorted(set(batches))
    if len(ordered) == 1:
        return {ordered[0]: "#1f77b4"}
    colors = sample_colorscale(
        "Viridis", [0.9 * i / (len(ordered) - 1) for i in range(len(ordered))]
    )
    return dict(zip(ordered, colors, strict=True))


def learning_curves_figure(data: ReportData) -> ReportFigure:
    """The validation metric per epoch, one line per trial, a panel per rule, coloured by
    batch size (so each colour in a panel is one cell)."""
    m = data.metric
    key, title = "learning-curves", "Learning curves"
    trials = [t for t in data.trials if t.curve and t.batch_size]
    if not trials:
        return ReportFigure(key, title, None, f"No trial reported a {m.val} yet.")
    rules = data.rules or [None]
    fig = make_subplots(
        rows=1,
        cols=len(rules),
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=[f"rule {r}" for r in rules] if rules != [None] else None,
    )
    colors = _batch_colors([t.batch_size for t in trials])
    shown: set[int] = set()
    for col, rule in enumerate(rules, start=1):
        for t in sorted(
            (t for t in trials if t.scaling_rule == rule or rules == [None]),
            key=lambda t: (t.batch_size, t.number),
        ):
            faded = t.state != "COMPLETE"
            label = t.state.lower() + (", diverged" if t.diverged else "")
            fig.add_trace(
                go.Scatter(
                    x=[e for e, _ in t.curve],
                    y=[v for _, v in t.curve],
                    mode="lines+markers",
                    name=f"batch {t.batch_size}",
                    legendgroup=str(t.batch_size),
                    showlegend=t.batch_size not in shown,
                    opacity=0.4 if faded else 0.95,
                    line={
                        "color": colors[t.batch_size],
                        "dash": "dot" if faded else "solid",
                        "width": 1.5 if faded else 2,
                    },
                    marker={"size": 4 if faded else 6},
                    hovertemplate=(
                        f"trial {t.number} ({label}, {t.phase})<br>batch {t.batch_size}, rule "
                        f"{t.scaling_rule}, lr {t.lr if t.lr is not None else float('nan'):.3g}"
                        f"<br>epoch %{{x}}: %{{y:{m.hover}}}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
            shown.add(t.batch_size)
    max_epoch = max(e for t in trials for e, _ in t.curve)
    epoch_title = f"Epoch (of {data.epochs or max_epoch})"
    if data.step_budget:
        epoch_title = f"Epoch (varies: {data.steps or '?'} steps)"
    fig.update_xaxes(title_text=epoch_title, dtick=1 if max_epoch <= 30 else None)
    if m.tickformat:
        fig.update_yaxes(tickformat=m.tickformat)
    y_title = (
        "Validation accuracy (% of samples)" if m.percent else f"{m.val} ({m.direction_words})"
    )
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    faded = sum(t.state != "COMPLETE" for t in trials)
    note = (
        f"{len(trials)} trial(s), one line each, coloured by batch size; {faded} pruned, failed "
        "or running trial(s) drawn faded and dotted."
    )
    if data.step_budget:
        note += (
            f" Every trial made {_budget(data)}, so larger batches ran more epochs in the "
            "same number of updates."
        )
    return ReportFigure(key, title, _finish(fig, f"{title}: {m.val} per epoch"), note)


def _probe_rows(data: ReportData) -> list[dict]:
    rows = (data.probe or {}).get("rows") or []
    return [r for r in rows if isinstance(r, dict) and r.get("batch_size")]


def _marks(data: ReportData) -> list[tuple[str, float, str, str]]:
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


def _first(shown: set[str], group: str) -> bool:
    """True the first time ``group`` is seen: show each legend entry once across subplots."""
    new = group not in shown
    shown.add(group)
    return new


def hardware_figure(data: ReportData) -> ReportFigure:
    """Training time, throughput and peak memory against batch size, cap and knee marked."""
    key, title = "hardware", "Time, throughput and memory against batch size"
    measured = [t for t in data.trials if t.batch_size]
    probe_rows = _probe_rows(data)
    if (
        not any(t.train_time_s or t.samples_per_s or t.peak_memory_bytes for t in measured)
        and not probe_rows
    ):
        return ReportFigure(key, title, None, "No trial recorded time, throughput or memory yet.")
    sources = sorted(
        {MEMORY_SOURCES.get(t.memory_source, t.memory_source) for t in measured if t.memory_source}
    )
    memory_title = "Peak memory (MiB" + (f", {', '.join(sources)})" if sources else ")")
    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.08,
        subplot_titles=("Training time", "Throughput", "Peak memory"),
    )
    complete = [t for t in measured if t.state == "COMPLETE"]
    shown: set[str] = set()
    rate = data.metric.rate
    panels = (
        (1, complete, "train_time_s", 1.0, f"Training time (s, {_budget(data)})"),
        (2, measured, "samples_per_s", 1.0, f"Throughput ({rate})"),
        (3, measured, "peak_memory_bytes", 1.0 / MIB, memory_title),
    )
    for col, trials, attr, scale, _ in panels:
        points = [(t, getattr(t, attr) * scale) for t in trials if getattr(t, attr) is not None]
        if not points:
            continue
        fig.add_trace(
            go.Scatter(
                x=[_log2(t.batch_size) for t, _ in points],
                y=[v for _, v in points],
                mode="markers",
                name="trials",
                legendgroup="trials",
                showlegend=_first(shown, "trials"),
                marker={
                    "color": [rule_color(t.scaling_rule) for t, _ in points],
                    "size": 7,
                    "opacity": [0.6 if t.state == "COMPLETE" else 0.25 for t, _ in points],
                },
                customdata=[[t.number, t.batch_size, t.state.lower()] for t, _ in points],
                hovertemplate=(
                    "trial %{customdata[0]} (%{customdata[2]})<br>batch %{customdata[1]}"
                    "<br>%{y:,.3g}<extra></extra>"
                ),
            ),
            row=1,
            col=col,
        )
        for rule in data.rules or [None]:  # a median per cell, never across rules
            mine = [(t, v) for t, v in points if rule is None or t.scaling_rule == rule]
            batches = sorted({t.batch_size for t, _ in mine})
            if not batches:
                continue
            name = f"rule {rule}: cell median" if rule else "median of trials"
            fig.add_trace(
                go.Scatter(
                    x=[_log2(b) for b in batches],
                    y=[median(v for t, v in mine if t.batch_size == b) for b in batches],
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=_first(shown, name),
                    line={"color": rule_color(rule), "width": 2},
                    hovertemplate="median %{y:,.3g}<extra>" + name + "</extra>",
                ),
                row=1,
                col=col,
            )
    if probe_rows:
        throughput = [r for r in probe_rows if r.get("samples_per_s")]
        if throughput:
            fig.add_trace(
                go.Scatter(
                    x=[_log2(r["batch_size"]) for r in throughput],
                    y=[r["samples_per_s"] for r in throughput],
                    mode="lines+markers",
                    name="probe",
                    legendgroup="probe",
                    marker={"symbol": "diamond", "color": "#9467bd", "size": 8},
                    line={"color": "#9467bd", "dash": "dash"},
                    hovertemplate="probe: batch %{text}<br>%{y:,.0f} " + rate + "<extra></extra>",
                    text=[str(r["batch_size"]) for r in throughput],
                ),
                row=1,
                col=2,
            )
        for field, label, dash in (
            ("measured_bytes", "probe: measured", "dash"),
            ("predicted_bytes", "probe: predicted", "dot"),
        ):
            rows = [r for r in probe_rows if r.get(field)]
            if rows:
                fig.add_trace(
                    go.Scatter(
                        x=[_log2(r["batch_size"]) for r in rows],
                        y=[r[field] / MIB for r in rows],
                        mode="lines+markers",
                        name=label,
                        legendgroup=label,
                        marker={"symbol": "diamond", "color": "#9467bd", "size": 7},
                        line={"color": "#9467bd", "dash": dash},
                        hovertemplate=label + ": %{y:,.1f} MiB<extra></extra>",
                    ),
                    row=1,
                    col=3,
                )
        budget = (data.probe or {}).get("budget_bytes")
        memory = [r.get("measured_bytes") or r.get("predicted_bytes") or 0 for r in probe_rows]
        memory += [t.peak_memory_bytes or 0 for t in measured]
        if isinstance(budget, int | float) and budget > 4 * max(memory, default=0):
            fig.add_annotation(  # a line that far up would flatten every measurement
                text=f"memory budget {budget / MIB:,.0f} MiB (off the scale)",
                x=0.02,
                y=0.9,
                xref="x3 domain",
                yref="y3 domain",
                showarrow=False,
                xanchor="left",
                font={"size": 10, "color": "#d62728"},
            )
        elif isinstance(budget, int | float) and budget > 0:
            fig.add_hline(
                y=budget / MIB,
                line={"color": "#d62728", "dash": "dash", "width": 1},
                annotation_text="memory budget",
                annotation_position="top left",
                row=1,
                col=3,
            )
    for name, batch, label, _ in _marks(data):
        fig.add_vline(
            x=_log2(batch),
            line={"color": "#d62728" if name == "cap" else "#8c564b", "dash": "dash", "width": 1},
            annotation_text=label,
            annotation_position="top left",
            annotation_font_size=10,
            row="all",
            col="all",
        )
    batches = _all_batches(data) + [r["batch_size"] for r in probe_rows]
    batches += [b for _, b, _, _ in _marks(data)]
    noise_note = _mark_noise_scale(fig, data, batches, (1, 2, 3), annotate=False)
    fig.update_xaxes(**_batch_ticks(batches, _noise_extend(data, batches)))
    fig.update_xaxes(title_text="Batch size (log2)")
    fig.update_xaxes(title_text=BATCH_AXIS, row=1, col=2)
    for col, _, _, _, axis_title in panels:
        fig.update_yaxes(title_text=axis_title, row=1, col=col)
    note = (
        f"Training time of complete trials ({_budget(data)}); throughput ({rate}) and peak "
        "memory of every trial that recorded them (pruned ones faded), coloured by scaling "
        "rule, with each cell's median joined per rule."
    )
    if probe_rows:
        note += " Diamonds: the hardware probe's measurements; dotted: its memory prediction."
    for name, batch, _, source in _marks(data):
        what = "largest batch that fits" if name == "cap" else "throughput knee"
        note += f" Dashed line at {int(batch)}: the {what}" + (
            f", from {source}." if source else "."
        )
    note += noise_note
    return ReportFigure(key, title, _finish(fig, title, height=500), note)


def _log_ticks(values: Sequence[float]) -> dict:
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


def lr_figure(data: ReportData) -> ReportFigure:
    """The learning rate each trial used against batch size, one series per rule."""
    key, title = "learning-rate", "Learning rate against batch size"
    trials = [t for t in data.trials if t.batch_size and t.lr and t.lr > 0]
    if not trials:
        return ReportFigure(key, title, None, "No trial recorded its learning rate yet.")
    fig = go.Figure()
    searched = data.searched_multiplier
    for rule in data.rules or [None]:
        members = [t for t in trials if t.scaling_rule == rule]
        by_batch = {t.batch_size: t.rule_lr for t in members if t.rule_lr}
        pairs = sorted(by_batch.items())
        if not pairs:
            continue
        name = f"rule {rule}" if rule else "trials"
        fig.add_trace(
            go.Scatter(
                x=[_log2(b) for b, _ in pairs],
                y=[lr for _, lr in pairs],
                mode="lines+markers",
                name=name + (": the rule's lr" if searched else ""),
                legendgroup=name,
                line={"color": rule_color(rule)},
                marker={"size": 8},
                text=[str(b) for b, _ in pairs],
                hovertemplate="batch %{text}: lr %{y:.3g}<extra>rule " + str(rule) + "</extra>",
            )
        )
        if searched:
            shift = _rule_offset(data, rule)
            fig.add_trace(
                go.Scatter(
                    x=[_log2(t.batch_size) + shift for t in members],
                    y=[t.lr for t in members],
                    mode="markers",
                    name=name + ": trials (rule x multiplier)",
                    legendgroup=name,
                    marker={"color": rule_color(rule), "size": 6, "opacity": 0.35},
                    customdata=[[t.number, t.batch_size, t.lr_multiplier or 1.0] for t in members],
                    hovertemplate=(
                        "trial %{customdata[0]}: batch %{customdata[1]}, multiplier "
                        "%{customdata[2]:.3g}<br>lr %{y:.3g}<extra>" + name + "</extra>"
                    ),
                )
            )
    base_lr, base_batch = data.config.get("base_lr"), data.config.get("base_batch_size")
    if isinstance(base_lr, int | float) and isinstance(base_batch, int) and base_lr > 0:
        fig.add_trace(
            go.Scatter(
                x=[_log2(base_batch)],
                y=[base_lr],
                mode="markers",
                name=f"reference: lr {base_lr:g} at batch {base_batch}",
                marker={"symbol": "star", "size": 14, "color": "#222"},
                hovertemplate="reference lr %{y:.3g}<extra></extra>",
            )
        )
    ticks = _batch_ticks(_all_batches(data) + ([base_batch] if isinstance(base_batch, int) else []))
    fig.update_xaxes(**ticks)
    lrs = [t.lr for t in trials] + ([base_lr] if isinstance(base_lr, int | float) else [])
    fig.update_yaxes(
        type="log", title_text="Learning rate (per update, log scale)", **_log_ticks(lrs)
    )
    optimizer = data.config.get("optimizer")
    note = "Learning rate of each (batch size, rule) pair the trials used" + (
        f" with {optimizer}." if optimizer else "."
    )
    if searched:
        note = (
            "Lines: the learning rate each scaling rule gives at each batch size; faint "
            "points: the learning rate each trial used, the rule's times its searched "
            "multiplier" + (f", with {optimizer}." if optimizer else ".")
        )
    if data.warmup_epochs:
        note += f" Each trial ramped up to its learning rate over {data.warmup_epochs} epoch(s)."
    return ReportFigure(key, title, _finish(fig, title), note)


def lr_multiplier_figure(data: ReportData) -> ReportFigure:
    """Per batch size, the searched LR multiplier of the best trial, every trial faint."""
    key, title = "lr-multiplier", "Best learning-rate multiplier against batch size"
    trials = [t for t in data.trials if t.batch_size and t.lr_multiplier]
    if not trials:
        return ReportFigure(key, title, None, "No trial recorded a learning-rate multiplier yet.")
    fig = go.Figure()
    for rule in data.rules or [None]:
        members = [t for t in trials if t.scaling_rule == rule]
        if not members:
            continue
        shift = _rule_offset(data, rule)
        fig.add_trace(
            go.Scatter(
                x=[_log2(t.batch_size) + shift for t in members],
                y=[t.lr_multiplier for t in members],
                mode="markers",
                name=f"rule {rule}: trials" if rule else "trials",
                marker={
                    "color": rule_color(rule),
                    "size": 7,
                    "opacity": [0.4 if t.state == "COMPLETE" else 0.15 for t in members],
                },
                customdata=[
                    [t.number, t.batch_size, t.state.lower(), t.val_metric or float("nan")]
                    for t in members
                ],
                hovertemplate=(
                    "trial %{customdata[0]} (%{customdata[2]})<br>batch %{customdata[1]}, "
                    "multiplier %{y:.3g}<br>val %{customdata[3]:"
                    + data.metric.hover
                    + "}<extra>rule "
                    + str(rule)
                    + "</extra>"
                ),
            )
        )
    m = data.metric
    for rule in data.rules or [None]:  # the best trial of each (batch size, rule) cell
        best: dict[int, TrialRecord] = {}
        for t in trials:
            if t.state != "COMPLETE" or t.val_metric is None:
                continue
            if rule is not None and t.scaling_rule != rule:
                continue
            held = best.get(t.batch_size)
            if held is None or (m.key(t.val_metric), -t.number) > (
                m.key(held.val_metric),
                -held.number,
            ):
                best[t.batch_size] = t
        winners = [best[b] for b in sorted(best)]
        if not winners:
            continue
        name = f"rule {rule}: best trial per batch size" if rule else "best trial per batch size"
        shift = _rule_offset(data, rule)
        fig.add_trace(
            go.Scatter(
                x=[_log2(t.batch_size) + shift for t in winners],
                y=[t.lr_multiplier for t in winners],
                mode="lines+markers",
                name=name,
                line={"color": rule_color(rule), "width": 2.5},
                marker={
                    "size": 11,
                    "symbol": "diamond",
                    "color": rule_color(rule),
                    "line": {"color": "#222", "width": 1.5},
                },
                customdata=[
                    [t.number, t.batch_size, t.scaling_rule, t.val_metric] for t in winners
                ],
                hovertemplate=(
                    "best at batch %{customdata[1]}: trial %{customdata[0]}, rule "
                    "%{customdata[2]}<br>multiplier %{y:.3g}, val %{customdata[3]:"
                    + m.hover
                    + "}<extra></extra>"
                ),
            )
        )
    fig.add_hline(
        y=1.0,
        line={"color": "#555", "dash": "dash", "width": 1},
        annotation_text="x1: the rule's own learning rate",
        annotation_position="top left",
    )
    width = data.lr_search_width
    ys = [t.lr_multiplier for t in trials] + [1.0]
    ys += [1 / width, width] if width > 1 else []
    low, high = math.floor(math.log2(min(ys)) + 1e-9), math.ceil(math.log2(max(ys)) - 1e-9)
    ticks = [2.0**k for k in range(low, high + 1)]  # powers of two: x1/4 ... x4
    fig.update_xaxes(**_batch_ticks(_all_batches(data)))
    fig.update_yaxes(
        type="log",
        title_text="LR multiplier (x the scaling rule's learning rate, log scale)",
        tickmode="array",
        tickvals=ticks,
        ticktext=[f"{v:g}" for v in ticks],
        range=[math.log10(min(ys)) - 0.08, math.log10(max(ys)) + 0.08],
    )
    note = (
        "Per batch size and rule, the multiplier on the scaling rule's learning rate of the "
        f"trial with the best {m.full} (diamonds joined per rule); every trial a faint point"
        + (f"; searched log-uniformly in {1 / width:.3g}-{width:g}" if width > 1 else "")
        + ". Near 1 the rule gave the right learning rate; drifting above 1 at large batches "
        "means the rule scaled the learning rate up too little there, below 1 too much."
    )
    return ReportFigure(key, title, _finish(fig, title), note)


def pareto_figure(data: ReportData) -> ReportFigure:
    """Two objectives: the validation metric against training time, the Pareto front joined."""
    m = data.metric
    key, title = "pareto", f"Pareto front: {m.val} against training time"
    complete = [
        t
        for t in data.trials
        if t.state == "COMPLETE" and t.val_metric is not None and t.train_time_s is not None
    ]
    if not complete:
        return ReportFigure(key, title, None, "No complete trial yet: no Pareto front to plot.")
    front = {t.number for t in data.front}
    fig = go.Figure()

    def hover(points: Sequence) -> dict:
        return {
            "customdata": [
                [
                    t.number,
                    t.batch_size if t.batch_size is not None else "?",
                    t.scaling_rule or "?",
                    t.lr if t.lr is not None else float("nan"),
                    t.test_metric if t.test_metric is not None else float("nan"),
                ]
                for t in points
            ],
            "hovertemplate": (
                "trial %{customdata[0]}<br>batch %{customdata[1]}, rule %{customdata[2]}, "
                f"lr %{{customdata[3]:.3g}}<br>val %{{y:{m.hover}}}, test "
                f"%{{customdata[4]:{m.hover}}}<br>training time %{{x:.3g}} s<extra></extra>"
            ),
        }

    for rule in data.rules or [None]:
        points = [t for t in complete if t.scaling_rule == rule and t.number not in front]
        if points:
            fig.add_trace(
                go.Scatter(
                    x=[t.train_time_s for t in points],
                    y=[t.val_metric for t in points],
                    mode="markers",
                    name=f"rule {rule}: trials" if rule else "trials",
                    marker={"color": rule_color(rule), "size": 8, "opacity": 0.45},
                    **hover(points),
                )
            )
    on_front = [t for t in data.front if t.train_time_s is not None and t.val_metric]
    if on_front:
        fig.add_trace(
            go.Scatter(
                x=[t.train_time_s for t in on_front],
                y=[t.val_metric for t in on_front],
                mode="lines+markers+text",
                name="Pareto front",
                line={"color": "#222", "width": 2, "shape": "hv"},
                marker={
                    "size": 13,
                    "symbol": "diamond",
                    "color": [rule_color(t.scaling_rule) for t in on_front],
                    "line": {"color": "#222", "width": 1.5},
                },
                text=[f"batch {t.batch_size}" for t in on_front],
                textposition="top left",
                textfont={"size": 10},
                **hover(on_front),
            )
        )
    times = [t.train_time_s for t in complete if t.train_time_s and t.train_time_s > 0]
    log_x = len(times) == len(complete) and max(times) / min(times) >= 10
    fig.update_xaxes(
        title_text="Training time (s per trial" + (", log scale)" if log_x else ")"),
        type="log" if log_x else "linear",
        **(_log_ticks(times) if log_x else {}),
    )
    y_title = (
        f"Validation accuracy (% of samples, after {_budget(data)})"
        if m.percent
        else _metric_axis(data, "val")
    )
    fig.update_yaxes(title_text=y_title, **({"tickformat": m.tickformat} if m.tickformat else {}))
    note = (
        f"{len(complete)} complete trial(s), coloured by scaling rule; the {len(on_front)} on "
        f"the Pareto front (no other trial is both better, {m.direction_words}, and faster) are "
        f"diamonds, joined fastest to best. {'Up' if m.sign > 0 else 'Down'} and to the left "
        "is better."
    )
    return ReportFigure(key, title, _finish(fig, title), note)


def history_figure(study: optuna.Study, data: ReportData) -> ReportFigure:
    """Optuna's optimisation history, axes titled with units."""
    key, title = "history", "Optimisation history"
    if data.counts.get("COMPLETE", 0) == 0:
        return ReportFigure(key, title, None, "No complete trial yet: no optimisation history.")
    m = data.metric
    if data.multi_objective:
        fig = optuna.visualization.plot_optimization_history(
            study, target=lambda t: _val_metric(t, m.info), target_name=m.stored
        )
        note = (
            f"Optuna's optimisation history of {m.val}, one point per complete "
            "trial; a two-objective study has no single best so far (see the Pareto front)."
        )
        name = m.stored
    else:
        fig = optuna.visualization.plot_optimization_history(study)
        note = "Optuna's optimisation history: each complete trial's value and the best so far."
        name = data.metric_name
    fig.update_xaxes(title_text="Trial number")
    what = "validation accuracy, fraction" if m.percent else f"{m.val}, {m.direction_words}"
    fig.update_yaxes(title_text=f"{name} ({what}, {_budget(data)})")
    return ReportFigure(key, title, _finish(fig, f"{title} ({name})"), note)


def _val_metric(trial: optuna.trial.FrozenTrial, metric: MetricInfo) -> float:
    """A trial's validation metric as its record reads it (NaN where there is none)."""
    value = read_record(trial, metric=metric).val_metric
    return float("nan") if value is None else value


def importance_figure(study: optuna.Study, data: ReportData) -> ReportFigure:
    """Optuna's parameter importances, or the sentence that says why there are none."""
    key, title = "importances", "Parameter importances"
    if data.importances is None:
        return ReportFigure(key, title, None, data.importance_note)
    if data.multi_objective:  # Optuna's plot would score each objective as if minimised
        ordered = sorted(data.importances.items(), key=lambda kv: kv[1])
        fig = go.Figure(
            go.Bar(
                x=[v for _, v in ordered],
                y=[k for k, _ in ordered],
                orientation="h",
                name="reaching the Pareto front",
                text=[f"{v:.2f}" for _, v in ordered],
                textposition="outside",
                cliponaxis=False,
                hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            )
        )
        target = "reaching the Pareto front"
    else:
        fig = optuna.visualization.plot_param_importances(study)
        target = data.metric_name
    fig.update_xaxes(title_text=f"Importance for {target} (fraction of total)")
    fig.update_yaxes(title_text="Hyperparameter (name)")
    return ReportFigure(key, title, _finish(fig, title, height=380), data.importance_note)


def build_figures(study: optuna.Study, data: ReportData) -> list[ReportFigure]:
    """Every figure of the report, in page order (missing ones carry their reason).

    The Pareto front comes first in a two-objective study; the LR multiplier figure only when
    the study searched the multiplier. Other figures are always listed.
    """
    figures = [pareto_figure(data)] if data.multi_objective else []
    figures += [
        accuracy_figure(data),
        learning_curves_figure(data),
        hardware_figure(data),
        lr_figure(data),
    ]
    if data.searched_multiplier:
        figures.append(lr_multiplier_figure(data))
    figures += [history_figure(study, data), importance_figure(study, data)]
    return figures
