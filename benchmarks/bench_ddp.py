"""CPU benchmark: what a trial on two processes costs against one process, same global batch.

Trains the same model from the same start on the same data with the same global batch, once
in one process (micro-batch = the global batch) and once as a real 2-process gloo group
(:class:`objectives.distributed.TrialGroup`: each rank trains half of every update), each run
in a fresh subprocess. For each it prints the wall time and the CPU time (user + sys of the
run's processes, its helper rank included: ``RUSAGE_CHILDREN``) of the whole run (start-up,
group formation, training, evaluation), the training time the loop measured and its samples
per second over the group, and the validation accuracy (equal by construction: the updates
are the same). The ratio row is the overhead of the group.

Then it times the evaluation of a validation split (the synthetic task's) in a 2-process
group both ways a trial could do it: rank 0 alone while the other waits, or sharded over both
ranks with the sums added (:meth:`objectives.ranks.Ranks.evaluate`, what trials do).

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py [--epochs 10] [--batch-size 64]
                                                     [--hidden 1024,1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def train_once(devices: int, epochs: int, batch_size: int, hidden: tuple[int, ...]) -> dict:
    """In this process: train digits on ``devices`` processes; what it measured."""
    import torch

    from objectives.backend import build_task
    from objectives.data import place
    from objectives.distributed import Job, TrialGroup
    from objectives.train import TrainSettings, make_step, train_model
    from study.config import StudyConfig

    config = StudyConfig(task="digits", model="mlp", hidden=hidden)
    task = build_task(config)
    train, val = (place(getattr(task, s), "cpu", task.collate, s) for s in ("train", "val"))
    torch.manual_seed(0)
    model = task.build_model()
    micro = batch_size // devices
    settings = TrainSettings(epochs, batch_size, micro, lr=0.05, optimizer="sgd", seed=1)
    if devices == 1:
        result = train_model(model, train, val, settings, task=task)
    else:
        group = TrialGroup(config, "cpu", devices)
        with group:
            step = make_step(model, settings, task)
            on_epoch = group.start(model, step, Job(settings, 0, None), None)
            result = train_model(
                model, train, val, settings, on_epoch, step=step, task=task, parallel=group.ranks
            )
    return {
        "train_time_s": result.train_time_s,
        "samples_per_s": result.samples_per_s,
        "val": result.val_metric,
    }


def measure(devices: int, args: argparse.Namespace) -> dict:
    """One run in a fresh subprocess: wall and CPU seconds of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(devices), "--epochs", str(args.epochs),
         "--batch-size", str(args.batch_size), "--hidden", args.hidden],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": wall, "cpu_s": cpu}


def _evaluation_rank(rank: int, port: int, rounds: int, out: Any) -> None:
    """One rank of the evaluation timing: rank 0 alone against both ranks' shards."""
    import torch
    import torch.distributed as dist

    from objectives.backend import build_task
    from objectives.data import place
    from objectives.ranks import Ranks
    from objectives.train import evaluate
    from study.config import StudyConfig

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    config = StudyConfig(
        task="synthetic", model="mlp", synthetic_samples=40_000, hidden=(1024, 1024)
    )
    task = build_task(config)
    val = place(task.val, "cpu", task.collate, "val")
    torch.manual_seed(0)
    model = task.build_model()
    ranks = Ranks(rank, 2, "cpu")
    alone, sharded = [], []
    for _ in range(rounds):
        dist.barrier()
        started = time.perf_counter()
        if rank == 0:
            evaluate(model, val, 512, "cpu", task=task)
        dist.barrier()  # the others wait for rank 0's value (as for its decision)
        alone.append(time.perf_counter() - started)
        dist.barrier()
        started = time.perf_counter()
        ranks.evaluate(evaluate, model, val, 512, task=task)
        sharded.append(time.perf_counter() - started)
    if rank == 0:
        out.put((len(val), statistics.median(alone), statistics.median(sharded)))
    dist.destroy_process_group()


def evaluation_timing(rounds: int) -> None:
    """Print the validation split's evaluation in a 2-process group: rank 0 alone (the others
    waiting) against sharded over both ranks and summed."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    procs = [context.Process(target=_evaluation_rank, args=(r, port, rounds, out)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
        if proc.exitcode != 0:
            for other in procs:
                other.kill()
            raise SystemExit(f"error: an evaluation rank ended with {proc.exitcode}")
    size, alone, sharded = out.get()
    print(
        f"\nevaluation of the validation split ({size:,} samples, synthetic MLP 1024,1024, "
        f"batch 512), 2 processes, median of {rounds} rounds:"
    )
    print(f"  rank 0 alone, the other waiting: {alone * 1000:8.1f} ms")
    print(f"  sharded over both, summed:       {sharded * 1000:8.1f} ms  ({alone / sharded:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", default="1024,1024")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    if args.one is not None:
        print(json.dumps(train_once(args.one, args.epochs, args.batch_size, hidden)))
        return
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.repeats):  # interleaved: 1, 2, 1, 2, ...
        for devices in runs:
            runs[devices].append(measure(devices, args))
    print(
        f"digits, MLP {args.hidden}, SGD, global batch {args.batch_size}, {args.epochs} epochs, "
        f"median of {args.repeats} runs each (OMP_NUM_THREADS=1, {os.cpu_count()} cores)"
    )
    header = (
        f"{'processes':>9} {'micro':>5} {'wall s':>7} {'CPU s (user+sys)':>16} "
        f"{'train s':>7} {'samples/s':>9} {'val acc':>7}"
    )
    print(header)
    med: dict[int, dict[str, float]] = {}
    for devices, rows in runs.items():
        med[devices] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        m = med[devices]
        print(
            f"{devices:>9} {args.batch_size // devices:>5} {m['wall_s']:>7.2f} "
            f"{m['cpu_s']:>16.2f} {m['train_time_s']:>7.2f} {m['samples_per_s']:>9,.0f} "
            f"{m['val']:>7.4f}"
        )
    ratio = {k: med[2][k] / med[1][k] for k in ("wall_s", "cpu_s", "train_time_s")}
    print(
        f"{'2 / 1':>9} {'':>5} {ratio['wall_s']:>7.2f} {ratio['cpu_s']:>16.2f} "
        f"{ratio['train_time_s']:>7.2f}"
    )
    evaluation_timing(rounds=5)


if __name__ == "__main__":
    main()
