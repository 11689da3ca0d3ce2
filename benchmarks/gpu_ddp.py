"""GPU benchmark: samples per second of one trial on 1, 2, 4 and 8 GPUs (data-parallel).

Trains the synthetic task's MLP exactly as a trial on K devices does
(:class:`objectives.distributed.TrialGroup`: K processes, NCCL, DistributedDataParallel,
each GPU a fixed per-device micro-batch, so the global batch is ``micro x K``), for every K
up to the GPUs visible, and prints the samples per second of the whole group over the
training epochs after the first (evaluation excluded), and the scaling efficiency against
one GPU (``rate(K) / (K x rate(1))``). Communication is inside the figure: it is what a
trial's throughput, and so the answer's speed-ups, include.

    CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 python benchmarks/gpu_ddp.py \\
        [--micro-batch 512] [--hidden 4096,4096] [--epochs 3] [--precision bf16]
"""

from __future__ import annotations

import argparse

import torch


def rate(devices: int, args: argparse.Namespace) -> float:
    """Samples per second of the group over the epochs after the first."""
    from objectives.backend import build_task
    from objectives.data import place
    from objectives.distributed import Job, TrialGroup
    from objectives.train import TrainSettings, make_step, train_model
    from study.config import StudyConfig

    hidden = tuple(int(h) for h in args.hidden.split(","))
    config = StudyConfig(
        task="synthetic",
        model="mlp",
        hidden=hidden,
        synthetic_samples=args.samples,
        synthetic_features=args.features,
        synthetic_classes=10,
        device="cuda",
    )
    task = build_task(config)
    train, val = (place(getattr(task, s), "cuda:0", task.collate, s) for s in ("train", "val"))
    torch.manual_seed(0)
    model = task.build_model().to("cuda:0")
    settings = TrainSettings(
        args.epochs,
        args.micro_batch * devices,
        args.micro_batch,
        lr=1e-3,
        device="cuda:0",
        precision=args.precision,
        seed=1,
    )
    times: list[float] = []

    def on_epoch(epoch) -> None:
        times.append(epoch.train_time_s)

    if devices == 1:
        result = train_model(model, train, val, settings, on_epoch, task=task)
    else:
        group = TrialGroup(config, "cuda", devices)
        with group:
            step = make_step(model, settings, task)
            lead = group.start(model, step, Job(settings, 0, None), on_epoch)
            result = train_model(
                model, train, val, settings, lead, step=step, task=task, parallel=group.ranks
            )
    per_epoch = result.samples_seen / len(times)  # every epoch makes the same updates
    later = times[1:] or times
    return per_epoch * len(later) / sum(later)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=512)
    parser.add_argument("--hidden", default="4096,4096")
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise SystemExit("error: no CUDA GPU is visible; run this on a GPU machine")
    counts = [k for k in (1, 2, 4, 8) if k <= gpus]
    print(
        f"synthetic MLP {args.hidden}, {args.features} features, {args.samples} samples, "
        f"{args.precision}, micro-batch {args.micro_batch} per GPU, {args.epochs} epochs "
        f"(first excluded), {torch.cuda.get_device_name(0)} x {gpus}"
    )
    print(f"{'GPUs':>4} {'global batch':>12} {'samples/s':>11} {'efficiency':>10}")
    base = None
    for k in counts:
        r = rate(k, args)
        base = base or r
        print(f"{k:>4} {args.micro_batch * k:>12} {r:>11,.0f} {r / (k * base):>10.2f}")


if __name__ == "__main__":
    main()
