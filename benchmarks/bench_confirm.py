"""How should a study split its budget between search and confirmation? A measured simulation.

Two steps:

1. **The truth: an exhaustive grid.** Every cell of the study's space (batch sizes from
   ``--min-batch-size`` to ``--max-batch-size`` x the scaling rules linear, sqrt and none) is
   trained ``--seeds`` times through the real objective (:class:`BatchSizeObjective`), unpruned,
   for ``--epochs`` epochs, on the CPU with one torch thread (``--threads``). Each run has its own
   seed (the objective seeds a run from its trial number). A cell's grid mean is the truth the
   answer is judged by, its median training time the truth about speed. ``--save-grid`` writes
   the grid as JSON; ``--grid-json`` reuses a saved one (then nothing is trained, and the
   simulation below is deterministic: the same grid gives the same table).
2. **Simulated studies.** ``--studies`` studies per setting (search share x ``--trials``), each
   through the real :func:`study.runner.run_trials` (the exact budget, the TPE sampler seeded per
   trial by :func:`study.runner.trial_sampler`, the confirmation plan of :mod:`study.confirm`
   with the search share as :class:`~study.confirm.ConfirmPlan`'s ``search_fraction``) and an
   objective that *replays* the grid: a trial of cell c gets one of c's measured runs (its
   value and training time), drawn with replacement, so a cell's mean keeps the noise of its
   runs (``--replay without``: without replacement until the cell's runs are used up, then
   again from all of them, as earlier measurements did; a cell with as many runs as the grid
   has seeds then gets the grid's own mean, the truth, which flatters the plans on grids of
   few seeds). A search share of 1
   means no confirmation phase. There is no pruning in the simulation. The study's answer is
   :func:`study.recommend.recommend_cells` (no dedicated speed timing: the replayed trials'
   times rank the cells).

Printed per setting (over the simulated studies; "true" = by the grid's means and median times):

- ``answered``: studies that name an answer (some cell has ``--confirm-runs`` complete runs);
- ``regret mean / max``: the grid mean of the grid's best cell minus that of the study's
  ``most_accurate`` (in the metric's units, over the answered studies);
- ``truly within tol``: share of answered studies whose ``fastest_within`` is truly within
  ``--tolerance`` of the grid's best cell;
- ``grid's fast cell``: share whose ``fastest_within`` is truly within tolerance at the batch
  size of the grid's own fastest cell within tolerance (or a larger one): a cell's speed is
  its batch size's, the rules change only the learning rate, so which rule of one batch size
  times fastest in the grid is timing noise;
- ``by its rule``: the same, against the grid's fastest cell by the study's own rule
  (``d + z * se <= tolerance``, z = :data:`study.recommend.UNCERTAINTY_Z`) applied to the
  grid's runs: the answer the exhaustive grid itself would give with that margin;
- ``true speedup``: mean of (grid median time of the best cell / that of ``fastest_within``).

``--z`` lists margins of the ``fastest_within`` rule ``d + z * se <= tolerance`` to compare (the
study's rule is ``z =`` :data:`study.recommend.UNCERTAINTY_Z`, checked against
``recommend_cells``); ``--plausible-sds``, ``--strategy``, ``--walk``, ``--max-runs-factor``
and ``--verify`` set :data:`study.confirm.PLAUSIBLE_SDS`, ``STRATEGY``, ``WALK_ORDER``,
``MAX_RUNS_FACTOR`` and ``VERIFY_QUALIFIED``, and ``--se-method`` and ``--selection``
:data:`study.recommend.SE_METHOD` and ``SELECTION_CORRECTION``, for the run
(the confirmation plans and rules ``docs/answer.md`` compares). ``--grid-json`` also reads a
grid saved by ``bench_answer.py --save-grid``.

Examples::

    python benchmarks/bench_confirm.py --quick      # tiny grid, 5 studies a setting: < 1 minute
    nice python benchmarks/bench_confirm.py --epochs 8 --seeds 10 --save-grid grid_8.json
    python benchmarks/bench_confirm.py --grid-json grid_8.json --trials 20,30,50 --z 0,0.5,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

import study.confirm as confirm
import study.recommend as recommend
from study.config import StudyConfig
from study.locks import NoLock
from study.recommend import (
    UNCERTAINTY_Z,
    CellStats,
    answer_sigma,
    cell_stats,
    qualifies,
    recommend_cells,
    selection_bias,
    study_records,
)
from study.record import MetricInfo
from study.runner import run_trials, trial_sampler
from study.space import BatchSpace

#: Settings of the full run and of ``--quick`` (a tiny grid, a few studies).
FULL = {
    "epochs": 8,
    "seeds": 10,
    "trials": "30,50",
    "search_shares": "0.5,0.65,0.8,1",
    "studies": 100,
}
QUICK = {"epochs": 2, "seeds": 3, "trials": "20", "search_shares": "0.65,1", "studies": 5}


@dataclass
class Grid:
    """Measured runs per cell (``"batch|rule"``): values, training seconds, and more."""

    cells: dict[str, dict[str, list]]
    metric: MetricInfo = field(default_factory=MetricInfo)
    meta: dict[str, Any] = field(default_factory=dict)

    def complete(self, key: str) -> list[float]:
        return [v for v in self.cells[key]["values"] if v is not None]

    def to_json(self) -> dict[str, Any]:
        return {"meta": {**self.meta, "metric": self.metric.to_dict()}, "cells": self.cells}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grid:
        """Read a saved grid; a bare ``{cell: {...}}`` object (older files) is accuracy. A
        grid saved by ``bench_answer.py --save-grid`` (a list of cells with ``values`` and
        ``seconds``; its plain loop has no pruning, a NaN value is a diverged run) reads too."""
        if "cells" not in data:
            return cls(cells=data)
        if isinstance(data["cells"], list):
            cells = {
                f"{c['batch_size']}|{c['rule']}": {
                    "values": [v if math.isfinite(v) else None for v in c["values"]],
                    "times": list(c["seconds"]),
                }
                for c in data["cells"]
            }
            meta = {k: v for k, v in data.items() if k not in ("cells", "metric")}
            return cls(cells=cells, metric=MetricInfo.from_dict(data.get("metric")), meta=meta)
        meta = dict(data.get("meta") or {})
        return cls(
            cells=data["cells"], metric=MetricInfo.from_dict(meta.pop("metric", None)), meta=meta
        )


def measure_grid(
    task_name: str,
    model: str,
    epochs: int,
    seeds: int,
    min_batch_size: int,
    max_batch_size: int,
    threads: int,
) -> Grid:
    """Train every cell ``seeds`` times through the real objective, unpruned."""
    import torch

    from objectives.backend import TorchBackend
    from objectives.objective import BatchSizeObjective
    from study.space import build_space

    torch.set_num_threads(threads)
    config = StudyConfig(
        task=task_name,
        model=model,
        epochs=epochs,
        pruner="none",
        device="cpu",
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
    ).validate()
    backend = TorchBackend()
    task = backend.build_task(config)
    metric = backend.metric(task)
    space = build_space(
        min_batch_size, max_batch_size, 1, len(task.train), "search", "--max-batch-size"
    )
    objective = BatchSizeObjective(task, config, space, "cpu")
    study = optuna.create_study(direction=metric.direction, pruner=optuna.pruners.NopPruner())
    study.set_user_attr("metric", metric.to_dict())
    cells: dict[str, dict[str, list]] = {}
    print(
        f"grid: task {task_name}, model {model}, {epochs} epochs, batch sizes "
        f"{space.batch_sizes} x rules {space.scaling_rules}, {seeds} seeds, "
        f"{len(task.train)} training samples",
        flush=True,
    )
    start = time.perf_counter()
    for seed in range(seeds):
        for batch_size in space.batch_sizes:
            for rule in space.scaling_rules:
                study.enqueue_trial({"batch_size": batch_size, "scaling_rule": rule})
                study.optimize(objective, n_trials=1)
                trial = study.trials[-1]
                attrs = trial.user_attrs
                cell = cells.setdefault(f"{batch_size}|{rule}", {})
                complete = trial.state == optuna.trial.TrialState.COMPLETE
                for name, value in (
                    ("values", trial.value if complete else None),
                    ("times", attrs.get("train_time_s")),
                    ("tests", attrs.get(metric.test_name)),
                    ("states", trial.state.name),
                    ("stop", attrs.get("stop_reason")),
                ):
                    cell.setdefault(name, []).append(value)
        print(f"  seed {seed + 1}/{seeds} done, {time.perf_counter() - start:.0f} s", flush=True)
    meta = {"task": task_name, "model": model, "epochs": epochs, "seeds": seeds}
    return Grid(cells=cells, metric=metric, meta=meta)


@dataclass(frozen=True)
class Truth:
    """What the grid says: cell means and median times, the best cell, the fast cell."""

    mean: dict[str, float]
    time: dict[str, float]
    best: str
    fast: str
    within: list[str]
    sd: float
    fast_rule: str


def grid_truth(grid: Grid, tolerance: float) -> Truth:
    """The grid's best cell, its fastest cell within ``tolerance`` of it by the means, and its
    fastest cell within by the study's own rule applied to the grid's runs."""
    sign = grid.metric.sign
    mean = {k: statistics.fmean(grid.complete(k)) for k in grid.cells if grid.complete(k)}
    seconds = {k: statistics.median(t for t in grid.cells[k]["times"] if t) for k in mean}
    best = max(mean, key=lambda k: sign * mean[k])
    within = [k for k in mean if sign * (mean[best] - mean[k]) <= tolerance]
    fast = min(within, key=seconds.__getitem__)
    sds = [statistics.stdev(grid.complete(k)) for k in mean if len(grid.complete(k)) >= 2]

    def welch_var(k: str) -> float:
        runs = grid.complete(k)
        return statistics.variance(runs) / len(runs) if len(runs) >= 2 else 0.0

    by_rule = [
        k
        for k in within
        if sign * (mean[best] - mean[k]) + UNCERTAINTY_Z * (welch_var(best) + welch_var(k)) ** 0.5
        <= tolerance
        or k == best
    ]
    fast_rule = min(by_rule, key=seconds.__getitem__)
    return Truth(
        mean, seconds, best, fast, within, statistics.fmean(sds) if sds else 0.0, fast_rule
    )


@dataclass
class Outcome:
    """One simulated study: answered or not, regret, and per z (truly within, fast cell,
    speedup)."""

    regret: float | None = None
    trials_to_confirm: int = 0
    picks: dict[float, tuple[bool, bool, bool, float]] = field(default_factory=dict)


def _key(cell: CellStats | dict[str, Any]) -> str:
    if isinstance(cell, dict):
        return f"{cell['batch_size']}|{cell['scaling_rule']}"
    return f"{cell.batch_size}|{cell.scaling_rule}"


def _batch(key: str) -> int:
    return int(key.split("|")[0])


def simulate(
    grid: Grid,
    truth: Truth,
    share: float,
    total: int,
    rep: int,
    tolerance: float,
    confirm_runs: int,
    zs: Sequence[float],
    replay: str = "with",
) -> Outcome:
    """One study of ``total`` trials replaying ``grid``, ``share`` of them search first;
    ``replay``: a cell's runs drawn ``"without"`` replacement (until used up) or ``"with"``."""
    metric = grid.metric
    sizes = sorted({int(k.split("|")[0]) for k in grid.cells})
    rules = sorted({k.split("|")[1] for k in grid.cells})
    rng = random.Random(rep * 7 + int(share * 100))
    queues: dict[str, list[int]] = {}
    study = optuna.create_study(direction=metric.direction)
    study.set_user_attr("metric", metric.to_dict())
    study.set_user_attr(
        "config", {"confirm_runs": confirm_runs, "tolerance": tolerance, "trials": total}
    )
    study.set_user_attr("space", {"batch_sizes": sizes, "scaling_rules": rules})
    plan = None
    if share < 1:
        plan = confirm.ConfirmPlan.of_study(study, total, search_fraction=share)

    def objective(trial: optuna.Trial) -> float:
        batch_size = trial.suggest_categorical("batch_size", sizes)
        rule = trial.suggest_categorical("scaling_rule", rules)
        key = f"{batch_size}|{rule}"
        runs = grid.cells[key]["values"]
        queue = queues.get(key)
        if replay == "with":
            i = rng.randrange(len(runs))
        else:
            if not queue:
                queue = queues[key] = rng.sample(range(len(runs)), len(runs))
            i = queue.pop()
        trial.set_user_attr("batch_size", batch_size)
        trial.set_user_attr("scaling_rule", rule)
        trial.set_user_attr("train_time_s", grid.cells[key]["times"][i])
        if runs[i] is None:  # a diverged run of the grid
            trial.set_user_attr("diverged", True)
            raise optuna.TrialPruned()
        return runs[i]

    space = BatchSpace(sizes, max(sizes), 1, "grid", rules)
    sampler_for = trial_sampler(StudyConfig(seed=rep), space)
    run_trials(
        study, objective, total, lock=NoLock(), sampler_for=sampler_for, confirm=plan or False
    )
    cells = cell_stats(study_records(study), metric)
    answer = recommend_cells(cells, metric, tolerance=tolerance, confirm_runs=confirm_runs)
    if answer["most_accurate"] is None:
        return Outcome()
    sign, true = metric.sign, truth.mean
    outcome = Outcome(regret=sign * (true[truth.best] - true[_key(answer["most_accurate"])]))
    confirmed = [c for c in cells if c.runs >= answer["confirm_runs"]]
    best = max(confirmed, key=lambda c: (sign * (c.val_mean or 0.0), c.runs))
    sigma = answer_sigma(confirmed)
    bias = selection_bias(confirmed, metric)
    outcome.trials_to_confirm = sum(c.confirm_runs for c in cells)
    for z in zs:
        ok = [
            c
            for c in confirmed
            if qualifies(best, c, metric, tolerance, z=z, sigma=sigma, bias=bias)
        ]
        fast = _key(min(ok, key=lambda c: c.train_time_s_median or 0.0))
        if z == UNCERTAINTY_Z and fast != _key(answer["fastest_within"]):
            raise AssertionError(f"z={z}: {fast} but recommend_cells names the other cell")
        within = sign * (true[truth.best] - true[fast]) <= tolerance
        outcome.picks[z] = (
            within,
            within and _batch(fast) >= _batch(truth.fast),
            within and _batch(fast) >= _batch(truth.fast_rule),
            truth.time[truth.best] / truth.time[fast],
        )
    return outcome


HEADER = (
    f"{'search share':>12} {'total':>5} {'z':>4} {'answered':>8} {'regret mean / max':>17} "
    f"{'truly within tol':>16} {'grid fast cell':>14} {'by its rule':>11} {'true speedup':>12}"
)


def table_rows(share: float, total: int, outcomes: Sequence[Outcome], zs: Sequence[float]) -> list:
    """The rows of one setting (one per z)."""
    answered = [o for o in outcomes if o.regret is not None]
    rate = f"{100 * len(answered) / len(outcomes):.0f}%"
    label = f"{share:.2f}" + ("*" if share >= 1 else "")
    if not answered:
        return [f"{label:>12} {total:>5} {'':>4} {rate:>8}"]
    regrets = [o.regret or 0.0 for o in answered]
    regret = f"{statistics.fmean(regrets):.4f} / {max(regrets):.4f}"
    rows = []
    for z in zs:
        within = statistics.fmean(o.picks[z][0] for o in answered)
        right = statistics.fmean(o.picks[z][1] for o in answered)
        by_rule = statistics.fmean(o.picks[z][2] for o in answered)
        speedup = statistics.fmean(o.picks[z][3] for o in answered)
        rows.append(
            f"{label:>12} {total:>5} {z:>4g} {rate:>8} {regret:>17} {within:>16.2f} "
            f"{right:>14.2f} {by_rule:>11.2f} {speedup:>12.2f}"
        )
    return rows


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="digits", help="task of the grid (default digits)")
    parser.add_argument("--model", default="mlp", help="model of the grid (default mlp)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 8; --quick 2)")
    parser.add_argument("--seeds", type=int, help="runs per cell (default 10; --quick 3)")
    parser.add_argument("--min-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the grid")
    parser.add_argument("--trials", help="study budgets, comma-separated (default 30,50)")
    parser.add_argument(
        "--search-shares", help="search shares, comma-separated; 1 = no confirmation"
    )
    parser.add_argument("--studies", type=int, help="simulated studies per setting (100)")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--confirm-runs", type=int, default=3)
    parser.add_argument(
        "--z", default=f"{UNCERTAINTY_Z:g}", help="fastest_within margins to compare, in se"
    )
    parser.add_argument("--plausible-sds", type=float, help="set study.confirm.PLAUSIBLE_SDS")
    parser.add_argument(
        "--se-method", choices=("welch", "pooled"), help="set study.recommend.SE_METHOD"
    )
    parser.add_argument(
        "--max-runs-factor", type=int, help="set study.confirm.MAX_RUNS_FACTOR (1: no extra runs)"
    )
    parser.add_argument(
        "--strategy", choices=("sequential", "all"), help="set study.confirm.STRATEGY"
    )
    parser.add_argument("--walk", choices=("batch", "time"), help="set study.confirm.WALK_ORDER")
    parser.add_argument(
        "--verify",
        choices=("yes", "no"),
        help="set study.confirm.VERIFY_QUALIFIED (more runs for a qualifying cell)",
    )
    parser.add_argument(
        "--replay",
        choices=("with", "without"),
        default="with",
        help="draw a cell's grid runs with replacement (default) or without (until used up)",
    )
    parser.add_argument(
        "--selection",
        choices=("bootstrap", "none"),
        help="set study.recommend.SELECTION_CORRECTION",
    )
    parser.add_argument("--grid-json", type=Path, help="reuse a grid saved by --save-grid")
    parser.add_argument("--save-grid", type=Path, help="write the measured grid here (JSON)")
    parser.add_argument("--quick", action="store_true", help="tiny grid, 5 studies: < 1 minute")
    args = parser.parse_args(argv)
    if args.verify is not None:
        args.verify = args.verify == "yes"
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


#: Flags that set a constant of the confirmation plan or of the answer for the run.
OVERRIDES = (
    ("plausible_sds", confirm, "PLAUSIBLE_SDS"),
    ("strategy", confirm, "STRATEGY"),
    ("walk", confirm, "WALK_ORDER"),
    ("max_runs_factor", confirm, "MAX_RUNS_FACTOR"),
    ("verify", confirm, "VERIFY_QUALIFIED"),
    ("se_method", recommend, "SE_METHOD"),
    ("selection", recommend, "SELECTION_CORRECTION"),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for flag, module, constant in OVERRIDES:
        if getattr(args, flag) is not None:
            setattr(module, constant, getattr(args, flag))
    start = time.perf_counter()
    if args.grid_json is not None:
        grid = Grid.from_json(json.loads(args.grid_json.read_text()))
        print(f"grid from {args.grid_json}: {grid.meta or 'no description'}")
    else:
        grid = measure_grid(
            args.task,
            args.model,
            args.epochs,
            args.seeds,
            args.min_batch_size,
            args.max_batch_size,
            args.threads,
        )
    if args.save_grid is not None:
        args.save_grid.write_text(json.dumps(grid.to_json()))
        print(f"grid saved to {args.save_grid}")
    truth = grid_truth(grid, args.tolerance)
    speedup = truth.time[truth.best] / truth.time[truth.fast]
    print(
        f"truth: best {truth.best} {truth.mean[truth.best]:.4f} ({truth.time[truth.best]:.2f} s); "
        f"fastest within {args.tolerance:g}: {truth.fast} {truth.mean[truth.fast]:.4f} "
        f"({truth.time[truth.fast]:.2f} s, {speedup:.2f}x); {len(truth.within)} of "
        f"{len(truth.mean)} cells within; mean within-cell SD {truth.sd:.4f}; by the study's "
        f"rule on the grid's runs: {truth.fast_rule} "
        f"({truth.time[truth.best] / truth.time[truth.fast_rule]:.2f}x)"
    )
    zs = _floats(args.z)
    print(
        f"{args.studies} simulated studies per setting; tolerance {args.tolerance:g}, "
        f"confirm runs {args.confirm_runs}, PLAUSIBLE_SDS {confirm.PLAUSIBLE_SDS:g}, "
        f"SE_METHOD {recommend.SE_METHOD}, MAX_RUNS_FACTOR {confirm.MAX_RUNS_FACTOR}, "
        f"VERIFY_QUALIFIED {confirm.VERIFY_QUALIFIED}, "
        f"STRATEGY {confirm.STRATEGY}, WALK_ORDER {confirm.WALK_ORDER}, "
        f"SELECTION_CORRECTION {recommend.SELECTION_CORRECTION}, replay {args.replay} "
        f"replacement, fastest_within: d + z se <= tolerance (the study's z = {UNCERTAINTY_Z:g}); "
        "* = no confirmation"
    )
    print(HEADER, flush=True)
    for total in _ints(args.trials):
        for share in _floats(args.search_shares):
            outcomes = [
                simulate(
                    grid,
                    truth,
                    share,
                    total,
                    rep,
                    args.tolerance,
                    args.confirm_runs,
                    zs,
                    args.replay,
                )  # fmt: skip
                for rep in range(args.studies)
            ]
            print("\n".join(table_rows(share, total, outcomes, zs)), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
