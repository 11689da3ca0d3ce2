"""Benchmark: one epoch of training by slicing device tensors vs a per-sample DataLoader.

Prints, for each batch size, the seconds per epoch of both loops (same model, same data,
same number of updates), measured side by side in one run, and their ratio.

    python benchmarks/bench_loader.py [--task digits] [--model mlp] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from objectives.tasks import load_task
from objectives.train import TrainSettings, place, train_model


def dataloader_epochs(task, batch_size: int, epochs: int, lr: float) -> float:
    """The tutorial loop: DataLoader(shuffle=True) collating sample by sample."""
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(task.train, batch_size=batch_size, shuffle=True)
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return time.perf_counter() - started


def sliced_epochs(task, batch_size: int, epochs: int, lr: float) -> float:
    """The project's loop (objectives.train) on tensors held whole, without evaluation time."""
    torch.manual_seed(0)
    model = task.build_model()
    data = place(task.train, torch.device("cpu"))
    settings = TrainSettings(epochs, batch_size, batch_size, lr)
    return train_model(model, data, data, settings).train_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,32,128,512")
    args = parser.parse_args()
    task = load_task(args.task, model=args.model)
    n = len(task.train)
    print(
        f"task {args.task} ({n} training samples), model {args.model}, {args.epochs} epochs, "
        f"best of {args.repeats}, {torch.get_num_threads()} threads"
    )
    print(f"{'batch':>6} {'DataLoader s':>13} {'sliced s':>9} {'speed-up':>9}")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        loader_s = min(
            dataloader_epochs(task, batch_size, args.epochs, 1e-3) for _ in range(args.repeats)
        )
        sliced_s = min(
            sliced_epochs(task, batch_size, args.epochs, 1e-3) for _ in range(args.repeats)
        )
        print(f"{batch_size:>6} {loader_s:>13.3f} {sliced_s:>9.3f} {loader_s / sliced_s:>8.1f}x")


if __name__ == "__main__":
    main()
