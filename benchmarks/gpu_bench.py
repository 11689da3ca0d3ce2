"""GPU benchmark: the trial's training loop against a plain hand-written loop, samples per second.

For each precision (and with ``--compile``, compiled too), trains the same model on the same
device-held data at the same batch size two ways, alternating, on one GPU:

- ``trainer``: ``objectives.train.train_model`` exactly as a trial runs it (exact
  accumulation, autocast, gradient scaler for fp16, fused optimizer, per-epoch evaluation).
- ``plain``: the loop a careful person writes by hand: data on the GPU, a permutation per
  epoch, slicing, autocast, ``GradScaler`` for fp16, fused Adam, ``zero_grad(set_to_none)``,
  no synchronisation until the epoch ends.

Throughput is training samples per second over the epochs after the first (the first pays
for cuDNN autotuning and compilation), timed between ``torch.cuda.synchronize`` calls,
evaluation excluded; the median over ``--repeats``. It also counts the synchronising CUDA
calls (``torch.cuda.set_sync_debug_mode``) during one whole trainer epoch: they should be a
few per epoch (the epoch's permutation copy, the loss read, evaluation), never per step.

Without dataset files under ``--data-dir`` it uses random tensors of the dataset's shape and
size (throughput does not depend on pixel values); it says which.

    python benchmarks/gpu_bench.py [--task cifar10] [--model resnet] [--batch-size 256]
                                [--precisions fp32,bf16,fp16] [--compile] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from objectives.train import torch_flags

SIZES = {"mnist": (55_000, 5_000), "fashion-mnist": (55_000, 5_000), "cifar10": (45_000, 5_000)}


def load_data(args: argparse.Namespace, device: torch.device):
    """``(model_factory, train Tensors, val Tensors, source)`` held on ``device``."""
    from objectives.data import Tensors
    from objectives.models import build_model_factory
    from objectives.tasks import TaskError, load_task
    from objectives.vision import DATASETS

    try:
        task = load_task(args.task, model=args.model, data_dir=args.data_dir)
        train, val = (
            Tensors(*d.tensors).to(device) for d in (task.train, task.val)
        )  # TensorDatasets
        return task.build_model, train, val, f"files in {args.data_dir}"
    except TaskError as exc:
        if args.task not in DATASETS:
            raise SystemExit(f"error: {exc}") from None
    shape = DATASETS[args.task].input_shape
    n_train, n_val = SIZES[args.task]
    if args.samples:
        n_train, n_val = args.samples, max(1, args.samples // 10)
    g = torch.Generator().manual_seed(0)

    def fake(n: int) -> Tensors:
        return Tensors(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))

    factory = build_model_factory(args.model, shape, num_classes=10)
    return factory, fake(n_train).to(device), fake(n_val).to(device), "random tensors"


def plain_loop(model, data, batch_size: int, epochs: int, precision: str, device) -> list[float]:
    """A careful hand-written loop; returns each epoch's training seconds."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=on_cuda or None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model.train()
    times = []
    for _ in range(epochs):
        if on_cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        order = torch.randperm(len(data), device=device)
        for i in order.split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(data.x[i]), data.y[i])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if on_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def trainer_loop(model, train, val, batch_size: int, epochs: int, precision: str, compiled: bool,
                 device) -> list[float]:  # fmt: skip
    """``train_model`` as a trial runs it; returns each epoch's training seconds."""
    from objectives.train import TrainSettings, train_model

    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        micro_batch_size=batch_size,
        lr=1e-3,
        device=str(device),
        precision=precision,
        compile=compiled,
        eval_batch_size=batch_size,
    )
    result = train_model(model, train, val, settings)
    return [e.train_time_s for e in result.epochs]


def count_syncs(model, train, val, batch_size: int, precision: str, device) -> int | None:
    """Synchronising CUDA calls during one trainer epoch (evaluation included)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer_loop(model, train, val, batch_size, 1, precision, False, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cifar10", choices=sorted(SIZES))
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--data-dir", default="storage/data")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--epochs", type=int, default=3, help="per measurement; first is warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=0, help="fake training samples (0: full)")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # dry run
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit(
            "gpu_bench.py needs a CUDA GPU and none is visible (torch "
            f"{torch.__version__}, cuda {torch.version.cuda}): run it on a GPU machine"
        )
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the first epoch is a warm-up")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [p for p in args.precisions.split(",") if p]
    if device.type == "cpu":
        precisions = [p for p in precisions if p != "fp16"]
    factory, train, val, source = load_data(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(
        f"{name}, torch {torch.__version__}: task {args.task} ({source}, {len(train)} training "
        f"samples), model {args.model}, batch {args.batch_size}, Adam; samples/s over epochs "
        f"2..{args.epochs} (epoch 1 warms up), median of {args.repeats}"
    )
    print(
        f"{'precision':<10} {'compile':<8} {'plain samples/s':>16} {'trainer samples/s':>18} "
        f"{'trainer/plain':>14} {'peak MiB':>9} {'syncs/epoch':>12}"
    )
    variants = [(p, False) for p in precisions]
    if args.compile:
        variants += [(p, True) for p in precisions]
    with torch_flags(device):  # both loops: cudnn.benchmark, the fastest convolution per shape
        for precision, compiled in variants:
            speeds: dict[str, list[float]] = {"plain": [], "trainer": []}
            for _ in range(args.repeats):
                for kind in ("plain", "trainer"):
                    torch.manual_seed(0)
                    model = factory().to(device)
                    if kind == "plain":
                        net = torch.compile(model) if compiled else model
                        times = plain_loop(
                            net, train, args.batch_size, args.epochs, precision, device
                        )
                    else:
                        times = trainer_loop(
                            model,
                            train,
                            val,
                            args.batch_size,
                            args.epochs,
                            precision,
                            compiled,
                            device,
                        )
                    speeds[kind].append(len(train) * (len(times) - 1) / sum(times[1:]))
                    del model
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            torch.manual_seed(0)
            syncs = count_syncs(
                factory().to(device), train, val, args.batch_size, precision, device
            )
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0
            plain, trainer = (statistics.median(speeds[k]) for k in ("plain", "trainer"))
            print(
                f"{precision:<10} {'yes' if compiled else 'no':<8} {plain:>16,.0f} "
                f"{trainer:>18,.0f} "
                f"{trainer / plain:>14.3f} {peak:>9,.0f} {syncs if syncs is not None else '-':>12}"
            )


if __name__ == "__main__":
    main()
