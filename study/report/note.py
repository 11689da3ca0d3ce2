"""The study's note in optuna-dashboard: the answer, the setup and the results, in Markdown.

The note is what a person sees first on the study's dashboard page. Its first section is the
answer (the study's recommendation: the most accurate cell with its mean, 95% interval and
runs, the fastest cell within the tolerance with its speedup and cost, or the statement that
the study is too small to confirm one). Then which task, model, optimizer and metric, which
batch sizes and scaling rules were tried at which budget (epochs or optimizer steps), the best
single trial (the Pareto front of a two-objective study), the rule of thumb beside the best
cell (a verdict only where runs and intervals support one), the gradient noise scale when it
was measured, and advice such as warm-up where linear scaling diverged. It is rebuilt from
the study's
attributes, so calling :func:`write_study_note` again after more trials replaces it (the
dashboard keeps the latest version).

Example:
    >>> import optuna
    >>> study = optuna.create_study(direction="maximize")
    >>> "No complete trial yet" in write_study_note(study)
    True
"""

from __future__ import annotations

import re

import optuna

from study.compat import save_study_note
from study.record import TrialRecord
from study.report.answer import answer_markdown, how_trained
from study.report.data import ReportData, collect_report_data
from study.report.html import advice
from study.report.tables import epochs_text, report_tables
from study.units import format_bytes

#: A missing percentage in the note's sentences and table ("-" would read as a dash).
NA = "n/a"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _setup_rows(data: ReportData) -> list[list[str]]:
    """The report's setup table (task, model, optimizer, budget, batch sizes, rules, trials)."""
    return report_tables(data)["setup"].rows


def _best_sentence(data: ReportData, t: TrialRecord) -> str:
    batch = f"**{t.batch_size}**"
    batch += how_trained(t.micro_batch_size, t.devices, t.accumulation_steps)
    m = data.metric
    parts = [
        f"Trial {t.number}: **{data.metric_name} {m.value(t.val_metric, NA)}** "
        f"(test {m.value(t.test_metric, NA)}) at batch size {batch}",
        f"rule {t.scaling_rule}, lr {t.lr:.3g}" if t.lr is not None else f"rule {t.scaling_rule}",
    ]
    if t.lr_multiplier is not None:
        parts.append(f"lr multiplier {t.lr_multiplier:.3g}")
    if t.epochs_completed is not None or t.passes_completed is not None:
        parts.append(epochs_text(t))
    if t.optimizer_steps is not None:
        parts.append(f"{t.optimizer_steps:,} optimizer steps")
    if t.train_time_s is not None:
        parts.append(f"{t.train_time_s:.1f} s")
    if t.samples_per_s is not None:
        parts.append(f"{t.samples_per_s:,.0f} {m.rate}")
    if t.peak_memory_bytes is not None:
        parts.append(f"peak memory {format_bytes(t.peak_memory_bytes)}")
    return ", ".join(parts) + ". One run: the answer above compares cells by their mean."


def _front_lines(data: ReportData) -> list[str]:
    """The Pareto front of a two-objective study as a Markdown table, fastest first."""
    if not data.front:
        return ["No complete trial yet, so there is no Pareto front."]
    m = data.metric
    lines = [
        f"No single best trial: the study {m.maximised} {data.metric_names[0]} and minimised "
        f"{data.metric_names[1]}. These {len(data.front)} trial(s) are the Pareto front (no "
        f"other trial is both better, {m.direction_words}, and faster), fastest first:",
        "",
        f"| trial | batch | rule | lr | val {m.name} | test {m.name} | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in data.front:
        lr = f"{t.lr:.3g}" if t.lr is not None else "-"
        time = f"{t.train_time_s:.1f} s" if t.train_time_s is not None else "-"
        lines.append(
            f"| {t.number} | {t.batch_size} | {_cell(t.scaling_rule)} | {lr} | "
            f"{m.value(t.val_metric, NA)} | {m.value(t.test_metric, NA)} | {time} |"
        )
    return lines


def study_note(study: optuna.Study, data: ReportData | None = None) -> str:
    """The Markdown of the study's note (what :func:`write_study_note` saves).

    Args:
        study: The study.
        data: Its report data, if already collected (saves reading the trials twice).
    """
    data = data or collect_report_data(study, importances=False)
    lines = [
        f"## Batch-size study `{data.study_name}`",
        "",
        "Which batch size, and which learning rate with it, for this model on this hardware.",
        "",
        "### Answer",
        "",
        *answer_markdown(data.recommendation, data.metric),
        "",
        "### Setup",
        "",
        "| | |",
        "|---|---|",
        *(f"| {_cell(k)} | {_cell(v)} |" for k, v in _setup_rows(data)),
        "",
        "### Pareto front" if data.multi_objective else "### Best single trial",
        "",
    ]
    if data.multi_objective:
        lines += _front_lines(data)
    elif data.best is None:
        lines.append("No complete trial yet, so there is no best trial.")
    else:
        lines.append(_best_sentence(data, data.best))
    status = data.status_sentence()
    if status and (data.best is not None or data.front):
        lines += ["", f"*{status}*"]
    if data.folklore is not None:
        lines += ["", data.folklore.sentence()]
    if data.noise_scale is not None:
        lines += ["", data.noise_scale.sentence(data.confirmed_optimum)]
    for sentence in advice(data):
        flags = re.sub(r"(?<![\w-])(--[a-z][a-z-]*[a-z])", r"`\1`", sentence)
        lines += ["", f"**Advice:** {flags}"]
    lines += [
        "",
        "The full report (figures and tables) is attached to the study as an HTML artifact "
        "(study page, *Study Artifacts*); `python scripts/report.py` writes it again and "
        "`--format text` prints its tables.",
    ]
    return "\n".join(lines) + "\n"


def write_study_note(study: optuna.Study) -> str:
    """Save the study's Markdown note for optuna-dashboard and return it.

    Args:
        study: The study (its storage must be writable).

    Returns:
        The Markdown saved (the dashboard shows it on the study's page).
    """
    body = study_note(study)
    save_study_note(study, body)
    return body
