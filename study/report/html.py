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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from study.disk import DiskFullError
from study.outputs import GENERATOR_TAG, write_atomic
from study.record import CONFIRM, TrialRecord
from study.report.answer import answer_note, answer_rows
from study.report.data import (
    MIN_RUNS,
    Folklore,
    ReportData,
    collect_report_data,
    rule_of_thumb,
    shape_words,
    study_shape_problem,
)
from study.report.figures import ReportFigure, build_figures
from study.safety import JOURNAL_PREFIX
from study.storage import StorageError, open_storage, redact, sqlite_path
from study.units import format_bytes, format_percent

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
    "rule_of_thumb",
    "write_report",
]

VERDICTS = {
    "inside": "inside the range: folklore held",
    "below": "below the range: folklore missed",
    "above": "above the range: folklore missed",
    "unknown": "no complete trial yet",
    "unconfirmed": f"no verdict: the best cell has fewer than {MIN_RUNS} complete runs",
    "inconclusive": "no verdict: cells on both sides of the range are within the intervals",
}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


class ReportError(RuntimeError):
    """The report cannot be made; the message names the problem and the fix (no passwords)."""


@dataclass
class Table:
    """A small table shared by the HTML page and the terminal.

    Args:
        key: Stable name (``answer``, ``best``, ``cells``, ...), used as the HTML id.
        title: Heading.
        headers: Column names (``""`` for a key/value table's first column).
        rows: Cells as display strings.
        note: A sentence under the table.
    """

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""

    def to_text(self) -> str:
        """Aligned plain-text columns (first column left, others right), with the note."""
        lines = [self.title, "-" * len(self.title)]
        if self.rows:
            cells = [self.headers, *self.rows]
            widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

            key_value = not any(self.headers)

            def line(row: list[str]) -> str:
                parts = [row[0].ljust(widths[0])]
                parts += [
                    c.ljust(w) if key_value else c.rjust(w)
                    for c, w in zip(row[1:], widths[1:], strict=True)
                ]
                return "  ".join(parts).rstrip()

            if any(self.headers):
                lines.append(line(self.headers))
            lines += [line(row) for row in self.rows]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def to_html(self) -> str:
        """A ``<table>`` (header row only when the headers are not all empty)."""
        esc = html.escape
        parts = [f'<section id="table-{esc(self.key)}"><h2>{esc(self.title)}</h2>']
        if self.rows:
            parts.append('<table class="kv">' if not any(self.headers) else "<table>")
            if any(self.headers):
                parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in self.headers) + "</tr>")
            for row in self.rows:
                first, rest = row[0], row[1:]
                cell = "th" if not any(self.headers) else "td"
                parts.append(
                    f"<tr><{cell}>{esc(first)}</{cell}>"
                    + "".join(f"<td>{esc(c)}</td>" for c in rest)
                    + "</tr>"
                )
            parts.append("</table>")
        if self.note:
            parts.append(f'<p class="note">{esc(self.note)}</p>')
        parts.append("</section>")
        return "\n".join(parts)


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


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ReportError(
            f"--storage {redact(url)} is not a database URL: use e.g. "
            "sqlite:///storage/batch-size.db or postgresql://user@host/db"
        ) from None
    except ValueError:  # e.g. a port that is not a number
        raise ReportError(
            f"--storage {redact(url)} is not a valid database URL (is the port a number?): "
            "use e.g. postgresql://user@host:5432/db"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:":
        raise ReportError(
            f"--storage {redact(url)}: an in-memory SQLite database holds no stored study; "
            "give the study's file, e.g. sqlite:///storage/batch-size.db"
        )
    return sqlite_path(database)


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """Open the storage at ``url`` for reading; an SQLite file that does not exist is an error.

    Raises:
        ReportError: malformed URL, missing SQLite or journal file, or a storage that cannot
            be opened (never created: a missing file stays missing).
    """
    if url.startswith(JOURNAL_PREFIX):
        journal = Path(url[len(JOURNAL_PREFIX) :])
        if not journal.is_file():
            raise ReportError(
                f"no journal file at {journal}: run scripts/run_study.py first, or pass the "
                "study's --storage (journal:///relative/path.log or journal:////abs/path.log)"
            )
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        where = "" if path.parent.is_dir() else f" (folder {path.parent} does not exist)"
        raise ReportError(
            f"no study database at {path}{where}: run scripts/run_study.py first, or pass "
            "--storage sqlite:///PATH/TO/FILE.db"
        )
    try:
        return open_storage(url, heartbeat_interval=None, read_only=True)
    except StorageError as exc:
        raise ReportError(str(exc)) from None


def load_study_for_report(url: str, study_name: str) -> optuna.Study:
    """Open an existing study for reading; never creates a database or a study.

    Args:
        url: SQLAlchemy storage URL of the study database.
        study_name: Name of the study in it.

    Raises:
        ReportError: the SQLite file does not exist, the storage cannot be opened, or it holds
            no study of that name (the message lists the names it holds).
    """
    storage = open_existing_storage(url)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if study_name not in names:
        held = ", ".join(names) if names else "none"
        raise ReportError(
            f"no study named {study_name!r} in {redact(url)}; studies there: {held} "
            "(pass --study-name NAME)"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    problem = study_shape_problem(study)
    if problem is not None:
        raise ReportError(
            f"study {study_name!r} in {redact(url)} was not made by run_study.py (it "
            f"{problem}; {shape_words(study)}); pass the --study-name of a batch-size study"
        )
    attrs = study.user_attrs
    if "config" not in attrs and "space" not in attrs:
        count = len(study.get_trials(deepcopy=False))
        raise ReportError(
            f"study {study_name!r} in {redact(url)} was not made by run_study.py (a plain "
            f"Optuna study of {count} trials, without the settings and batch-size space this "
            "tool stores); pass the --study-name of a batch-size study, or browse it with "
            "optuna-dashboard"
        )
    return study


def file_stem(study_name: str) -> str:
    """``study_name`` made safe for a file name (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"


def default_report_path(study_name: str) -> Path:
    """``storage/<study-name>-report.html`` with the name made safe for a file name."""
    return Path("storage") / f"{file_stem(study_name)}-report.html"


# --------------------------------------------------------------------------- tables


def _lr(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _mem(value: float | None) -> str:
    return "-" if value is None else format_bytes(value)


def epochs_text(t: TrialRecord) -> str:
    """``4 epochs``, under a step budget ``1.78 passes over the training data``; ``-``."""
    if t.passes_completed is not None:
        return f"{t.passes_completed:g} passes over the training data"
    if t.epochs_completed is None:
        return "-"
    return f"{t.epochs_completed} epoch{'s' if t.epochs_completed != 1 else ''}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _batch_text(t: TrialRecord) -> str:
    text = str(t.batch_size) if t.batch_size is not None else "-"
    if t.batch_schedule is not None:
        return f"schedule {t.batch_schedule}"
    if t.accumulation_steps and t.accumulation_steps > 1 and t.micro_batch_size:
        text += f" ({t.micro_batch_size} x {t.accumulation_steps} accumulated)"
    return text


def _setup_table(data: ReportData) -> Table:
    c, s, info = data.config, data.space, data.task_info
    rows: list[list[str]] = []
    if c.get("task") is not None:
        task = str(c["task"])
        sizes = [
            f"{info[k]:,} {k.removesuffix('_size')}"
            for k in ("train_size", "val_size", "test_size")
            if isinstance(info.get(k), int)
        ]
        extra = ", ".join(sizes)
        if info.get("num_classes"):
            extra += f", {info['num_classes']} classes"
        if isinstance(info.get("input_shape"), list | tuple) and info["input_shape"]:
            extra += ", input " + "x".join(str(d) for d in info["input_shape"])
        rows.append(["Task", task + (f" ({extra})" if extra else "")])
    if isinstance(info.get("model"), str):  # a task that builds its own model says which
        rows.append(["Model", info["model"]])
    elif c.get("model") is not None:
        hidden = c.get("hidden")
        rows.append(["Model", str(c["model"]) + (f" (hidden {hidden})" if hidden else "")])
    if c.get("optimizer") is not None:
        decay = c.get("weight_decay")
        decay_text = f", weight decay {decay:g}" if isinstance(decay, int | float) else ""
        rows.append(
            [
                "Optimizer",
                f"{c['optimizer']}{decay_text}, base lr {c.get('base_lr')} at batch "
                f"{c.get('base_batch_size')}, scaling {c.get('scaling')}",
            ]
        )
    schedule = data.schedule_words()
    if schedule is not None:
        rows.append(["LR schedule", schedule])
    if data.warmup_epochs:
        rows.append(["Warm-up", f"{data.warmup_epochs} epoch(s) of learning-rate warm-up"])
    if data.lr_search_width > 1:
        width = data.lr_search_width
        rows.append(
            [
                "LR multiplier",
                f"searched log-uniformly in {1 / width:.3g}-{width:g} x the rule's learning rate",
            ]
        )
    budget = data.budget_phrase()
    if budget is not None:
        pruner = "none (two objectives)" if data.multi_objective else c.get("pruner")
        rows.append(
            [
                "Budget",
                f"{budget}, {c.get('trials')} trials, sampler "
                f"{c.get('sampler')}, pruner {pruner}, seed {c.get('seed')}",
            ]
        )
    m = data.metric
    rows.append(["Metric", f"{m.stored}: {m.full}; throughput in {m.rate}"])
    if data.multi_objective:
        verb = "maximise" if m.sign > 0 else "minimise"
        rows.append(
            [
                "Objectives",
                f"{verb} {m.stored}, minimise train_time_s (--objectives metric,time)",
            ]
        )
    if c.get("confirm_runs") is not None or c.get("tolerance") is not None:
        tol = c.get("tolerance")
        rows.append(
            [
                "Confirmation",
                f"cells confirmed with {c.get('confirm_runs', MIN_RUNS)} complete runs each; "
                f"tolerance {m.difference(tol) if isinstance(tol, int | float) else tol}",
            ]
        )
    if s.get("batch_sizes"):
        cap = s.get("memory_cap")
        detail = f"cap {cap}" + (f" from {s['cap_source']}" if s.get("cap_source") else "")
        if s.get("max_accumulation") and s["max_accumulation"] > 1:
            detail += f", accumulation up to {s['max_accumulation']}"
        rows.append(
            [
                "Batch sizes",
                ", ".join(str(b) for b in s["batch_sizes"]) + (f" ({detail})" if cap else ""),
            ]
        )
    if s.get("scaling_rules"):
        rows.append(["Scaling rules", ", ".join(str(r) for r in s["scaling_rules"])])
    probe = data.probe or {}
    if probe.get("max_batch_size") or probe.get("knee_batch_size"):
        rows.append(
            [
                "Hardware probe",
                f"largest batch that fits {probe.get('max_batch_size')}, throughput knee "
                f"{probe.get('knee_batch_size')}",
            ]
        )
    rows.append(["Trials", data.state_summary()])
    note = "" if c else "The study has no 'config' attribute: it was not made by run_study.py."
    return Table("setup", f"Study {data.study_name}", ["", ""], rows, note)


def _answer_table(data: ReportData) -> Table:
    """The answer: the recommended cells side by side, or the statement that there is none."""
    headers, rows = answer_rows(data.recommendation, data.metric)
    note = answer_note(data.recommendation, data.metric)
    return Table("answer", "The answer", headers or ["", ""], rows, note)


def _best_table(data: ReportData) -> Table:
    t = data.best
    title = "Best single trial"
    if t is None:
        return Table(
            "best",
            title,
            ["", ""],
            [],
            "No complete trial yet, so there is no best trial.",
        )
    m = data.metric
    rows = [
        ["Trial", f"#{t.number}" + (" (confirm phase)" if t.phase == CONFIRM else "")],
        ["Batch size", _batch_text(t)],
        ["Scaling rule", t.scaling_rule or "-"],
        ["Learning rate", _lr(t.lr)],
        [f"{m.val.capitalize()} ({data.metric_name})", m.value(t.val_metric)],
        [m.test.capitalize(), m.value(t.test_metric)],
        ["Epochs", epochs_text(t)],
        ["Training time", _secs(t.train_time_s)],
        ["Throughput", f"{_rate(t.samples_per_s)} {m.rate}" if t.samples_per_s else "-"],
        ["Peak memory", _mem(t.peak_memory_bytes)],
    ]
    if t.optimizer_steps is not None:
        rows.insert(7, ["Optimizer steps", f"{t.optimizer_steps:,}"])
    if t.lr_multiplier is not None:
        rows.insert(4, ["LR multiplier", f"{t.lr_multiplier:.3g} x the rule's {_lr(t.rule_lr)}"])
    if t.b_simple is not None:
        se = f" \u00b1 {t.b_simple_se:,.0f}" if t.b_simple_se is not None else ""
        rows.append(["B_simple (noise scale)", f"{t.b_simple:,.0f}{se} samples"])
    note = (
        f"The single trial with the best final {m.full}: one run, so its value includes "
        "seed noise; the answer above compares cells by their mean over runs."
    )
    return Table("best", title, ["", ""], rows, note)


def _front_table(data: ReportData) -> Table:
    m = data.metric
    title = "Trials on the Pareto front"
    headers = ["Trial", "Batch", "Rule", "LR", f"Val {m.name}", f"Test {m.name}"]
    headers += ["Training time"]
    rows = [
        [
            f"#{t.number}",
            _batch_text(t),
            t.scaling_rule or "-",
            _lr(t.lr),
            m.value(t.val_metric),
            m.value(t.test_metric),
            _secs(t.train_time_s),
        ]
        for t in data.front
    ]
    if not rows:
        return Table(
            "pareto-front",
            title,
            ["", ""],
            [],
            "No complete trial yet, so there is no Pareto front.",
        )
    note = (
        f"The study {m.maximised} {data.metric_names[0]} and minimised "
        f"{data.metric_names[1]}: there is no single best trial. These {len(rows)} trial(s) "
        f"are the Pareto front (study.best_trials): no other trial is both better "
        f"({m.direction_words}) and faster. Fastest first; pick the first good enough for you."
    )
    return Table("pareto-front", title, headers, rows, note)


def _cells_table(data: ReportData) -> Table:
    m = data.metric
    running = any(c.running for c in data.cells)
    buckets = any(c.lr_bucket is not None for c in data.cells)
    confirm = data.phases
    headers = ["Batch", "Rule"] + (["LR mult."] if buckets else []) + ["LR", "Runs"]
    headers += ["Confirm runs"] if confirm else []
    headers += ["Pruned", "Failed"] + (["Running"] if running else []) + ["Diverged"]
    headers += [f"Mean val {m.name}", "95% interval", f"Best val {m.name}"]
    headers += [f"Mean test {m.name}", "Median time", m.rate.capitalize(), "Peak memory"]
    rows = []
    for c in data.cells:
        row = [c.batch_schedule or str(c.batch_size), c.scaling_rule]
        row += [f"x{c.lr_bucket:.3g}"] if buckets else []
        few = c.runs and not c.confirmed
        row += [_lr(c.lr), f"{c.runs}{'*' if few else ''}"]
        row += [str(c.confirm)] if confirm else []
        row += [str(c.pruned), str(c.failed)] + ([str(c.running)] if running else [])
        row += [str(c.diverged)]
        row += [m.value(c.mean_val), m.interval(c.ci95), m.value(c.best_val)]
        row += [m.value(c.mean_test), _secs(c.median_time_s)]
        row += [_rate(c.median_samples_per_s), _mem(c.peak_memory_bytes)]
        rows.append(row)
    words = data.budget_words()
    budget = f"after {words}" if words else "after the last epoch"
    note = (
        "One row per cell: batch size x scaling rule"
        + (" x learning-rate multiplier bucket" if buckets else "")
        + f"; rules are never pooled. {m.full.capitalize()} of complete runs {budget}: mean, "
        f"95% interval (Student's t, 2 runs or more) and best; * fewer than {data.confirm_runs} "
        f"confirmation runs, too few to conclude from. Time and {m.rate} are medians of "
        "complete runs; peak memory the maximum over the cell's trials; diverged counts trials "
        "stopped as diverged or collapsed."
    )
    if not rows:
        note = "No trial recorded a batch size yet."
    return Table("cells", "Results per cell (batch size x rule)", headers, rows, note)


def _folklore_table(folklore: Folklore | None) -> Table:
    if folklore is None:
        return Table(
            "rule-of-thumb",
            "Rule of thumb against the measurement",
            ["", ""],
            [],
            "The study does not record its training-set size (task_info.train_size), so the "
            "rule of thumb cannot be placed.",
        )
    m = folklore.metric
    best = "-"
    if folklore.optimum is not None:
        best = (
            f"{folklore.optimum} (rule {folklore.optimum_rule}, mean {m.val} "
            f"{m.value(folklore.optimum_mean_val)}"
            + (
                f", 95% interval {m.interval(folklore.optimum_ci95)}"
                if folklore.optimum_ci95
                else ""
            )
            + f", {folklore.optimum_runs} run{'s' if folklore.optimum_runs != 1 else ''})"
        )
    rows = [
        ["Training samples", f"{folklore.train_size:,}"],
        ["Rule-of-thumb range", f"{folklore.low}-{folklore.high}"],
        ["Best cell", best],
        ["Verdict", VERDICTS[folklore.verdict]],
    ]
    note = (
        folklore.sentence()
        + " Ranges quoted by practitioners: <1k samples 16-32; 1k-100k 32-256; >100k 256-2048."
    )
    return Table("rule-of-thumb", "Rule of thumb against the measurement", ["", ""], rows, note)


def _trials_table(data: ReportData) -> Table:
    m = data.metric
    headers = ["Trial", "Phase", "State", "Batch", "Rule", "LR", f"Val {m.name}"]
    headers += [f"Test {m.name}", "Epochs", "Training time", "Stopped because"]
    rows = []
    for t in sorted(data.trials, key=lambda t: t.number):
        why = t.stop_reason or ("diverged" if t.diverged else "")
        if t.oom and not why:
            why = f"{len(t.oom)} out-of-memory attempt(s)"
        rows.append(
            [
                f"#{t.number}",
                t.phase,
                t.state.lower(),
                _batch_text(t),
                t.scaling_rule or "-",
                _lr(t.lr),
                m.value(t.val_metric),
                m.value(t.test_metric),
                epochs_text(t),
                _secs(t.train_time_s),
                why or "-",
            ]
        )
    note = (
        "Every trial, with its phase: search (the sampler's choice, may be pruned) or confirm "
        "(a promising cell trained again with a fresh seed and no pruning)."
    )
    return Table("trials", "Trials", headers, rows, note if rows else "No trials yet.")


def _probe_table(data: ReportData) -> Table | None:
    probe = data.probe
    if not probe:
        return None
    rows = [
        [
            str(r.get("batch_size")),
            _mem(r.get("predicted_bytes")),
            _mem(r.get("measured_bytes")),
            _rate(r.get("samples_per_s")),
        ]
        for r in probe.get("rows") or []
        if isinstance(r, dict)
    ]
    facts = []
    for key, label in (("max_batch_size", "cap"), ("knee_batch_size", "knee")):
        if probe.get(key):
            facts.append(f"{label} {probe[key]}")
    for key, label in (
        ("budget_bytes", "budget"),
        ("fixed_bytes", "fixed"),
        ("bytes_per_sample", "per sample"),
    ):
        if probe.get(key):
            facts.append(f"{label} {_mem(probe[key])}")
    note = "Hardware probe: " + (", ".join(facts) if facts else "no summary recorded") + "."
    return Table(
        "probe",
        "Hardware probe",
        ["Batch", "Predicted memory", "Measured memory", "Samples/s"],
        rows,
        note,
    )


def _noise_table(data: ReportData) -> Table | None:
    ns = data.noise_scale
    if ns is None:
        return None
    rows = [["Marked on the figures", ns.label.removeprefix("B_simple (gradient noise scale) ")]]
    if ns.trials_sentence():
        rows.append(["Trials' final models", ns.trials_sentence()])
    if ns.study_sentence():
        rows.append(["scripts/noise_scale.py", ns.study_sentence()])
    optimum = data.confirmed_optimum  # no comparison from an unconfirmed cell
    return Table(
        "noise-scale",
        "Gradient noise scale B_simple",
        ["", ""],
        rows,
        ns.sentence(optimum),
    )


def _importance_table(data: ReportData) -> Table:
    rows = [[name, format_percent(value)] for name, value in (data.importances or {}).items()]
    return Table(
        "importances",
        "Parameter importances",
        ["Parameter", "Importance"] if rows else ["", ""],
        rows,
        data.importance_note,
    )


def report_tables(data: ReportData) -> dict[str, Table]:
    """The report's tables by key, in page order (the answer first)."""
    tables = [
        _answer_table(data),
        _setup_table(data),
        _front_table(data) if data.multi_objective else _best_table(data),
        _cells_table(data),
        _folklore_table(data.folklore),
        _noise_table(data),
        _probe_table(data),
        _importance_table(data),
        _trials_table(data),
    ]
    return {t.key: t for t in tables if t is not None}


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
