#!/usr/bin/env python
"""Benchmark: the probe's search against doubling until out of memory, side by side.

For each scenario (same task, model, optimizer, device and memory budget) it runs, in one
process and one after the other:

- ``probe (search)``: :func:`objectives.probe.probe_batch_size` without the throughput table,
- ``probe (+ throughput)``: the same with its throughput table (what a study runs),
- ``doubling x3``: PyTorch Lightning's ``mode="power"`` search (start at 2, double after each
  try of 3 training steps, stop at the first failure), see
  :func:`doubling_search` below,
- ``doubling (+ throughput)``: the doubling search's steps plus the probe's throughput table
  over the same ladder (a study needs the table from either search; its steps are the same
  when the caps agree, its time is the probe's table time), so the two sides count the same
  kind of steps.

On CPU "out of memory" is emulated as the measured step exceeding the budget (provoking a
real out-of-RAM is not safe); on CUDA a real out-of-memory error also counts. Both methods
measure a step the same way, so the columns compare search strategies. Steps are training
steps (forward, backward, optimizer step); a "+n" is the throughput table's timed steps.

Example:
    python benchmarks/bench_probe.py
    python benchmarks/bench_probe.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported in main(), so that --help answers at once
    import torch

    from objectives.tasks import Task

#: Timed runs per method and scenario; the best is shown.
REPEATS = 2
#: (label, load_task keyword arguments, memory budget or None for free memory less 10%)
SCENARIOS = [
    ("digits mlp 128,64", dict(name="digits"), None),
    (
        "synthetic 256->2048->4",
        dict(name="synthetic", hidden=(2048,), synthetic_features=256),
        "40MiB",
    ),
    (
        "same, tight budget",
        dict(name="synthetic", hidden=(2048,), synthetic_features=256),
        "24MiB",
    ),
    (
        "synthetic 64k, 128->1024->4",
        dict(name="synthetic", hidden=(1024,), synthetic_features=128, synthetic_samples=65536),
        "256MiB",
    ),
]


@dataclass
class DoublingResult:
    """The Lightning-style doubling search's answer and its cost (for the benchmark)."""

    max_batch_size: int
    steps_run: int
    seconds: float
    tries: list[tuple[int, int | None]]


def doubling_search(
    task: Task,
    *,
    memory_budget: int,
    optimizer: str = "adam",
    device: str | torch.device = "cpu",
    start: int = 2,
    max_batch_size: int | None = None,
    steps_per_trial: int = 3,
    seed: int = 0,
) -> DoublingResult:
    """The baseline the probe is compared with: double from ``start`` until a step fails.

    As PyTorch Lightning's batch-size finder (``mode="power"``, ``init_val=2``,
    ``steps_per_trial=3``) does: each try runs ``steps_per_trial`` training steps; the search
    stops at the first failure or at the largest power of two not above the training set.
    "Failure" is a real out-of-memory error or, as on CPU where running out of RAM is not
    safe to provoke, the try's first step measuring over ``memory_budget`` (measured exactly
    as the probe measures, with one evaluation batch).

    Example (from the repository's root)::

        >>> from objectives.tasks import load_task
        >>> doubling_search(load_task("digits"), memory_budget=2**28).max_batch_size
        1024

    Args:
        task: The task; a fresh model is built with ``task.build_model()``.
        memory_budget: Bytes a step may use.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        start: The first batch size tried.
        max_batch_size: Optional upper end of the search.
        steps_per_trial: Training steps per try.
        seed: Seeds the model and batches (the caller's generators are restored).
    """
    # The baseline measures a step exactly as the probe does: through the probe's own rig.
    from objectives.probe import _check_device, _no_trace, _settings
    from objectives.probe_memory import ProbeError
    from objectives.probe_rig import StepRig
    from study.units import format_bytes, parse_bytes

    dev = _check_device(device)
    memory_budget = parse_bytes(memory_budget)
    for name, value in (("start", start), ("steps_per_trial", steps_per_trial)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    upper = min(len(task.train), max_batch_size or len(task.train))
    started = time.perf_counter()
    tries: list[tuple[int, int | None]] = []
    last_ok = 0
    with _no_trace(dev, seed):
        rig = StepRig(task, _settings(optimizer, dev, "fp32", False, seed))
        try:
            size = start
            while size <= upper:
                peak, _ = rig.measure(size)
                tries.append((size, peak))
                if peak is None or peak > memory_budget:
                    break
                if steps_per_trial > 1 and rig.run_steps(size, steps_per_trial - 1) is None:
                    tries[-1] = (size, None)  # ran out of memory in the try's later steps
                    break
                last_ok = size
                size *= 2
        finally:
            rig.close()
    if last_ok == 0:
        raise ProbeError(
            f"memory budget {format_bytes(memory_budget)} is too small for batch {start}",
            budget_bytes=memory_budget,
            batch_size=start,
            needed_bytes=tries[0][1] if tries else None,
        )
    return DoublingResult(last_ok, rig.steps, time.perf_counter() - started, tries)


def main(argv: list[str] | None = None) -> int:
    from study.config import OPTIMIZERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    args = parser.parse_args(argv)

    import torch

    from objectives.memory import PeakMemory
    from objectives.probe import probe_batch_size
    from objectives.probe_memory import available_memory
    from objectives.tasks import load_task
    from study.units import format_bytes

    with PeakMemory(args.device):  # start the profiler once, so no method pays its set-up
        torch.ones(4, device=args.device).sum()
    # One untimed run warms up the libraries (thread pools, kernels) for both methods.
    doubling_search(load_task("digits"), device=args.device, memory_budget=2**30)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Probe vs doubling until out of memory: device {args.device}, optimizer "
        f"{args.optimizer}, torch {torch.__version__}, {os.cpu_count()} CPUs "
        f"({torch.get_num_threads()} torch threads), {platform.machine()}, "
        f"load average {load:.1f} at start"
    )
    print(
        "Steps: training steps (each probe/doubling measurement adds one evaluation batch); "
        "'+n' = throughput-table steps. Seconds: wall clock of the whole call, the best of "
        f"{REPEATS} alternating runs (the throughput-table row: one run).\n"
    )
    header = f"{'scenario':<28} {'budget':>10}  {'method':<22} {'cap':>6} {'steps':>9} {'s':>7}"
    print(header)
    print("-" * len(header))
    for label, task_kwargs, budget_text in SCENARIOS:
        task_kwargs = dict(task_kwargs)
        task = load_task(task_kwargs.pop("name"), **task_kwargs)
        if budget_text is None:
            free, _ = available_memory(args.device)
            budget = int(free * 0.9)
        else:
            from study.units import parse_bytes

            budget = parse_bytes(budget_text)

        search_s = doubling_s = float("inf")
        for _ in range(REPEATS):  # alternate, so that load changes hit both alike
            started = time.perf_counter()
            search = probe_batch_size(
                task,
                optimizer=args.optimizer,
                device=args.device,
                memory_budget=budget,
                measure_throughput=False,
            )
            search_s = min(search_s, time.perf_counter() - started)
            doubling = doubling_search(
                task, optimizer=args.optimizer, device=args.device, memory_budget=budget
            )
            doubling_s = min(doubling_s, doubling.seconds)
        started = time.perf_counter()
        full = probe_batch_size(
            task, optimizer=args.optimizer, device=args.device, memory_budget=budget
        )
        full_s = time.perf_counter() - started
        rows = [
            ("probe (search)", search.max_batch_size, f"{search.steps_run}", search_s),
            (
                "probe (+ throughput)",
                full.max_batch_size,
                f"{full.steps_run}+{full.throughput_steps}",
                full_s,
            ),
            (
                "doubling x3",
                doubling.max_batch_size,
                f"{doubling.steps_run}",
                doubling_s,
            ),
            (  # the same table over the same ladder: what a study needs from either search
                "doubling (+ throughput)",
                doubling.max_batch_size,
                f"{doubling.steps_run}+{full.throughput_steps}",
                doubling_s + (full_s - search_s),
            ),
        ]
        for i, (method, cap, steps, seconds) in enumerate(rows):
            first = i == 0
            print(
                f"{label if first else '':<28} "
                f"{format_bytes(budget) if first else '':>10}  "
                f"{method:<22} {cap:>6} {steps:>9} {seconds:>7.2f}"
            )
        table = full.throughput_steps
        agree = "agree" if doubling.max_batch_size == search.max_batch_size else "differ"
        print(
            f"{'':<28} {'':>10}  doubling / probe (search): "
            f"{doubling.steps_run / max(search.steps_run, 1):.1f}x steps, "
            f"{doubling_s / max(search_s, 1e-9):.1f}x time; with the throughput table on both "
            f"sides: {(doubling.steps_run + table) / max(full.steps_run + table, 1):.2f}x "
            f"steps; caps {agree}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
