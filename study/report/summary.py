"""Plain-text results of a study: one line per trial, and the end-of-run summary tables.

Every figure says its unit and its budget (epochs per trial) and how many trials it rests on.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.trial import FrozenTrial

from study.record import TrialRecord, read_record


def trial_line(trial: FrozenTrial) -> str:
    """One line for a finished trial: state, batch (and accumulation), rule, LR, results,
    and why it stopped early (diverged, out of memory)."""
    r = read_record(trial)
    batch = f"batch {r.batch_size if r.batch_size is not None else '?':>5}"
    if r.accumulation_steps and r.accumulation_steps > 1:
        batch += f" ({r.micro_batch_size}x{r.accumulation_steps})"
    parts = [f"trial {r.number:>3} {r.state.lower():<8}", batch]
    if r.scaling_rule is not None and r.lr is not None:
        parts.append(f"{r.scaling_rule:<6} lr {r.lr:.2e}")
    if r.val_accuracy is not None:
        parts.append(f"val {r.val_accuracy:.4f}")
    if r.test_accuracy is not None:
        parts.append(f"test {r.test_accuracy:.4f}")
    if r.optimizer_steps is not None:
        parts.append(f"{r.optimizer_steps} steps {r.train_time_s or 0:.1f} s")
    elif r.epochs_completed is not None:
        parts.append(f"{r.epochs_completed} ep {r.train_time_s or 0:.1f} s")
    if r.diverged:
        parts.append("diverged")
    if r.oom:
        last = r.oom[-1]
        if r.state == "PRUNED" and last.micro_batch_size == r.micro_batch_size:
            parts.append(f"out of memory at micro-batch {last.micro_batch_size}")
        else:
            parts.append(f"after {len(r.oom)} out-of-memory attempt(s)")
    return "  ".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def budget_text(config: dict) -> str:
    """How much training each trial got: ``20 epochs`` or ``500 optimizer steps``."""
    if config.get("budget") == "steps":
        return f"{config.get('steps', '?')} optimizer steps"
    return f"{config.get('epochs', '?')} epochs"


def _best_line(label: str, r: TrialRecord) -> str:
    micro = ""
    if r.accumulation_steps and r.accumulation_steps > 1:
        micro = f" ({r.micro_batch_size}x{r.accumulation_steps})"
    multiplier = f" (x{r.lr_multiplier:.2f})" if r.lr_multiplier is not None else ""
    return (
        f"{label}trial {r.number}, batch size {r.batch_size}{micro}, rule "
        f"{r.scaling_rule}, lr {_num(r.lr, '.3g')}{multiplier}, val {_num(r.val_accuracy)}, "
        f"test {_num(r.test_accuracy)}, {_num(r.train_time_s, '.1f')} s training"
    )


def _num(value: float | None, spec: str = ".4f") -> str:
    return format(math.nan if value is None else value, spec)


def summary(study: optuna.Study) -> str:
    """The best trial (or, for accuracy-vs-time studies, the Pareto front) and, per batch
    size, best and median accuracy, time and throughput."""
    config = study.user_attrs.get("config", {})
    multi = len(study.directions) > 1
    names = study.metric_names or (["val_accuracy", "train_time_s"] if multi else None)
    records = [read_record(t, None, names) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in records if r.state == "COMPLETE"]
    pruned = [r for r in records if r.state == "PRUNED"]
    failed = [r for r in records if r.state == "FAIL"]
    budget = budget_text(config)
    head = (
        f"study {study.study_name!r}: {len(complete)} complete, {len(pruned)} pruned, "
        f"{len(failed)} failed trials; budget {budget} per trial"
    )
    if not complete:
        return head + "\nno complete trial yet: nothing to compare."
    lines = [head, ""]
    by_number = {r.number: r for r in records}
    if multi:
        front = [by_number[t.number] for t in study.best_trials]
        front.sort(key=lambda r: (r.train_time_s or math.inf, r.number))
        lines.append(
            f"Pareto front of validation accuracy against training time ({len(front)} trials, "
            "fastest first): no trial on it is both more accurate and faster than another"
        )
        lines += [_best_line("  ", r) for r in front]
    else:
        best = by_number[study.best_trial.number]
        lines.append(_best_line("best (by validation accuracy): ", best))
    noise = [r.b_simple for r in complete if r.b_simple is not None]
    if noise:
        lines.append(
            f"gradient noise scale B_simple (median over {len(noise)} trials' final models): "
            f"{statistics.median(noise):.0f} samples"
        )
    lines += ["", f"per batch size (complete trials, {budget} each; accuracy as a fraction):"]
    by_batch: dict[int | None, list[TrialRecord]] = {}
    for r in complete:
        by_batch.setdefault(r.batch_size, []).append(r)
    pruned_by_batch: dict[int | None, int] = {}
    for r in pruned:
        pruned_by_batch[r.batch_size] = pruned_by_batch.get(r.batch_size, 0) + 1
    rows = []
    for b in sorted(set(by_batch) | set(pruned_by_batch), key=lambda b: (b is None, b or 0)):
        rs = by_batch.get(b, [])
        val = [r.val_accuracy for r in rs if r.val_accuracy is not None]
        test = [math.nan if r.test_accuracy is None else r.test_accuracy for r in rs]
        time_s = [r.train_time_s for r in rs if r.train_time_s is not None]
        speed = [r.samples_per_s or 0.0 for r in rs]
        rows.append(
            [
                str(b if b is not None else "?"),
                str(len(rs)),
                str(pruned_by_batch.get(b, 0)),
                f"{max(val):.4f}" if val else "-",
                f"{statistics.median(val):.4f}" if val else "-",
                f"{statistics.median(test):.4f}" if test else "-",
                f"{statistics.median(time_s):.2f}" if time_s else "-",
                f"{statistics.median(speed):,.0f}" if speed else "-",
            ]
        )
    headers = [
        "batch",
        "complete",
        "pruned",
        "best val",
        "median val",
        "median test",
        "median time s",
        "median samples/s",
    ]
    lines.append(_table(headers, rows))
    return "\n".join(lines)
