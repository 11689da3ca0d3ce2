"""The figures of the study's metric: against batch size (every trial a point, each cell's
mean and interval joined per rule), per epoch (the learning curves) and, for a study of two
objectives, against training time (the Pareto front)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.record import TrialRecord
from study.report.data import ReportData
from study.report.figures.parts import (
    ReportFigure,
    all_batches,
    batch_colors,
    batch_ticks,
    budget_label,
    cell_line,
    finish,
    log2,
    log_ticks,
    mark_answer,
    mark_noise_scale,
    metric_axis,
    noise_extend,
    rule_color,
    rule_offset,
)


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
