"""Studies in the core's record format, written with Optuna directly into real SQLite files.

Used by the report and dashboard tests; no training happens, so they take milliseconds.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

BATCH_SIZES = [16, 32, 64, 128, 256]
RULES = ["linear", "sqrt", "none"]
EPOCHS = 4
BASE_LR, BASE_BATCH = 0.05, 64
TRAIN_SIZE = 4000

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIG = {
    "task": "digits",
    "model": "mlp",
    "hidden": [128, 64],
    "optimizer": "sgd",
    "base_lr": BASE_LR,
    "base_batch_size": BASE_BATCH,
    "scaling": "search",
    "epochs": EPOCHS,
    "min_batch_size": 16,
    "max_batch_size": None,
    "max_accumulation": 1,
    "sampler": "tpe",
    "pruner": "median",
    "seed": 0,
    "trials": 20,
}
SPACE = {
    "batch_sizes": BATCH_SIZES,
    "memory_cap": 256,
    "max_accumulation": 1,
    "cap_source": "probe",
    "scaling_rules": RULES,
}
TASK_INFO = {
    "train_size": TRAIN_SIZE,
    "val_size": 1000,
    "test_size": 1000,
    "num_classes": 10,
    "input_shape": [64],
}
PROBE = {
    "max_batch_size": 256,
    "knee_batch_size": 128,
    "fixed_bytes": 2_000_000,
    "bytes_per_sample": 40_000,
    "budget_bytes": 14_000_000,
    "rows": [
        {
            "batch_size": b,
            "predicted_bytes": 2_000_000 + 40_000 * b,
            "measured_bytes": 2_100_000 + 39_000 * b,
            "samples_per_s": 20_000 * b / (b + 64),
        }
        for b in BATCH_SIZES
    ],
}


#: ``--lr-search-width`` of the ``multiplier`` study, and its step budget.
LR_WIDTH = 4.0
STEPS = 250
#: Multipliers the ``multiplier`` study's trials take, in turn.
MULTIPLIERS = (1.0, 1.6, 0.5, 2.5, 0.8)
#: The ``noise_scale`` study attribute of the ``multiplier`` study (scripts/noise_scale.py --json).
NOISE_SCALE = {
    "b_simple": 41.5,
    "b_simple_se": 6.0,
    "trace_sigma": 3.1,
    "grad_norm_sq": 0.075,
    "per_epoch": [
        {
            "epoch": 0,
            "b_simple": 41.5,
            "b_simple_se": 6.0,
            "trace_sigma": 3.1,
            "grad_norm_sq": 0.075,
        },
        {
            "epoch": 3,
            "b_simple": 150.2,
            "b_simple_se": 21.0,
            "trace_sigma": 1.2,
            "grad_norm_sq": 0.008,
        },
    ],
    "recommended_batch_size": 128,
    "recommended_range": [64, 256],
}


def scaled_lr(rule: str, batch: int) -> float:
    """The learning rate the core's rules give (kept here so fixtures need no core module)."""
    factor = {"linear": batch / BASE_BATCH, "sqrt": math.sqrt(batch / BASE_BATCH), "none": 1.0}
    return BASE_LR * factor[rule]


def _accuracy(batch: int, rule: str, epoch: int, wobble: float) -> float:
    peak = (
        0.93
        - 0.05 * abs(math.log2(batch / 64)) / 2
        + {"linear": 0.0, "sqrt": 0.01}.get(rule, -0.01)
    )
    return round(max(0.1, peak - 0.35 * 0.5 ** (epoch - 1) + wobble), 4)


def _attrs(batch: int, rule: str, epochs: int, number: int, val: float) -> dict:
    return {
        "batch_size": batch,
        "micro_batch_size": batch,
        "accumulation_steps": 1,
        "lr": scaled_lr(rule, batch),
        "scaling_rule": rule,
        "val_accuracy": val,
        "train_accuracy": min(1.0, val + 0.03),
        "epochs_completed": epochs,
        "train_time_s": round(40.0 * epochs / EPOCHS * 64 / (batch + 32), 3),
        "samples_per_s": round(20_000 * batch / (batch + 64), 1),
        "peak_memory_bytes": 2_100_000 + 39_000 * batch,
        "memory_source": "cpu_allocator_profile",
        "seed": number,
    }


def _trial(
    number: int,
    batch: int,
    rule: str,
    state: TrialState,
    epochs: int,
    *,
    search_rule: bool,
    diverged: bool = False,
    kind: str = "full",
) -> optuna.trial.FrozenTrial:
    wobble = ((number * 37) % 11 - 5) / 500
    turn = (number + number // len(BATCH_SIZES)) % len(MULTIPLIERS)  # 3 per batch size
    multiplier = MULTIPLIERS[turn] if kind == "multiplier" else None
    if multiplier is not None:  # the further from the best multiplier (1 at 64, 2 at 256)
        wobble -= 0.03 * abs(math.log2(multiplier) - max(0.0, math.log2(batch / 64)) / 2)
    curve = {e: _accuracy(batch, rule, e, wobble) for e in range(1, epochs + 1)}
    val = curve[epochs] if curve else 0.0
    attrs = _attrs(batch, rule, epochs, number, val)
    if state == TrialState.COMPLETE:
        attrs["test_accuracy"] = round(val - 0.01, 4)
    if diverged:
        attrs["diverged"] = True
    if kind == "pareto" and state == TrialState.COMPLETE:  # --noise-scale measured it
        attrs["b_simple"] = 80.0 + 12.5 * (number % 7)
        attrs["b_simple_se"] = 9.0 + number % 3
    if multiplier is not None:
        attrs["lr"] = scaled_lr(rule, batch) * multiplier
        attrs["lr_multiplier"] = multiplier
        attrs["optimizer_steps"] = STEPS
        attrs["passes_completed"] = round(STEPS * batch / TRAIN_SIZE, 2)
    if state in (TrialState.FAIL, TrialState.RUNNING):
        attrs = {"batch_size": batch, "scaling_rule": rule, "lr": scaled_lr(rule, batch)}
    params: dict = {"batch_size": batch}
    dists: dict = {"batch_size": CategoricalDistribution(BATCH_SIZES)}
    if search_rule:
        params["scaling_rule"] = rule
        dists["scaling_rule"] = CategoricalDistribution(RULES)
    if multiplier is not None:
        params["lr_multiplier"] = multiplier
        dists["lr_multiplier"] = FloatDistribution(1 / LR_WIDTH, LR_WIDTH, log=True)
    values = None
    if state == TrialState.COMPLETE:
        values = [val, attrs["train_time_s"]] if kind == "pareto" else [val]
    curves = state != TrialState.FAIL and not (kind == "pareto" and number % 2)
    if kind == "pareto" and number % 4 == 1 and state == TrialState.COMPLETE:
        attrs["val_accuracy_per_epoch"] = [curve[e] for e in sorted(curve)]
    return optuna.trial.create_trial(
        state=state,
        values=values,
        params=params,
        distributions=dists,
        user_attrs=attrs,
        # two objectives: Optuna's report() refuses, so a curve is a user attribute or absent
        intermediate_values=curve if curves else {},
    )


def build_study(
    path: Path,
    *,
    study_name: str = "batch-size",
    kind: str = "full",
    probe: bool = True,
) -> optuna.Study:
    """Write a study to the SQLite file ``path`` and return it (opened on that file).

    Each kind is written once per test session and copied after that (creating the schema
    and the trials costs about a second; copying the file, milliseconds).

    Args:
        path: SQLite file to create.
        study_name: Name of the study.
        kind: ``full`` (rule searched: complete, pruned, diverged, failed trials), ``fixed``
            (rule fixed to sqrt: only batch_size varies), ``pruned`` (only pruned and failed
            trials), ``running`` (complete trials and one still running), ``empty``,
            ``pareto`` (``--objectives accuracy,time --noise-scale``: two objectives, complete
            and failed trials, every trial's B_simple; learning curves as intermediate values
            on even trials, as ``val_accuracy_per_epoch`` on trials 1, 5, 9, none on others)
            or ``multiplier`` (``--lr-search-width 4 --budget steps --steps 250``: the LR
            multiplier searched, a step budget, the study attribute ``noise_scale``, linear
            scaling diverged at batch 256 without warm-up); or a study with confirmed cells
            (see :data:`CELLS`): ``confirmed`` (accuracy, maximised, its recommendation
            stored), ``confirmed-bare`` (the same trials, no recommendation stored, as an
            older version wrote them), ``mse`` (regression: ``val_mse`` minimised) or
            ``charlm`` (``val_bits_per_char`` minimised, throughput in tokens).
        probe: Store the probe's table in the study attributes.
    """
    key = (study_name, kind, probe)
    if key not in _TEMPLATES:
        folder = Path(tempfile.mkdtemp(prefix="report-studies-"))
        atexit.register(shutil.rmtree, folder, True)
        _write_study(folder / "template.db", study_name=study_name, kind=kind, probe=probe)
        _TEMPLATES[key] = folder / "template.db"
    shutil.copyfile(_TEMPLATES[key], path)
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{path}")


_TEMPLATES: dict[tuple[str, str, bool], Path] = {}


#: The cells of the ``confirmed`` studies: (batch, rule, search values, confirmation values,
#: training time s). Batch 16 linear leads the search and is confirmed the most accurate;
#: 256 linear, confirmed after it, is within 0.01 of it and 8x faster; 256 none is far behind
#: and 64 none has one run only.
CELLS = (
    (16, "linear", (0.900, 0.904), (0.900, 0.901, 0.899), 40.0),
    (64, "linear", (0.897, 0.893, 0.901), (), 15.0),
    (256, "linear", (0.896,), (0.897, 0.898, 0.896), 5.0),
    (256, "none", (0.800, 0.810, 0.790), (), 5.0),
    (64, "none", (0.860,), (), 15.0),
)
#: The same cells for a minimised metric (lower is better): 64 linear is best.
MSE_CELLS = (
    (16, "linear", (0.30, 0.31, 0.29), (), 40.0),
    (64, "linear", (0.20, 0.21), (0.20, 0.21, 0.19), 15.0),
    (256, "linear", (0.25,), (0.25, 0.26, 0.24), 5.0),
    (256, "none", (0.50, 0.55, 0.45), (), 5.0),
    (64, "none", (0.22,), (), 15.0),
)
#: The metric of each cell study kind: (name, direction, unit).
CELL_METRICS = {
    "confirmed": ("accuracy", "maximize", "samples"),
    "confirmed-bare": ("accuracy", "maximize", "samples"),
    "mse": ("mse", "minimize", "samples"),
    "charlm": ("bits_per_char", "minimize", "tokens"),
}


def _write_cells_study(path: Path, *, study_name: str, kind: str) -> None:
    """A study with confirmed cells (:data:`CELLS`), in the trial record's format."""
    name, direction, unit = CELL_METRICS[kind]
    study = optuna.create_study(
        storage=f"sqlite:///{path}", study_name=study_name, direction=direction
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"val_{name}"])
    if kind != "confirmed" and kind != "confirmed-bare":
        study.set_user_attr("metric", {"name": name, "direction": direction, "unit": unit})
    config = dict(CONFIG, scaling="search", confirm_runs=3, tolerance=0.01, trials=16)
    study.set_user_attr("config", config)
    study.set_user_attr("space", dict(SPACE, scaling_rules=["linear", "none"]))
    study.set_user_attr("task_info", TASK_INFO)
    cells = CELLS if name == "accuracy" else MSE_CELLS
    number = 0
    for batch, rule, search, confirm, seconds in cells:
        for run, value in enumerate(search + confirm):
            attrs = _attrs(batch, rule, EPOCHS, number, value)
            del attrs["val_accuracy"], attrs["train_accuracy"]
            attrs.update({f"val_{name}": value, f"test_{name}": round(value - 0.01, 4)})
            attrs["train_time_s"] = seconds + 0.1 * run
            attrs["phase"] = "confirm" if run >= len(search) else "search"
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.COMPLETE,
                    values=[value],
                    params={"batch_size": batch, "scaling_rule": rule},
                    distributions={
                        "batch_size": CategoricalDistribution(BATCH_SIZES),
                        "scaling_rule": CategoricalDistribution(RULES),
                    },
                    user_attrs=attrs,
                    intermediate_values={e: value for e in range(1, EPOCHS + 1)},
                )
            )
            number += 1
    if kind != "confirmed-bare":
        from study.recommend import store_recommendation

        store_recommendation(study)


def _write_study(path: Path, *, study_name: str, kind: str, probe: bool) -> None:
    if kind in CELL_METRICS:
        _write_cells_study(path, study_name=study_name, kind=kind)
        return
    pareto = kind == "pareto"
    study = optuna.create_study(
        storage=f"sqlite:///{path}",
        study_name=study_name,
        directions=["maximize", "minimize"] if pareto else ["maximize"],
    )
    with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy", "train_time_s"] if pareto else ["val_accuracy"])
    search = kind in ("full", "pruned", "running", "empty", "pareto", "multiplier")
    config = dict(CONFIG, scaling="search" if search else "sqrt")
    if pareto:
        config.update(objectives=["accuracy", "time"], pruner="none", noise_scale=True)
    if kind == "multiplier":
        config.update(budget="steps", steps=STEPS, warmup_epochs=0, lr_search_width=LR_WIDTH)
    space = dict(SPACE, scaling_rules=RULES if search else ["sqrt"])
    study.set_user_attr("config", config)
    study.set_user_attr("space", space)
    study.set_user_attr("task_info", TASK_INFO)
    if probe:
        study.set_user_attr("probe", PROBE)
    if kind == "multiplier":
        study.set_user_attr("noise_scale", NOISE_SCALE)
    plan: list[tuple[int, str, TrialState, int, bool]] = []
    if kind in ("full", "running"):
        for i, batch in enumerate(BATCH_SIZES * 3):
            plan.append((batch, RULES[i % 3], TrialState.COMPLETE, EPOCHS, False))
        plan += [
            (16, "none", TrialState.PRUNED, 2, False),
            (256, "linear", TrialState.PRUNED, 1, True),
            (128, "sqrt", TrialState.FAIL, 0, False),
        ]
        if kind == "running":
            plan.append((64, "sqrt", TrialState.RUNNING, 2, False))
    elif kind == "fixed":
        for batch in BATCH_SIZES * 2:
            plan.append((batch, "sqrt", TrialState.COMPLETE, EPOCHS, False))
        plan.append((256, "sqrt", TrialState.PRUNED, 2, False))
    elif kind == "pruned":
        plan += [
            (32, "linear", TrialState.PRUNED, 2, False),
            (256, "linear", TrialState.PRUNED, 1, True),
            (64, "sqrt", TrialState.FAIL, 0, False),
        ]
    elif kind == "pareto":
        for i, batch in enumerate(BATCH_SIZES * 2):
            plan.append((batch, RULES[i % 3], TrialState.COMPLETE, EPOCHS, False))
        plan.append((128, "sqrt", TrialState.FAIL, 0, False))
    elif kind == "multiplier":
        for i, batch in enumerate(BATCH_SIZES * 3):
            epochs = max(1, STEPS * batch // TRAIN_SIZE)  # a step budget: epochs grow with batch
            plan.append((batch, RULES[i % 3], TrialState.COMPLETE, epochs, False))
        plan += [
            (256, "linear", TrialState.PRUNED, 2, True),
            (128, "linear", TrialState.PRUNED, 1, True),
        ]
    elif kind != "empty":
        raise ValueError(
            f"kind {kind!r}: use full, fixed, pruned, running, empty, pareto or multiplier"
        )
    for number, (batch, rule, state, epochs, diverged) in enumerate(plan):
        study.add_trial(
            _trial(
                number,
                batch,
                rule,
                state,
                epochs,
                search_rule=search,
                diverged=diverged,
                kind=kind,
            )
        )
