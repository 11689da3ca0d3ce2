"""The hardware figure: training time, throughput and peak memory against batch size, with
the hardware probe's measurements, its memory budget, the batch cap and the throughput knee."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.record import TrialRecord
from study.report.data import ReportData
from study.report.figures.parts import (
    BATCH_AXIS,
    MEMORY_SOURCES,
    MIB,
    ReportFigure,
    all_batches,
    batch_ticks,
    budget_label,
    cap_and_knee,
    finish,
    first_time,
    log2,
    mark_noise_scale,
    noise_extend,
    probe_rows,
    rule_color,
)
from study.stats import median


def hardware_figure(data: ReportData) -> ReportFigure:
    """Training time, throughput and peak memory against batch size, cap and knee marked."""
    key, title = "hardware", "Time, throughput and memory against batch size"
    measured = [t for t in data.trials if t.batch_size]
    probed = probe_rows(data)
    if (
        not any(t.train_time_s or t.samples_per_s or t.peak_memory_bytes for t in measured)
        and not probed
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
        (1, complete, "train_time_s", 1.0, f"Training time (s, {budget_label(data)})"),
        (2, measured, "samples_per_s", 1.0, f"Throughput ({data.metric.rate})"),
        (3, measured, "peak_memory_bytes", 1.0 / MIB, memory_title),
    )
    for col, trials, attr, scale, _ in panels:
        points = [(t, getattr(t, attr) * scale) for t in trials if getattr(t, attr) is not None]
        if points:
            _hardware_panel(fig, data, col, points, shown)
    if probed:
        _probe_traces(fig, data, probed)
        _memory_budget(fig, data, probed, measured)
    _mark_cap_and_knee(fig, data)
    batches = all_batches(data) + [r["batch_size"] for r in probed]
    batches += [b for _, b, _, _ in cap_and_knee(data)]
    noise_note = mark_noise_scale(fig, data, batches, (1, 2, 3), annotate=False)
    fig.update_xaxes(**batch_ticks(batches, noise_extend(data, batches)))
    fig.update_xaxes(title_text="Batch size (log2)")
    fig.update_xaxes(title_text=BATCH_AXIS, row=1, col=2)
    for col, _, _, _, axis_title in panels:
        fig.update_yaxes(title_text=axis_title, row=1, col=col)
    note = _hardware_note(data, probed) + noise_note
    return ReportFigure(key, title, finish(fig, title, height=500), note)


def _hardware_panel(
    fig: go.Figure,
    data: ReportData,
    col: int,
    points: list[tuple[TrialRecord, float]],
    shown: set[str],
) -> None:
    """One panel: every trial a point (pruned ones faded), each cell's median joined per rule."""
    fig.add_trace(
        go.Scatter(
            x=[log2(t.batch_size) for t, _ in points],
            y=[v for _, v in points],
            mode="markers",
            name="trials",
            legendgroup="trials",
            showlegend=first_time(shown, "trials"),
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
                x=[log2(b) for b in batches],
                y=[median(v for t, v in mine if t.batch_size == b) for b in batches],
                mode="lines",
                name=name,
                legendgroup=name,
                showlegend=first_time(shown, name),
                line={"color": rule_color(rule), "width": 2},
                hovertemplate="median %{y:,.3g}<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )


def _probe_traces(fig: go.Figure, data: ReportData, probed: list[dict]) -> None:
    """The hardware probe's throughput and its measured and predicted memory, as diamonds."""
    rate = data.metric.rate
    throughput = [r for r in probed if r.get("samples_per_s")]
    if throughput:
        fig.add_trace(
            go.Scatter(
                x=[log2(r["batch_size"]) for r in throughput],
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
        rows = [r for r in probed if r.get(field)]
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[log2(r["batch_size"]) for r in rows],
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


def _memory_budget(
    fig: go.Figure, data: ReportData, probed: list[dict], measured: list[TrialRecord]
) -> None:
    """The probe's memory budget on the memory panel: a line, or a note when far off scale."""
    budget = (data.probe or {}).get("budget_bytes")
    memory = [r.get("measured_bytes") or r.get("predicted_bytes") or 0 for r in probed]
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


def _mark_cap_and_knee(fig: go.Figure, data: ReportData) -> None:
    """The probe's batch cap (red) and throughput knee (brown) as dashed lines on every panel."""
    for name, batch, label, _ in cap_and_knee(data):
        fig.add_vline(
            x=log2(batch),
            line={"color": "#d62728" if name == "cap" else "#8c564b", "dash": "dash", "width": 1},
            annotation_text=label,
            annotation_position="top left",
            annotation_font_size=10,
            row="all",
            col="all",
        )


def _hardware_note(data: ReportData, probed: list[dict]) -> str:
    """What the hardware figure shows, its marks included."""
    note = (
        f"Training time of complete trials ({budget_label(data)}); throughput "
        f"({data.metric.rate}) and peak memory of every trial that recorded them (pruned ones "
        "faded), coloured by scaling rule, with each cell's median joined per rule."
    )
    if probed:
        note += " Diamonds: the hardware probe's measurements; dotted: its memory prediction."
    for name, batch, _, source in cap_and_knee(data):
        what = "largest batch that fits" if name == "cap" else "throughput knee"
        note += f" Dashed line at {int(batch)}: the {what}" + (
            f", from {source}." if source else "."
        )
    return note
