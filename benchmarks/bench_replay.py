"""The decision rule replayed on a saved grid's runs, judged on the grid's held-out seeds.

``bench_answer`` trains real studies (minutes each on a CPU); this replays the same decision
path in seconds, so that hundreds of studies give its rates with a small spread. Each replayed
study splits the grid's seeds at random into halves: a **replay** half, from which every run the
study makes draws its value (one of that cell's values, smoothed by a normal of the half's
spread over the square root of its size, so that a cell asked for more runs than the half has
does not repeat values exactly), and a **truth** half, whose cell means judge it. The search
phase is the study's own sampler (Optuna's TPE with the study's seed, ten random start-up
trials) over the same space; the decision is :func:`study.decision.decide` and the answer
:func:`study.recommend.build_answer`, unpatched, at the production plan. Left out: the pruner
(every search run completes) and timing (a cell's speed is its grid median time).

It prints, over ``--studies`` replayed studies: the most accurate cell's regret against the
truth half's best; whether the named fastest cell is truly within the tolerance of that best
(goal: at least the confidence minus 0.03); the speed-up captured (the truth's best cell's
time over the named cell's, 1 when it is truly outside); the trials used as a share of a 5-seed
grid's; and how many studies stopped decided.

    python benchmarks/bench_replay.py --grid g.json [--studies 400]
    python benchmarks/bench_replay.py --grid g.json --exploration 0.5   # or --contenders 1,
    python benchmarks/bench_replay.py --grid g.json --each-cell         # --looks 3

``g.json`` is what ``bench_answer.py --save-grid`` writes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import optuna
from bench_answer import Cell, grid_answer

from study.decision import EXPLORATION_SHARE, Plan, decide, exploration_trials
from study.recommend import build_answer
from study.record import CONFIRM, MetricInfo, TrialRecord

SEARCH = "search"


def _draw(values: list[float], rng: random.Random) -> float:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return rng.choice(values) + rng.gauss(0.0, spread / len(values) ** 0.5)


def replay(
    grid: dict, plan: Plan, seed: int, each_cell: bool = False
) -> tuple[dict, dict, int, bool, tuple]:
    """One replayed study: its answer, the truth half's cell means, trials used, decided, and
    the cell a 5-seed grid of the replay half names under the study's rule. ``each_cell``: the
    search runs every cell once in a random order instead of asking TPE."""
    rng = random.Random(seed)
    seeds = grid["seeds"]
    order = list(range(seeds))
    rng.shuffle(order)
    replay_idx, truth_idx = order[: seeds // 2], order[seeds // 2 :]
    cells = {(c["batch_size"], c["rule"]): c for c in grid["cells"]}
    pools = {k: [c["values"][i] for i in replay_idx] for k, c in cells.items()}
    truth = {k: statistics.fmean(c["values"][i] for i in truth_idx) for k, c in cells.items()}
    batches = sorted({b for b, _ in cells})
    rules = sorted({r for _, r in cells})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=plan.metric.direction,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=10),
    )
    dists = {
        "batch_size": optuna.distributions.CategoricalDistribution(batches),
        "scaling_rule": optuna.distributions.CategoricalDistribution(rules),
    }
    records: list[TrialRecord] = []
    order_cells = sorted(cells)
    if each_cell:  # only then: the TPE replays keep their draws
        rng.shuffle(order_cells)
    while len(records) < plan.total:
        decision = decide(plan, records)
        if decision.stage == "done":
            break
        if decision.stage == "explore":
            if each_cell:
                trial, key = None, order_cells[len(records)]
            else:
                trial = study.ask(dists)
                key = (trial.params["batch_size"], trial.params["scaling_rule"])
            phase = SEARCH
        elif decision.next_cell is not None:
            key, phase = (decision.next_cell.batch_size, decision.next_cell.scaling_rule), CONFIRM
            trial = None
        else:
            break
        value = _draw(pools[key], rng)
        if trial is not None:
            study.tell(trial, value)
        records.append(
            TrialRecord(
                number=len(records),
                batch_size=key[0],
                scaling_rule=key[1],
                val_metric=value,
                state="COMPLETE",
                phase=phase,
                train_time_s=1.0,
            )
        )
    answer = build_answer(plan, records, budget={"epochs_per_trial": grid["epochs"]})
    reference = {
        k: Cell(k[0], k[1], [c["values"][i] for i in replay_idx[:5]], c["seconds"])
        for k, c in cells.items()
    }
    _, _, named = grid_answer(reference, plan.metric.sign, plan.tolerance, plan.confidence)
    ref_key = (named.batch_size, named.rule)
    return answer.to_dict(), truth, len(records), bool(answer.decided), ref_key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help="a grid saved by bench_answer --save-grid")
    p.add_argument("--studies", type=int, default=400)
    p.add_argument("--trials", type=int, default=50)
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
    p.add_argument(
        "--exploration",
        type=float,
        default=EXPLORATION_SHARE,
        help="search trials before the confirmation, as a share of the cells (rounded up; "
        "default as a study runs)",
    )
    p.add_argument(
        "--each-cell",
        action="store_true",
        help="the search runs every cell once, in a random order, instead of the study's TPE "
        "(what covering every cell would give; the exploration is then every cell)",
    )
    args = p.parse_args()
    grid = json.loads(Path(args.grid).read_text())
    metric = MetricInfo(**{k: v for k, v in grid["metric"].items() if k != "bounds"})
    cells = len(grid["cells"])
    plan = Plan(
        total=args.trials,
        confirm_runs=args.confirm_runs,
        tolerance=args.tolerance,
        confidence=args.confidence,
        metric=metric,
        exploration=exploration_trials(
            args.trials, cells, every_cell=args.each_cell, share=args.exploration
        ),
        scaling_rules=tuple(sorted({c["rule"] for c in grid["cells"]})),
        contenders=args.contenders,
        looks=args.looks,
    )
    times = {(c["batch_size"], c["rule"]): statistics.median(c["seconds"]) for c in grid["cells"]}
    sign = metric.sign
    regrets, within, speedups, used, decided = [], 0, [], [], 0
    ref_within, ref_speedups = 0, []
    for seed in range(args.studies):
        answer, truth, trials, done, ref_key = replay(grid, plan, seed, args.each_cell)
        best = max(truth, key=lambda k: sign * truth[k])
        most, fast = answer.get("most_accurate"), answer.get("fastest_within")
        if most:
            regrets.append(sign * (truth[best] - truth[(most["batch_size"], most["scaling_rule"])]))
        named = fast or most
        if named:
            key = (named["batch_size"], named["scaling_rule"])
            ok = sign * (truth[best] - truth[key]) <= args.tolerance
            within += ok
            speedups.append(times[best] / times[key] if ok else 1.0)
        ref_ok = sign * (truth[best] - truth[ref_key]) <= args.tolerance
        ref_within += ref_ok
        ref_speedups.append(times[best] / times[ref_key] if ref_ok else 1.0)
        used.append(trials / (5 * cells))
        decided += done
    n = args.studies
    q = statistics.quantiles(regrets, n=20)
    print(
        f"{Path(args.grid).name}: {n} replayed studies ({grid['seeds']} seeds split in halves), "
        f"{cells} cells, --trials {args.trials}, confidence {args.confidence}, tolerance "
        f"{args.tolerance}, {args.contenders} contender(s), up to {args.looks} looks, "
        f"{plan.exploration} search runs{' (every cell once)' if args.each_cell else ''}"
    )
    print(f"regret of most accurate: median {statistics.median(regrets):.4f}, 95th pct {q[-1]:.4f}")
    print(
        f"named cell truly within: {within / n:.3f} (goal >= {args.confidence - 0.03:.2f}); "
        f"a 5-seed grid under the same rule: {ref_within / n:.3f}"
    )
    print(
        f"speed-up captured: median {statistics.median(speedups):.2f}x, mean "
        f"{statistics.fmean(speedups):.2f}x; a 5-seed grid: median "
        f"{statistics.median(ref_speedups):.2f}x, mean {statistics.fmean(ref_speedups):.2f}x"
    )
    print(
        f"trials as a share of a 5-seed grid: median {statistics.median(used):.0%}, "
        f"max {max(used):.0%}; decided {decided}/{n}"
    )


if __name__ == "__main__":
    main()
