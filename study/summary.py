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
    if "epochs_completed" in a:
        parts.append(f"{a['epochs_completed']} ep {a.get('train_time_s', 0):.1f} s")
    if a.get("diverged"):
        parts.append("diverged")
    return "  ".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def summary(study: optuna.Study) -> str:
    """The best trial and, per batch size, best and median accuracy, time and throughput."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    epochs = study.user_attrs.get("config", {}).get("epochs", "?")
    head = (
        f"study {study.study_name!r}: {len(complete)} complete, {len(pruned)} pruned, "
        f"{len(failed)} failed trials; budget {epochs} epochs per trial"
    )
    if not complete:
        return head + "\nno complete trial yet: nothing to compare."
    best = study.best_trial
    a = best.user_attrs
    lines = [
        head,
        "",
        f"best (by validation accuracy): trial {best.number}, batch size {a['batch_size']}"
        + (
            f" ({a['micro_batch_size']}x{a['accumulation_steps']})"
            if a.get("accumulation_steps", 1) > 1
            else ""
        )
        + f", rule {a['scaling_rule']}, lr {a['lr']:.3g}, val {a['val_accuracy']:.4f}, "
        f"test {a.get('test_accuracy', float('nan')):.4f}, {a['train_time_s']:.1f} s training",
        "",
        f"per batch size (complete trials, {epochs} epochs each; accuracy as a fraction):",
    ]
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
