"""The answer: cells, their intervals, and the stored recommendation (study/recommend.py)."""

from __future__ import annotations

import json
import math
from itertools import count

import optuna
import pytest

from study.recommend import (
    RUNS_TO_DECIDE_CAP,
    UNCERTAINTY_Z,
    CellKey,
    cell_stats,
    lr_bucket,
    mean_ci95,
    recommend,
    recommend_cells,
    selection_bias,
    shortfall,
    store_recommendation,
    t975,
)
from study.record import MetricInfo, TrialRecord

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
}
ANSWER_KEYS = {"most_accurate", "fastest_within", "tolerance", "budget", "statement"}
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


def test_t_quantiles_match_known_values():
    assert t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t975(2) == pytest.approx(4.3027, abs=1e-4)
    assert t975(10) == pytest.approx(2.2281, abs=1e-4)
    assert t975(60) == pytest.approx(2.0003, abs=2e-4)
    assert t975(10_000) == pytest.approx(1.9602, abs=1e-4)
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df


def test_interval_is_the_t_interval_and_absent_for_one_run():
    mean, sd, ci = mean_ci95([0.90, 0.92, 0.94])
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (mean, sd) == (pytest.approx(0.92), pytest.approx(0.02))
    assert ci == (pytest.approx(0.92 - half), pytest.approx(0.92 + half))
    assert mean_ci95([0.9]) == (0.9, 0.0, None)
    assert mean_ci95([0.5, 0.5])[2] == (0.5, 0.5)  # no spread, no width


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


def test_most_accurate_is_the_best_confirmed_mean_not_the_best_single_trial():
    cells = cell_stats(
        runs(16, "linear", [0.99])  # one lucky trial: not confirmed
        + runs(32, "linear", [0.95, 0.96, 0.97], time=8.0)
        + runs(64, "linear", [0.93, 0.94, 0.95], time=4.0)
    )
    answer = recommend_cells(cells, tolerance=0.01, confirm_runs=3)
    assert answer["most_accurate"]["batch_size"] == 32
    assert answer["unconfirmed_better"][0]["cell"] == "batch 16 linear"


def test_minimize_metric_picks_the_lowest_mean():
    cells = cell_stats(
        runs(16, "sqrt", [0.20, 0.21, 0.22], time=10.0)
        + runs(64, "sqrt", [0.10, 0.11, 0.12], time=5.0)
        + runs(128, "sqrt", [0.105, 0.11, 0.115], time=2.0)
        + runs(256, "sqrt", [0.30, 0.30, 0.30], time=1.0)
    )
    answer = recommend_cells(cells, MSE, tolerance=0.02, confirm_runs=3)
    assert answer["most_accurate"]["batch_size"] == 64
    assert answer["fastest_within"]["batch_size"] == 128
    assert answer["fastest_within"]["speedup"] == pytest.approx(2.5)
    # maximising the same numbers picks the other end
    assert recommend_cells(cells, tolerance=0.02)["most_accurate"]["batch_size"] == 256


def test_fastest_within_allows_for_the_uncertainty():
    best = runs(16, "linear", [0.950, 0.951, 0.952], time=12.0)
    tight = runs(512, "linear", [0.944, 0.945, 0.946], time=1.0)  # 0.006 below, sure of it
    loose = runs(512, "linear", [0.90, 0.945, 0.99], time=1.0)  # same mean, could be far
    answer = recommend_cells(cell_stats(best + tight), tolerance=0.01)
    assert answer["fastest_within"]["batch_size"] == 512
    assert answer["fastest_within"]["speedup"] == pytest.approx(12.0)
    assert "within 0.01" in answer["statement"] and "12x faster" in answer["statement"]
    answer = recommend_cells(cell_stats(best + loose), tolerance=0.01)
    assert answer["fastest_within"]["batch_size"] == 16  # not confident enough: the best itself
    assert answer["fastest_within"]["speedup"] == 1.0
    assert "no faster cell" in answer["statement"]
    # the rule in numbers: d + z * se <= tolerance
    assert 0.006 + UNCERTAINTY_Z * math.sqrt(2 * 0.001**2 / 3) <= 0.01
    # only confirmed cells qualify, however fast
    fast_once = runs(1024, "linear", [0.951], time=0.5)
    answer = recommend_cells(cell_stats(best + tight + fast_once), tolerance=0.01)
    assert answer["fastest_within"]["batch_size"] == 512


def test_the_shortfall_se_is_welchs_or_from_a_pooled_sd():
    best = cell_stats(runs(16, "linear", [0.95, 0.96, 0.97]))[0]  # sd 0.01, 3 runs
    cell = cell_stats(runs(64, "linear", [0.94, 0.945, 0.95, 0.955]))[0]  # sd 0.00645, 4 runs
    d, se = shortfall(best, cell, MetricInfo())
    assert d == pytest.approx(0.0125)
    assert se == pytest.approx(math.sqrt(0.01**2 / 3 + cell.val_sd**2 / 4))
    d, se = shortfall(best, cell, MetricInfo(), sigma=0.02)
    assert se == pytest.approx(0.02 * math.sqrt(1 / 3 + 1 / 4))
    # a minimised metric: the cell 0.0125 lower is 0.0125 better, a negative shortfall
    assert shortfall(best, cell, MSE)[0] == pytest.approx(-0.0125)


def test_the_winners_curse_estimate_is_the_expected_best_of_tied_noise(monkeypatch):
    import study.recommend as recommend

    tied = cell_stats(
        runs(16, "linear", [0.90, 0.92, 0.94]) + runs(32, "linear", [0.90, 0.92, 0.94])
    )  # equal means, pooled sd 0.02, 3 runs each
    assert selection_bias(tied, MetricInfo()) == 0.0  # off by default (docs/answer.md)
    monkeypatch.setattr(recommend, "SELECTION_CORRECTION", "bootstrap")
    se = 0.02 / math.sqrt(3)
    # the best of two equal normal means is expected se / sqrt(pi) above the truth
    assert selection_bias(tied, MetricInfo()) == pytest.approx(se / math.sqrt(math.pi), rel=0.1)
    assert selection_bias(tied, MetricInfo()) == selection_bias(tied, MetricInfo())  # seeded
    clear = cell_stats(
        runs(16, "linear", [0.90, 0.92, 0.94]) + runs(32, "linear", [0.50, 0.52, 0.54])
    )
    assert selection_bias(clear, MetricInfo()) < 0.1 * se  # one clear winner: no curse
    assert selection_bias(tied[:1], MetricInfo()) == 0.0
    best, cell = tied
    assert shortfall(best, cell, MetricInfo(), bias=0.004)[0] == pytest.approx(-0.004)


def test_faster_cells_the_runs_cannot_decide_are_named_with_their_shortfall():
    best = runs(16, "linear", [0.95, 0.96, 0.97], time=12.0)
    undecided = runs(512, "linear", [0.93, 0.945, 0.96], time=1.0)  # 0.015 +- 0.0104 behind
    ruled_out = runs(1024, "linear", [0.90, 0.905, 0.91], time=0.5)  # 0.06 +- 0.006: out
    answer = recommend_cells(cell_stats(best + undecided + ruled_out), tolerance=0.01)
    assert answer["fastest_within"]["batch_size"] == 16
    [entry] = answer["undecided_faster"]
    assert entry["cell"] == "batch 512 linear" and entry["runs"] == 3
    assert entry["shortfall"] == pytest.approx(0.015)
    assert entry["se"] == pytest.approx(math.sqrt((0.01**2 + 0.015**2) / 3))
    # 1·se <= |0.01 - 0.015| needs (0.01² + 0.015²) / 0.005² = 13 runs each
    assert entry["runs_to_decide"] == 13
    assert "not yet decided" in answer["statement"] and "batch 512 linear" in answer["statement"]
    assert "3 runs; decided at ~13 runs each)" in answer["statement"]
    assert "1024" not in answer["statement"]
    # the fast cell's own batch size with another rule is not faster, whatever its timing
    same_batch = runs(16, "sqrt", [0.93, 0.945, 0.96], time=11.9)
    answer = recommend_cells(cell_stats(best + same_batch), tolerance=0.01)
    assert "undecided_faster" not in answer
    # the statement names the fastest three; the attribute keeps them all
    more = [runs(b, "linear", [0.93, 0.945, 0.96], time=t) for b, t in ((32, 5), (64, 3), (128, 2))]
    answer = recommend_cells(cell_stats(best + undecided + sum(more, [])), tolerance=0.01)
    assert len(answer["undecided_faster"]) == 4 and answer["statement"].endswith(
        "1 more; more --trials would settle it."
    )
    assert answer["undecided_faster"][0]["cell"] == "batch 512 linear"  # the fastest first
    # a shortfall at the tolerance itself: no affordable number of runs decides it
    edge = runs(512, "linear", [0.94, 0.9505, 0.96], time=1.0)  # 0.0095 behind
    [entry] = recommend_cells(cell_stats(best + edge), tolerance=0.01)["undecided_faster"]
    assert entry["runs_to_decide"] == RUNS_TO_DECIDE_CAP
    statement = recommend_cells(cell_stats(best + edge), tolerance=0.01)["statement"]
    assert "over 100 runs each to decide: it sits at the tolerance" in statement
    assert statement.endswith("no affordable number of --trials would settle it.")
    # a faster cell that qualifies leaves nothing open
    sure = runs(512, "linear", [0.955, 0.956, 0.957], time=1.0)
    answer = recommend_cells(cell_stats(best + sure), tolerance=0.01)
    assert "undecided_faster" not in answer and "not yet decided" not in answer["statement"]


def test_test_metric_is_shown_but_never_chooses():
    cells = cell_stats(
        runs(32, "linear", [0.96, 0.96, 0.96], test=0.80)
        + runs(64, "linear", [0.94, 0.94, 0.94], test=0.99)
    )
    answer = recommend_cells(cells, tolerance=0.001)
    assert answer["most_accurate"]["batch_size"] == 32
    assert answer["most_accurate"]["test_mean"] == pytest.approx(0.80)


def test_a_study_too_small_to_confirm_names_no_winner():
    cells = cell_stats(runs(16, "linear", [0.97, 0.98]) + runs(32, "none", [0.99]))
    answer = recommend_cells(cells, confirm_runs=3)
    assert answer["most_accurate"] is None and answer["fastest_within"] is None
    assert answer["reason"] == "too few runs to confirm"
    assert "Too small to name a winner" in answer["statement"]
    assert "3 complete runs" in answer["statement"] and "unconfirmed" in answer["statement"]
    empty = recommend_cells([], confirm_runs=3)
    assert empty["most_accurate"] is None and empty["reason"] == "no complete trials"


def test_speeds_from_a_timing_measurement_replace_the_trials_timings():
    cells = cell_stats(
        runs(32, "linear", [0.95, 0.95, 0.95], time=10.0)
        + runs(64, "linear", [0.95, 0.95, 0.95], time=9.0)  # one noisy timing: "faster"
        + runs(128, "linear", [0.95, 0.95, 0.95], time=10.0)
    )
    assert recommend_cells(cells)["fastest_within"]["batch_size"] == 64
    speeds = {
        (32, 32): {"samples_per_s": 100.0, "spread": 0.05},
        (64, 64): {"samples_per_s": 150.0, "spread": 0.05},
        (128, 64): {"seconds_per_sample": 1 / 400, "spread": 0.05},
    }
    answer = recommend_cells(cells, speeds=speeds)
    fast = answer["fastest_within"]
    assert fast["batch_size"] == 128 and fast["speed_source"] == "timing"
    assert fast["samples_per_s"] == pytest.approx(400.0)
    assert fast["train_time_s_median"] == pytest.approx(1000.0 / 400)  # samples / rate
    assert fast["speedup"] == pytest.approx(4.0) and fast["speed_uncertain"] is False
    wide = {k: {**v, "spread": 5.0} for k, v in speeds.items()}
    noisy = recommend_cells(cells, speeds=wide)  # a speed-up inside the spread: flagged, not used
    assert noisy["fastest_within"]["batch_size"] == noisy["most_accurate"]["batch_size"]
    assert noisy["fastest_within"]["speed_uncertain"] is True
    assert set(noisy["speed_uncertain_cells"]) == {"batch 64 linear", "batch 128 linear"}
    assert noisy["fastest_within"]["speedup"] == 1.0  # the most accurate cell, over itself
    assert "not measurably faster" in noisy["statement"]


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
        runs(16, "sqrt", [0.20, 0.21, 0.22], time=10.0)
        + runs(64, "sqrt", [0.10, 0.11, 0.12], time=5.0, phase="confirm")
        + runs(128, "sqrt", [0.105, 0.11, 0.115], time=2.0)
        + runs(128, "sqrt", [0.5], state="PRUNED")
    )
    config = {"trials": 10, "epochs": 3, "confirm_runs": 3, "tolerance": 0.02}
    study = _study_with(records, MSE, config)
    answer = store_recommendation(study)
    assert study.user_attrs["recommendation"] == json.loads(json.dumps(answer))
    assert ANSWER_KEYS <= set(answer)
    for name in ("most_accurate", "fastest_within"):
        assert PICK_KEYS <= set(answer[name]), PICK_KEYS - set(answer[name])
    best, fast = answer["most_accurate"], answer["fastest_within"]
    assert (best["batch_size"], fast["batch_size"]) == (64, 128)
    assert best["val_mean"] == pytest.approx(0.11) and best["runs"] == 3
    lo, hi = best["val_ci95"]
    assert lo < 0.11 < hi and best["speedup"] == 1.0 and fast["speedup"] == pytest.approx(2.5)
    assert answer["tolerance"] == 0.02 and answer["metric"]["direction"] == "minimize"
    assert answer["budget"] == {
        "trials": 10,
        "finished": 10,
        "search_trials": 7,
        "confirm_trials": 3,
        "epochs_per_trial": 3,
    }
    assert isinstance(answer["statement"], str) and answer["statement"].endswith(".")
    # the study's settings are the defaults; arguments override them
    assert recommend(study, confirm_runs=4)["most_accurate"] is None


def test_the_report_names_the_faster_cells_left_out_for_an_uncertain_speed_up():
    from study.report.answer import trade_off_words
    from study.report.data import MetricText

    cells = cell_stats(
        runs(32, "linear", [0.95, 0.95, 0.95], time=10.0)
        + runs(128, "linear", [0.95, 0.95, 0.95], time=10.0)
    )
    wide = {(32, 32): {"samples_per_s": 100.0, "spread": 5.0}}
    wide[(128, 64)] = {"samples_per_s": 150.0, "spread": 5.0}
    answer = recommend_cells(cells, speeds=wide)
    words = trade_off_words(answer, MetricText(MetricInfo()))
    assert "batch 128 linear" in words and "inside the timing's spread" in words
