"""The report's figures, each built with Plotly from a :class:`~study.report.data.ReportData`.

One builder per figure, in page order (:func:`build_figures`): the metric against batch size,
the learning curves, time / throughput / memory, the learning rate, the searched
learning-rate multiplier, the Pareto front of a two-objective study, Optuna's history and
importances. The parts they share (the log2 batch axis, colours, marks, layout) are in
:mod:`study.report.figure_parts`. Every figure's axes say what is measured and in which unit.
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

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.record import TrialRecord
from study.report.data import ReportData
from study.report.figure_parts import (
    BATCH_AXIS,
    MEMORY_SOURCES,
    MIB,
    ReportFigure,
    all_batches,
    batch_colors,
    batch_ticks,
    budget_label,
    cap_and_knee,
    cell_line,
    finish,
    first_time,
    log2,
    log_ticks,
    mark_answer,
    mark_noise_scale,
    metric_axis,
    noise_extend,
    probe_rows,
    rule_color,
    rule_offset,
    val_metric,
)
from study.stats import median

__all__ = [
    "ReportFigure",
    "accuracy_figure",
    "build_figures",
    "hardware_figure",
    "history_figure",
    "importance_figure",
    "learning_curves_figure",
    "lr_figure",
    "lr_multiplier_figure",
    "pareto_figure",
    "rule_color",
]


# --------------------------------------------------------------------------- the metric


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
            fig.add_trace(_metric_points(data, rule, points, col), row=1, col=col)
            fig.add_trace(_cell_means(data, rule, col), row=1, col=col)
    _mark_folklore(fig, data)
    answer_note = mark_answer(fig, data)
    batches = all_batches(data)
    noise_note = mark_noise_scale(fig, data, batches, (1, 2))
    fig.update_xaxes(**batch_ticks(batches, noise_extend(data, batches)))
    if m.tickformat:
        fig.update_yaxes(tickformat=m.tickformat)
    fig.update_yaxes(title_text=metric_axis(data, "val"), row=1, col=1)
    fig.update_yaxes(title_text=metric_axis(data, "test", budget=False), row=1, col=2)
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
    heading = f"{title} ({budget_label(data)}, {n} trials)"
    return ReportFigure(key, title, finish(fig, heading), note)


def _metric_points(
    data: ReportData, rule: str | None, points: list[tuple[TrialRecord, float]], col: int
) -> go.Scatter:
    """One rule's complete trials as faint points on the validation (1) or test (2) panel."""
    m = data.metric
    what = "accuracy" if m.percent else m.name
    shift = rule_offset(data, rule)
    name = f"rule {rule}" if rule else "trials"
    return go.Scatter(
        x=[log2(t.batch_size) + shift for t, _ in points],
        y=[v for _, v in points],
        mode="markers",
        name=f"{name}: trials",
        legendgroup=name,
        showlegend=col == 1,
        marker={"color": rule_color(rule), "size": 8, "opacity": 0.45},
        customdata=[[t.number, t.batch_size, t.lr or float("nan"), t.phase] for t, _ in points],
        hovertemplate=(
            "trial %{customdata[0]} (%{customdata[3]})<br>batch %{customdata[1]}"
            f"<br>lr %{{customdata[2]:.3g}}<br>{what} %{{y:{m.hover}}}"
            f"<extra>{name}</extra>"
        ),
    )


def _cell_means(data: ReportData, rule: str | None, col: int) -> go.Scatter:
    """One rule's cell means joined by batch size, with the 95% interval on validation."""
    m = data.metric
    shift = rule_offset(data, rule)
    name = f"rule {rule}" if rule else "trials"
    cells = cell_line(data, rule)
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
    return go.Scatter(
        x=[log2(c.batch_size) + shift for c in cells],
        y=[c.mean_val if col == 1 else c.mean_test for c in cells],
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
    )


def _mark_folklore(fig: go.Figure, data: ReportData) -> None:
    """The rule-of-thumb range for the dataset's size as a grey band on both panels."""
    f = data.folklore
    if f is None:
        return
    for col in (1, 2):
        fig.add_vrect(
            x0=log2(f.low),
            x1=log2(f.high),
            fillcolor="#bbbbbb",
            opacity=0.18,
            line_width=0,
            row=1,
            col=col,
        )
    fig.add_annotation(
        x=(log2(f.low) + log2(f.high)) / 2,
        y=0.02,
        xref="x",
        yref="y domain",
        text=f"rule of thumb for {f.train_size:,} samples",
        showarrow=False,
        font={"size": 11, "color": "#555"},
    )


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
    colors = batch_colors([t.batch_size for t in trials])
    shown: set[int] = set()
    for col, rule in enumerate(rules, start=1):
        for t in sorted(
            (t for t in trials if t.scaling_rule == rule or rules == [None]),
            key=lambda t: (t.batch_size, t.number),
        ):
            fig.add_trace(_curve(data, t, colors, shown), row=1, col=col)
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
            f" Every trial made {budget_label(data)}, so larger batches ran more epochs in the "
            "same number of updates."
        )
    return ReportFigure(key, title, finish(fig, f"{title}: {m.val} per epoch"), note)


def _curve(data: ReportData, t: TrialRecord, colors: dict[int, str], shown: set[int]) -> go.Scatter:
    """One trial's learning curve; a trial that did not complete faded and dotted."""
    faded = t.state != "COMPLETE"
    label = t.state.lower() + (", diverged" if t.diverged else "")
    return go.Scatter(
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
            f"<br>epoch %{{x}}: %{{y:{data.metric.hover}}}<extra></extra>"
        ),
    )


# --------------------------------------------------------------------------- the hardware


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


# --------------------------------------------------------------------------- the learning rate


def lr_figure(data: ReportData) -> ReportFigure:
    """The learning rate each trial used against batch size, one series per rule."""
    key, title = "learning-rate", "Learning rate against batch size"
    trials = [t for t in data.trials if t.batch_size and t.lr and t.lr > 0]
    if not trials:
        return ReportFigure(key, title, None, "No trial recorded its learning rate yet.")
    fig = go.Figure()
    for rule in data.rules or [None]:
        _rule_lr_traces(fig, data, rule, [t for t in trials if t.scaling_rule == rule])
    base_lr, base_batch = data.config.get("base_lr"), data.config.get("base_batch_size")
    if isinstance(base_lr, int | float) and isinstance(base_batch, int) and base_lr > 0:
        fig.add_trace(
            go.Scatter(
                x=[log2(base_batch)],
                y=[base_lr],
                mode="markers",
                name=f"reference: lr {base_lr:g} at batch {base_batch}",
                marker={"symbol": "star", "size": 14, "color": "#222"},
                hovertemplate="reference lr %{y:.3g}<extra></extra>",
            )
        )
    ticks = batch_ticks(all_batches(data) + ([base_batch] if isinstance(base_batch, int) else []))
    fig.update_xaxes(**ticks)
    lrs = [t.lr for t in trials] + ([base_lr] if isinstance(base_lr, int | float) else [])
    fig.update_yaxes(
        type="log", title_text="Learning rate (per update, log scale)", **log_ticks(lrs)
    )
    optimizer = data.config.get("optimizer")
    note = "Learning rate of each (batch size, rule) pair the trials used" + (
        f" with {optimizer}." if optimizer else "."
    )
    if data.searched_multiplier:
        note = (
            "Lines: the learning rate each scaling rule gives at each batch size; faint "
            "points: the learning rate each trial used, the rule's times its searched "
            "multiplier" + (f", with {optimizer}." if optimizer else ".")
        )
    if data.warmup_epochs:
        note += f" Each trial ramped up to its learning rate over {data.warmup_epochs} epoch(s)."
    return ReportFigure(key, title, finish(fig, title), note)


def _rule_lr_traces(
    fig: go.Figure, data: ReportData, rule: str | None, members: list[TrialRecord]
) -> None:
    """A rule's learning rate per batch size as a line; with a searched multiplier, each
    trial's own learning rate as a faint point."""
    pairs = sorted({t.batch_size: t.rule_lr for t in members if t.rule_lr}.items())
    if not pairs:
        return
    searched = data.searched_multiplier
    name = f"rule {rule}" if rule else "trials"
    fig.add_trace(
        go.Scatter(
            x=[log2(b) for b, _ in pairs],
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
    if not searched:
        return
    shift = rule_offset(data, rule)
    fig.add_trace(
        go.Scatter(
            x=[log2(t.batch_size) + shift for t in members],
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


def lr_multiplier_figure(data: ReportData) -> ReportFigure:
    """Per batch size, the searched LR multiplier of the best trial, every trial faint."""
    key, title = "lr-multiplier", "Best learning-rate multiplier against batch size"
    trials = [t for t in data.trials if t.batch_size and t.lr_multiplier]
    if not trials:
        return ReportFigure(key, title, None, "No trial recorded a learning-rate multiplier yet.")
    m = data.metric
    fig = go.Figure()
    for rule in data.rules or [None]:
        members = [t for t in trials if t.scaling_rule == rule]
        if members:
            fig.add_trace(_multiplier_points(data, rule, members))
    for rule in data.rules or [None]:  # the best trial of each (batch size, rule) cell
        winners = _best_per_batch(data, rule, trials)
        if winners:
            fig.add_trace(_multiplier_winners(data, rule, winners))
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
    fig.update_xaxes(**batch_ticks(all_batches(data)))
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
    return ReportFigure(key, title, finish(fig, title), note)


def _multiplier_points(
    data: ReportData, rule: str | None, members: list[TrialRecord]
) -> go.Scatter:
    """A rule's trials as faint points: batch size against the searched multiplier."""
    shift = rule_offset(data, rule)
    return go.Scatter(
        x=[log2(t.batch_size) + shift for t in members],
        y=[t.lr_multiplier for t in members],
        mode="markers",
        name=f"rule {rule}: trials" if rule else "trials",
        marker={
            "color": rule_color(rule),
            "size": 7,
            "opacity": [0.4 if t.state == "COMPLETE" else 0.15 for t in members],
        },
        customdata=[
            [t.number, t.batch_size, t.state.lower(), t.val_metric or float("nan")] for t in members
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


def _best_per_batch(
    data: ReportData, rule: str | None, trials: list[TrialRecord]
) -> list[TrialRecord]:
    """The rule's best complete trial at each batch size (the lower number on a tie)."""
    m = data.metric
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
    return [best[b] for b in sorted(best)]


def _multiplier_winners(
    data: ReportData, rule: str | None, winners: list[TrialRecord]
) -> go.Scatter:
    """The best trials' multipliers as diamonds joined by batch size."""
    name = f"rule {rule}: best trial per batch size" if rule else "best trial per batch size"
    shift = rule_offset(data, rule)
    return go.Scatter(
        x=[log2(t.batch_size) + shift for t in winners],
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
        customdata=[[t.number, t.batch_size, t.scaling_rule, t.val_metric] for t in winners],
        hovertemplate=(
            "best at batch %{customdata[1]}: trial %{customdata[0]}, rule "
            "%{customdata[2]}<br>multiplier %{y:.3g}, val %{customdata[3]:"
            + data.metric.hover
            + "}<extra></extra>"
        ),
    )


# --------------------------------------------------------------------------- two objectives


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
                    **_pareto_hover(data, points),
                )
            )
    on_front = [t for t in data.front if t.train_time_s is not None and t.val_metric]
    if on_front:
        fig.add_trace(_front_line(data, on_front))
    times = [t.train_time_s for t in complete if t.train_time_s and t.train_time_s > 0]
    log_x = len(times) == len(complete) and max(times) / min(times) >= 10
    fig.update_xaxes(
        title_text="Training time (s per trial" + (", log scale)" if log_x else ")"),
        type="log" if log_x else "linear",
        **(log_ticks(times) if log_x else {}),
    )
    y_title = (
        f"Validation accuracy (% of samples, after {budget_label(data)})"
        if m.percent
        else metric_axis(data, "val")
    )
    fig.update_yaxes(title_text=y_title, **({"tickformat": m.tickformat} if m.tickformat else {}))
    note = (
        f"{len(complete)} complete trial(s), coloured by scaling rule; the {len(on_front)} on "
        f"the Pareto front (no other trial is both better, {m.direction_words}, and faster) are "
        f"diamonds, joined fastest to best. {'Up' if m.sign > 0 else 'Down'} and to the left "
        "is better."
    )
    return ReportFigure(key, title, finish(fig, title), note)


def _pareto_hover(data: ReportData, points: Sequence[TrialRecord]) -> dict:
    """The hover text of trials on the metric-against-time plane."""
    m = data.metric
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


def _front_line(data: ReportData, on_front: list[TrialRecord]) -> go.Scatter:
    """The Pareto front as diamonds (coloured by rule) joined fastest to best."""
    return go.Scatter(
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
        **_pareto_hover(data, on_front),
    )


# --------------------------------------------------------------------------- Optuna's own


def history_figure(study: optuna.Study, data: ReportData) -> ReportFigure:
    """Optuna's optimisation history, axes titled with units."""
    key, title = "history", "Optimisation history"
    if data.counts.get("COMPLETE", 0) == 0:
        return ReportFigure(key, title, None, "No complete trial yet: no optimisation history.")
    m = data.metric
    if data.multi_objective:
        fig = optuna.visualization.plot_optimization_history(
            study, target=lambda t: val_metric(t, m.info), target_name=m.stored
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
    fig.update_yaxes(title_text=f"{name} ({what}, {budget_label(data)})")
    return ReportFigure(key, title, finish(fig, f"{title} ({name})"), note)


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
    return ReportFigure(key, title, finish(fig, title, height=380), data.importance_note)


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
