"""Benchmark: memory does not grow across trials in one worker.

Runs ``--trials`` trials (default 30) of a study in this one process, through the same
``run_study`` as ``scripts/run_study.py`` (SQLite storage, heartbeats, the objective), with the
batch sizes and scaling rules enqueued in a fixed cycle, so every batch size has run by trial
``--early`` (default 5: batch sizes 8..128) and later trials repeat the same work. After trial
``--early`` and after the last trial it prints the process's peak resident memory
(``ru_maxrss``), its current resident memory, the number of live tensors, and on CUDA the
allocator's bytes. A leak shows as growth between the two rows; equal rows mean every trial
gave back what it took.

    python benchmarks/bench_leak.py [--trials 30] [--early 5] [--epochs 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import warnings
from pathlib import Path

import torch  # noqa: E402

MiB = 1024**2


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _is_tensor(obj: object) -> bool:
    try:
        return isinstance(obj, torch.Tensor)
    except ReferenceError:  # a weak proxy whose object is gone
        return False


def _live_tensors() -> int:
    with warnings.catch_warnings():  # isinstance on deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if _is_tensor(o))


def snapshot(device: str) -> dict:
    """Memory of this process now (peak, current, live tensors; CUDA allocator bytes)."""
    row = {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss": _current_rss(),
        "tensors": _live_tensors(),
    }
    if device.startswith("cuda"):
        row["cuda_allocated"] = torch.cuda.memory_allocated()
        row["cuda_reserved"] = torch.cuda.memory_reserved()
        row["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--early", type=int, default=5, help="the first row's trial")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--task", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data-dir", default="storage/data")
    parser.add_argument("--min-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import optuna

    from objectives.backend import TorchBackend
    from objectives.objective import BatchSizeObjective
    from study.config import StudyConfig
    from study.orchestrate import plan_space, run_study
    from study.runner import create_or_resume
    from study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    db = Path(tempfile.mkdtemp(prefix="bench-leak-")) / "leak.db"
    config = StudyConfig(
        trials=args.trials,
        task=args.task,
        model=args.model,
        data_dir=args.data_dir,
        epochs=args.epochs,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        pruner="none",
        scaling="search",
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        storage=f"sqlite:///{db}",
        study_name="leak",
    ).validate()
    backend = TorchBackend()
    device = backend.device(config)

    # Create the study as run_study would, then enqueue the fixed cycle of trials.
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
    study, space, _ = create_or_resume(
        config, storage, lambda: plan_space(config, backend.build_task(config), device, backend)
    )
    sizes, rules = space.batch_sizes, space.scaling_rules
    for i in range(args.trials):  # every batch size first, then again with the next rule
        rule = rules[(i // len(sizes)) % len(rules)]
        study.enqueue_trial({"batch_size": sizes[i % len(sizes)], "scaling_rule": rule})
    if args.early < len(space.batch_sizes):
        print(f"note: {len(space.batch_sizes)} batch sizes; not all have run by trial {args.early}")

    rows: dict[int, dict] = {}

    class Recording(BatchSizeObjective):  # the real objective; memory is read after each trial
        done = 0

        def __call__(self, trial: optuna.Trial) -> float:
            try:
                return super().__call__(trial)
            finally:
                Recording.done += 1
                if Recording.done in (args.early, args.trials):
                    rows[Recording.done] = snapshot(device)

    class RecordingBackend(TorchBackend):
        def objective(self, config, task, space, device, log):  # noqa: ANN001, ANN201
            return Recording(task, config, space, device, None)

    with open("/dev/null", "w") as quiet:
        run_study(config, RecordingBackend(), out=quiet)

    print(
        f"{args.trials} trials in one process: task {args.task}, model {args.model}, "
        f"{args.epochs} epochs each, batch sizes {sizes} (all by trial "
        f"{len(sizes)}) x rules {rules} in a fixed cycle, {device}, precision {args.precision}"
        + (", compiled" if args.compile else "")
    )
    keys = list(rows[args.early])
    print(
        f"{'after trial':>11} "
        + " ".join(f"{k + ' MiB' if k != 'tensors' else k:>22}" for k in keys)
    )
    for n, row in sorted(rows.items()):
        cells = [f"{row[k] / MiB:>22.1f}" if k != "tensors" else f"{row[k]:>22}" for k in keys]
        print(f"{n:>11} " + " ".join(cells))
    first, last = rows[args.early], rows[args.trials]
    growth = last["peak_rss"] - first["peak_rss"]
    print(
        f"peak resident memory grew {growth / MiB:+.1f} MiB "
        f"({100 * growth / first['peak_rss']:+.1f}%) from trial {args.early} to trial "
        f"{args.trials}; live tensors {first['tensors']} -> {last['tensors']}"
    )


if __name__ == "__main__":
    main()
