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

``--outside`` measures the case a user meets first: a task written in a file outside the
repository (``path/to/file.py:make``, an MLP classifier on 6,400 samples), 8 trials x 10
epochs at batch 64, pruning off. It prints, each on its own line, the study against the bare
loop with start-up included (whole processes, the study with and without its report), and the
per-epoch cost beside training: the study's and the bare loop's CPU for ``3 x --epochs``
less their CPU for ``--epochs``, so that start-up and per-trial costs cancel and what is left
is what each epoch costs (checkpoint, storage writes, pruning, heartbeat) beside the same
training and evaluation. That difference of four process times is noisy on a shared machine,
so one instrumented run also times the epoch checks in process against training.

    python benchmarks/bench_overhead.py [--epochs 5] [--repeats 3] [--threads 1]
    python benchmarks/bench_overhead.py --outside [--epochs 10] [--repeats 5]
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


#: The ``--outside`` task: what a user writes in a file of their own (README, "Your own task").
OUTSIDE_TASK = '''"""A classification task in a user's own file, outside the repository."""
import torch
from torch.utils.data import TensorDataset

from objectives import Task


def make() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8400, 32, generator=g)
    y = (x @ torch.randn(32, 10, generator=g) + 0.5 * torch.randn(8400, 10, generator=g)).argmax(1)

    def build() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(32, 256), torch.nn.ReLU(),
            torch.nn.Linear(256, 256), torch.nn.ReLU(),
            torch.nn.Linear(256, 10),
        )

    split = lambda a, b: TensorDataset(x[a:b], y[a:b])  # noqa: E731
    return Task("outside", build, split(0, 6400), split(6400, 7400), split(7400, 8400))
'''

OUTSIDE_TRIALS = 8
OUTSIDE_BATCH = 64


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
                if len(group) < t["batch_size"]:
                    break  # the study's every update has the whole batch: the tail sits out
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


#: The instrumented run's category of what an epoch does beside training and evaluation.
EPOCH_CHECKS = "epoch checks (report, checkpoint, prune)"


def instrumented_study(study_argv: list[str]) -> dict:
    """Run run_study.py's main in this process with its time split by category."""
    import optuna

    import objectives.backend as backend_module
    import objectives.objective as objective_module
    import study.orchestrate as orchestrate_module
    from batchsize_study import commands

    clock = _Clock()
    objective_module.train_model = clock.wrap("training", objective_module.train_model)
    objective_module.finish = clock.wrap("training", objective_module.finish)
    checks = objective_module.EpochChecks
    checks.__call__ = clock.wrap(EPOCH_CHECKS, checks.__call__)
    checks.flush = clock.wrap(EPOCH_CHECKS, checks.flush)  # an attempt's last values
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


def outside(args: argparse.Namespace, env: dict, tmp: Path) -> None:
    """The ``--outside`` measurement: a user's task file, 8 trials x 10 epochs at batch 64.

    Each round runs, back to back: the study with its report, the study without it
    (``--artifact-dir none``), the bare loop over the same trials, then the study without its
    report and the bare loop at twice the epochs. Ratios are paired within a round; medians and
    ranges over ``--repeats`` rounds.
    """
    task_file = tmp / "outside_task.py"
    task_file.write_text(OUTSIDE_TASK)
    task = f"{task_file}:make"
    script = str(ROOT / "scripts" / "run_study.py")
    me = [str(Path(__file__).resolve()), "--task", task, "--seed", str(args.seed),
          "--threads", str(args.threads)]  # fmt: skip

    def study_flags(storage: str, epochs: int, checkpoints: Path, artifacts: str) -> list[str]:
        return ["--task", task, "--epochs", str(epochs), "--seed", str(args.seed),
                "--trials", str(OUTSIDE_TRIALS), "--confirm-runs", str(OUTSIDE_TRIALS - 1),
                "--min-batch-size", str(OUTSIDE_BATCH), "--max-batch-size", str(OUTSIDE_BATCH),
                "--scaling", "none", "--pruner", "none", "--device", "cpu",
                "--study-name", STUDY_NAME, "--storage", storage,
                "--checkpoint-dir", str(checkpoints), "--artifact-dir", artifacts]  # fmt: skip

    def study(name: str, epochs: int, report: bool) -> tuple[float, list[dict]]:
        storage = f"sqlite:///{tmp / (name + '.db')}"
        artifacts = str(tmp / f"{name}-art") if report else "none"
        flags = study_flags(storage, epochs, tmp / f"{name}-checkpoints", artifacts)
        _, cpu, _ = timed_run([script, *flags], env)
        plan = read_plan(storage)
        if len(plan) != OUTSIDE_TRIALS:
            raise SystemExit(f"the study ran {len(plan)} trials, not {OUTSIDE_TRIALS}")
        return cpu, plan

    def bare(name: str, epochs: int, plan: list[dict]) -> float:
        plan_file = tmp / f"{name}.json"
        plan_file.write_text(json.dumps(plan))
        argv = [*me, "--epochs", str(epochs), "--loop", "bare", "--plan", str(plan_file)]
        _, cpu, out = timed_run(argv, env)
        if json.loads(out) != [t["val_accuracy"] for t in plan]:
            raise SystemExit(
                f"the bare loop did not reproduce the study's accuracies: {out.strip()} against "
                f"{[t['val_accuracy'] for t in plan]}"
            )
        return cpu

    e = args.epochs
    print(f"a task outside the repository ({task_file.name}:make), {OUTSIDE_TRIALS} trials x "
          f"{e} epochs at batch {OUTSIDE_BATCH}, pruning off, CPU, {args.threads} thread(s); "
          f"CPU seconds (user + system) of whole processes, {args.repeats} rounds")  # fmt: skip
    rows: dict[str, list[float]] = {k: [] for k in ("with", "without", "bare", "study2", "bare2")}
    for r in range(args.repeats):
        cpu_with, plan = study(f"with{r}", e, report=True)
        cpu_without, _ = study(f"without{r}", e, report=False)
        cpu_bare = bare(f"bare{r}", e, plan)
        cpu_study2, plan2 = study(f"longer{r}", 3 * e, report=False)
        cpu_bare2 = bare(f"bare-longer{r}", 3 * e, plan2)
        for key, value in zip(rows, (cpu_with, cpu_without, cpu_bare, cpu_study2, cpu_bare2),
                              strict=True):  # fmt: skip
            rows[key].append(value)
        print(f"  round {r + 1}: study {cpu_with:.2f} s (without report {cpu_without:.2f} s), "
              f"bare {cpu_bare:.2f} s; at {3 * e} epochs study {cpu_study2:.2f} s, "
              f"bare {cpu_bare2:.2f} s")  # fmt: skip

    def line(label: str, values: list[float], goal: str, percent: bool = False) -> None:
        middle = statistics.median(values)
        fmt = (lambda v: f"{100 * v:+.1f}%") if percent else (lambda v: f"{v:.3f}x")
        print(f"{label:<58} {fmt(middle):>8}  [{fmt(min(values))} to {fmt(max(values))}]  "
              f"goal {goal}")  # fmt: skip

    print(f"\nmedian [range] over {args.repeats} rounds, each ratio paired within its round:")
    line(
        "study / bare loop, start-up included, with the report",
        [w / b for w, b in zip(rows["with"], rows["bare"], strict=True)],
        "<= 1.15x",
    )
    line(
        "study / bare loop, start-up included, without the report",
        [w / b for w, b in zip(rows["without"], rows["bare"], strict=True)],
        "<= 1.15x",
    )
    per_epoch = [
        (s2 - s1) / (b2 - b1) - 1
        for s1, b1, s2, b2 in zip(rows["without"], rows["bare"], rows["study2"], rows["bare2"],
                                  strict=True)
    ]  # fmt: skip
    line(
        f"per-epoch cost beside training ({2 * e} more epochs a trial)",
        per_epoch,
        "<= +5%",
        percent=True,
    )
    db = tmp / "instrumented.db"
    argv = [str(Path(__file__).resolve()), "--instrumented", "--threads", str(args.threads)]
    flags = study_flags(f"sqlite:///{db}", e, tmp / "instrumented-checkpoints", "none")
    _, _, out = timed_run([*argv, "--", *flags], env)
    split = json.loads(out.strip().splitlines()[-1])
    training, checks = split["seconds"]["training"], split["seconds"].get(EPOCH_CHECKS, 0.0)
    epochs = OUTSIDE_TRIALS * e
    print(
        f"per-epoch cost beside training, one instrumented run (wall, in process): the epoch "
        f"checks {1000 * checks / epochs:.1f} ms an epoch against {1000 * training / epochs:.1f} "
        f"ms of training and evaluation: {100 * checks / training:+.1f}%"
    )


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
    parser.add_argument(
        "--outside",
        action="store_true",
        help="a task file outside the repository, 8 trials at batch 64 (set --epochs 10)",
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
    if args.outside:
        outside(args, env, tmp)
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
