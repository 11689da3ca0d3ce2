"""A study's report: one self-contained HTML page, or the same tables as plain text.

The page answers "which batch size, and which learning rate with it". Its first section is
the answer (the study's recommendation: the most accurate cell with its mean, 95% interval and
runs, the fastest cell within the tolerance with its speedup and cost, or the statement that
the study is too small to confirm one). Then: the study's metric against batch size per cell,
the rule of thumb beside the best cell (a verdict only where runs and intervals support one),
the per-cell table (batch size x scaling rule, and the learning-rate multiplier bucket when
searched), learning curves, time / throughput / memory with the probe's cap and knee, the
learning rate each rule gave, Optuna's optimisation history and parameter importances, and
every trial with its phase (search or confirm). A two-objective study (metric and time) gets
its Pareto front instead of a best single trial; the gradient noise scale, a searched
learning-rate multiplier, a step budget and a warm-up suggestion appear when the study records
them. Every label uses the study's metric and direction (``val mse (lower is better)``).
Plotly's JavaScript is embedded once, so the file opens offline. The report reads the study
and never writes to it; a study still running or with no complete trial gives a report that
says so.

Example (not run as a doctest: it needs a study, files or a server)::

    study = load_study_for_report("sqlite:///storage/batch-size.db", "batch-size")
    write_report(study, "storage/batch-size-report.html")
    print(render_text_report(study))
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from dataclasses import dataclass
from pathlib import Path

import optuna
import plotly.io as pio
from plotly.offline import get_plotlyjs

from study import storage
from study.disk import DiskFullError
from study.outputs import GENERATOR_TAG, write_atomic
from study.report.data import ReportData, collect_report_data
from study.report.figures import ReportFigure, build_figures
from study.report.table import Table
from study.report.tables import report_tables
from study.storage import StorageError, redact

__all__ = [
    "Report",
    "advice",
    "ReportError",
    "Table",
    "build_report",
    "default_report_path",
    "file_stem",
    "load_study_for_report",
    "open_existing_storage",
    "render_html_report",
    "render_text_report",
    "report_tables",
    "write_report",
]

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


class ReportError(RuntimeError):
    """The report cannot be made; the message names the problem and the fix (no passwords)."""


@dataclass
class Report:
    """A built report: its data, tables and figures."""

    data: ReportData
    tables: dict[str, Table]
    figures: list[ReportFigure]
    storage_url: str | None = None

    @property
    def drawn(self) -> list[ReportFigure]:
        """The figures that have something to draw."""
        return [f for f in self.figures if f.figure is not None]


# --------------------------------------------------------------------------- opening
# Reading a study back is the storage module's (study.storage); here its errors become the
# report's, which the report and dashboard commands print as one line.


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """:func:`study.storage.open_existing_storage`, its errors as :class:`ReportError`."""
    try:
        return storage.open_existing_storage(url)
    except StorageError as exc:
        raise ReportError(str(exc)) from None


def load_study_for_report(url: str, study_name: str) -> optuna.Study:
    """:func:`study.storage.load_existing_study`, its errors as :class:`ReportError`."""
    try:
        return storage.load_existing_study(url, study_name)
    except StorageError as exc:
        raise ReportError(str(exc)) from None


def file_stem(study_name: str) -> str:
    """``study_name`` made safe for a file name (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"


def default_report_path(study_name: str) -> Path:
    """``storage/<study-name>-report.html`` with the name made safe for a file name."""
    return Path("storage") / f"{file_stem(study_name)}-report.html"


# --------------------------------------------------------------------------- building


def build_report(
    study: optuna.Study, *, storage_url: str | None = None, figures: bool = True
) -> Report:
    """Read ``study`` and build its tables and (optionally) figures.

    Args:
        study: The study to report on.
        storage_url: Shown in the header, password hidden.
        figures: Build the Plotly figures (the terminal report does not need them).
    """
    data = collect_report_data(study)
    built = build_figures(study, data) if figures else []
    return Report(data, report_tables(data), built, storage_url)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  max-width: 1280px; padding: 1rem 2rem 3rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin-top: 0; } .note { color: #555; max-width: 70rem; }
.status { background: #fff4ce; border-left: 4px solid #e0b000; padding: 0.6rem 1rem; }
.missing { background: #f4f4f4; border-left: 4px solid #aaa; padding: 0.6rem 1rem; }
.advice { background: #e8f1fb; border-left: 4px solid #1f77b4; padding: 0.6rem 1rem; }
code { white-space: nowrap; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.25rem 0.8rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } tr th { background: #fafafa; }
table.kv td { text-align: left; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 2.5rem; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
"""


def _figure_html(fig: ReportFigure) -> str:
    esc = html.escape
    parts = [f'<section id="section-{esc(fig.key)}"><h2>{esc(fig.title)}</h2>']
    if fig.figure is None:
        parts.append(f'<p class="missing">{esc(fig.note)}</p>')
    else:
        parts.append(f'<p class="note">{esc(fig.note)}</p>')
        parts.append(
            pio.to_html(
                fig.figure,
                full_html=False,
                include_plotlyjs=False,
                div_id=f"fig-{fig.key}",
                config=PLOTLY_CONFIG,
                default_height=f"{fig.figure.layout.height or 440}px",
            )
        )
    parts.append("</section>")
    return "\n".join(parts)


def render_html_report(report: Report) -> str:
    """The whole page as one string: Plotly's JavaScript once, then tables and figures."""
    esc = html.escape
    data = report.data
    by_key = {f.key: f for f in report.figures}
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    where = f" from {esc(redact(report.storage_url))}" if report.storage_url else ""
    status = data.status_sentence()
    body = [
        f"<h1>Batch size and learning rate: study {esc(data.study_name)}</h1>",
        f'<p class="meta">Report generated {esc(generated)}{where}; {esc(data.state_summary())}'
        f"; {esc(_objectives_words(data))}.</p>",
    ]
    if status:
        body.append(f'<p class="status" id="status">{esc(status)}</p>')
    tables = report.tables
    body.append(tables["answer"].to_html())
    if data.multi_objective:
        body.append(tables["setup"].to_html())
        if "pareto" in by_key:
            body.append(_figure_html(by_key["pareto"]))
        body.append(tables["pareto-front"].to_html())
    else:
        body.append('<div class="grid">')
        body.append(tables["setup"].to_html())
        body.append(tables["best"].to_html())
        body.append("</div>")
    for key in ("accuracy",):
        if key in by_key:
            body.append(_figure_html(by_key[key]))
    body.append(tables["rule-of-thumb"].to_html())
    if "noise-scale" in tables:
        body.append(tables["noise-scale"].to_html())
    body.append(tables["cells"].to_html())
    sentences = advice(data)
    if sentences:
        body.append('<section id="advice">')
        body += [f'<p class="advice">{_flags_as_code(esc(s))}</p>' for s in sentences]
        body.append("</section>")
    for key in (
        "learning-curves",
        "hardware",
        "learning-rate",
        "lr-multiplier",
        "history",
        "importances",
    ):
        if key in by_key:
            body.append(_figure_html(by_key[key]))
        if key == "hardware" and "probe" in tables:
            body.append(tables["probe"].to_html())
    body.append(tables["trials"].to_html())
    drawn = len(report.drawn)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            GENERATOR_TAG,
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(data.study_name)}: batch-size study report</title>",
            f"<style>{_CSS}</style>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head>",
            f'<body data-figure-count="{drawn}">',
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _flags_as_code(text: str) -> str:
    """``--flag-name`` in escaped HTML text as ``<code>`` (kept on one line)."""
    return re.sub(r"(?<![\w-])(--[a-z][a-z-]*[a-z])", r"<code>\1</code>", text)


def _objectives_words(data: ReportData) -> str:
    m = data.metric
    if data.multi_objective:
        return (
            f"objectives {data.metric_names[0]} ({m.maximised}) and {data.metric_names[1]} "
            "(minimised)"
        )
    return f"metric {data.metric_name} ({m.maximised}: {m.direction_words})"


def advice(data: ReportData) -> list[str]:
    """Suggestions the results call for (today: warm-up where linear scaling diverged)."""
    sentence = data.warmup_advice()
    return [sentence] if sentence else []


def write_report(
    study: optuna.Study, out: str | Path, *, storage_url: str | None = None
) -> tuple[Path, Report]:
    """Write the HTML report of ``study`` to ``out`` (folders created); return path and report.

    The file appears whole (:func:`study.outputs.write_atomic`); callers check ``out`` first
    with :func:`study.outputs.check_output` (the report command does).

    Raises:
        ReportError: ``out`` cannot be written.
        DiskFullError: the disk is full (nothing was written).
    """
    report = build_report(study, storage_url=storage_url)
    path = Path(out)
    try:
        write_atomic(path, render_html_report(report), "the report")
    except DiskFullError:
        raise
    except OSError as exc:
        raise ReportError(f"--out {path}: cannot write the report ({exc.strerror})") from None
    return path, report


def render_text_report(
    report_or_study: Report | optuna.Study, storage_url: str | None = None
) -> str:
    """The report's tables as plain text for a terminal."""
    report = (
        report_or_study
        if isinstance(report_or_study, Report)
        else build_report(report_or_study, storage_url=storage_url, figures=False)
    )
    data = report.data
    head = f"Batch-size study {data.study_name}: {data.state_summary()}"
    if report.storage_url:
        head += f" ({redact(report.storage_url)})"
    parts = [head]
    status = data.status_sentence()
    if status:
        parts.append(status)
    order = (
        "setup",
        "best",
        "pareto-front",
        "cells",
        "rule-of-thumb",
        "noise-scale",
        "probe",
        "importances",
        "trials",
    )
    parts.insert(1, report.tables["answer"].to_text())  # the answer first
    parts += [report.tables[k].to_text() for k in order if k in report.tables]
    parts += [f"Advice: {sentence}" for sentence in advice(data)]
    return "\n\n".join(parts) + "\n"
