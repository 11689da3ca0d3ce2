"""Is the noise scale right? Measured critical batch size beside the B_simple estimate.

For each power-of-two batch size, from the largest down, trains from the same initialisation
at learning rates on a grid of factors of 2 around the rule's value and counts optimizer steps
until the validation accuracy first reaches --target; the best learning rate's count is that
batch's steps-to-target. Two things keep the count honest:

- the learning rate is tuned until its optimum is *inside* the grid: while the fastest rate is
  the grid's smallest or largest, the grid grows by a factor of 2 on that side (up to
  --max-extensions per side); a batch whose optimum stays on an edge is marked ``edge``;
- validation is checked often enough: at most 5% of the counted steps between checks. Checks
  are every ``max(1, floor(0.05 S))`` steps with ``S`` the count of the next larger batch (steps
  do not fall as the batch shrinks, so this is fine enough); a count that comes out coarser than
  5% is measured again with a finer interval.

Then fits ``S = S_min (1 + B_crit / B)`` and prints B_crit beside B_simple (with its standard
error) from ``objectives.noise.noise_scale_over_training`` on the same task.

    python benchmarks/bench_critical_batch.py [--task digits] [--target 0.95]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import torch

from objectives.critical import fit_critical_batch, steps_to_target
from objectives.data import as_tensors
from objectives.noise import noise_scale_over_training
from objectives.tasks import load_task
from study.scaling import scaled_lr

#: Most steps between two validation checks, as a fraction of the steps counted.
CHECK_FRACTION = 0.05


def check_interval(steps_guess: int | None) -> int:
    """Steps between validation checks for a count expected to be at least ``steps_guess``."""
    if not steps_guess:
        return 1
    return max(1, math.floor(CHECK_FRACTION * steps_guess))


def tune_lr(
    run: Callable[[float], int | None],
    multipliers: list[float],
    max_extensions: int = 4,
) -> tuple[dict[float, int | None], float | None, bool]:
    """Run each multiplier, widening the grid (factors of 2) until the fastest is inside it.

    Args:
        run: ``run(multiplier) -> steps`` (``None``: never reached the target).
        multipliers: The starting grid (any order; widened by halving the smallest or
            doubling the largest).
        max_extensions: Most widenings on each side.

    Returns:
        ``(steps by multiplier, best multiplier or None, inside)``; ``inside`` is whether every
        multiplier reaching the fewest steps has a tried multiplier on each side.

    Example:
        >>> steps = {0.5: 90, 1: 60, 2: 40, 4: 35, 8: 38, 16: None}
        >>> tried, best, inside = tune_lr(lambda m: steps.get(m), [0.5, 1, 2, 4])
        >>> best, inside, sorted(tried)
        (4, True, [0.5, 1, 2, 4, 8])
    """
    tried: dict[float, int | None] = {m: run(m) for m in sorted(set(multipliers))}
    widened = {"low": 0, "high": 0}
    while True:
        reached = {m: s for m, s in tried.items() if s is not None}
        grid = sorted(tried)
        if not reached:
            side = "high" if widened["high"] <= widened["low"] else "low"
        else:
            fewest = min(reached.values())
            best = [m for m, s in reached.items() if s == fewest]
            side = "low" if grid[0] in best else "high" if grid[-1] in best else None
            if side is None:
                return tried, min(best), True
        if widened[side] >= max_extensions:
            if not reached:
                other = "low" if side == "high" else "high"
                if widened[other] < max_extensions:
                    side = other
                else:
                    return tried, None, False
            else:
                return tried, min(m for m, s in reached.items() if s == fewest), False
        m = grid[0] / 2 if side == "low" else grid[-1] * 2
        widened[side] += 1
        tried[m] = run(m)


def steps_for_batch(
    run: Callable[[float, int], int | None],
    multipliers: list[float],
    max_extensions: int,
    guess: int | None,
) -> tuple[dict[float, int | None], float | None, bool, int]:
    """Tune the learning rate of one batch size with checks at most 5% of the steps apart.

    ``run(multiplier, check_every) -> steps``. Checks start every
    :func:`check_interval` ``(guess)`` steps; when the best count comes out coarser than
    :data:`CHECK_FRACTION`, the tuning runs again with the finer interval it implies.

    Returns:
        ``(steps by multiplier, best multiplier, inside, check interval)``.
    """
    every = check_interval(guess)
    while True:
        tried, best, inside = tune_lr(
            lambda m, every=every: run(m, every), multipliers, max_extensions
        )
        count = tried.get(best) if best is not None else None
        if count is None or every == 1 or every <= CHECK_FRACTION * count:
            return tried, best, inside, every
        every = check_interval(count)


_SETUP: dict = {}


def _setup(args: argparse.Namespace) -> dict:
    """The task, its splits and one initialisation (built once per process, deterministic)."""
    if not _SETUP:
        task = load_task(args.task, model=args.model, seed=args.seed)
        torch.manual_seed(args.seed)
        _SETUP.update(
            task=task,
            train=as_tensors(task.train),
            val=as_tensors(task.val),
            init=task.build_model().state_dict(),
        )
    return _SETUP


def measure_batch(args: argparse.Namespace, b: int, guess: int | None, threads: int = 0) -> dict:
    """Steps to the target at batch ``b`` with the learning rate tuned (one table row)."""
    if threads:
        torch.set_num_threads(threads)
    setup = _setup(args)
    task, train, val, init = setup["task"], setup["train"], setup["val"], setup["init"]
    rule_lr = scaled_lr(args.rule, args.base_lr, args.base_batch_size, b)

    def run(m: float, every: int) -> int | None:
        model = task.build_model()
        model.load_state_dict(init)
        return steps_to_target(
            model, train, val, b, m * rule_lr, args.target, args.max_steps, every, seed=args.seed
        )

    started = time.perf_counter()
    multipliers = [float(m) for m in args.lr_multipliers.split(",")]
    tried, best, inside, every = steps_for_batch(run, multipliers, args.max_extensions, guess)
    return {
        "batch_size": b,
        "rule_lr": rule_lr,
        "tried": tried,
        "best": best,
        "steps": tried.get(best) if best is not None else None,
        "inside": inside,
        "check_every": every,
        "seconds": time.perf_counter() - started,
    }


def _row(r: dict) -> str:
    grid = f"{min(r['tried']):g}-{max(r['tried']):g}"
    b, count, every = r["batch_size"], r["steps"], r["check_every"]
    if count is None:
        return (
            f"{b:>6} {'-':>9} {'-':>7} {'never':>6} {every:>6} {'-':>6} {'-':>8} {grid:>12} "
            f"{'-':>8} {r['seconds']:>8.1f}"
        )
    grain = "exact" if every == 1 else f"{every / count:.1%}"
    return (
        f"{b:>6} {r['best'] * r['rule_lr']:>9.2e} {r['best']:>7g} {count:>6} {every:>6} "
        f"{grain:>6} {count * b:>8} {grid:>12} {'inside' if r['inside'] else 'edge':>8} "
        f"{r['seconds']:>8.1f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--target", type=float, default=0.95, help="validation accuracy to reach")
    p.add_argument("--batch-sizes", default="8,16,32,64,128,256,512")
    p.add_argument("--base-lr", type=float, default=1e-3)
    p.add_argument("--base-batch-size", type=int, default=32)
    p.add_argument("--rule", default="sqrt", choices=("linear", "sqrt", "none"))
    p.add_argument("--lr-multipliers", default="0.5,1,2,4", help="the starting grid")
    p.add_argument("--max-extensions", type=int, default=4, help="grid widenings per side")
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-seconds", type=float, default=60.0, help="noise-scale time limit")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="batch sizes measured in parallel processes (one thread each; checks every step)",
    )
    args = p.parse_args()
    sizes_asked = sorted((int(v) for v in args.batch_sizes.split(",")), reverse=True)
    train_size = len(_setup(args)["train"])
    print(
        f"steps to {args.target:.2f} validation accuracy on {args.task} ({train_size} training "
        f"samples, model {args.model}, adam); lr = {args.rule} rule from {args.base_lr} at "
        f"{args.base_batch_size} times a grid of factors of 2 starting at "
        f"{args.lr_multipliers}, widened until the fastest is inside; validation at most "
        f"every {CHECK_FRACTION:.0%} of the counted steps ('exact': every step)"
    )
    print(
        f"{'batch':>6} {'best lr':>9} {'x rule':>7} {'steps':>6} {'check':>6} {'grain':>6} "
        f"{'samples':>8} {'grid':>12} {'optimum':>8} {'seconds':>8}",
        flush=True,
    )
    rows = []
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(measure_batch, args, b, None, 1) for b in sizes_asked]
            for future in futures:
                rows.append(future.result())
                print(_row(rows[-1]), flush=True)
    else:
        guess: int | None = None
        for b in sizes_asked:
            rows.append(measure_batch(args, b, guess))
            print(_row(rows[-1]), flush=True)
            guess = rows[-1]["steps"] or guess
    done = [r for r in rows if r["steps"] is not None]
    if len(done) < 2:
        print("fewer than two batch sizes reached the target: no fit")
        return
    edges = [r["batch_size"] for r in done if not r["inside"]]
    fit = fit_critical_batch([r["batch_size"] for r in done], [r["steps"] for r in done])
    noise = noise_scale_over_training(
        _setup(args)["task"],
        epochs=3,
        batch_size=args.base_batch_size,
        lr=args.base_lr,
        seed=args.seed,
        max_seconds=args.noise_seconds,
    )
    per_epoch = ", ".join(
        f"{e['b_simple']:.0f}+/-{e['b_simple_se']:.0f}" for e in noise["per_epoch"]
    )
    print(
        f"fit S = S_min (1 + B_crit / B): S_min {fit.s_min:.0f} steps, E_min {fit.e_min:.0f} "
        f"samples, rms residual {fit.residual:.0f} steps"
        + (f"; optimum on the grid's edge at batches {edges}" if edges else "")
    )
    print(f"measured critical batch B_crit = E_min / S_min = {fit.b_crit:.0f} samples")
    print(
        f"noise-scale estimate B_simple = {noise['b_simple']:.0f} +/- {noise['b_simple_se']:.0f} "
        f"(epoch {noise['epoch']}, {'trusted' if noise['trusted'] else 'NOT trusted'}); "
        f"per epoch 0..3: {per_epoch}; recommended {noise['recommended_batch_size']}"
    )
    if math.isfinite(fit.b_crit) and fit.b_crit > 0:
        print(f"B_simple / B_crit = {noise['b_simple'] / fit.b_crit:.2f}")


if __name__ == "__main__":
    main()
