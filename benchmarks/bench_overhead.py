"""Benchmark: what the study's own machinery costs beside training, per trial and in total.

Runs one set of trials three ways, each in a fresh Python process, side by side:

1. ``study``: ``scripts/run_study.py`` with SQLite storage (pruning off, the batch sizes and
   rules of a grid over the space, fixed epochs): Optuna, storage writes, reports, summary.
2. ``bare``: the same trials (batch size, learning rate, seed and evaluation batch read back
   from the study) as a plain hand-written loop without Optuna: data held as tensors,
   shuffled and sliced, validation accuracy each epoch, train and test accuracy at the end.
   With the same seeds it reproduces the study's accuracies exactly, which the table checks.
3. ``naive``: the same trials as the per-sample DataLoader loop of a typical tutorial
   (``DataLoader(dataset, batch_size, shuffle=True)``, evaluation through a DataLoader too).

Each process is timed from its start to its exit (imports and data loading included, the
same in all three). Wall time suffers from other processes on a shared machine; CPU time
(user + system of the child) much less, so both are shown, each the minimum over
``--repeats`` rounds (interference only ever adds time; the three ways alternate within each
round). The study/bare ratio of each round (the two run back to back) is printed too: its
median is steadier than the ratio of minimums when the machine's speed drifts between rounds.
A fourth, instrumented run of the study splits its time by where it goes (training,
storage, sampling, pruning, checkpoints, the note and report written at the end, the rest).

Last, the start-up of a one-trial, one-epoch study is measured against ``import torch`` on
its own line (``--startup-only`` runs just that part).

    python benchmarks/bench_overhead.py [--epochs 5] [--repeats 3] [--threads 1]
    python benchmarks/bench_overhead.py --startup-only --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STUDY_NAME = "overhead"


# ------------------------------------------------------------------------- the two loops


def _load(args: argparse.Namespace):
    from objectives.tasks import load_task

    return load_task(args.task, model=args.model, seed=args.seed, data_dir=args.data_dir)


def bare_loop(task, plan: list[dict], epochs: int) -> list[float]:
    """The careful hand-written loop; returns each trial's final validation accuracy."""
    import torch
    import torch.nn.functional as F

    x, y = task.train.tensors
    val_x, val_y = task.val.tensors
    test_x, test_y = task.test.tensors

    @torch.no_grad()
    def accuracy(model, xs, ys, batch):
        model.eval()
        correct = sum(
            (model(a).argmax(1) == b).sum()
            for a, b in zip(xs.split(batch), ys.split(batch), strict=True)
        )
        model.train()
        return correct.item() / len(ys)

    results = []
    for t in plan:
        torch.manual_seed(t["seed"])
        model = task.build_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=t["lr"])
        generator = torch.Generator().manual_seed(t["seed"])
        for _epoch in range(epochs):
            loss_sum = torch.zeros(())
            for group in torch.randperm(len(y), generator=generator).split(t["batch_size"]):
                optimizer.zero_grad(set_to_none=True)
                for i in group.split(t["micro_batch_size"]):
                    loss = F.cross_entropy(model(x[i]), y[i], reduction="sum")
                    (loss / len(group)).backward()
                    loss_sum += loss.detach()
                optimizer.step()
            _train_loss = loss_sum.item() / len(y)
            val = accuracy(model, val_x, val_y, t["eval_batch"])
        accuracy(model, x, y, t["eval_batch"])
        accuracy(model, test_x, test_y, t["eval_batch"])
        results.append(val)
    return results


def naive_loop(task, plan: list[dict], epochs: int) -> list[float]:
    """A typical tutorial loop: a per-sample DataLoader, mean loss, no accumulation."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    def accuracy(model, dataset, batch):
        model.eval()
        correct = 0
        with torch.no_grad():
            for a, b in DataLoader(dataset, batch_size=batch):
                correct += (model(a).argmax(1) == b).sum().item()
        model.train()
        return correct / len(dataset)

    results = []
    for t in plan:
        torch.manual_seed(t["seed"])
        model = task.build_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=t["lr"])
        loader = DataLoader(task.train, batch_size=t["batch_size"], shuffle=True)
        for _epoch in range(epochs):
            for a, b in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(a), b)
                loss.backward()
                optimizer.step()
            val = accuracy(model, task.val, t["eval_batch"])
        accuracy(model, task.train, t["eval_batch"])
        accuracy(model, task.test, t["eval_batch"])
        results.append(val)
    return results


# ---------------------------------------------------------------- the instrumented study


class _Clock:
    """Exclusive time per category on the main thread: a nested category pauses its parent."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []
        self._main = threading.main_thread().ident

    def wrap(self, category: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.get_ident() != self._main:
                category_ = category + " (heartbeat thread)"
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._add(category_, time.perf_counter() - started)
            now = time.perf_counter()
            if self._stack:
                self._add(self._stack[-1][0], now - self._stack[-1][1], call=False)
            self._stack.append([category, now])
            try:
                return fn(*args, **kwargs)
            finally:
                now = time.perf_counter()
                name, started = self._stack.pop()
                self._add(name, now - started)
                if self._stack:
                    self._stack[-1][1] = now

        return timed

    def _add(self, category: str, seconds: float, call: bool = True) -> None:
        self.seconds[category] = self.seconds.get(category, 0.0) + seconds
        self.calls[category] = self.calls.get(category, 0) + (1 if call else 0)


def _wrap_methods(clock: _Clock, cls: type, category: str, names=None) -> None:
    for name in names or [n for n in vars(cls) if not n.startswith("_")]:
        fn = vars(cls).get(name)
        if callable(fn):
            setattr(cls, name, clock.wrap(category, fn))


def instrumented_study(study_argv: list[str]) -> dict:
    """Run run_study.py's main in this process with its time split by category."""
    import optuna

    import objectives.backend as backend_module
    import objectives.objective as objective_module
    import study.orchestrate as orchestrate_module
    from study import commands

    clock = _Clock()
    objective_module.train_model = clock.wrap("training", objective_module.train_model)
    objective_module.finish = clock.wrap("training", objective_module.finish)
    if hasattr(objective_module, "set_user_attrs"):  # the record in one transaction
        wrapped = clock.wrap("storage (SQLite)", objective_module.set_user_attrs)
        objective_module.set_user_attrs = wrapped
    backend_module.build_task = clock.wrap("task loading (once)", backend_module.build_task)
    # the study note and the HTML report at the end
    wrapped = clock.wrap("note and HTML report (once, at the end)", orchestrate_module._publish)
    orchestrate_module._publish = wrapped
    if hasattr(objective_module, "release_memory"):
        wrapped = clock.wrap("release_memory (gc.collect)", objective_module.release_memory)
        objective_module.release_memory = wrapped
    _wrap_methods(clock, optuna.storages.RDBStorage, "storage (SQLite)")
    for sampler in (
        optuna.samplers.TPESampler,
        optuna.samplers.GridSampler,
        optuna.samplers.RandomSampler,
    ):
        _wrap_methods(clock, sampler, "sampling")
    for pruner in (optuna.pruners.MedianPruner, optuna.pruners.NopPruner):
        _wrap_methods(clock, pruner, "pruning", ["prune"])
    try:
        import objectives.checkpoint as checkpoint_module

        for cls in vars(checkpoint_module).values():
            if isinstance(cls, type) and cls.__module__ == checkpoint_module.__name__:
                if hasattr(cls, "save") and hasattr(cls, "load"):
                    _wrap_methods(clock, cls, "checkpoints")
    except ImportError:
        pass
    started = time.perf_counter()
    code = commands.run(study_argv)
    return {
        "wall": time.perf_counter() - started,
        "code": code,
        "seconds": clock.seconds,
        "calls": clock.calls,
    }


# ------------------------------------------------------------------------------- driving


def read_plan(storage: str) -> list[dict]:
    """The study's finished trials as ``batch_size, micro_batch_size, lr, seed, eval_batch``."""
    import optuna

    from study.record import read_record

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    eval_batch = study.user_attrs["space"]["memory_cap"]
    plan = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state != optuna.trial.TrialState.COMPLETE:
            raise SystemExit(f"trial {t.number} ended {t.state.name}; the benchmark needs all")
        r = read_record(t)
        plan.append(
            dict(
                batch_size=r.batch_size,
                micro_batch_size=r.micro_batch_size,
                lr=r.lr,
                seed=r.seed,
                eval_batch=eval_batch,
                val_accuracy=r.val_metric,
            )
        )
    return plan


def timed_run(argv: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``python argv`` to completion: (wall seconds, CPU seconds, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


#: torch's own cost of training anything with torch.optim: the first step imports torch._dynamo
#: (``Optimizer.step`` does, whatever the settings), about as much again as ``import torch``.
TORCH_STEP = (
    "import torch; m = torch.nn.Linear(4, 2); o = torch.optim.Adam(m.parameters()); "
    "m(torch.zeros(1, 4)).sum().backward(); o.step()"
)


def startup(args: argparse.Namespace, env: dict, tmp: Path) -> None:
    """Start-up of a short study against torch's own import, in interleaved rounds.

    Each round times ``python -c "import torch"``, the same plus one ``torch.optim`` step
    (:data:`TORCH_STEP`), and a one-trial, one-epoch study (no probe, no report artifacts),
    back to back; the study's start-up is its CPU time less the CPU its trial spent training
    (the record's ``train_time_s``, one thread). Medians and ranges over ``--repeats`` rounds;
    the goal is a start-up within torch's own cost plus 1.5 s.
    """
    import optuna

    from study.record import read_record

    rows: dict[str, list[float]] = {
        "torch": [],
        "torch+step": [],
        "study": [],
        "training": [],
        "start-up": [],
    }
    for r in range(args.repeats):
        _, torch_cpu, _ = timed_run(["-c", "import torch"], env)
        _, step_cpu, _ = timed_run(["-c", TORCH_STEP], env)
        storage = f"sqlite:///{tmp / f'startup{r}.db'}"
        flags = ["--trials", "1", "--epochs", "1", "--task", args.task, "--model", args.model,
                 "--max-batch-size", "64", "--artifact-dir", "none", "--checkpoint-dir",
                 "none", "--storage", storage, "--data-dir", args.data_dir]  # fmt: skip
        _, study_cpu, _ = timed_run([str(ROOT / "scripts" / "run_study.py"), *flags], env)
        trial = optuna.load_study(study_name="batch-size", storage=storage).trials[0]
        training = read_record(trial).train_time_s or 0.0
        values = (torch_cpu, step_cpu, study_cpu, training, study_cpu - training)
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)
    print(f"\nstart-up, CPU seconds, median [min-max] of {args.repeats} interleaved rounds:")
    labels = {
        "torch": "python -c 'import torch'",
        "torch+step": "the same and one torch.optim.Adam step",
        "study": "one-trial one-epoch study (whole process)",
        "training": "  of which the trial's training (train_time_s)",
        "start-up": "  start-up: the rest",
    }
    for key, values in rows.items():
        print(
            f"  {labels[key]:<46} {statistics.median(values):6.2f} "
            f"[{min(values):.2f}-{max(values):.2f}]"
        )
    start = statistics.median(rows["start-up"])
    for key in ("torch", "torch+step"):
        budget = statistics.median(rows[key]) + 1.5
        verdict = "within" if start <= budget else "over"
        print(f"  start-up vs {labels[key]!r} + 1.5 s = {budget:.2f} s: {verdict}")


def _grid_size(min_batch: int, max_batch: int, train_size: int) -> int:
    sizes, b = 0, min_batch
    while b <= min(max_batch, 1 << (train_size.bit_length() - 1)):
        sizes, b = sizes + 1, b * 2
    return sizes * 3  # three scaling rules searched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data-dir", default="storage/data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--min-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every run")
    parser.add_argument(
        "--startup-only", action="store_true", help="measure only the start-up of a short study"
    )
    parser.add_argument("--loop", choices=["bare", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--instrumented", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    study_argv = argv[argv.index("--") + 1 :] if "--" in argv else []  # the instrumented run's
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    if args.loop:  # a child: run one loop over the plan, print the accuracies
        import torch

        torch.set_num_threads(args.threads)
        plan = json.loads(Path(args.plan).read_text())
        loop = bare_loop if args.loop == "bare" else naive_loop
        print(json.dumps(loop(_load(args), plan, args.epochs)))
        return
    if args.instrumented:  # a child: the study with its time split by category
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(instrumented_study(study_argv)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    if args.startup_only:
        startup(args, env, tmp)
        return
    train_size = _load(args).info["train_size"]
    trials = _grid_size(args.min_batch_size, args.max_batch_size, train_size)
    common = ["--task", args.task, "--model", args.model, "--data-dir", args.data_dir,
              "--epochs", str(args.epochs), "--seed", str(args.seed)]  # fmt: skip
    study_flags = common + [
        "--trials", str(trials), "--sampler", "grid", "--scaling", "search",
        "--pruner", "none", "--min-batch-size", str(args.min_batch_size),
        "--max-batch-size", str(args.max_batch_size), "--device", "cpu",
        "--study-name", STUDY_NAME,
    ]  # fmt: skip
    print(
        f"task {args.task}, model {args.model}, {trials} trials x {args.epochs} epochs "
        f"(batch {args.min_batch_size}..{args.max_batch_size} x 3 rules, grid, pruning off), "
        f"CPU, {args.threads} thread(s), best of {args.repeats} rounds"
    )
    times: dict[str, list[tuple[float, float]]] = {"study": [], "bare": [], "naive": []}
    matched = []
    for r in range(args.repeats):
        db = tmp / f"round{r}.db"
        storage = f"sqlite:///{db}"
        script = str(ROOT / "scripts" / "run_study.py")
        wall, cpu, _ = timed_run([script, *study_flags, "--storage", storage], env)
        times["study"].append((wall, cpu))
        plan = read_plan(storage)
        plan_file = tmp / f"plan{r}.json"
        plan_file.write_text(json.dumps(plan))
        me = [str(Path(__file__).resolve()), *common, "--threads", str(args.threads)]
        for loop in ("bare", "naive"):
            wall, cpu, out = timed_run([*me, "--loop", loop, "--plan", str(plan_file)], env)
            times[loop].append((wall, cpu))
            if loop == "bare":
                matched.append(json.loads(out) == [t["val_accuracy"] for t in plan])
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in times.items()))

    med = {k: (min(w for w, _ in v), min(c for _, c in v))
           for k, v in times.items()}  # fmt: skip
    bare_wall, bare_cpu = med["bare"]
    print(f"\n{'loop':<7} {'wall s':>8} {'CPU s':>8} {'wall/bare':>10} {'CPU/bare':>9} "
          f"{'+ms/trial (wall)':>17} {'+ms/trial (CPU)':>16}")  # fmt: skip
    for name, (wall, cpu) in med.items():
        print(
            f"{name:<7} {wall:>8.2f} {cpu:>8.2f} {wall / bare_wall:>10.3f} {cpu / bare_cpu:>9.3f} "
            f"{(wall - bare_wall) / trials * 1000:>17.0f} {(cpu - bare_cpu) / trials * 1000:>16.0f}"
        )
    study_wall, study_cpu = med["study"]
    naive_wall, naive_cpu = med["naive"]
    print(
        f"\nstudy vs bare loop: {100 * (study_wall / bare_wall - 1):+.1f}% wall, "
        f"{100 * (study_cpu / bare_cpu - 1):+.1f}% CPU; study vs naive DataLoader loop: "
        f"{study_wall / naive_wall:.2f}x wall, {study_cpu / naive_cpu:.2f}x CPU"
    )
    paired = sorted(s[0] / b[0] for s, b in zip(times["study"], times["bare"], strict=True))
    print(
        f"paired by round (study wall / bare wall, run back to back; steadier on a shared "
        f"machine): median {statistics.median(paired):.3f}, range {paired[0]:.3f}-{paired[-1]:.3f}"
    )
    print(
        "bare loop reproduced the study's validation accuracies in every trial: "
        + ("yes" if all(matched) else f"no ({matched})")
    )

    # Where the study's time goes: one instrumented run, in process.
    db = tmp / "instrumented.db"
    argv = [str(Path(__file__).resolve()), "--instrumented", "--threads", str(args.threads)]
    _, _, out = timed_run([*argv, "--", *study_flags, "--storage", f"sqlite:///{db}"], env)
    split = json.loads(out.strip().splitlines()[-1])  # the study prints its summary first
    print(f"\ninstrumented study run ({split['wall']:.2f} s from main() to exit, imports not "
          f"included), exclusive time per category:")  # fmt: skip
    print(f"{'category':<40} {'s':>7} {'ms/trial':>9} {'calls':>7}")
    accounted = 0.0
    for name, seconds in sorted(split["seconds"].items(), key=lambda kv: -kv[1]):
        if "heartbeat thread" not in name:
            accounted += seconds
        calls = split["calls"].get(name, 0)
        print(f"{name:<40} {seconds:>7.2f} {seconds / trials * 1000:>9.1f} {calls:>7}")
    rest = split["wall"] - accounted
    print(f"{'rest (objective glue, runner, tqdm)':<40} {rest:>7.2f} {rest / trials * 1000:>9.1f}")
    startup(args, env, tmp)


if __name__ == "__main__":
    main()
