#!/usr/bin/env python
"""Benchmark: how often a pruner stops a trial that would have ended near the best.

For each task it runs studies without pruning: the study's space (batch sizes up to 1024,
the scaling rule searched), sampler and seeds, every trial trained to the full budget with
its own seed through :func:`objectives.train.train_task` (what ``BatchSizeObjective`` trains:
its seed, scaled learning rate and micro-batch). Then it replays the same trials, in the same
order, through each pruner: an in-memory Optuna study with that pruner receives each trial's
curve epoch by epoch and says where it would have stopped it. A trial run sequentially sees
exactly what the replay shows it (the completed trials before it), so a pruned trial's
"trained out" value is the one the unpruned study measured; ``--verify K`` retrains K of the
old median's false prunes from their settings (batch size, micro-batch, learning rate, seed)
to show that this is the value the trial reaches. Every pruner sees the same trials: the
comparison is paired. (With pruning on, TPE would sample later trials somewhat differently;
the replay keeps the trials fixed so that the pruners are compared on equal terms.)

Printed per task and pruner:

- ``pruned``: trials stopped before the end of the budget;
- ``false``: pruned trials whose trained-out value is within ``--tolerance`` of the best
  cell, and their share of the pruned trials; the best cell is the best mean over
  (batch size, scaling rule) of the trials the pruned study completed (stand-in for the
  recommendation's ``most_accurate`` until study/recommend.py exists);
- ``saved``: training time the pruned epochs would have taken, as a share of the unpruned
  study's training time (each trial's time split evenly over its epochs);
- ``best cell``: whether the pruned study's best cell is the unpruned study's, and the regret
  (unpruned best cell mean minus the unpruned mean of the cell the pruned study picks).

Tasks: ``digits`` (the MLP), ``synthetic`` and ``digits-cnn`` (digits through the CNN, the
image-like task: no image dataset files are available offline).

Example:
    python benchmarks/bench_pruning.py --quick       # 12 trials x 8 epochs a task: < 1 minute
    nice python benchmarks/bench_pruning.py --save /tmp/curves.json   # the full run, ~15 min
    python benchmarks/bench_pruning.py --load /tmp/curves.json        # replay only: seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from study.config import StudyConfig
from study.pruning import FairMedianPruner
from study.runner import make_pruner
from study.scaling import scaled_lr

#: Benchmark task name -> (StudyConfig task, model).
TASKS = {
    "digits": ("digits", "mlp"),
    "synthetic": ("synthetic", "mlp"),
    "digits-cnn": ("digits", "cnn"),
}


@dataclass
class Run:
    """One trial of the unpruned study: its settings, curve and trained-out value."""

    number: int
    params: dict
    batch_size: int
    rule: str
    lr: float
    seed: int
    micro_batch_size: int
    curve: list[float]
    value: float
    train_time_s: float


@dataclass
class Collected:
    """The unpruned study of one task (and study seed)."""

    task: str
    seed: int
    epochs: int
    direction: str
    batch_sizes: list[int]
    rules: list[str]
    runs: list[Run] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # what train_task needs to retrain a trial


@dataclass
class Outcome:
    """One pruner's replay of one collected study."""

    pruned: int = 0
    false: int = 0
    trials: int = 0
    saved_s: float = 0.0
    total_s: float = 0.0
    same_best: int = 0
    studies: int = 0
    regret: float = 0.0
    pruned_runs: list[tuple[Collected, Run, int]] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _val(result: object) -> float:
    """Final validation metric of a TrainResult (either field name)."""
    for name in ("val_metric", "val_accuracy"):
        if hasattr(result, name):
            return float(getattr(result, name))
    raise AttributeError("TrainResult has no validation metric")


def _config(task: str, seed: int, trials: int, epochs: int, sampler: str):
    from study.config import StudyConfig

    name, model = TASKS[task]
    config = StudyConfig(
        trials=trials,
        task=name,
        model=model,
        epochs=epochs,
        pruner="none",
        sampler=sampler,
        seed=seed,
        device="cpu",
        max_batch_size=1024,
        checkpoint_dir="none",
        storage="sqlite:///:memory:",
    )
    return config.validate()


def collect(task: str, seed: int, trials: int, epochs: int, sampler: str) -> Collected:
    """Run ``trials`` trials of the default study of ``task`` without pruning.

    Each trial is what :class:`objectives.objective.BatchSizeObjective` trains (its space,
    sampler, seed, scaling rule and micro-batch), trained here through
    :func:`objectives.train.train_task` to the full budget.
    """
    from objectives.backend import TorchBackend, build_task
    from objectives.objective import trial_seed
    from study.orchestrate import plan_space
    from study.runner import make_sampler

    config = _config(task, seed, trials, epochs, sampler)
    built = build_task(config)
    space, _ = plan_space(config, built, "cpu", TorchBackend())
    metric = getattr(built, "metric", None)
    direction = getattr(metric, "direction", None) or "maximize"
    study = optuna.create_study(
        direction=direction,
        sampler=make_sampler(config, space),
        pruner=optuna.pruners.NopPruner(),
    )
    out = Collected(
        task=task,
        seed=seed,
        epochs=epochs,
        direction=direction,
        batch_sizes=list(space.batch_sizes),
        rules=list(space.scaling_rules),
        settings={
            "optimizer": config.optimizer,
            "eval_batch_size": space.memory_cap,
            "warmup_epochs": config.warmup_epochs,
            "base_lr": config.base_lr,
            "train_size": len(built.train),
        },
    )
    for _ in range(trials):
        trial = study.ask()
        batch = trial.suggest_categorical("batch_size", space.batch_sizes)
        rule = space.scaling_rules[0]
        if len(space.scaling_rules) > 1:
            rule = trial.suggest_categorical("scaling_rule", space.scaling_rules)
        micro, _ = space.split(batch)
        run = Run(
            number=trial.number,
            params=dict(trial.params),
            batch_size=batch,
            rule=rule,
            lr=scaled_lr(rule, config.base_lr, config.base_batch_size, batch),
            seed=trial_seed(config.seed, trial.number),
            micro_batch_size=micro,
            curve=[],
            value=math.nan,
            train_time_s=0.0,
        )
        result = train_out(out, run, built, on_epoch=lambda e, r=run: r.curve.append(_val(e)))
        run.value, run.train_time_s = _val(result), result.train_time_s
        for epoch, value in enumerate(run.curve, start=1):
            trial.report(value, epoch)
        study.tell(trial, run.value)
        out.runs.append(run)
    return out


def train_out(data: Collected, run: Run, task: object, on_epoch=None) -> object:
    """Train ``run`` to the full budget with its own seed and settings (``train_task``)."""
    from objectives.train import TrainSettings, steps_per_epoch, train_task

    per_epoch = steps_per_epoch(data.settings["train_size"], run.batch_size)
    settings = TrainSettings(
        epochs=data.epochs,
        batch_size=run.batch_size,
        micro_batch_size=run.micro_batch_size,
        lr=run.lr,
        optimizer=data.settings["optimizer"],
        seed=run.seed,
        eval_batch_size=data.settings["eval_batch_size"],
        warmup_steps=data.settings["warmup_epochs"] * per_epoch,
        warmup_start_lr=min(data.settings["base_lr"], run.lr),
    )
    return train_task(task, settings, on_epoch)


def replay(data: Collected, pruner: optuna.pruners.BasePruner, tolerance: float) -> Outcome:
    """Feed ``data``'s trials, in order, to a study with ``pruner``; count what it stops."""
    study = optuna.create_study(direction=data.direction, pruner=pruner)
    space = {"batch_size": CategoricalDistribution(data.batch_sizes)}
    if len(data.rules) > 1:
        space["scaling_rule"] = CategoricalDistribution(data.rules)
    stopped: dict[int, int] = {}  # run number -> epochs it ran
    for run in data.runs:
        study.enqueue_trial(run.params)
        trial = study.ask(space)
        for epoch, value in enumerate(run.curve, start=1):
            trial.report(value, epoch)
            if epoch < len(run.curve) and trial.should_prune():
                stopped[run.number] = epoch
                break
        if run.number in stopped:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, run.value)
    maximize = data.direction == "maximize"
    sign = 1.0 if maximize else -1.0
    kept = [r for r in data.runs if r.number not in stopped]
    best_cell, best = _best_cell(kept, sign)
    true_cell, true_best = _best_cell(data.runs, sign)
    outcome = Outcome(trials=len(data.runs), studies=1)
    outcome.total_s = sum(r.train_time_s for r in data.runs)
    for run in data.runs:
        if run.number not in stopped:
            continue
        epochs = stopped[run.number]
        outcome.pruned += 1
        outcome.saved_s += run.train_time_s * (1 - epochs / len(run.curve))
        if sign * (best - run.value) <= tolerance:
            outcome.false += 1
            outcome.pruned_runs.append((data, run, epochs))
    outcome.same_best = int(best_cell == true_cell)
    chosen = statistics.mean(r.value for r in data.runs if (r.batch_size, r.rule) == best_cell)
    outcome.regret = sign * (true_best - chosen)
    return outcome


def _best_cell(runs: list[Run], sign: float) -> tuple[tuple[int, str], float]:
    cells: dict[tuple[int, str], list[float]] = {}
    for run in runs:
        cells.setdefault((run.batch_size, run.rule), []).append(run.value)
    means = {cell: statistics.mean(values) for cell, values in cells.items()}
    cell = max(means, key=lambda c: sign * means[c])
    return cell, means[cell]


class EqualUpdatesMedian(optuna.pruners.BasePruner):
    """Option (d), measured here only: the median of completed trials at equal updates.

    A trial at epoch ``e`` has made ``e * ceil(N / B)`` updates; each completed trial's curve
    is read (linearly between its epochs) at that many updates, where it made them. Its
    references are the trials that made that many updates between their first and last
    evaluation, which are mostly of the same batch size.
    """

    def __init__(self, train_size: int, n_startup_trials: int, n_warmup_steps: int, margin: float):
        self.train_size, self.n_startup_trials = train_size, n_startup_trials
        self.n_warmup_steps, self.margin = n_warmup_steps, margin

    def _per_epoch(self, trial: optuna.trial.FrozenTrial) -> int:
        return -(-self.train_size // int(trial.params["batch_size"]))

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        updates = step * self._per_epoch(trial)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        values = trial.intermediate_values.values()
        own = max(values) if maximize else min(values)
        refs = []
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            at = updates / self._per_epoch(other)  # the other's epoch with as many updates
            curve = other.intermediate_values
            if at < 1 or at > max(curve):
                continue
            low = int(at)
            high = min(low + 1, max(curve))
            refs.append(curve[low] + (curve[high] - curve[low]) * (at - low))
        if len(refs) < self.n_startup_trials:
            return False
        middle = statistics.median(refs)
        return own < middle - self.margin if maximize else own > middle + self.margin


def pruners(
    epochs: int, tolerance: float, train_size: int
) -> dict[str, Callable[[], optuna.pruners.BasePruner]]:
    """The pruners compared: the study's old median, the options measured, and the study's
    ``--pruner median`` now (:func:`study.runner.make_pruner`)."""
    warmup = max(1, epochs // 4)

    def fair(reference: str, margin: float, startup: int = 3, q: float = 50.0):
        return lambda: FairMedianPruner(
            startup, warmup, reference, margin, percentile=q, n_steps=epochs
        )

    return {
        "old median (all trials)": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=warmup
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
        "all trials, median +tol": fair("all", tolerance, 5),
        "(a) cell median": fair("cell", 0.0, 2),
        "(a) cell median +tol": fair("cell", tolerance, 2),
        "(d) equal updates +tol": lambda: EqualUpdatesMedian(train_size, 3, warmup, tolerance),
        "(b) batch>=own median": fair("slower", 0.0),
        "(b) batch>=own median +tol": fair("slower", tolerance),
        "(b) batch>=own p25 +tol": fair("slower", tolerance, q=25.0),
        "new median (study default)": lambda: make_pruner(
            StudyConfig(pruner="median", epochs=epochs, tolerance=tolerance)
        ),
    }


def verify(pruned: list[tuple[Collected, Run, int]], limit: int) -> list[str]:
    """Retrain up to ``limit`` pruned trials from their settings; compare with the study."""
    from objectives.backend import build_task

    lines = []
    tasks: dict[tuple[str, int], object] = {}
    for data, run, epochs in pruned[:limit]:
        key = (data.task, data.seed)
        if key not in tasks:
            tasks[key] = build_task(_config(data.task, data.seed, 1, data.epochs, "random"))
        value = _val(train_out(data, run, tasks[key]))
        lines.append(
            f"  {data.task} trial {run.number} (batch {run.batch_size}, {run.rule}, pruned at "
            f"epoch {epochs}): study {run.value:.4f}, retrained {value:.4f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,synthetic,digits-cnn")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=4, help="studies per task")
    parser.add_argument("--first-seed", type=int, default=0, help="study seed of the first")
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "random", "grid"))
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--verify", type=int, default=3, help="pruned trials to retrain")
    parser.add_argument("--quick", action="store_true", help="a sanity check (< 2 minutes)")
    parser.add_argument("--save", help="write the unpruned studies' curves here (JSON)")
    parser.add_argument("--load", help="replay the curves of earlier --save files (a,b,...)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no contention on a shared box)"
    )
    args = parser.parse_args(argv)
    if not args.load:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.trials, args.epochs, args.repeats, args.verify = 12, 8, 1, 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    tasks = args.tasks.split(",")
    if args.load:
        args.verify = 0
        studies = [
            _from_json(d)
            for path in args.load.split(",")
            for d in json.loads(Path(path).read_text())
        ]
        tasks = list(dict.fromkeys(s.task for s in studies))
    else:
        studies = []
        for task in tasks:
            for seed in range(args.first_seed, args.first_seed + args.repeats):
                t0 = time.perf_counter()
                studies.append(collect(task, seed, args.trials, args.epochs, args.sampler))
                print(
                    f"collected {task} seed {seed}: {len(studies[-1].runs)} trials in "
                    f"{time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
        if args.save:
            Path(args.save).write_text(json.dumps([dataclasses.asdict(s) for s in studies]))
    described = []
    for task in tasks:
        mine = [s for s in studies if s.task == task]
        runs = sum(len(s.runs) for s in mine)
        described.append(f"{task}: {runs} trials in {len(mine)} studies of {mine[0].epochs} epochs")
    shapes = ", ".join(described)
    print(
        f"\n{shapes}; tolerance {args.tolerance}; false = pruned but trained out within "
        "tolerance of the best cell mean of the trials the pruned study completed"
    )
    header = (
        f"{'task':<11} {'pruner':<27} {'pruned':>7} {'false':>11} {'saved':>6} {'best cell':>12}"
    )
    false_runs: list[tuple[Collected, Run, int]] = []
    for task in tasks:
        print("\n" + header)
        mine = [s for s in studies if s.task == task]
        options = pruners(mine[0].epochs, args.tolerance, mine[0].settings["train_size"])
        for name, make in options.items():
            total = Outcome()
            for data in mine:
                total.add(replay(data, make(), args.tolerance))
            rate = total.false / total.pruned if total.pruned else 0.0
            saved = total.saved_s / total.total_s if total.total_s else 0.0
            print(
                f"{task:<11} {name:<27} {total.pruned:>3}/{total.trials:<3} "
                f"{total.false:>3} ({rate:4.0%}) {saved:>6.0%} "
                f"{total.same_best}/{total.studies} {total.regret / total.studies:+.3f}"
            )
            if name.startswith("old"):
                false_runs.extend(total.pruned_runs)
    if args.verify and false_runs and not args.load:
        print("\nfalse prunes of the old median, retrained with train_task from their settings:")
        print("\n".join(verify(false_runs, args.verify)))
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


def _from_json(d: dict) -> Collected:
    runs = [Run(**r) for r in d.pop("runs")]
    return Collected(**d, runs=runs)


if __name__ == "__main__":
    sys.exit(main())
