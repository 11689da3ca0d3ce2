"""Reading a study back: its answer, tables, figures, HTML page, text, note and dashboard.

Nothing here imports torch or writes trials. The modules, each with one job:

* :mod:`study.report.data` -- a study's trials, cells and attributes as typed rows, and how
  its metric is written (no plotting);
* :mod:`study.report.answer` -- the study's answer (its recommendation) in words and rows;
* :mod:`study.report.figures` -- Plotly figures from those rows;
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
    "answer",
    "table",
    "tables",
    "figures",
    "figure_parts",
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
