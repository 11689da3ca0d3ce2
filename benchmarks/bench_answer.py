"""Is the study's answer right? The default study beside an exhaustive, unpruned multi-seed grid.

Runs the study as a user would (``run_study`` with the default settings but the task), reads
its stored ``recommendation``, then trains every cell of the study's own space (each batch
size x scaling rule) with ``--seeds`` seeds, unpruned, for the same epochs, in a plain loop of
its own (tensors sliced with a shuffled index, or a DataLoader for other data, dropping the
short tail; ``torch.optim`` and the task's loss; none of the study's training code), and prints:

* the regret of ``most_accurate``: the grid's best cell mean minus the grid mean of the cell
  the study named (in the metric's units; the goal is at most 0.01, one point of accuracy);
* whether ``fastest_within`` is right: the grid mean of the cell the study named is within
  ``--tolerance`` of the grid's best, and how its grid time compares with the grid's own
  fastest cell within tolerance;
* the study's training compute as a fraction of the grid's: sample-epochs trained (a
  hardware-free count) and training seconds (goal: at most half).

    python benchmarks/bench_answer.py --task digits [--seeds 5] [--trials 50]
    python benchmarks/bench_answer.py --save-grid g.json   # keep the grid ...
    python benchmarks/bench_answer.py --grid-json g.json   # ... and judge another study with it
    python benchmarks/bench_answer.py --quick        # a 2-minute check of the machinery
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from objectives.backend import build_task
from objectives.batch import call_model
from objectives.train import make_optimizer
from study.api import run_study
from study.config import StudyConfig
from study.record import read_record, study_metric
from study.scaling import scaled_lr


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


def run_grid(task, space: dict, config: StudyConfig, seeds: int, log) -> dict[tuple, Cell]:
    cells: dict[tuple, Cell] = {}
    for b in space["batch_sizes"]:
        for rule in space["scaling_rules"]:
            cell = cells.setdefault((b, rule), Cell(b, rule))
            lr = scaled_lr(rule, config.base_lr, config.base_batch_size, b)
            for seed in range(seeds):
                value, seconds = plain_run(task, b, lr, config.optimizer, config.epochs, seed)
                cell.values.append(value if math.isfinite(value) else float("nan"))
                cell.seconds.append(seconds)
            log(
                f"  grid batch {b:>5} {rule:<6} mean {cell.mean:.4f} "
                f"[{min(cell.values):.4f}-{max(cell.values):.4f}] {cell.time:.2f} s"
            )
    return cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--model", default=StudyConfig.model, help="for built-in tasks (synthetic: mlp)")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--epochs", type=int, default=StudyConfig.epochs)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=StudyConfig.tolerance)
    p.add_argument("--quick", action="store_true", help="tiny study and grid: checks it runs")
    p.add_argument("--save-grid", help="write the grid's runs to this JSON file")
    p.add_argument("--grid-json", help="read the grid from this JSON file instead of training")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs, args.seeds = 12, 2, 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(tempfile.mkdtemp(prefix="bench-answer-"))
    config = StudyConfig(
        task=args.task,
        model=args.model,
        trials=args.trials,
        epochs=args.epochs,
        tolerance=args.tolerance,
        storage=f"sqlite:///{folder / 'study.db'}",
        artifact_dir="none",
        device="cpu",
    )
    print(
        f"study: --task {args.task} --model {args.model} --trials {args.trials} --epochs "
        f"{args.epochs} (defaults otherwise)"
    )
    started = time.process_time()
    result = run_study(config, out=io.StringIO())
    study_cpu = time.process_time() - started
    study = result.study
    metric = study_metric(study)
    sign = metric.sign
    answer = result.recommendation
    print(f"answer: {answer.get('statement')}")
    records = [read_record(t, metric=metric) for t in study.trials]
    train_size = study.user_attrs["task_info"]["train_size"]
    study_sample_epochs = sum((r.epochs_completed or 0) * train_size for r in records)
    study_seconds = sum(r.train_time_s or 0.0 for r in records)

    task = build_task(config)
    space = study.user_attrs["space"]
    print(
        f"grid: {len(space['batch_sizes'])} batch sizes x {space['scaling_rules']} x "
        f"{args.seeds} seeds, {args.epochs} epochs, unpruned, plain loop"
    )
    grid_started = time.process_time()
    if args.grid_json:
        saved = json.loads(Path(args.grid_json).read_text())
        cells = {(c["batch_size"], c["rule"]): Cell(**c) for c in saved["cells"]}
        grid_cpu = float(saved["cpu_s"])
    else:
        cells = run_grid(task, space, config, args.seeds, print)
        grid_cpu = time.process_time() - grid_started
    if args.save_grid:
        Path(args.save_grid).write_text(
            json.dumps(
                {"cpu_s": grid_cpu, "cells": [dataclasses.asdict(c) for c in cells.values()]}
            )
        )
    grid_runs = sum(len(c.values) for c in cells.values())
    grid_sample_epochs = grid_runs * args.epochs * train_size
    grid_seconds = sum(sum(c.seconds) for c in cells.values())
    best = max(cells.values(), key=lambda c: sign * c.mean)
    within = [c for c in cells.values() if sign * (best.mean - c.mean) <= args.tolerance]
    grid_fast = min(within, key=lambda c: c.time)
    print(
        f"grid best: batch {best.batch_size} {best.rule} {best.mean:.4f}; grid fastest within "
        f"{args.tolerance}: batch {grid_fast.batch_size} {grid_fast.rule} {grid_fast.mean:.4f} "
        f"({best.time / grid_fast.time:.1f}x faster than the best)"
    )
    for key in ("most_accurate", "fastest_within"):
        named = answer.get(key)
        if not named:
            print(f"{key}: none named ({answer.get('reason', answer.get('statement'))})")
            continue
        cell = cells.get((named["batch_size"], named["scaling_rule"]))
        if cell is None:
            print(f"{key}: batch {named['batch_size']} {named['scaling_rule']} not in the grid")
            continue
        regret = max(0.0, sign * (best.mean - cell.mean))  # the grid best is the best
        verdict = "within" if regret <= args.tolerance else "NOT within"
        print(
            f"{key}: batch {cell.batch_size} {cell.rule}: study {named['val_mean']:.4f}, grid "
            f"{cell.mean:.4f}; regret {regret:.4f} ({verdict} {args.tolerance}); grid time "
            f"{cell.time:.2f} s vs the grid's fastest within tolerance {grid_fast.time:.2f} s"
        )
    print(
        f"compute: study {study_sample_epochs:,} sample-epochs = "
        f"{study_sample_epochs / grid_sample_epochs:.0%} of the grid's {grid_sample_epochs:,}; "
        f"training seconds {study_seconds:.0f} vs {grid_seconds:.0f} "
        f"({study_seconds / grid_seconds:.0%}); process CPU {study_cpu:.0f} s vs {grid_cpu:.0f} s"
    )


if __name__ == "__main__":
    main()
