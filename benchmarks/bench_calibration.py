"""Is the answer's stated confidence true? Simulated cells with known truths, the production path.

Each simulated study has cells with chosen true means and SDs: a search run per cell (the
exploration), then the decision of :func:`study.decision.decide` asks for confirmation runs
one by one (each drawn from its cell's normal distribution) until it is done, and
:func:`study.recommend.build_answer` writes the answer. Nothing is patched: the plan is the
production :class:`study.decision.Plan` with the default confidence, tolerance and
``confirm_runs``. It prints, over ``--studies`` seeded studies a scenario:

* **boundary**: faster cells whose true shortfall from the best is exactly the tolerance (1
  and 7 of them); the false-"within" rate is the share of studies whose ``fastest_within`` is
  a boundary cell, truly the tolerance behind the best (goal: at most ``1 - confidence +
  0.02``). Beside it: the share whose ``fastest_within`` is truly the tolerance behind the cell
  they name ``most_accurate`` (the comparison the test itself makes), and how often the true
  best is named most accurate;
* **ties**: four cells with the same true mean; the most accurate cell's reported interval
  covers the true mean (goal: at least 0.93), and the winner's bias (reported mean minus
  true mean, in SDs) is printed beside the bias of the same cell's mean over all its runs
  (search runs included), which is what sample splitting removes;
* **power**: a faster cell truly 0 and half a tolerance behind: how often it is named, and
  the confirmation runs spent.

    python benchmarks/bench_calibration.py [--studies 2000] [--sd 0.006]
"""

from __future__ import annotations

import argparse
import random
import statistics
from itertools import count

from study.decision import Plan, decide
from study.recommend import build_answer
from study.record import TrialRecord


def _record(number: int, batch: int, value: float, phase: str) -> TrialRecord:
    return TrialRecord(
        number=number,
        batch_size=batch,
        scaling_rule="linear",
        val_metric=value,
        state="COMPLETE",
        phase=phase,
        train_time_s=1.0,
    )


def simulate(means: dict[int, float], sd: float, plan: Plan, seed: int):
    """One study: a search run of every cell, then the confirmation runs the decision asks
    for. Returns the answer and the records."""
    rng = random.Random(seed)
    numbers = count()
    records = [
        _record(next(numbers), b, rng.gauss(m, sd), "search") for b, m in sorted(means.items())
    ]
    while True:
        decision = decide(plan, records)
        if decision.stage == "done" or decision.next_cell is None:
            break
        b = decision.next_cell.batch_size
        records.append(_record(next(numbers), b, rng.gauss(means[b], sd), "confirm"))
    return build_answer(plan, records, budget={"epochs_per_trial": 20}), records


def boundary(cells: int, args, plan: Plan) -> tuple[float, float, float]:
    """With faster cells truly at the tolerance behind the best (batch 8): the share of
    studies whose named fast cell is truly the tolerance behind the cell they name most
    accurate (the claim the statement makes), the share whose named fast cell is a boundary
    cell at all (against the true best), and the share that name the true best."""
    means = {8: 0.95, **{8 * 2 ** (i + 1): 0.95 - plan.tolerance for i in range(cells)}}
    claim = against_best = right = 0
    for seed in range(args.studies):
        answer, _ = simulate(means, args.sd, plan, seed)
        best, fast = answer.most_accurate, answer.fastest_within
        if not best or not fast or fast["batch_size"] == best["batch_size"]:
            right += bool(best and best["batch_size"] == 8)
            continue
        right += best["batch_size"] == 8
        gap = means[best["batch_size"]] - means[fast["batch_size"]]
        claim += gap >= plan.tolerance - 1e-12
        against_best += fast["batch_size"] != 8
    n = args.studies
    return claim / n, against_best / n, right / n


def ties(args, plan: Plan) -> tuple[float, float, float]:
    """Coverage of the most accurate cell's interval, its bias in SDs, and the bias of the
    same cell's mean over all its runs, with four tied cells."""
    true = 0.95
    means = {8: true, 16: true, 32: true, 64: true}
    covered, bias, naive = 0, [], []
    for seed in range(args.studies):
        answer, records = simulate(means, args.sd, plan, seed)
        best = answer.most_accurate
        if best is None or best["val_ci95"] is None:
            continue
        lo, hi = best["val_ci95"]
        covered += lo <= true <= hi
        bias.append((best["val_mean"] - true) / args.sd)
        every = [r.val_metric for r in records if r.batch_size == best["batch_size"]]
        naive.append((statistics.fmean(every) - true) / args.sd)
    return covered / len(bias), statistics.fmean(bias), statistics.fmean(naive)


def power(shortfall: float, args, plan: Plan) -> tuple[float, float]:
    """Share of studies naming a faster cell ``shortfall`` behind, and confirmation runs."""
    means = {8: 0.95, 16: 0.95 - shortfall}
    named, runs = 0, []
    for seed in range(args.studies):
        answer, records = simulate(means, args.sd, plan, seed)
        named += bool(answer.fastest_within and answer.fastest_within["batch_size"] == 16)
        runs.append(sum(r.phase == "confirm" for r in records))
    return named / args.studies, statistics.fmean(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=2000, help="simulated studies a scenario")
    p.add_argument("--sd", type=float, default=0.006, help="single-run SD of every cell")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--confirm-runs", type=int, default=3)
    p.add_argument(
        "--contenders",
        type=int,
        default=Plan.contenders,
        help="cells after the leader confirmed as references (the plan's field; default as a "
        "study runs)",
    )
    p.add_argument(
        "--looks",
        type=int,
        default=Plan.looks,
        help="the most looks a comparison gets (the plan's field; default as a study runs)",
    )
    args = p.parse_args()
    if args.studies < 1:
        p.error("--studies must be at least 1")
    plan = Plan(
        total=10_000,
        confirm_runs=args.confirm_runs,
        tolerance=args.tolerance,
        confidence=args.confidence,
        exploration=1,
        contenders=args.contenders,
        looks=args.looks,
    )
    goal = 1 - args.confidence + 0.02
    se = (goal * (1 - goal) / args.studies) ** 0.5
    print(
        f"{args.studies} simulated studies a scenario; single-run SD {args.sd}, tolerance "
        f"{args.tolerance}, confidence {args.confidence}, --confirm-runs {args.confirm_runs}; "
        f"{plan.contenders} contender(s); each look tests at {plan.look_level:.4f} ({plan.looks} "
        "looks at most)"
    )
    for cells in (1, 7):
        claim, against_best, right = boundary(cells, args, plan)
        print(
            f"boundary, {cells} faster cell(s) truly the tolerance behind the best: a boundary "
            f"cell named within in {against_best:.3f} of studies (goal <= {goal:.2f}; binomial "
            f"se ~{se:.3f}); named within of a named most accurate cell it is truly the "
            f"tolerance behind {claim:.3f}; the true best named most accurate {right:.3f}"
        )
    coverage, bias, naive = ties(args, plan)
    print(
        f"ties, four cells of one true mean: the most accurate cell's {args.confidence:.0%} "
        f"interval covers it in {coverage:.3f} of studies (goal >= 0.93); winner's bias "
        f"{bias:+.3f} SD from its confirmation runs (the answer), {naive:+.3f} SD over all its "
        "runs (search included)"
    )
    for shortfall in (0.0, args.tolerance / 2):
        rate, runs = power(shortfall, args, plan)
        print(
            f"power, a faster cell truly {shortfall:g} behind: named in {rate:.3f} of studies, "
            f"{runs:.1f} confirmation runs on average"
        )


if __name__ == "__main__":
    main()
