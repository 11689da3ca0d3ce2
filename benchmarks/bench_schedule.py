"""Does the learning-rate schedule change the batch-size answer? Constant beside cosine.

Trains every batch size of a built-in task (powers of two from ``--min-batch`` to
``--max-batch``) with ``--seeds`` seeds under each schedule, unpruned, at the peak learning
rate the ``--scaling`` rule gives, with the tool's own training loop
(:func:`objectives.train.train_task`), and prints per schedule and batch size the mean final
validation metric with its standard deviation over seeds, then per schedule: the most
accurate batch size and the largest batch whose mean is within ``--tolerance`` of it (the
answer's question, by the means; no test). With ``--schedules constant`` and two values of
``--epochs`` it shows whether a shorter budget's answer carries over (docs/cost.md).

    python benchmarks/bench_schedule.py                  # digits, mlp, 10 epochs, 3 seeds
    python benchmarks/bench_schedule.py --epochs 20 --seeds 5 --optimizer sgd --scaling linear
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from objectives.tasks import load_task
from objectives.train import TrainSettings, train_task
from study.scaling import scaled_lr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--scaling", default="sqrt", choices=("linear", "sqrt", "none"))
    p.add_argument("--base-lr", type=float, default=1e-3)
    p.add_argument("--base-batch", type=int, default=32)
    p.add_argument("--min-batch", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--schedules", default="constant,cosine")
    args = p.parse_args()
    torch.set_num_threads(1)
    task = load_task(args.task, model=args.model)
    batches = []
    b = args.min_batch
    while b <= min(args.max_batch, len(task.train)):
        batches.append(b)
        b *= 2
    schedules = args.schedules.split(",")
    print(
        f"{args.task} ({args.model}, {task.metric.name}), {args.optimizer}, {args.scaling} rule "
        f"from {args.base_lr:g} at {args.base_batch}, {args.epochs} epochs, {args.seeds} seeds a "
        "cell; final validation metric, mean +- SD over seeds"
    )
    means: dict[str, dict[int, float]] = {s: {} for s in schedules}
    started = time.perf_counter()
    print(f"{'batch':>6} " + " ".join(f"{s:>18}" for s in schedules), flush=True)
    for batch in batches:
        lr = scaled_lr(args.scaling, args.base_lr, args.base_batch, batch)
        cells = []
        for schedule in schedules:
            values = []
            for seed in range(args.seeds):
                settings = TrainSettings(
                    args.epochs,
                    batch,
                    batch,
                    lr=lr,
                    optimizer=args.optimizer,
                    seed=1000 + seed,
                    lr_schedule=schedule,
                )
                values.append(train_task(task, settings).val_metric)
            mean, sd = statistics.mean(values), statistics.stdev(values)
            means[schedule][batch] = mean
            cells.append(f"{mean:.4f} +- {sd:.4f}")
        print(f"{batch:>6} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    sign = 1 if task.metric.direction == "maximize" else -1
    for schedule in schedules:
        row = means[schedule]
        best = max(row, key=lambda b: sign * row[b])
        within = max(b for b, m in row.items() if sign * (row[best] - m) <= args.tolerance)
        print(
            f"{schedule}: best batch {best} ({row[best]:.4f}); largest within "
            f"{args.tolerance:g}: {within} ({row[within]:.4f})"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
