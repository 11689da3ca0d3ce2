"""The report's figures, built with Plotly from a :class:`~study.report_data.ReportData`.

Every figure's axes say what is measured and in which unit. Batch size is drawn on a log2
axis: the x coordinate is ``log2(batch)`` and the ticks read as the batch sizes, so the
probe's cap and knee and the rule-of-thumb band are plain lines and bands at the right place.
A builder returns a :class:`ReportFigure` whose ``figure`` is ``None`` (and whose ``note``
says why) when the study has nothing to draw yet.

Example:
    >>> import optuna
    >>> from study.report_data import collect_report_data
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

from study.report_data import ReportData, median

RULE_COLORS = {"linear": "#1f77b4", "sqrt": "#ff7f0e", "none": "#2ca02c"}
OTHER_COLOR = "#7f7f7f"
#: Rules are drawn slightly apart on the log2 axis so their points do not hide each other.
RULE_OFFSET = 0.07
MIB = 1024**2
#: How a trial measured its peak memory, in words for the axis title.
MEMORY_SOURCES = {
    "cuda_max_memory_allocated": "CUDA peak allocated",
    "cpu_step_tensors": "tensors of a CPU step",
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


def _batch_ticks(batches: Sequence[float]) -> dict:
    """A log2 batch axis: ticks at the batch sizes, the same range in every subplot."""
    sizes = sorted({int(b) for b in batches if b and b > 0})
    axis: dict = {
        "tickmode": "array",
        "tickvals": [_log2(b) for b in sizes],
        "ticktext": [str(b) for b in sizes],
        "title": {"text": BATCH_AXIS},
    }
    if sizes:
        axis["range"] = [_log2(sizes[0]) - 0.4, _log2(sizes[-1]) + 0.4]
    return axis


def _all_batches(data: ReportData) -> list[float]:
    batches: list[float] = [t.batch_size for t in data.trials if t.batch_size]
    batches += [b for b in data.space.get("batch_sizes") or [] if isinstance(b, int | float)]
    return batches


def _rule_offset(data: ReportData, rule: str | None) -> float:
    if len(data.rules) < 2 or rule not in data.rules:
        return 0.0
    return (data.rules.index(rule) - (len(data.rules) - 1) / 2) * RULE_OFFSET


def _budget(data: ReportData) -> str:
    return f"{data.epochs} epochs" if data.epochs else "epoch budget unknown"


def _finish(fig: go.Figure, title: str, height: int = 480) -> go.Figure:
    fig.update_layout(
        title={"text": title},
        height=height,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 80, "b": 130},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.2, "yanchor": "top"},
    )
    return fig


def accuracy_figure(data: ReportData) -> ReportFigure:
    """Final validation and test accuracy against batch size, a series per scaling rule."""
    key, title = "accuracy", "Final accuracy against batch size"
    complete = [t for t in data.trials if t.state == "COMPLETE" and t.batch_size]
    if not complete:
        return ReportFigure(key, title, None, "No complete trial yet: no final accuracy to plot.")
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=("Validation accuracy", "Test accuracy"),
    )
    for col, attr in ((1, "val_accuracy"), (2, "test_accuracy")):
        for rule in data.rules or [None]:
            trials = [t for t in complete if t.scaling_rule == rule]
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
                    marker={"color": rule_color(rule), "size": 8, "opacity": 0.55},
                    customdata=[[t.number, t.batch_size, t.lr or float("nan")] for t, _ in points],
                    hovertemplate=(
                        "trial %{customdata[0]}<br>batch %{customdata[1]}<br>"
                        "lr %{customdata[2]:.3g}<br>accuracy %{y:.1%}<extra>" + name + "</extra>"
                    ),
                ),
                row=1,
                col=col,
            )
            batches = sorted({t.batch_size for t, _ in points})
            medians = [median(v for t, v in points if t.batch_size == b) for b in batches]
            fig.add_trace(
                go.Scatter(
                    x=[_log2(b) + shift for b in batches],
                    y=medians,
                    mode="lines",
                    name=f"{name}: median",
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": rule_color(rule), "width": 2.5},
                    hovertemplate="median %{y:.1%}<extra>" + name + "</extra>",
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
    ticks = _batch_ticks(_all_batches(data))
    fig.update_xaxes(**ticks)
    fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title_text=f"Accuracy (% of samples, after {_budget(data)})", row=1, col=1)
    fig.update_yaxes(title_text="Accuracy (% of samples)", row=1, col=2)
    n = len(complete)
    note = (
        f"{n} complete trial(s) as points, the median per batch size as a line; pruned trials "
        "stopped early and are left out here (see the learning curves)."
    )
    if data.folklore is not None:
        note += " The grey band is the rule-of-thumb range for this dataset size."
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
    """Validation accuracy per epoch, one line per trial, coloured by batch size."""
    key, title = "learning-curves", "Learning curves"
    trials = [t for t in data.trials if t.curve and t.batch_size]
    if not trials:
        return ReportFigure(key, title, None, "No trial reported a validation accuracy yet.")
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
                        f"trial {t.number} ({label})<br>batch {t.batch_size}, rule "
                        f"{t.scaling_rule}, lr {t.lr if t.lr is not None else float('nan'):.3g}"
                        "<br>epoch %{x}: %{y:.1%}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
            shown.add(t.batch_size)
    max_epoch = max(e for t in trials for e, _ in t.curve)
    fig.update_xaxes(
        title_text=f"Epoch (of {data.epochs or max_epoch})", dtick=1 if max_epoch <= 30 else None
    )
    fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title_text="Validation accuracy (% of samples)", row=1, col=1)
    faded = sum(t.state != "COMPLETE" for t in trials)
    note = (
        f"{len(trials)} trial(s), one line each, coloured by batch size; {faded} pruned, failed "
        "or running trial(s) drawn faded and dotted."
    )
    return ReportFigure(key, title, _finish(fig, f"{title}: validation accuracy per epoch"), note)


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
    panels = (
        (1, complete, "train_time_s", 1.0, f"Training time (s, {_budget(data)})"),
        (2, measured, "samples_per_s", 1.0, "Throughput (samples/s)"),
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
        batches = sorted({t.batch_size for t, _ in points})
        fig.add_trace(
            go.Scatter(
                x=[_log2(b) for b in batches],
                y=[median(v for t, v in points if t.batch_size == b) for b in batches],
                mode="lines",
                name="median of trials",
                legendgroup="median",
                showlegend=_first(shown, "median"),
                line={"color": "#444", "width": 2},
                hovertemplate="median %{y:,.3g}<extra></extra>",
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
                    hovertemplate="probe: batch %{text}<br>%{y:,.0f} samples/s<extra></extra>",
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
    fig.update_xaxes(**_batch_ticks(batches))
    fig.update_xaxes(title_text="Batch size (log2)")
    fig.update_xaxes(title_text=BATCH_AXIS, row=1, col=2)
    for col, _, _, _, axis_title in panels:
        fig.update_yaxes(title_text=axis_title, row=1, col=col)
    note = (
        f"Training time of complete trials ({_budget(data)}); throughput and peak memory of "
        "every trial that recorded them (pruned ones faded), coloured by scaling rule."
    )
    if probe_rows:
        note += " Diamonds: the hardware probe's measurements; dotted: its memory prediction."
    for name, batch, _, source in _marks(data):
        what = "largest batch that fits" if name == "cap" else "throughput knee"
        note += f" Dashed line at {int(batch)}: the {what}" + (
            f", from {source}." if source else "."
        )
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
    for rule in data.rules or [None]:
        pairs = sorted({(t.batch_size, t.lr) for t in trials if t.scaling_rule == rule})
        if not pairs:
            continue
        fig.add_trace(
            go.Scatter(
                x=[_log2(b) for b, _ in pairs],
                y=[lr for _, lr in pairs],
                mode="lines+markers",
                name=f"rule {rule}" if rule else "trials",
                line={"color": rule_color(rule)},
                marker={"size": 8},
                text=[str(b) for b, _ in pairs],
                hovertemplate="batch %{text}: lr %{y:.3g}<extra>rule " + str(rule) + "</extra>",
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
    return ReportFigure(key, title, _finish(fig, title), note)


def history_figure(study: optuna.Study, data: ReportData) -> ReportFigure:
    """Optuna's optimisation history, axes titled with units."""
    key, title = "history", "Optimisation history"
    if data.counts.get("COMPLETE", 0) == 0:
        return ReportFigure(key, title, None, "No complete trial yet: no optimisation history.")
    fig = optuna.visualization.plot_optimization_history(study)
    fig.update_xaxes(title_text="Trial number")
    fig.update_yaxes(
        title_text=f"{data.metric_name} (validation accuracy, fraction, {_budget(data)})"
    )
    note = "Optuna's optimisation history: each complete trial's value and the best so far."
    return ReportFigure(key, title, _finish(fig, f"{title} ({data.metric_name})"), note)


def importance_figure(study: optuna.Study, data: ReportData) -> ReportFigure:
    """Optuna's parameter importances, or the sentence that says why there are none."""
    key, title = "importances", "Parameter importances"
    if data.importances is None:
        return ReportFigure(key, title, None, data.importance_note)
    fig = optuna.visualization.plot_param_importances(study)
    fig.update_xaxes(title_text=f"Importance for {data.metric_name} (fraction of total)")
    fig.update_yaxes(title_text="Hyperparameter (name)")
    return ReportFigure(key, title, _finish(fig, title, height=380), data.importance_note)


def build_figures(study: optuna.Study, data: ReportData) -> list[ReportFigure]:
    """Every figure of the report, in page order (missing ones carry their reason)."""
    return [
        accuracy_figure(data),
        learning_curves_figure(data),
        hardware_figure(data),
        lr_figure(data),
        history_figure(study, data),
        importance_figure(study, data),
    ]
