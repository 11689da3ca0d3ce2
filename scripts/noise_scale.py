"""Estimate the gradient noise scale B_simple of a task, and the batch sizes it recommends.

    python scripts/noise_scale.py --task digits [--epochs 3] [--json]

Thin entry point over objectives.noise.noise_scale_over_training; see README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.cli import OneLineParser, add_task_arguments, fail  # noqa: E402
from study.config import StudyConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="noise_scale.py", description=__doc__.splitlines()[0])
    add_task_arguments(p, StudyConfig(model="mlp"))
    p.add_argument("--epochs", type=int, default=3, help="epochs of training between estimates")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of that training")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of that training")
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam", "adamw"))
    p.add_argument("--b-small", type=int, default=8, help="small batch of the estimator")
    p.add_argument("--b-big", type=int, default=128, help="big batch, a multiple of --b-small")
    p.add_argument("--repeats", type=int, default=16, help="big batches per estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from objectives.launch import build_task
    from objectives.models import ModelError
    from objectives.noise import noise_scale_over_training
    from objectives.tasks import TaskError

    try:
        task = build_task(args)
        result = noise_scale_over_training(
            task,
            args.epochs,
            args.batch_size,
            args.lr,
            args.optimizer,
            args.b_small,
            args.b_big,
            args.repeats,
            args.seed,
            args.device,
        )
    except (TaskError, ModelError, ValueError) as exc:
        fail(str(exc))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["measured_with"]
    print(
        f"gradient noise scale of {args.task} ({m['train_size']} training samples), from "
        f"gradient norms at batches {m['b_small']} and {m['b_big']}, {m['repeats']} repeats "
        f"each; training between estimates: batch {m['train_batch_size']}, lr {m['lr']}, "
        f"{m['optimizer']}"
    )
    print(
        f"{'epoch':>5} {'B_simple (samples)':>19} {'+/- s.e.':>9} {'tr(Sigma)':>11} {'|G|^2':>11}"
    )
    for e in result["per_epoch"]:
        print(
            f"{e['epoch']:>5} {e['b_simple']:>19.1f} {e['b_simple_se']:>9.1f} "
            f"{e['trace_sigma']:>11.4g} {e['grad_norm_sq']:>11.4g}"
        )
    low, high = result["recommended_range"]
    print(
        f"recommended batch size: {result['recommended_batch_size']} (range {low}-{high}: "
        "below B_simple doubling the batch nearly halves the steps; above it, it mostly "
        "wastes compute)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
