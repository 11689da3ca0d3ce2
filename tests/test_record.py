"""The trial record: one schema that the objective writes and every reader reads.

Real SQLite studies; the README's (or docs/record.md's) table of the record is checked
against the dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from study.record import (
    ACCURACY,
    MetricInfo,
    OutOfMemory,
    TrialRecord,
    read_record,
    study_metric,
    write_record,
)
from study.report.summary import trial_line

ROOT = Path(__file__).resolve().parent.parent
#: Where the table of the record's user attributes stands (every such table is checked).
TABLE_FILES = ("docs/record.md", "README.md")

FULL = TrialRecord(
    batch_size=128,
    micro_batch_size=64,
    devices=1,
    accumulation_steps=2,
    lr=0.02,
    scaling_rule="linear",
    phase="confirm",
    val_metric=0.91,
    test_metric=0.9,
    train_metric=0.95,
    epochs_completed=3,
    passes_completed=3.25,
    train_time_s=1.5,
    samples_per_s=1200.0,
    samples_left_out=12,
    peak_memory_bytes=2_000_000,
    memory_source="cpu_allocator_profile",
    seed=7,
    diverged=True,
    stop_reason="collapsed: validation accuracy at chance",
    lr_multiplier=1.5,
    optimizer_steps=40,
    val_metric_per_epoch=(0.5, 0.8, 0.91),
    b_simple=120.0,
    b_simple_se=10.0,
    worker="host:1",
    device="cuda:0",
    device_name="A GPU",
    gpu="3",
    oom=(OutOfMemory(128, 1, 1, "CUDA out of memory"),),
    resumed_from_epoch=2,
    dropped="budget spent",
    batch_schedule="8@0,64@0.5",
)


def record_tables() -> list[tuple[Path, list[tuple[list[str], str]]]]:
    """Every Markdown table whose header starts with ``| attribute |`` in ``TABLE_FILES``, as
    rows of (backquoted names in the first cell, the meaning cell)."""
    tables = []
    for name in TABLE_FILES:
        path = ROOT / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        for i, line in enumerate(lines):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.lstrip().startswith("|") and cells[0].lower() == "attribute":
                rows = []
                for row in lines[i + 2 :]:
                    if not row.lstrip().startswith("|"):
                        break
                    first, _, rest = row.strip().strip("|").partition("|")
                    rows.append((re.findall(r"`([a-z_]+)`", first), rest.strip()))
                tables.append((path, rows))
    return tables


def test_the_documented_table_lists_every_record_attribute_once():
    tables = record_tables()
    assert tables, f"no table with the header '| attribute | meaning |' in {TABLE_FILES}"
    for path, rows in tables:
        documented = [name for names, _ in rows for name in names]
        assert all(names and meaning for names, meaning in rows), f"{path}: a row lacks text"
        assert len(documented) == len(set(documented)), f"{path}: an attribute is listed twice"
        missing = set(TrialRecord.attribute_names()) - set(documented)
        unknown = set(documented) - set(TrialRecord.attribute_names())
        assert not missing, f"{path}: the record table lacks {sorted(missing)}"
        assert not unknown, f"{path}: the record table lists {sorted(unknown)}, not in TrialRecord"


def test_the_trial_s_own_fields_are_never_stored():
    names = TrialRecord.attribute_names(MetricInfo("metric"))  # stored names = field names
    assert {"number", "state", "curve"}.isdisjoint(names)
    fields = {f.name for f in dataclasses.fields(TrialRecord)}
    assert fields - set(names) == {"number", "state", "curve"}


def test_only_recorded_values_are_stored_and_in_json_form():
    attrs = TrialRecord(batch_size=32, lr=0.1, diverged=False).to_user_attrs()
    assert attrs == {"batch_size": 32, "lr": 0.1}  # nothing for what was not recorded
    stored = FULL.to_user_attrs()
    assert set(stored) == set(TrialRecord.attribute_names())
    assert stored["oom"] == [
        {
            "micro_batch_size": 128,
            "accumulation_steps": 1,
            "epoch": 1,
            "error": "CUDA out of memory",
        }
    ]
    assert stored["val_accuracy_per_epoch"] == [0.5, 0.8, 0.91]  # named after the metric
    assert stored["val_accuracy"] == 0.91 and "val_metric" not in stored


def test_the_metric_s_fields_are_stored_and_read_under_the_metric_s_name(tmp_path):
    mse = MetricInfo("mse", "minimize")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="minimize")
    trial = study.ask()
    write_record(trial, FULL, mse)
    study.tell(trial, 0.25)
    stored = study.trials[0].user_attrs
    assert stored["val_mse"] == 0.91 and stored["test_mse"] == 0.9 and stored["train_mse"] == 0.95
    assert stored["val_mse_per_epoch"] == [0.5, 0.8, 0.91]
    assert not any("accuracy" in name for name in stored)
    assert set(stored) == set(TrialRecord.attribute_names(mse))
    record = read_record(study.trials[0], metric=mse)
    assert (record.val_metric, record.test_metric, record.train_metric) == (0.25, 0.9, 0.95)
    assert read_record(study.trials[0]).test_metric is None  # read as accuracy: not there


def test_an_older_record_without_a_phase_reads_as_search():
    assert read_record(optuna.trial.create_trial(value=0.9)).phase == "search"
    odd = optuna.trial.create_trial(value=0.9, user_attrs={"phase": "other"})
    assert read_record(odd).phase == "search"


def test_the_study_metric_defaults_to_accuracy_for_older_studies():
    study = optuna.create_study(direction="maximize")
    assert study_metric(study) == MetricInfo("accuracy", "maximize", "samples", (0.0, 1.0))
    # stored before metrics had bounds: accuracy is still a fraction, others are open
    study.set_user_attr("metric", {"name": "accuracy", "direction": "maximize"})
    assert study_metric(study).bounds == (0.0, 1.0)
    study.set_user_attr("metric", {"name": "mse", "direction": "minimize"})
    assert study_metric(study).bounds is None
    mse = MetricInfo("mse", "minimize", bounds=(0.0, None))
    assert MetricInfo.from_dict(json.loads(json.dumps(mse.to_dict()))) == mse
    assert mse.clip(-0.02, 0.05) == (0.0, 0.05) and ACCURACY.clip(0.888, 1.065) == (0.888, 1.0)
    study.set_user_attr(
        "metric", {"name": "bits_per_char", "direction": "minimize", "unit": "tokens"}
    )
    metric = study_metric(study)
    assert (metric.val_name, metric.sign, metric.unit) == ("val_bits_per_char", -1, "tokens")
    assert metric.better(1.2, 1.3) and not ACCURACY.better(0.5, 0.6)


def test_a_record_written_to_sqlite_reads_back_the_same(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    trial = study.ask()
    write_record(trial, TrialRecord(worker="host:1"))  # as the runner does at the start
    write_record(trial, dataclasses.replace(FULL, worker=None))  # the rest, at the end
    frozen = study.tell(trial, FULL.val_metric)
    record = read_record(study.trials[0])
    assert record == dataclasses.replace(FULL, number=0, state="COMPLETE", curve=record.curve)
    assert record.curve == ((1, 0.5), (2, 0.8), (3, 0.91))  # no intermediate values here
    assert frozen.user_attrs == FULL.to_user_attrs()


def test_an_older_step_budget_record_reads_its_float_epochs_as_passes():
    old = optuna.trial.create_trial(value=0.8, user_attrs={"epochs_completed": 2.37})
    record = read_record(old)
    assert (record.epochs_completed, record.passes_completed) == (2, 2.37)
    assert isinstance(record.epochs_completed, int)
    new = optuna.trial.create_trial(
        value=0.8, user_attrs={"epochs_completed": 2, "passes_completed": 2.37}
    )
    assert (read_record(new).epochs_completed, read_record(new).passes_completed) == (2, 2.37)
    epochs = optuna.trial.create_trial(value=0.8, user_attrs={"epochs_completed": 4})
    assert (read_record(epochs).epochs_completed, read_record(epochs).passes_completed) == (4, None)


def test_a_trial_killed_before_its_record_falls_back_to_params_and_curve():
    killed = optuna.trial.create_trial(
        state=TrialState.FAIL,
        params={"batch_size": 64, "lr_multiplier": 2.0},
        distributions={
            "batch_size": CategoricalDistribution([32, 64]),
            "lr_multiplier": FloatDistribution(0.25, 4, log=True),
        },
        intermediate_values={1: 0.4, 2: 0.6},
        user_attrs={"worker": "host:9"},
    )
    record = read_record(killed, default_rule="sqrt")
    assert (record.batch_size, record.scaling_rule, record.lr_multiplier) == (64, "sqrt", 2.0)
    assert record.val_metric == 0.6 and record.curve == ((1, 0.4), (2, 0.6))
    assert record.epochs_completed is None and record.lr is None and record.oom == ()
    assert record.worker == "host:9" and record.state == "FAIL"


def test_a_complete_trial_s_value_wins_over_its_attribute():
    trial = optuna.trial.create_trial(value=0.93, user_attrs={"val_accuracy": 0.5})
    assert read_record(trial).val_metric == 0.93
    bad = optuna.trial.create_trial(value=0.9, user_attrs={"oom": "not a list", "seed": "x"})
    assert read_record(bad).oom == () and read_record(bad).seed is None


def test_the_trial_line_says_why_a_trial_was_pruned_out_of_memory():
    attrs = dataclasses.replace(FULL, diverged=False, batch_schedule=None).to_user_attrs()
    pruned = optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs=attrs)
    line = trial_line(pruned)
    assert "pruned" in line and "batch   128 (64x2)" in line
    assert "after 1 out-of-memory attempt(s)" in line  # the first failed at 128, 64 x 2 ran
    attrs["oom"].append({"micro_batch_size": 64, "accumulation_steps": 2, "epoch": 1})
    gave_up = optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs=attrs)
    assert "out of memory at micro-batch 64" in trial_line(gave_up)


def test_the_trial_line_shows_epochs_or_the_optimizer_steps_of_a_step_budget():
    attrs = {"batch_size": 64, "epochs_completed": 3, "train_time_s": 1.5}
    assert "3 ep 1.5 s" in trial_line(optuna.trial.create_trial(value=0.9, user_attrs=attrs))
    steps = optuna.trial.create_trial(value=0.9, user_attrs={**attrs, "optimizer_steps": 40})
    assert "40 steps 1.5 s" in trial_line(steps)
