#!/usr/bin/env python
"""Probe the hardware: the largest batch whose training step fits in memory, and its speed.

Prints a table (batch size, predicted and measured memory of one training step with its
evaluation batch, training samples/s) with the cap and the knee; ``--json`` prints the same as
JSON (the dict a study stores under its ``probe`` attribute).

Example:
    python scripts/probe.py --task digits
    python scripts/probe.py --task synthetic --synthetic-features 256 --hidden 2048 \\
        --memory-budget 40MiB --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.cli import add_task_arguments, byte_size  # noqa: E402
from study.config import StudyConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find the largest batch size whose training step fits in memory, and the "
        "throughput of every power of two up to it."
    )
    add_task_arguments(parser, StudyConfig(model="mlp"))
    parser.add_argument("--optimizer", default="adam", choices=("sgd", "adam", "adamw"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="the trials' autocast (fp16 needs CUDA)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="probe through torch.compile, as trials would"
    )
    parser.add_argument(
        "--memory-budget",
        type=byte_size,
        help="bytes one training step may use, e.g. 6GiB, 512MiB or 1048576 "
        "(default: the device's free memory less --memory-margin)",
    )
    parser.add_argument(
        "--memory-margin",
        type=float,
        default=None,
        help="fraction of the free memory left unused when no --memory-budget is given "
        "(default 0.1)",
    )
    parser.add_argument("--min-batch-size", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--timed-steps", type=int, default=3, help="fewest timed steps per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_budget is not None and args.memory_margin is not None:
        parser.error(
            "--memory-margin applies to the detected free memory; with --memory-budget give "
            "the budget you want the step to fit"
        )
    from objectives.launch import build_task
    from objectives.probe import probe_batch_size

    try:
        task = build_task(args)
        result = probe_batch_size(
            task,
            optimizer=args.optimizer,
            device=args.device,
            memory_budget=args.memory_budget,
            memory_margin=0.1 if args.memory_margin is None else args.memory_margin,
            min_batch_size=args.min_batch_size,
            max_batch_size=args.max_batch_size,
            precision=args.precision,
            compile=args.compile,
            timed_steps=args.timed_steps,
            seed=args.seed,
        )
    except ValueError as exc:  # ProbeError, TaskError, ModelError and bad arguments
        print(f"probe: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
