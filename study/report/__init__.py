"""Reading a study back: its answer, tables, figures, HTML page, text, note and dashboard.

Nothing here imports torch or writes trials. The modules, each with one job:

* :mod:`study.report.data` -- a study's trials and attributes read once into typed rows;
* :mod:`study.report.words` -- how the metric, sample counts and states are written;
* :mod:`study.report.cellrows` -- one row per cell (batch size x rule) with its statistics;
* :mod:`study.report.narratives` -- the rule of thumb and the noise scale beside the cells;
* :mod:`study.report.importances` -- Optuna's parameter importances, or why there are none;
* :mod:`study.report.answer` -- the study's answer (its recommendation) in words and rows;
* :mod:`study.report.table` -- the table model and its two renderers, text and HTML;
* :mod:`study.report.tables` -- the report's tables, built from the rows;
* :mod:`study.report.figures` -- the Plotly figures, one builder each, in groups (the metric,
  the hardware, the learning rate, Optuna's history), and the parts they share;
* :mod:`study.report.html` -- the self-contained HTML page and the plain-text report;
* :mod:`study.report.summary` -- the lines a run prints (per trial and at the end);
* :mod:`study.report.note` -- the dashboard note;
* :mod:`study.report.dashboard` -- artifacts for optuna-dashboard and its server.

Public names are loaded on first use, so printing a summary does not import Plotly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReportError": "html",
    "build_report": "html",
    "load_study_for_report": "html",
    "open_existing_storage": "html",
    "render_html_report": "html",
    "render_text_report": "html",
    "write_report": "html",
    "collect_report_data": "data",
    "study_recommendation": "data",
    "study_note": "note",
    "write_study_note": "note",
    "attach_report": "dashboard",
    "make_dashboard_server": "dashboard",
}

__all__ = sorted(_EXPORTS)
_MODULES = (
    "data",
    "words",
    "cellrows",
    "narratives",
    "importances",
    "answer",
    "table",
    "tables",
    "figures",
    "html",
    "summary",
    "note",
    "dashboard",
)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"study.report.{_EXPORTS[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"study.report.{name}")
    raise AttributeError(f"module 'study.report' has no attribute {name!r}")
