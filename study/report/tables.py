"""The report's tables, built from a study's :class:`~study.report.data.ReportData`.

:func:`report_tables` gives every table of the report by key, in page order: the answer, the
setup, the best trial (or the Pareto front), the cells, the rule of thumb, the noise scale,
the probe, the importances and the trials. The HTML page and the terminal report render the
same tables (:class:`~study.report.table.Table`).
"""

from __future__ import annotations

from study.record import CONFIRM, TrialRecord
from study.report.answer import answer_note, answer_rows, how_trained
from study.report.cellrows import MIN_RUNS
from study.report.data import ReportData
from study.report.narratives import Folklore
from study.report.table import Table
from study.units import format_bytes, format_percent

#: The rule of thumb's verdicts, in words.
VERDICTS = {
    "inside": "inside the range: folklore held",
    "below": "below the range: folklore missed",
    "above": "above the range: folklore missed",
    "unknown": "no complete trial yet",
    "unconfirmed": f"no verdict: the best cell has fewer than {MIN_RUNS} complete runs",
    "inconclusive": "no verdict: cells on both sides of the range are within the intervals",
}


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
    return text + how_trained(t.micro_batch_size, t.devices, t.accumulation_steps)


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


def run_cells_table(data: ReportData) -> Table:
    """The compact per-cell table a run prints at its end: runs, mean and 95% interval of the
    metric, median time and speed (the report's own cells table has every column)."""
    m = data.metric
    buckets = any(c.lr_bucket is not None for c in data.cells)
    headers = ["batch", "rule"] + (["lr mult."] if buckets else [])
    headers += ["runs", "pruned", f"mean val {m.name}", "95% interval", "median time s"]
    headers += [f"median {m.rate}"]
    rows = []
    for c in data.cells:
        row = [c.batch_schedule or str(c.batch_size), c.scaling_rule]
        row += [f"x{c.lr_bucket:.3g}" if c.lr_bucket is not None else "-"] if buckets else []
        row += [
            str(c.runs) + ("" if c.confirmed or not c.runs else "*"),
            str(c.pruned),
            m.value(c.mean_val),
            m.interval(c.ci95),
            f"{c.median_time_s:.2f}" if c.median_time_s is not None else "-",
            f"{c.median_samples_per_s:,.0f}" if c.median_samples_per_s is not None else "-",
        ]
        rows.append(row)
    return Table("run-cells", "Per cell", headers, rows)


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
