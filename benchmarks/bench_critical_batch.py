"""Is the noise scale right? Measured critical batch size beside the B_simple estimate.

For each power-of-two batch size, trains from the same initialisation with a small grid of
learning rates (the rule's value times each multiplier) and counts optimizer steps until the
validation accuracy first reaches --target; the best learning rate's count is that batch's
steps-to-target. Fits S = S_min (1 + B_crit / B) and prints B_crit beside B_simple from the
gradient-noise estimator on the same task.

    python benchmarks/bench_critical_batch.py [--task digits] [--target 0.95]
"""

from __future__ import annotations

import argparse
import time

import torch

from objectives.critical import fit_critical_batch, steps_to_target
from objectives.data import as_tensors
from objectives.noise import noise_scale_over_training
from objectives.tasks import load_task
from study.scaling import scaled_lr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--target", type=float, default=0.95, help="validation accuracy to reach")
    p.add_argument("--batch-sizes", default="8,16,32,64,128,256,512")
    p.add_argument("--base-lr", type=float, default=1e-3)
    p.add_argument("--base-batch-size", type=int, default=32)
    p.add_argument("--rule", default="sqrt", choices=("linear", "sqrt", "none"))
    p.add_argument("--lr-multipliers", default="0.5,1,2,4")
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    task = load_task(args.task, model=args.model, seed=args.seed)
    train, val = as_tensors(task.train), as_tensors(task.val)
    torch.manual_seed(args.seed)
    init = task.build_model().state_dict()
    multipliers = [float(m) for m in args.lr_multipliers.split(",")]
    print(
        f"steps to {args.target:.2f} validation accuracy on {args.task} ({len(train)} training "
        f"samples, model {args.model}, adam); lr = {args.rule} rule from {args.base_lr} at "
        f"{args.base_batch_size} times {multipliers}; validation every {args.eval_every} steps"
    )
    print(f"{'batch':>6} {'best lr':>9} {'steps':>7} {'samples':>9} {'seconds':>8}")
    sizes, steps = [], []
    for b in (int(v) for v in args.batch_sizes.split(",")):
        best: tuple[int, float] | None = None
        started = time.perf_counter()
        for m in multipliers:
            lr = m * scaled_lr(args.rule, args.base_lr, args.base_batch_size, b)
            model = task.build_model()
            model.load_state_dict(init)
            s = steps_to_target(
                model,
                train,
                val,
                b,
                lr,
                args.target,
                args.max_steps,
                args.eval_every,
                seed=args.seed,
            )
            if s is not None and (best is None or s < best[0]):
                best = (s, lr)
        seconds = time.perf_counter() - started
        if best is None:
            print(f"{b:>6} {'-':>9} {'never':>7} {'-':>9} {seconds:>8.1f}")
            continue
        sizes.append(b)
        steps.append(best[0])
        print(f"{b:>6} {best[1]:>9.2e} {best[0]:>7} {best[0] * b:>9} {seconds:>8.1f}")
    fit = fit_critical_batch(sizes, steps)
    noise = noise_scale_over_training(
        task, epochs=3, batch_size=args.base_batch_size, lr=args.base_lr, seed=args.seed
    )
    per_epoch = ", ".join(f"{e['b_simple']:.0f}" for e in noise["per_epoch"])
    print(
        f"fit S = S_min (1 + B_crit / B): S_min {fit.s_min:.0f} steps, E_min {fit.e_min:.0f} "
        f"samples, rms residual {fit.residual:.0f} steps"
    )
    print(f"measured critical batch B_crit = E_min / S_min = {fit.b_crit:.0f} samples")
    print(
        f"noise-scale estimate B_simple = {noise['b_simple']:.0f} at initialisation; "
        f"per epoch 0..3: {per_epoch}; recommended {noise['recommended_batch_size']}"
    )


if __name__ == "__main__":
    main()
