"""The learning-rate figures: the rate each scaling rule gave at each batch size, and, when
the study searched one, the best multiplier on the rule's rate at each batch size."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from study.record import TrialRecord
from study.report.data import ReportData
from study.report.figures.parts import (
    ReportFigure,
    all_batches,
    batch_ticks,
    finish,
    log2,
    log_ticks,
    rule_color,
    rule_offset,
)


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
