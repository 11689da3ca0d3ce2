"""Plain-text results of a study: one line per trial, and the end-of-run summary.

The summary opens with the answer (the study's recommendation: the most accurate cell with its
mean, 95% interval and runs, and the fastest cell within the tolerance with its speedup and
what it costs; or the statement that the study is too small to confirm one), then the cells.
Every figure says its unit and its budget and how many runs it rests on; results are grouped
by cell (batch size x scaling rule, and the learning-rate multiplier bucket when searched),
never across rules. Nothing here imports Plotly or torch.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial

from study.record import CONFIRM, MetricInfo, TrialRecord, read_record
from study.report.answer import answer_lines
from study.report.data import collect_report_data
from study.report.tables import run_cells_table
from study.report.words import MetricText
from study.stats import median


def trial_line(trial: FrozenTrial, metric: MetricInfo | None = None) -> str:
    """One line for a finished trial: state, phase, batch (and accumulation), rule, LR,
    results, and why it stopped early (diverged, collapsed, out of memory).

    Args:
        trial: The trial.
        metric: The study's metric (default: accuracy); names the values on the line.
    """
    info = metric or MetricInfo()
    r = read_record(trial, metric=info)
    batch = f"batch {r.batch_size if r.batch_size is not None else '?':>5}" + _split(r)
    if r.batch_schedule is not None:
        batch = f"schedule {r.batch_schedule}"
    parts = [f"trial {r.number:>3} {r.state.lower():<8}"]
    if r.phase == CONFIRM:
        parts.append("confirm")
    parts.append(batch)
    if r.scaling_rule is not None and r.lr is not None:
        parts.append(f"{r.scaling_rule:<6} lr {r.lr:.2e}")
    name = "" if info.name == "accuracy" else f" {info.name}"
    if r.val_metric is not None:
        parts.append(f"val{name} {r.val_metric:.4f}")
    if r.test_metric is not None:
        parts.append(f"test{name} {r.test_metric:.4f}")
    if r.optimizer_steps is not None:
        parts.append(f"{r.optimizer_steps} steps {r.train_time_s or 0:.1f} s")
    elif r.epochs_completed is not None:
        parts.append(f"{r.epochs_completed} ep {r.train_time_s or 0:.1f} s")
    if r.diverged:
        parts.append("diverged" + (f" ({r.stop_reason})" if r.stop_reason else ""))
    if r.oom:
        last = r.oom[-1]
        if r.state == "PRUNED" and last.micro_batch_size == r.micro_batch_size:
            parts.append(f"out of memory at micro-batch {last.micro_batch_size}")
        else:
            parts.append(f"after {len(r.oom)} out-of-memory attempt(s)")
    return "  ".join(parts)


def budget_text(config: dict) -> str:
    """How much training each trial got: ``20 epochs`` or ``500 optimizer steps``."""
    if config.get("budget") == "steps":
        return f"{config.get('steps', '?')} optimizer steps"
    return f"{config.get('epochs', '?')} epochs"


def _split(r: TrialRecord) -> str:
    """`` (16x2)``: micro-batch x accumulation; `` (16x2devx2)`` on several devices."""
    steps = r.accumulation_steps or 1
    if r.devices and r.devices > 1:
        return f" ({r.micro_batch_size}x{r.devices}dev" + (f"x{steps})" if steps > 1 else ")")
    return f" ({r.micro_batch_size}x{steps})" if steps > 1 else ""


def _best_line(label: str, r: TrialRecord, metric: MetricText) -> str:
    micro = _split(r)
    multiplier = f" (x{r.lr_multiplier:.2f})" if r.lr_multiplier is not None else ""
    return (
        f"{label}trial {r.number}, batch size {r.batch_size}{micro}, rule "
        f"{r.scaling_rule}, lr {_num(r.lr, '.3g')}{multiplier}, {metric.val} "
        f"{metric.value(r.val_metric)}, {metric.test} {metric.value(r.test_metric)}, "
        f"{_num(r.train_time_s, '.1f')} s training"
    )


def _num(value: float | None, spec: str = ".4f") -> str:
    return format(math.nan if value is None else value, spec)


def branch_lines(study: optuna.Study) -> list[str]:
    """The branch command's answer when it ran on this study first (``branch --storage``):
    its cheap reading beside the study's confirmed one."""
    answer = study.user_attrs.get("branch")
    if not isinstance(answer, dict) or not isinstance(answer.get("recommended"), dict):
        return []
    rec = answer["recommended"]
    points = answer.get("points") or []
    criticals = ", ".join(
        f"{p.get('critical_batch_size')} at {float(p.get('fraction', 0)):.2f}" for p in points
    )
    schedule = ",".join(
        f"{p.get('batch_size')}@{float(p.get('start_fraction', 0)):g}"
        for p in answer.get("schedule") or []
    )
    return [
        f"  by branching first (one reference run and short branches, "
        f"{float(answer.get('trainings') or 0):.2f} trainings, no confirmation runs): batch "
        f"{rec.get('batch_size')} {rec.get('scaling_rule')}; critical batch {criticals}; "
        f"schedule {schedule}"
    ]


def summary(study: optuna.Study) -> str:
    """The answer first (the study's recommendation), then the counts, the best single trial
    (or, for metric-vs-time studies, the Pareto front) and one row per cell."""
    data = collect_report_data(study, importances=False)
    m = data.metric
    config = data.config
    budget = budget_text(config)
    head = (
        f"study {study.study_name!r}: {data.counts['COMPLETE']} complete, "
        f"{data.counts['PRUNED']} pruned, {data.counts['FAIL']} failed trials; budget "
        f"{budget} per trial; metric {m.full}"
    )
    complete = [t for t in data.trials if t.state == "COMPLETE"]
    if not complete:
        return head + "\nno complete trial yet: nothing to compare."
    lines = [*answer_lines(data.recommendation, m), *branch_lines(study), "", head]
    if data.multi_objective:
        lines.append(
            f"Pareto front of {m.val} against training time ({len(data.front)} trials, "
            "fastest first): no trial on it is both better and faster than another"
        )
        lines += [_best_line("  ", r, m) for r in data.front]
    elif data.best is not None:
        lines.append(_best_line("best single trial (one run, noisy): ", data.best, m))
    noise = [r.b_simple for r in complete if r.b_simple is not None]
    if noise:
        se = [r.b_simple_se for r in complete if r.b_simple_se is not None]
        lines.append(
            f"gradient noise scale B_simple (median over {len(noise)} trials' final models): "
            f"{median(noise):.0f} samples" + (f" (typical s.e. {median(se):.0f})" if se else "")
        )
    lines += [
        "",
        f"per cell (batch size x rule; complete runs, {budget} each; {m.full}; "
        f"* fewer than {data.confirm_runs} confirmation runs: no conclusion):",
        run_cells_table(data).to_text(titled=False, first_left=False),
    ]
    return "\n".join(lines)
