"""Plain-text results of a study: one line per trial, and the end-of-run summary tables.

Every figure says its unit and its budget (epochs per trial) and how many trials it rests on.
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState


def trial_line(trial: FrozenTrial) -> str:
    """One line for a finished trial: state, batch (and accumulation), rule, LR, results."""
    a = trial.user_attrs
    batch = f"batch {a.get('batch_size', trial.params.get('batch_size', '?')):>5}"
    if a.get("accumulation_steps", 1) > 1:
        batch += f" ({a['micro_batch_size']}x{a['accumulation_steps']})"
    parts = [f"trial {trial.number:>3} {trial.state.name.lower():<8}", batch]
    if "scaling_rule" in a:
        parts.append(f"{a['scaling_rule']:<6} lr {a['lr']:.2e}")
    if "val_accuracy" in a:
        parts.append(f"val {a['val_accuracy']:.4f}")
    if "test_accuracy" in a:
        parts.append(f"test {a['test_accuracy']:.4f}")
    if "optimizer_steps" in a:
        parts.append(f"{a['optimizer_steps']} steps {a.get('train_time_s', 0):.1f} s")
    elif "epochs_completed" in a:
        parts.append(f"{a['epochs_completed']} ep {a.get('train_time_s', 0):.1f} s")
    if a.get("diverged"):
        parts.append("diverged")
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


def _best_line(label: str, t: FrozenTrial) -> str:
    a = t.user_attrs
    accumulation = a.get("accumulation_steps", 1)
    micro = f" ({a['micro_batch_size']}x{accumulation})" if accumulation > 1 else ""
    multiplier = f" (x{a['lr_multiplier']:.2f})" if "lr_multiplier" in a else ""
    return (
        f"{label}trial {t.number}, batch size {a['batch_size']}{micro}, rule "
        f"{a['scaling_rule']}, lr {a['lr']:.3g}{multiplier}, val {a['val_accuracy']:.4f}, "
        f"test {a.get('test_accuracy', float('nan')):.4f}, {a['train_time_s']:.1f} s training"
    )


def summary(study: optuna.Study) -> str:
    """The best trial (or, for accuracy-vs-time studies, the Pareto front) and, per batch
    size, best and median accuracy, time and throughput."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    config = study.user_attrs.get("config", {})
    budget = budget_text(config)
    head = (
        f"study {study.study_name!r}: {len(complete)} complete, {len(pruned)} pruned, "
        f"{len(failed)} failed trials; budget {budget} per trial"
    )
    if not complete:
        return head + "\nno complete trial yet: nothing to compare."
    lines = [head, ""]
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.user_attrs["train_time_s"])
        lines.append(
            f"Pareto front of validation accuracy against training time ({len(front)} trials, "
            "fastest first): no trial on it is both more accurate and faster than another"
        )
        lines += [_best_line("  ", t) for t in front]
    else:
        lines.append(_best_line("best (by validation accuracy): ", study.best_trial))
    noise = [t.user_attrs["b_simple"] for t in complete if "b_simple" in t.user_attrs]
    if noise:
        lines.append(
            f"gradient noise scale B_simple (median over {len(noise)} trials' final models): "
            f"{statistics.median(noise):.0f} samples"
        )
    lines += ["", f"per batch size (complete trials, {budget} each; accuracy as a fraction):"]
    by_batch: dict[int, list[FrozenTrial]] = {}
    for t in complete:
        by_batch.setdefault(t.user_attrs["batch_size"], []).append(t)
    pruned_by_batch: dict[int, int] = {}
    for t in pruned:
        b = t.user_attrs.get("batch_size", t.params.get("batch_size"))
        pruned_by_batch[b] = pruned_by_batch.get(b, 0) + 1
    rows = []
    for b in sorted(set(by_batch) | set(pruned_by_batch)):
        ts = by_batch.get(b, [])
        val = [t.user_attrs["val_accuracy"] for t in ts]
        test = [t.user_attrs.get("test_accuracy", float("nan")) for t in ts]
        time_s = [t.user_attrs["train_time_s"] for t in ts]
        speed = [t.user_attrs.get("samples_per_s", 0.0) for t in ts]
        rows.append(
            [
                str(b),
                str(len(ts)),
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
