"""Optuna's own views of the study, with axes titled in units: the optimisation history and
the parameter importances (or the sentence that says why there are none)."""

from __future__ import annotations

import optuna
import plotly.graph_objects as go

from study.report.data import ReportData
from study.report.figures.parts import (
    ReportFigure,
    budget_label,
    finish,
    val_metric,
)


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
