"""Is the study's answer right? The default study beside an exhaustive, unpruned multi-seed grid.

Runs the study as a user would (``run_study`` with the default settings but the task), reads
its stored ``recommendation``, then trains every cell of the study's own space (each batch
size x scaling rule) with ``--seeds`` seeds, unpruned, for the same epochs, in a plain loop of
its own (tensors sliced with a shuffled index, or a DataLoader for other data, dropping the
short tail; ``torch.optim`` and the task's loss; none of the study's training code), and prints:

* the regret of ``most_accurate``: the grid's best cell mean minus the grid mean of the cell
  the study named (in the metric's units; the goal is at most 0.01, one point of accuracy);
* whether ``fastest_within`` is right: the grid mean of the cell the study named is within
  ``--tolerance`` of the grid's best ("truly within"; goal: at least the confidence minus
  0.03), and its batch size is at least that of the grid's own fastest cell within tolerance
  (a cell's speed is its batch size's: the rules change only the learning rate), judged
  twice: against the grid's fastest cell by the means, and against the one the study's own
  rule (the fixed sequence of one-sided Welch t-tests at ``--confidence``) names from the
  grid's runs;
* the speed-up captured: the grid's best cell's median time over the named cell's (1 when
  the named cell is truly outside the tolerance), the studies' median beside the median a
  5-seed grid captures under the same rule (goal: at least the grid's);
* the study's training compute as a fraction of a 5-seed grid's: sample-epochs trained (a
  hardware-free count) and training seconds (goal: at most 35%, the early stop included);
* with a grid of 10 or more seeds a cell, the reference judged the same way: how an
  exhaustive 5-seed grid does under the study's rule against the grid's held-out seeds
  (:func:`reference_check`).

    python benchmarks/bench_answer.py --task digits [--seeds 5] [--trials 50]
    python benchmarks/bench_answer.py --save-grid g.json   # keep the grid ...
    python benchmarks/bench_answer.py --grid-json g.json   # ... and judge another study with it
    python benchmarks/bench_answer.py --grid-json g.json --seeds 20 --save-grid g.json  # add seeds
    python benchmarks/bench_answer.py --quick        # a 2-minute check of the machinery
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch
from torch.utils.data import DataLoader, TensorDataset

from batchsize_study.api import run_study
from objectives.backend import build_task
from objectives.batch import call_model
from objectives.train import make_optimizer
from study.config import PRUNERS, PYTHON_TASK_PREFIX, StudyConfig
from study.record import read_record, study_metric
from study.scaling import scaled_lr
from study.stats import welch


@dataclasses.dataclass
class Cell:
    """One cell of the grid: its runs' validation metric and training seconds."""

    batch_size: int
    rule: str
    values: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def time(self) -> float:
        return statistics.median(self.seconds)


def _passes(best: Cell, cell: Cell, sign: float, tolerance: float, confidence: float) -> bool:
    """The study's test applied to a grid's runs, in one look: Welch's one-sided upper bound
    of the shortfall at ``confidence`` is within ``tolerance``."""
    w = welch([sign * v for v in best.values], [sign * v for v in cell.values])
    return w.upper(confidence) <= tolerance


def grid_answer(
    cells: dict, sign: float, tolerance: float, confidence: float
) -> tuple[Cell, Cell, Cell]:
    """A grid's own answer: its best cell by the means, its fastest cell within ``tolerance``
    of that by the means, and the cell the study's rule names from the grid's runs: the
    fixed sequence up the batch sizes from the best (at each batch the rule with the best
    mean), each tested in one look at ``confidence``, stopping at the first failure."""
    best = max(cells.values(), key=lambda c: sign * c.mean)
    within = [c for c in cells.values() if sign * (best.mean - c.mean) <= tolerance]
    fast = min(within, key=lambda c: (c.time, -c.batch_size))
    by_batch: dict[int, Cell] = {}
    for c in cells.values():
        if c.batch_size > best.batch_size:
            top = by_batch.get(c.batch_size)
            if top is None or sign * c.mean > sign * top.mean:
                by_batch[c.batch_size] = c
    named = best
    for batch in sorted(by_batch):
        if not _passes(best, by_batch[batch], sign, tolerance, confidence):
            break
        named = by_batch[batch]
    return best, fast, named


def captured(named: Cell, truth: dict, sign: float, tolerance: float) -> float:
    """The speed-up a named fast cell captures over ``truth``'s best cell (``truth``'s median
    times); 1 when the named cell is truly outside the tolerance (nothing is gained)."""
    best = max(truth.values(), key=lambda c: sign * c.mean)
    cell = truth[(named.batch_size, named.rule)]
    if sign * (best.mean - cell.mean) > tolerance:
        return 1.0
    return best.time / cell.time


def _grade(
    named: Cell, truth: dict, sign: float, tolerance: float, confidence: float
) -> tuple[bool, bool, bool]:
    """Whether a cell named as fastest within tolerance is within it by ``truth``'s means, and
    right against truth's fastest cell by the means and by the study's rule (as ``judge``)."""
    best, fast, rule_fast = grid_answer(truth, sign, tolerance, confidence)
    cell = truth[(named.batch_size, named.rule)]
    ok = sign * (best.mean - cell.mean) <= tolerance
    return (
        ok,
        ok and cell.batch_size >= fast.batch_size,
        ok and cell.batch_size >= rule_fast.batch_size,
    )


def _subset(cell: Cell, idx: list[int]) -> Cell:
    """``cell`` with only the runs at positions ``idx``."""
    return Cell(
        cell.batch_size, cell.rule, [cell.values[i] for i in idx], [cell.seconds[i] for i in idx]
    )


def reference_check(
    cells: dict, sign: float, tolerance: float, confidence: float, size: int = 5, draws: int = 400
):
    """How a ``size``-seed grid (the reference, at about twice a study's compute) does under
    the study's rule, judged against the grid's other seeds (held out, never the runs it
    named its cell from).

    Each draw splits every cell's runs at the same random seed positions: ``size`` runs make
    the grid under test, the rest (at least ``size``) are its truth. Returns the share of
    draws whose named cell is truly within, right by the means and by the rule, and the list
    of speed-ups captured (:func:`captured`): within or not by the held-out seeds' means, the
    speed by the median times of all the grid's runs, the table the studies are judged by.
    The rule names its cell from the means alone, so the times of the runs it chose from
    flatter nothing; the held-out seeds' times would instead move the best cell's median time,
    and with it every ratio (by 2% on digits: 1.68x against 1.65x for the same cell)."""
    seeds = min(len(c.values) for c in cells.values())
    rng = random.Random(0)
    hits = [0, 0, 0]
    speedups = []
    for _ in range(draws):
        picked = set(rng.sample(range(seeds), size))
        small = {key: _subset(c, sorted(picked)) for key, c in cells.items()}
        rest_idx = [i for i in range(seeds) if i not in picked]
        rest = {key: _subset(c, rest_idx) for key, c in cells.items()}
        named = grid_answer(small, sign, tolerance, confidence)[2]
        for i, hit in enumerate(_grade(named, rest, sign, tolerance, confidence)):
            hits[i] += hit
        timed = {
            key: Cell(c.batch_size, c.rule, rest[key].values, c.seconds) for key, c in cells.items()
        }
        speedups.append(captured(named, timed, sign, tolerance))
    return [h / draws for h in hits], speedups, seeds


def _loader(dataset, batch_size: int, collate, shuffle: bool, seed: int = 0):
    """Batches of ``dataset``: two tensors are sliced with a shuffled index (what anyone
    training from tensors writes; a DataLoader collating item by item would time its own
    Python overhead at large batches), anything else goes through a DataLoader. Training
    drops the short tail, so every update is exactly ``batch_size`` samples."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and collate is None:
        return _TensorBatches(*dataset.tensors, batch_size, shuffle, generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        collate_fn=collate,
        generator=generator,
    )


@dataclasses.dataclass
class _TensorBatches:
    """One pass over two tensors per iteration: a new permutation each pass when shuffling."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    shuffle: bool
    generator: torch.Generator

    def __iter__(self):
        n = len(self.y)
        if not self.shuffle:
            for i in range(0, n, self.batch_size):
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            return
        order = torch.randperm(n, generator=self.generator)
        for i in range(0, n - self.batch_size + 1, self.batch_size):
            index = order[i : i + self.batch_size]
            yield self.x[index], self.y[index]


def _metric_mean(model, dataset, metric, collate) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets in _loader(dataset, 512, collate, shuffle=False):
            values = metric.fn(call_model(model, inputs), targets)
            total += float(values.sum())
            count += values.numel()
    model.train()
    return total / count


def plain_run(task, batch_size: int, lr: float, optimizer: str, epochs: int, seed: int):
    """Train one model of ``task`` in a plain loop; return (val metric, training seconds)."""
    torch.manual_seed(seed)
    model = task.build_model()
    opt = make_optimizer(optimizer, model.parameters(), lr)
    loader = _loader(task.train, batch_size, task.collate, shuffle=True, seed=seed)
    seconds = 0.0
    for _ in range(epochs):
        started = time.perf_counter()  # wall, as the study's train_time_s
        for inputs, targets in loader:
            opt.zero_grad(set_to_none=True)
            task.loss(call_model(model, inputs), targets).mean().backward()
            opt.step()
        seconds += time.perf_counter() - started
    return _metric_mean(model, task.val, task.metric, task.collate), seconds


def run_grid(
    task, space: dict, config: StudyConfig, seeds: range, log, cells: dict | None = None
) -> dict[tuple, Cell]:
    """Train every cell of ``space`` once per seed of ``seeds``, appending to ``cells`` (a
    saved grid extended with more seeds) or to new cells."""
    cells = {} if cells is None else cells
    for b in space["batch_sizes"]:
        for rule in space["scaling_rules"]:
            cell = cells.setdefault((b, rule), Cell(b, rule))
            lr = scaled_lr(rule, config.base_lr, config.base_batch_size, b)
            for seed in seeds:
                value, seconds = plain_run(task, b, lr, config.optimizer, config.epochs, seed)
                cell.values.append(value if math.isfinite(value) else float("nan"))
                cell.seconds.append(seconds)
            log(
                f"  grid batch {b:>5} {rule:<6} mean {cell.mean:.4f} "
                f"[{min(cell.values):.4f}-{max(cell.values):.4f}] {cell.time:.2f} s"
            )
    return cells


@dataclasses.dataclass
class StudyRun:
    """One study of the benchmark: its answer and what it trained."""

    seed: int
    answer: dict
    sample_epochs: int
    seconds: float
    cpu_s: float


def run_one(args: argparse.Namespace, seed: int, folder: Path, task) -> tuple[StudyRun, object]:
    """Run the default study as a user would; return it and the study. ``seed`` seeds the
    sampler and the trials' runs; the task (its data split) is the grid's, built once with
    the default seed (a built-in task's split follows ``--seed``, so the study is handed the
    task object rather than its name)."""
    config = StudyConfig(
        task=args.task,
        model=args.model,
        trials=args.trials,
        epochs=args.epochs,
        tolerance=args.tolerance,
        confidence=args.confidence,
        pruner=args.pruner,
        seed=seed,
        storage=f"sqlite:///{folder / f'study-{seed}.db'}",
        artifact_dir="none",
        device="cpu",
    )
    started = time.process_time()
    result = run_study(config, task=task if seed else None, out=io.StringIO())
    cpu = time.process_time() - started
    return _study_run(result.study, seed, result.recommendation, cpu), result.study


def _study_run(study, seed: int, answer: dict, cpu: float) -> StudyRun:
    """What ``study`` trained, with its answer."""
    metric = study_metric(study)
    records = [read_record(t, metric=metric) for t in study.trials]
    train_size = study.user_attrs["task_info"]["train_size"]
    return StudyRun(
        seed=seed,
        answer=answer,
        sample_epochs=sum((r.epochs_completed or 0) * train_size for r in records),
        seconds=sum(r.train_time_s or 0.0 for r in records),
        cpu_s=cpu,
    )


def stored_studies(folders: list[str], args: argparse.Namespace) -> list[tuple[StudyRun, object]]:
    """The finished studies (``study-SEED.db`` with a stored answer) of this task, model,
    epochs and trials that earlier runs of this benchmark left in ``folders``, one per seed,
    by seed; their CPU time is not known (NaN)."""
    wanted = {PYTHON_TASK_PREFIX + args.task, args.task}
    found: dict[int, tuple[StudyRun, object]] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("study-*.db")):
            seed = int(path.stem.split("-")[1])
            url = f"sqlite:///{path}"
            names = optuna.get_all_study_names(storage=url)
            if seed in found or not names:
                continue
            study = optuna.load_study(study_name=names[0], storage=url)
            answer = study.user_attrs.get("recommendation")
            config = study.user_attrs.get("config", {})
            same = config.get("task") in wanted and (
                config.get("model"),
                config.get("epochs"),
                config.get("trials"),
            ) == (args.model, args.epochs, args.trials)
            if answer and same:
                found[seed] = (_study_run(study, seed, answer, math.nan), study)
    return [found[seed] for seed in sorted(found)]


def judge(run: StudyRun, cells: dict, best: Cell, fast: Cell, rule_fast: Cell, sign, tol) -> dict:
    """Print how one study's answer compares with the grid; return the verdicts."""
    answer = run.answer or {}
    print(f"study seed {run.seed}: {answer.get('statement')}")
    verdict: dict = {
        "regret": None,
        "within": False,
        "right": False,
        "right_by_rule": False,
        "captured": 1.0,
        "decided": bool(answer.get("decided")),
        "trials_used": answer.get("trials_used"),
    }
    for key in ("most_accurate", "fastest_within"):
        named = answer.get(key)
        if not named:
            print(f"  {key}: none named ({answer.get('reason', answer.get('statement'))})")
            continue
        cell = cells.get((named["batch_size"], named["scaling_rule"]))
        if cell is None:
            print(f"  {key}: batch {named['batch_size']} {named['scaling_rule']} not in the grid")
            continue
        regret = max(0.0, sign * (best.mean - cell.mean))  # the grid best is the best
        print(
            f"  {key}: batch {cell.batch_size} {cell.rule}: study {named['val_mean']:.4f}, grid "
            f"{cell.mean:.4f}; regret {regret:.4f} "
            f"({'within' if regret <= tol else 'NOT within'} {tol}); grid time "
            f"{cell.time:.2f} s vs the grid's fastest within tolerance {fast.time:.2f} s"
        )
        if key == "most_accurate":
            verdict["regret"] = regret
        else:
            ok = regret <= tol
            verdict["within"] = ok
            verdict["right"] = ok and cell.batch_size >= fast.batch_size
            verdict["right_by_rule"] = ok and cell.batch_size >= rule_fast.batch_size
            verdict["captured"] = captured(cell, cells, sign, tol)
            print(
                f"  fast cell: {'right' if verdict['right'] else 'not right'} by the grid's "
                f"means (batch {fast.batch_size}), "
                f"{'right' if verdict['right_by_rule'] else 'not right'} by the study's rule "
                f"on the grid (batch {rule_fast.batch_size})"
            )
    return verdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--model", default=StudyConfig.model, help="for built-in tasks (synthetic: mlp)")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--epochs", type=int, default=StudyConfig.epochs)
    p.add_argument(
        "--seeds",
        type=int,
        help="grid runs per cell (default 5; with --grid-json, more than the file has trains "
        "the missing seeds and adds them: write the result with --save-grid)",
    )
    p.add_argument(
        "--studies", type=int, default=1, help="studies to judge (seeds 0, 1, ...; default 1)"
    )
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the first study's seed (spread --studies over processes: 0, 7, 14, ...)",
    )
    p.add_argument("--tolerance", type=float, default=StudyConfig.tolerance)
    p.add_argument("--confidence", type=float, default=StudyConfig.confidence)
    p.add_argument(
        "--pruner", default=StudyConfig.pruner, choices=PRUNERS, help="the studies' pruner"
    )
    p.add_argument("--quick", action="store_true", help="tiny study and grid: checks it runs")
    p.add_argument(
        "--studies-from",
        nargs="+",
        metavar="DIR",
        help="judge the finished studies earlier runs left in these folders (bench-answer-* "
        "under the temporary folder) instead of running new ones",
    )
    p.add_argument("--save-grid", help="write the grid's runs to this JSON file")
    p.add_argument(
        "--grid-json",
        help="read the grid from this JSON file instead of training; waits for it to appear, so "
        "another process may still be training it with --save-grid",
    )
    args = p.parse_args()
    if args.studies < 1 or (args.seeds is not None and args.seeds < 2) or args.first_seed < 0:
        p.error(
            "--studies must be at least 1, --seeds at least 2 (a grid cell needs an SD) and "
            "--first-seed at least 0"
        )
    if args.quick:
        args.trials, args.epochs, args.seeds = 12, 2, 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(tempfile.mkdtemp(prefix="bench-answer-"))
    task = build_task(StudyConfig(task=args.task, model=args.model, epochs=args.epochs))
    if args.studies_from:
        stored = stored_studies(args.studies_from, args)
        if not stored:
            p.error(f"--studies-from {' '.join(args.studies_from)}: no finished study there")
        runs = [run for run, _ in stored]
        first = stored[0][1]
        print(f"studies: {len(runs)} stored, seeds {', '.join(str(r.seed) for r in runs)}")
    else:
        seeds = range(args.first_seed, args.first_seed + args.studies)
        print(
            f"study: --task {args.task} --model {args.model} --trials {args.trials} --epochs "
            f"{args.epochs} (defaults otherwise), {args.studies} studies (seeds "
            f"{seeds[0]}-{seeds[-1]})"
        )
        runs = []
        for seed in seeds:
            run, study = run_one(args, seed, folder, task)
            runs.append(run)
            print(f"  seed {seed}: {run.cpu_s:.0f} s CPU", flush=True)
            if seed == seeds[0]:
                first = study
    metric = study_metric(first)
    sign = metric.sign
    train_size = first.user_attrs["task_info"]["train_size"]
    config = StudyConfig(task=args.task, model=args.model, epochs=args.epochs)
    space = first.user_attrs["space"]
    grid_started = time.process_time()
    if args.grid_json:
        saved = _wait_for_grid(Path(args.grid_json))
        cells = {(c["batch_size"], c["rule"]): Cell(**c) for c in saved["cells"]}
        grid_cpu = float(saved["cpu_s"])
        # the saved grid's seeds (older files: count a cell's runs)
        had = int(saved.get("seeds") or min(len(c.values) for c in cells.values()))
        source = f"read from {args.grid_json} ({saved.get('epochs', '?')} epochs)"
        if args.seeds is not None and args.seeds < had:
            p.error(f"--seeds {args.seeds}: {args.grid_json} already has {had}; leave it out")
        if args.seeds is not None and args.seeds > had:
            run_grid(task, space, config, range(had, args.seeds), print, cells)
            grid_cpu += time.process_time() - grid_started
            source += f", seeds {had}-{args.seeds - 1} trained above"
        args.seeds = args.seeds or had
    else:
        args.seeds = args.seeds or 5
        cells = run_grid(task, space, config, range(args.seeds), print)
        grid_cpu = time.process_time() - grid_started
        source = "trained above"
    print(
        f"grid: {len(space['batch_sizes'])} batch sizes x {space['scaling_rules']} x "
        f"{args.seeds} seeds, {args.epochs} epochs, unpruned, plain loop; {source}"
    )
    if args.save_grid:
        partial = Path(args.save_grid + ".part")
        partial.write_text(
            json.dumps(
                {
                    "cpu_s": grid_cpu,
                    "metric": metric.to_dict(),
                    "task": args.task,
                    "epochs": args.epochs,
                    "seeds": args.seeds,
                    "cells": [dataclasses.asdict(c) for c in cells.values()],
                }
            )
        )
        partial.replace(args.save_grid)
    grid_runs = sum(len(c.values) for c in cells.values())
    grid_sample_epochs = grid_runs * args.epochs * train_size
    grid_seconds = sum(sum(c.seconds) for c in cells.values())
    conf = args.confidence
    best, grid_fast, rule_fast = grid_answer(cells, sign, args.tolerance, conf)
    print(
        f"grid best: batch {best.batch_size} {best.rule} {best.mean:.4f}; grid fastest within "
        f"{args.tolerance}: batch {grid_fast.batch_size} {grid_fast.rule} {grid_fast.mean:.4f} "
        f"({best.time / grid_fast.time:.1f}x faster than the best); by the study's rule "
        f"(fixed sequence, one-sided Welch t at {conf:.0%}) on the grid's runs: batch "
        f"{rule_fast.batch_size} {rule_fast.rule} ({best.time / rule_fast.time:.1f}x)"
    )
    verdicts = [judge(run, cells, best, grid_fast, rule_fast, sign, args.tolerance) for run in runs]
    # Compute against a 5-seed grid of the same cells (the yardstick), whatever --seeds.
    per_grid_run = grid_sample_epochs / grid_runs
    five_seed = per_grid_run * 5 * len(cells)
    five_seconds = grid_seconds / grid_runs * 5 * len(cells)
    shares = []
    for run in runs:
        shares.append(run.sample_epochs / five_seed)
        print(
            f"compute, seed {run.seed}: {run.sample_epochs:,} sample-epochs = "
            f"{run.sample_epochs / five_seed:.0%} of a 5-seed grid's {five_seed:,.0f}; training "
            f"seconds {run.seconds:.0f} vs {five_seconds:.0f} ({run.seconds / five_seconds:.0%}); "
            f"process CPU {run.cpu_s:.0f} s vs {grid_cpu * 5 / args.seeds:.0f} s"
        )
    reference = None
    if min(len(c.values) for c in cells.values()) >= 10:
        (within_share, right, right_rule), ref_speedups, seeds = reference_check(
            cells, sign, args.tolerance, conf
        )
        reference = statistics.median(ref_speedups)
        print(
            f"reference: a 5-seed grid under the study's rule, judged against its other "
            f"{seeds - 5} seeds (400 random splits): truly within {within_share:.0%}, right by "
            f"the means {right:.0%}, by the rule {right_rule:.0%}; speed-up captured median "
            f"{reference:.2f}x [quartiles {_q(ref_speedups, 0.25):.2f}-"
            f"{_q(ref_speedups, 0.75):.2f}]"
        )
    regrets = [v["regret"] for v in verdicts if v["regret"] is not None]
    speedups = [v["captured"] for v in verdicts]
    n = len(verdicts)
    print(
        f"summary over {n} studies: regret max {max(regrets) if regrets else float('nan'):.4f} "
        f"(answered {len(regrets)}/{n}); fastest_within truly within "
        f"{sum(v['within'] for v in verdicts)}/{n} (goal >= {conf - 0.03:.2f}), right by the "
        f"grid's means {sum(v['right'] for v in verdicts)}/{n}, by the study's rule on the grid "
        f"{sum(v['right_by_rule'] for v in verdicts)}/{n}; speed-up captured median "
        f"{statistics.median(speedups):.2f}x [quartiles {_q(speedups, 0.25):.2f}-"
        f"{_q(speedups, 0.75):.2f}]"
        + (f" vs the 5-seed grid's {reference:.2f}x" if reference is not None else "")
        + f"; compute {min(shares):.0%}-{max(shares):.0%} of a 5-seed grid (median "
        f"{statistics.median(shares):.0%}, goal <= 35%); decided "
        f"{sum(v['decided'] for v in verdicts)}/{n}"
    )


def _wait_for_grid(path: Path) -> dict:
    """The saved grid at ``path``, once it is there (``--save-grid`` writes it whole, by a
    rename, so a file that exists is complete)."""
    if not path.exists():
        print(f"waiting for the grid {path} (another process is training it)", flush=True)
    while not path.exists():
        time.sleep(10)
    return json.loads(path.read_text())


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
