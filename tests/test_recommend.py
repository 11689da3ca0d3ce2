"""The answer: cells, their intervals, and the stored recommendation (study/cells.py,
study/recommend.py)."""

from __future__ import annotations

import json
from itertools import count

import optuna
import pytest

from study.cells import CellKey, cell_stats, lr_bucket
from study.decision import Plan
from study.recommend import build_answer, paired_speedup, store_recommendation
from study.record import MetricInfo, TrialRecord
from study.report.answer import answer_rows
from study.report.data import MetricText

PICK_KEYS = {
    "batch_size",
    "micro_batch_size",
    "accumulation_steps",
    "scaling_rule",
    "lr",
    "val_mean",
    "val_ci95",
    "test_mean",
    "runs",
    "train_time_s_median",
    "samples_per_s",
    "peak_memory_bytes",
    "speedup",
    "confirm_runs",
    "diverged",
}
ANSWER_KEYS = {
    "most_accurate",
    "fastest_within",
    "tolerance",
    "budget",
    "statement",
    "confidence",
    "decided",
    "trials_used",
}
MSE = MetricInfo("mse", "minimize")
_numbers = count()


def runs(
    batch: int,
    rule: str,
    values: list[float],
    *,
    time: float = 10.0,
    test: float | None = None,
    state: str = "COMPLETE",
    multiplier: float | None = None,
    phase: str = "search",
) -> list[TrialRecord]:
    """Records of one cell's trials: one per value, ``time`` seconds each."""
    micro = min(batch, 64)
    return [
        TrialRecord(
            number=next(_numbers),
            state=state,
            batch_size=batch,
            micro_batch_size=micro,
            accumulation_steps=batch // micro,
            scaling_rule=rule,
            lr=0.001 * batch / 32 * (multiplier or 1.0),
            lr_multiplier=multiplier,
            val_metric=v,
            test_metric=test if test is not None else v - 0.01,
            train_time_s=time,
            samples_per_s=1000.0 / time,
            peak_memory_bytes=batch * 1000,
            phase=phase,
        )
        for v in values
    ]


def test_cells_never_pool_scaling_rules_and_count_what_happened():
    records = (
        runs(256, "linear", [0.96, 0.97], time=2.0)
        + runs(256, "none", [0.60, 0.70], time=2.0)
        + runs(256, "none", [0.30], state="PRUNED")
    )
    records[-1].diverged = True
    cells = {c.key: c for c in cell_stats(records)}
    assert set(cells) == {CellKey(256, "linear"), CellKey(256, "none")}
    linear, none = cells[CellKey(256, "linear")], cells[CellKey(256, "none")]
    assert linear.val_mean == pytest.approx(0.965) and linear.runs == 2
    assert none.val_mean == pytest.approx(0.65) and none.runs == 2  # the pruned one is no run
    assert (none.pruned, none.diverged, linear.pruned) == (1, 1, 0)
    assert linear.val_ci95 is not None and none.val_ci95 is not None
    assert linear.micro_batch_size == 64 and linear.accumulation_steps == 4
    assert linear.train_time_s_median == 2.0 and linear.peak_memory_bytes == 256_000


def test_intervals_of_few_runs_stay_within_the_metric_s_bounds():
    [cell] = cell_stats(runs(8, "sqrt", [0.955, 0.997]))  # the t-interval reaches 1.11
    assert cell.val_ci95[1] == 1.0 and cell.val_ci95[0] < 0.955
    bounded = MetricInfo("mse", "minimize", bounds=(0, None))
    [cell] = cell_stats(runs(8, "sqrt", [0.01, 0.05]), bounded)
    assert cell.val_ci95[0] == 0.0
    [cell] = cell_stats(runs(8, "sqrt", [0.01, 0.05]), MSE)  # no bounds: the plain t-interval
    assert cell.val_ci95[0] < 0


def test_failed_and_running_trials_are_not_cells():
    records = runs(32, "linear", [0.9], state="FAIL") + runs(64, "linear", [0.9], state="RUNNING")
    assert cell_stats(records) == []


def test_lr_search_splits_cells_by_half_octave_bucket():
    assert [lr_bucket(m) for m in (0.25, 0.7, 1.0, 1.2, 1.5, 4.0)] == [
        -2.0,
        -0.5,
        0.0,
        0.5,
        0.5,
        2.0,
    ]
    records = runs(64, "linear", [0.9], multiplier=1.2) + runs(64, "linear", [0.8], multiplier=1.5)
    records += runs(64, "linear", [0.7], multiplier=0.5)
    cells = cell_stats(records, lr_search_width=4)
    assert [(c.lr_bucket, c.runs) for c in cells] == [(-1.0, 1), (0.5, 2)]
    assert cells[1].lr_multiplier == pytest.approx(2**0.5)
    assert "lr x1.41" in cells[1].label
    assert [c.lr_bucket for c in cell_stats(records)] == [None]  # no LR search: one cell


def plan(**kw) -> Plan:
    base = dict(total=30, confirm_runs=3, tolerance=0.01, exploration=1)
    base.update(kw)
    return Plan(**base)


EPOCHS = {"epochs_per_trial": 20}


def test_the_most_accurate_is_reported_from_its_confirmation_runs_only():
    records = (
        runs(16, "linear", [0.99])  # the lucky search run that picked it
        + runs(16, "linear", [0.95, 0.96, 0.97], phase="confirm", test=0.9)
        + runs(64, "linear", [0.93])
    )
    answer = build_answer(plan(exploration=2), records, budget=EPOCHS)
    best = answer.most_accurate
    assert best["batch_size"] == 16 and best["val_mean"] == pytest.approx(0.96)
    assert (best["confirm_runs"], best["runs"], best["diverged"]) == (3, 4, 0)
    assert best["test_mean"] == pytest.approx(0.9) and best["test_ci"] is not None
    assert "across seeds on this validation set" in best["interval"]


def test_a_cell_has_one_median_time_in_the_answer_and_in_its_table_row():
    records = runs(16, "linear", [0.97], time=7.4) + runs(
        16, "linear", [0.96, 0.955, 0.965], time=3.15, phase="confirm"
    )
    records += runs(16, "linear", [0.95], time=9.0) + runs(16, "linear", [0.95, 0.95], time=7.0)
    answer = build_answer(plan(exploration=2), records, budget=EPOCHS)
    (cell,) = cell_stats(records)
    assert answer.most_accurate["train_time_s_median"] == cell.train_time_s_median == 7.0
    timed = {**answer.most_accurate, "speed_source": "timing"}
    trials = {**answer.most_accurate, "batch_size": 64, "speed_source": "trials"}
    _, rows = answer_rows({"most_accurate": timed, "fastest_within": trials}, MetricText(MSE))
    labels = {row[0]: row[1:] for row in rows}
    assert "Median training time (a trial)" in labels  # a trial's time, of the cell's runs
    throughput = "Throughput (samples/s, timed rounds side by side; * median of the trials)"
    assert labels[throughput][0][-1] != "*" and labels[throughput][1].endswith("*")


def test_a_winner_with_no_confirmation_runs_is_never_confirmed():
    records = runs(256, "linear", [0.98] * 13)  # 13 search runs, none made after the choice
    answer = build_answer(plan(exploration=13, total=13), records)
    assert answer.most_accurate is None and answer.reason == "too few runs to confirm"
    assert "needs 3 confirmation runs and has 0" in answer.statement


def test_the_statement_names_confidence_tolerance_metric_and_budget():
    records = (
        runs(32, "linear", [0.96])
        + runs(128, "linear", [0.958])
        + runs(32, "linear", [0.960, 0.961, 0.959], phase="confirm")
        + runs(128, "linear", [0.958, 0.9585, 0.9575], phase="confirm")
        # chosen over the contender 128 on its first three, 32 is estimated on three more
        + runs(32, "linear", [0.9605, 0.9595, 0.960], phase="confirm")
    )
    speeds = {
        32: {"samples_per_s": 100.0, "rates": [100.0, 90.0, 110.0, 100.0, 95.0]},
        128: {"samples_per_s": 300.0, "rates": [300.0, 280.0, 320.0, 310.0, 290.0]},
    }
    answer = build_answer(plan(exploration=2), records, speeds, budget=EPOCHS)
    words = answer.statement
    assert words.startswith("With 95% confidence, batch 128 linear")
    assert "is within 0.01 accuracy of the most accurate, batch 32 linear" in words
    assert "at 20 epochs each" in words and "Decided after 11 of 30 trials" in words
    assert "across 3 seeds on this validation set, run after it was chosen" in words
    assert answer.most_accurate["val_mean"] == pytest.approx(0.960)  # the last three runs
    assert answer.most_accurate["confirm_runs"] == 6
    fast = answer.fastest_within
    assert fast["speedup"] == pytest.approx(3.053, abs=1e-3)  # the median per-round ratio
    assert fast["speedup_range"][0] > 1
    assert answer.decided and answer.to_dict()["confidence"] == 0.95
    steps = build_answer(plan(exploration=2), records, speeds, budget={"steps_per_trial": 500})
    assert "at 500 optimizer updates each" in steps.statement


def test_a_speed_up_the_timing_rounds_disagree_on_is_not_claimed():
    records = (
        runs(32, "linear", [0.96])
        + runs(128, "linear", [0.958])
        + runs(32, "linear", [0.960, 0.961, 0.959], phase="confirm")
        + runs(128, "linear", [0.958, 0.9585, 0.9575], phase="confirm")
    )
    speeds = {  # one round has 128 slower: the range of the ratios includes 1
        32: {"samples_per_s": 100.0, "rates": [100.0, 100.0, 100.0]},
        128: {"samples_per_s": 150.0, "rates": [150.0, 90.0, 160.0]},
    }
    answer = build_answer(plan(exploration=2), records, speeds, budget=EPOCHS)
    assert answer.fastest_within["batch_size"] == 32
    assert answer.speed_uncertain_cells == ["batch 128 linear"]
    assert "not measurably faster" in answer.statement
    assert paired_speedup(speeds, 128, 32).claimed is False
    assert paired_speedup(speeds, 128, 32).ratio == pytest.approx(1.5)


def test_a_diverged_run_of_the_most_accurate_cell_is_warned():
    records = runs(32, "linear", [0.96]) + runs(32, "linear", [0.96, 0.961], phase="confirm")
    records += runs(32, "linear", [0.1], phase="confirm", state="PRUNED")
    records[-1].diverged = True
    answer = build_answer(plan(), records, budget=EPOCHS)
    assert answer.most_accurate["diverged"] == 1 and answer.most_accurate["confirm_runs"] == 3
    assert "Warning: batch 32 linear: 1 of 3 runs diverged." in answer.statement


def test_an_undecided_study_names_the_open_comparison_and_the_runs_it_needs():
    records = runs(8, "linear", [0.96]) + runs(32, "linear", [0.955])
    records += runs(8, "linear", [0.960, 0.952, 0.968, 0.960, 0.950, 0.970], phase="confirm")
    records += runs(32, "linear", [0.960, 0.952, 0.968, 0.945, 0.940, 0.950], phase="confirm")
    answer = build_answer(plan(exploration=2), records, budget=EPOCHS)
    assert not answer.decided and answer.fastest_within["batch_size"] == 8
    [open_] = answer.undecided_faster
    assert open_["cell"] == "batch 32 linear" and open_["runs"] == 6
    assert "Undecided (could be within 0.01 or not): batch 32 linear" in answer.statement
    assert "Stopped after 14 of 30 trials, undecided." in answer.statement


def test_minimize_metric_names_the_lowest_mean():
    records = runs(16, "sqrt", [0.10]) + runs(64, "sqrt", [0.30])
    records += runs(16, "sqrt", [0.10, 0.11, 0.12], phase="confirm")
    answer = build_answer(plan(exploration=2, metric=MSE), records)
    assert answer.most_accurate["batch_size"] == 16


def test_test_metric_is_shown_but_never_chooses():
    records = runs(32, "linear", [0.96], test=0.80) + runs(64, "linear", [0.90], test=0.99)
    records += runs(32, "linear", [0.96, 0.96, 0.96], phase="confirm", test=0.80)
    answer = build_answer(plan(exploration=2, tolerance=0.001), records)
    assert answer.most_accurate["batch_size"] == 32
    assert answer.most_accurate["test_mean"] == pytest.approx(0.80)


def _study_with(records: list[TrialRecord], metric: MetricInfo, config: dict) -> optuna.Study:
    study = optuna.create_study(direction=metric.direction)
    study.set_user_attr("metric", metric.to_dict())
    study.set_user_attr("config", config)
    study.set_user_attr("space", {"scaling_rules": ["linear", "sqrt", "none"]})
    for r in records:
        state = optuna.trial.TrialState[r.state]
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=r.val_metric if state == optuna.trial.TrialState.COMPLETE else None,
                params={"batch_size": r.batch_size, "scaling_rule": r.scaling_rule},
                distributions={
                    "batch_size": optuna.distributions.CategoricalDistribution([16, 64, 128]),
                    "scaling_rule": optuna.distributions.CategoricalDistribution(
                        ["linear", "sqrt", "none"]
                    ),
                },
                user_attrs=r.to_user_attrs(metric),
                intermediate_values={1: r.val_metric} if r.state == "PRUNED" else None,
            )
        )
    return study


def test_the_stored_recommendation_keeps_its_contract():
    records = (
        runs(16, "sqrt", [0.10], time=10.0)
        + runs(64, "sqrt", [0.105], time=5.0)
        + runs(128, "sqrt", [0.5], state="PRUNED")
        + runs(16, "sqrt", [0.10, 0.11, 0.12], time=10.0, phase="confirm")
        + runs(64, "sqrt", [0.105, 0.11, 0.115], time=5.0, phase="confirm")
    )
    config = {"trials": 10, "epochs": 3, "confirm_runs": 3, "tolerance": 0.02}
    study = _study_with(records, MSE, config)
    study.set_user_attr("space", {"batch_sizes": [16, 64], "scaling_rules": ["sqrt"]})
    answer = store_recommendation(study)
    assert study.user_attrs["recommendation"] == json.loads(json.dumps(answer))
    assert ANSWER_KEYS <= set(answer)
    for name in ("most_accurate", "fastest_within"):
        assert PICK_KEYS <= set(answer[name]), PICK_KEYS - set(answer[name])
    best, fast = answer["most_accurate"], answer["fastest_within"]
    assert (best["batch_size"], fast["batch_size"]) == (16, 64)
    assert best["val_mean"] == pytest.approx(0.11) and best["confirm_runs"] == 3
    assert fast["speedup"] == pytest.approx(2.0)  # no timing: the trials' median times
    assert answer["tolerance"] == 0.02 and answer["metric"]["direction"] == "minimize"
    assert answer["decided"] is True and answer["trials_used"] == 9
    assert answer["budget"] == {
        "trials": 10,
        "finished": 9,
        "search_trials": 3,
        "confirm_trials": 6,
        "epochs_per_trial": 3,
    }
    assert isinstance(answer["statement"], str) and answer["statement"].endswith(".")
