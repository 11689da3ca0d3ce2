"""The report's figures, each built with Plotly from a :class:`~study.report.data.ReportData`.

One builder per figure, in page order (:func:`build_figures`): the metric against batch size,
the learning curves, time / throughput / memory, the learning rate, the searched
learning-rate multiplier, the Pareto front of a two-objective study, Optuna's history and
importances, one module per group (:mod:`~study.report.figures.metric`,
:mod:`~study.report.figures.hardware`, :mod:`~study.report.figures.learning_rate`,
:mod:`~study.report.figures.history`). The parts they share (the log2 batch axis, colours,
marks, layout) are in :mod:`study.report.figures.parts`. Every figure's axes say what is
measured and in which unit. A builder returns a :class:`ReportFigure` whose ``figure`` is
``None`` (and whose ``note`` says why) when the study has nothing to draw yet.

Example:
    >>> import optuna
    >>> from study.report.data import collect_report_data
    >>> study = optuna.create_study(direction="maximize")
    >>> [f.key for f in build_figures(study, collect_report_data(study)) if f.figure is None][:2]
    ['accuracy', 'learning-curves']
"""

from __future__ import annotations

import optuna

from study.report.data import ReportData
from study.report.figures.hardware import hardware_figure
from study.report.figures.history import history_figure, importance_figure
from study.report.figures.learning_rate import lr_figure, lr_multiplier_figure
from study.report.figures.metric import accuracy_figure, learning_curves_figure, pareto_figure
from study.report.figures.parts import ReportFigure, rule_color

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
