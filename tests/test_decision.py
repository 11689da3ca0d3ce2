"""The decision (study/decision.py): select on search runs, estimate on confirmation runs, a
fixed sequence of non-inferiority tests at the stated confidence, sequential looks, early stops."""

from __future__ import annotations

import random
from itertools import count

import numpy as np
import pytest

from study.cells import CellKey
from study.decision import (
    Plan,
    candidates,
    decide,
    exploration_trials,
    leader_of,
    references,
    samples,
    shrunken_means,
)
from study.record import ACCURACY, MetricInfo, TrialRecord
from study.stats import Welch, mean_interval, pocock_level, t_quantile, welch

_numbers = count()


def rec(batch, value, phase="search", state="COMPLETE", rule="linear", **kw) -> TrialRecord:
    return TrialRecord(
        number=next(_numbers),
        batch_size=batch,
        scaling_rule=rule,
        val_metric=value,
        state=state,
        phase=phase,
        train_time_s=1.0,
        **kw,
    )


def confirm(batch, values, rule="linear"):
    return [rec(batch, v, "confirm", rule=rule) for v in values]


def plan(**kw) -> Plan:
    base = dict(total=50, confirm_runs=3, tolerance=0.01, exploration=4, contenders=0)
    base.update(kw)
    return Plan(**base)


def test_quantiles_and_intervals_match_scipy_and_textbook_values():
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.95, 4) == pytest.approx(2.131847, abs=1e-6)
    assert t_quantile(0.95, 4.5) < t_quantile(0.95, 4)  # fractional Welch df
    mean, sd, ci = mean_interval([0.90, 0.92, 0.94], 0.95)
    assert ci == pytest.approx((0.8703, 0.9697), abs=1e-4)
    assert mean_interval([0.9], 0.95) == (0.9, 0.0, None)
    w = welch([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert (w.d, w.df) == (pytest.approx(1.0), pytest.approx(2.0))  # one sample without spread
    assert w.upper(0.95) == pytest.approx(1 + t_quantile(0.95, 2) * w.se)
    assert Welch(0.0, 0.0, float("inf")).upper(0.95) == 0.0


def test_the_look_level_is_pocock_s():
    """Pocock's published constants (one-sided): 1.875, 1.992, 2.067, 2.122 at 0.05 and 2.178,
    2.413 at 0.025 for 2, 3, 4, 5 and 2, 5 looks."""
    assert pocock_level(0.05, 1) == 0.05
    for alpha, looks, c in [
        (0.05, 2, 1.875),
        (0.05, 3, 1.992),
        (0.05, 4, 2.067),
        (0.05, 5, 2.122),
        (0.025, 2, 2.178),
        (0.025, 5, 2.413),
    ]:
        assert t_quantile(1 - pocock_level(alpha, looks), 1e9) == pytest.approx(c, abs=4e-3)
    with pytest.raises(ValueError):
        pocock_level(0.05, 0)


def test_passing_at_any_of_the_looks_errs_at_alpha():
    """The boundary checked by simulation: standardised partial sums of normal increments
    cross Pocock's constant at some look in about alpha of the paths."""
    rng = np.random.default_rng(0)
    for looks in (2, 4):
        c = t_quantile(1 - pocock_level(0.05, looks), 1e9)
        sums = np.cumsum(rng.standard_normal((200_000, looks)), axis=1)
        z = sums / np.sqrt(np.arange(1, looks + 1))
        assert (z > c).any(axis=1).mean() == pytest.approx(0.05, abs=0.0025)


@pytest.mark.parametrize(
    ("sampler", "total", "expected"), [("tpe", 50, 18), ("grid", 50, 24), ("tpe", 10, 10)]
)
def test_the_exploration_is_three_quarters_of_the_cells_or_every_cell_under_the_grid_sampler(
    sampler, total, expected
):
    import optuna

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("config", {"confirm_runs": 3, "sampler": sampler})
    study.set_user_attr(
        "space",
        {"batch_sizes": [8 * 2**i for i in range(8)], "scaling_rules": ["linear", "sqrt", "none"]},
    )
    stored = Plan.of_study(study, total)
    assert stored is not None and stored.exploration == expected
    assert exploration_trials(total, 24, every_cell=sampler == "grid") == expected
    assert exploration_trials(50, 1) == 1 and exploration_trials(50, 2) == 2


def test_the_sequence_starts_where_the_shrunken_search_means_put_a_candidate_within():
    # 512's one search run is 0.0095 behind the leader's mean (within 0.01), but pulled towards
    # the mean of all cells as far as one run's noise warrants, it is 0.0102 behind: the
    # sequence starts at 64 (0.004 behind) and reaches 512 only if 64 passes
    runs = {
        8: [0.97, 0.99, 0.98, 0.98, 0.975, 0.985],
        16: [0.968, 0.988, 0.978],
        64: [0.976],
        512: [0.9705],
        1024: [0.93],
        2048: [0.92],
    }
    p = plan(exploration=1)
    search = samples([rec(b, v) for b, values in runs.items() for v in values], p, "search")
    listed = candidates(search, references(search, p), p)
    assert [(k.batch_size, round(d, 4)) for k, d in listed] == [(64, 0.004), (512, 0.0095)]
    shrunk = shrunken_means(search)
    assert shrunk[CellKey(8, "linear")] - shrunk[CellKey(512, "linear")] > p.tolerance


def test_exploration_comes_first_and_the_leader_is_chosen_on_search_runs_only():
    p = plan(exploration=4)
    records = [rec(8, 0.96), rec(16, 0.95), rec(32, 0.94)]
    assert decide(p, records).stage == "explore"
    records.append(rec(64, 0.90))
    d = decide(p, records)
    assert d.stage == "confirm" and d.leader == CellKey(8, "linear") and d.next_cell == d.leader
    # confirmation runs never move the leader: it was chosen before they were made
    records += confirm(8, [0.90, 0.90, 0.90]) + confirm(16, [0.99, 0.99, 0.99])
    assert decide(p, records).leader == CellKey(8, "linear")


def test_candidates_go_up_the_batch_sizes_from_the_search_s_pick():
    p = plan()
    search = samples(
        [
            rec(8, 0.96),
            rec(8, 0.962),
            rec(16, 0.958),
            rec(16, 0.956, rule="sqrt"),
            rec(32, 0.955),
            rec(64, 0.945),
            rec(128, 0.90),
            rec(128, 0.91),
        ],
        p,
        "search",
    )
    listed = candidates(search, [CellKey(8, "linear")], p)
    # 32 is the largest within 0.01 on the search runs: the sequence starts there, goes up;
    # 128 is ruled out by the search runs already; 16's best rule is linear
    assert [k.batch_size for k, _ in listed] == [32, 64]
    assert listed[0][1] == pytest.approx(0.006)


def test_a_faster_cell_that_passes_is_named_and_the_sequence_goes_on():
    p = plan(exploration=2)
    records = [rec(8, 0.96), rec(32, 0.955)]
    assert decide(p, records).next_cell == CellKey(8, "linear")
    records += confirm(8, [0.960, 0.961, 0.959])
    d = decide(p, records)
    assert d.next_cell == CellKey(32, "linear") and d.comparisons[0].status == "open"
    records += confirm(32, [0.958, 0.9585, 0.9575])
    d = decide(p, records)
    assert d.stage == "done" and d.decided and d.passed == [CellKey(32, "linear")]
    assert d.comparisons[0].looks == 1


def test_a_ruled_out_cell_ends_the_sequence_decided():
    p = plan(exploration=3)
    records = [rec(8, 0.96), rec(32, 0.955), rec(64, 0.93)]  # the sequence starts at 32
    records += confirm(8, [0.960, 0.961, 0.959]) + confirm(32, [0.92, 0.921, 0.919])
    d = decide(p, records)
    assert d.stage == "done" and d.decided and d.passed == []
    assert [c.status for c in d.comparisons] == ["out"]  # 64 is never tested


def test_an_undecided_cell_gets_a_second_look_then_stops_the_study_undecided():
    p = plan(exploration=2)
    records = [rec(8, 0.96), rec(32, 0.955)]
    records += confirm(8, [0.960, 0.952, 0.968]) + confirm(32, [0.960, 0.952, 0.968])
    d = decide(p, records)
    assert d.stage == "confirm" and d.comparisons[0].looks == 1  # second look: 6 runs each
    records += confirm(8, [0.960, 0.950, 0.970]) + confirm(32, [0.945, 0.955, 0.950])
    d = decide(p, records)
    assert d.stage == "done" and not d.decided and d.open[0].key == CellKey(32, "linear")
    assert d.open[0].runs_to_decide is not None and d.open[0].runs_to_decide > 6


def test_a_comparison_its_last_look_cannot_decide_stops_after_its_first():
    # 0.005 behind with a single-run SD of 0.01: about 28 runs each would decide it, far more
    # than the second look's 6, so the study stops undecided now instead of paying 6 more runs
    p = plan(exploration=2)
    records = [rec(8, 0.96), rec(32, 0.955)]
    records += confirm(8, [0.960, 0.950, 0.970]) + confirm(32, [0.955, 0.945, 0.965])
    d = decide(p, records)
    assert d.stage == "done" and not d.decided and d.open[0].looks == 1
    assert d.open[0].runs_to_decide > 2 * p.confirm_runs
    assert "more runs than its last look" in d.reason


def test_a_candidate_must_be_within_the_tolerance_of_each_reference():
    # the leader (8) by one lucky search run; the contender (16) is truly the best. 64 is
    # within 0.01 of the leader's confirmation runs but 0.02 behind the contender's: not named
    p = plan(exploration=3, contenders=1)
    records = [rec(8, 0.97), rec(16, 0.965), rec(64, 0.96)]
    assert references(samples(records, p, "search"), p) == [
        CellKey(8, "linear"),
        CellKey(16, "linear"),
    ]
    records += confirm(8, [0.951, 0.950, 0.952]) + confirm(16, [0.965, 0.966, 0.964])
    records += confirm(64, [0.946, 0.945, 0.947])
    d = decide(p, records)
    assert CellKey(64, "linear") not in d.passed and d.comparisons[-1].status != "pass"
    # the same runs with a contender as good as the leader: 64 passes
    records = [rec(8, 0.97), rec(16, 0.965), rec(64, 0.96)]
    records += confirm(8, [0.951, 0.950, 0.952]) + confirm(16, [0.951, 0.952, 0.950])
    records += confirm(64, [0.946, 0.945, 0.947])
    assert CellKey(64, "linear") in decide(p, records).passed


def test_the_default_plan_holds_a_candidate_against_a_second_contender_too():
    # 32, third by its search run, is truly the best; with the leader and one contender only,
    # 64 (within 0.01 of both) would be named though 0.02 behind 32. The default plan confirms
    # two contenders, finds 32 the most accurate and does not name 64
    records = [rec(8, 0.97), rec(16, 0.966), rec(32, 0.965), rec(64, 0.962)]
    records += confirm(8, [0.951, 0.950, 0.952]) + confirm(16, [0.950, 0.951, 0.952])
    records += confirm(32, [0.966, 0.965, 0.967, 0.966, 0.965, 0.967])
    records += confirm(64, [0.946, 0.945, 0.947])
    default = Plan(total=50, exploration=4)
    assert default.reference_count == 3
    d = decide(default, records)
    assert d.most_accurate == CellKey(32, "linear")
    assert CellKey(64, "linear") not in d.passed
    without_32 = [r for r in records if not (r.batch_size == 32 and r.phase == "confirm")]
    without_32 += confirm(8, [0.951, 0.950, 0.952])  # the most accurate's estimate runs
    one = decide(Plan(total=50, exploration=4, contenders=1), without_32)
    assert CellKey(64, "linear") in one.passed


def test_the_references_shrink_to_what_the_budget_can_pay():
    records = [rec(8, 0.97), rec(16, 0.965), rec(32, 0.96), rec(64, 0.955)]
    search = samples(records, plan(), "search")
    assert len(references(search, plan(total=50, exploration=4, contenders=2))) == 3
    # 10 trials after the exploration pay a first look of 3 cells at 3 runs: one contender
    assert len(references(search, plan(total=14, exploration=4, contenders=2))) == 2
    assert len(references(search, plan(total=8, exploration=4, contenders=2))) == 1


def test_one_lucky_search_run_does_not_outrank_a_cell_good_several_times():
    # 16 was 0.962 three times; 8 once 0.965. With the cells' spread no larger than the
    # noise, 8's single run is pulled to the mean of all cells and 16 leads
    records = [rec(8, 0.965), rec(16, 0.962), rec(16, 0.963), rec(16, 0.961)]
    records += [rec(32, 0.965), rec(32, 0.935), rec(64, 0.960), rec(64, 0.930)]
    search = samples(records, plan(), "search")
    assert leader_of(search, ACCURACY) == CellKey(16, "linear")


def test_a_look_the_budget_cannot_pay_stops_the_study_undecided_at_once():
    p = plan(total=8, exploration=2)
    records = [rec(8, 0.96), rec(32, 0.955)] + confirm(8, [0.96, 0.961, 0.959])
    records += [rec(32, 0.95, "confirm")]  # 6 finished; 32 needs 2 more, the budget has 2
    assert decide(p, records).next_cell == CellKey(32, "linear")
    p = plan(total=7, exploration=2)  # 1 left: not enough for the look
    d = decide(p, records)
    assert d.stage == "done" and not d.decided
    assert d.comparisons[0].status == "undecided"


def test_runs_in_flight_count_and_nothing_is_asked_twice():
    p = plan(exploration=2)
    records = [rec(8, 0.96), rec(32, 0.955)]
    records += [rec(8, None, "confirm", "RUNNING")] * 3
    d = decide(p, records)
    assert d.stage == "confirm" and d.next_cell is None  # wait for them


def test_a_diverged_confirmation_run_counts_and_fails_its_cell():
    p = plan(exploration=2)
    records = [rec(8, 0.96), rec(32, 0.955)] + confirm(8, [0.96, 0.961, 0.959])
    records += confirm(32, [0.958, 0.959]) + [rec(32, 0.1, "confirm", "PRUNED", diverged=True)]
    d = decide(p, records)
    assert d.stage == "done" and d.passed == []
    assert d.comparisons[0].status == "diverged" and d.comparisons[0].runs == 3
    # it is one of the cell's runs: never re-run to three successes
    assert samples(records, p, "confirm")[CellKey(32, "linear")].runs == 3


def test_minimised_metrics_compare_in_their_direction():
    p = plan(exploration=2, metric=MetricInfo("mse", "minimize"))
    records = [rec(8, 0.40), rec(32, 0.405)]
    records += confirm(8, [0.400, 0.401, 0.399]) + confirm(32, [0.404, 0.405, 0.4045])
    d = decide(p, records)
    assert d.passed == [CellKey(32, "linear")]


def simulate(true_d: float, sd: float, boundary_cells: int, seed: int, conf: float) -> bool:
    """One simulated study's confirmation stage: returns whether a boundary cell was named."""
    rng = random.Random(seed)
    p = plan(exploration=1 + boundary_cells, confidence=conf, total=10_000)
    batches = [8 * 2**i for i in range(boundary_cells + 1)]
    records = [rec(batches[0], 0.95)] + [rec(b, 0.95) for b in batches[1:]]  # all look equal
    means = {batches[0]: 0.95, **{b: 0.95 - true_d for b in batches[1:]}}
    while True:
        d = decide(p, records)
        if d.stage == "done":
            return bool(d.passed)
        key = d.next_cell
        records.append(rec(key.batch_size, rng.gauss(means[key.batch_size], sd), "confirm"))


@pytest.mark.parametrize("cells", [1, 3])
def test_a_cell_truly_at_the_tolerance_is_named_at_most_at_the_stated_rate(cells):
    # 400 seeded studies: the rate's binomial SE is ~0.011 at 0.05, so 0.08 fails a
    # miscalibrated rule (a d + 1 se rule names such cells in 16-19% of studies)
    named = sum(simulate(0.01, 0.006, cells, seed, 0.95) for seed in range(400))
    assert named / 400 <= 0.08


def test_a_cell_clearly_within_is_usually_named():
    named = sum(simulate(0.0, 0.004, 1, seed, 0.95) for seed in range(100))
    assert named >= 80


def test_the_most_accurate_reference_is_chosen_on_its_first_runs_and_estimated_on_later_ones():
    # 8 leads by one lucky search run; its contender 16 is better on the first three
    # confirmation runs each, so 16 is the most accurate, and gets three more runs, made after
    # it was chosen, for its estimate before the study stops
    p = plan(exploration=2, contenders=1)
    records = [rec(8, 0.97), rec(16, 0.965)]
    records += confirm(8, [0.950, 0.951, 0.949]) + confirm(16, [0.965, 0.966, 0.964])
    d = decide(p, records)
    assert d.most_accurate == CellKey(16, "linear") and d.selection_runs == 3
    assert d.stage == "confirm" and d.next_cell == CellKey(16, "linear")
    records += confirm(16, [0.963, 0.962, 0.964])
    d = decide(p, records)
    assert d.stage == "done" and d.most_accurate == CellKey(16, "linear")
    # with one reference the leader is the most accurate, chosen on the search runs alone
    d = decide(plan(exploration=2, contenders=0), records)
    assert d.most_accurate == CellKey(8, "linear") and d.selection_runs == 0


def test_candidates_start_above_the_most_accurate_cell():
    # the leader 64 beats its contender 16 on their first confirmation runs: the sequence
    # starts above 64 (128), so neither reference is compared as a "faster" cell
    p = plan(exploration=3, contenders=1)
    records = [rec(64, 0.97), rec(16, 0.965), rec(128, 0.962)]
    records += confirm(64, [0.966, 0.967, 0.965]) + confirm(16, [0.960, 0.961, 0.959])
    d = decide(p, records)
    assert d.most_accurate == CellKey(64, "linear")
    assert [c.key for c in d.comparisons] == [CellKey(128, "linear")]
    # the contender 16 more accurate instead: the leader 64 is a faster candidate of it (the
    # sequence starts at 64, the largest batch one search run puts within the tolerance)
    records = [rec(64, 0.97), rec(16, 0.965), rec(128, 0.955)]
    records += confirm(64, [0.960, 0.961, 0.959]) + confirm(16, [0.966, 0.967, 0.965])
    d = decide(p, records)
    assert d.most_accurate == CellKey(16, "linear")
    assert d.comparisons[0].key == CellKey(64, "linear")
