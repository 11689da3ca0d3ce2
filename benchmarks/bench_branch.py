"""Is branch's answer right? The branch command beside the exhaustive multi-seed grids.

Runs ``batchsize-study branch`` (its Python body, :func:`study.branch_run.run_branch`) on each
task with several seeds (model initialisation and data order; the data split stays the grid's)
and holds its recommended constant cell against the grid that ``bench_answer.py --save-grid``
saved for that task (every batch size x rule, 10-20 seeds, unpruned, 20 epochs, a plain loop of
its own): judged on the grid's runs, never on the runs branch made itself:

* **shortfall**: the grid's best cell mean minus the grid mean of the recommended cell (in the
  metric's units, signed so that positive is worse); **truly within** when it is at most
  ``--tolerance`` (goal: on every task);
* **speed-up**: the grid's best cell's median time over the recommended cell's (1 when it is
  truly outside), beside the grid's own fastest cell within tolerance (by the means); goal: at
  least 0.7x that one's;
* **compute**: samples trained in all, in trainings of the budget (goal: at most 3).

The recommended schedule is then trained ``--schedule-runs`` times (fresh seeds, the study's
training loop with the schedule's phases) and compared with the grid's best and fastest cells:
its mean validation metric, and its time estimated from the grid's own cell times (each phase
at its batch's median time, weighted by its share of the budget: the grid's times were taken
in one run on one machine; the schedule's measured seconds are printed beside them).

charlm has no saved grid (training one is hours on this CPU): its branch answer and compute
are printed alone.

    OMP_NUM_THREADS=1 python benchmarks/bench_branch.py    # the grids in benchmarks/grids
    python benchmarks/bench_branch.py --quick     # a minute: checks that it runs
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import torch

from objectives.backend import TorchBackend, build_task
from objectives.train import TrainSettings, train_task
from study.batch_schedule import BatchSchedule
from study.branch_run import run_branch
from study.config import StudyConfig
from study.scaling import scaled_lr

#: Per task: the model the grid was trained with, and the flags branch gets.
TASKS = {
    "digits": {"model": "cnn"},
    "synthetic": {"model": "mlp"},
    "regression": {"model": "cnn"},  # the regression task trains its own MLP
    "charlm": {"model": "cnn", "epochs": 2},
}


def load_grid(folder: Path, task: str) -> dict | None:
    path = folder / f"grid_{task}.json"
    return json.loads(path.read_text()) if path.exists() else None


def grid_cells(grid: dict) -> dict[tuple[int, str], dict]:
    cells = {}
    for c in grid["cells"]:
        cells[(c["batch_size"], c["rule"])] = {
            "mean": statistics.fmean(c["values"]),
            "time": statistics.median(c["seconds"]),
        }
    return cells


def judge(answer: dict, grid: dict, tolerance: float) -> dict:
    """The recommended cell on the grid: shortfall, truly within, speed-ups, compute."""
    sign = 1.0 if grid["metric"]["direction"] == "maximize" else -1.0
    cells = grid_cells(grid)
    best_key = max(cells, key=lambda k: sign * cells[k]["mean"])
    best = cells[best_key]
    within = [k for k in cells if sign * (best["mean"] - cells[k]["mean"]) <= tolerance]
    fast_key = min(within, key=lambda k: (cells[k]["time"], -k[0]))
    rec = answer["recommended"]
    key = (rec["batch_size"], rec["scaling_rule"])
    cell = cells[key]
    shortfall = sign * (best["mean"] - cell["mean"])
    ok = shortfall <= tolerance
    speedup = best["time"] / cell["time"] if ok else 1.0
    fast_speedup = best["time"] / cells[fast_key]["time"]
    return {
        "recommended": key,
        "grid_mean": cell["mean"],
        "best": best_key,
        "best_mean": best["mean"],
        "fast": fast_key,
        "shortfall": shortfall,
        "within": ok,
        "speedup": speedup,
        "fast_speedup": fast_speedup,
        "ratio": speedup / fast_speedup,
        "trainings": answer["trainings"],
    }


def schedule_time(schedule: BatchSchedule, rule: str, grid: dict) -> float | None:
    """The schedule's time from the grid's cells: each phase's share of the budget at its
    batch's median time with ``rule``."""
    cells = grid_cells(grid)
    total = 0.0
    for batch, share in schedule.shares(grid["epochs"]).items():
        cell = cells.get((batch, rule))
        if cell is None:
            return None
        total += share * cell["time"]
    return total


def train_schedule(task, config: StudyConfig, schedule: BatchSchedule, rule: str, seed: int):
    """One training of ``schedule`` (the study's loop): (val metric, training seconds)."""
    sizes = schedule.epoch_batches(config.epochs)
    cap = config.max_batch_size or max(sizes)
    phases = tuple(
        (b, min(b, cap), scaled_lr(rule, config.base_lr, config.base_batch_size, b)) for b in sizes
    )
    settings = TrainSettings(
        epochs=config.epochs,
        batch_size=max(sizes),
        micro_batch_size=min(max(sizes), cap),
        lr=phases[-1][2],
        optimizer=config.optimizer,
        seed=seed,
        batch_phases=phases,
    )
    result = train_task(task, settings)
    return result.val_metric, result.train_time_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="digits,synthetic,regression,charlm")
    p.add_argument(
        "--grid-dir",
        default=str(Path(__file__).parent / "grids"),
        help="folder of grid_<task>.json (default: the saved grids beside this script)",
    )
    p.add_argument("--seeds", type=int, default=2, help="branch runs per task (seeds 0, 1, ...)")
    p.add_argument("--schedule-runs", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=StudyConfig.tolerance)
    p.add_argument("--points", type=int, default=5)
    p.add_argument("--window", type=float, default=0.02)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loss-tolerance", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="2 epochs, one seed, no schedule runs")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows, schedule_rows = [], []
    started_all = time.process_time()
    for name in args.tasks.split(","):
        spec = TASKS[name]
        grid = load_grid(Path(args.grid_dir), name)
        epochs = 2 if args.quick else spec.get("epochs") or (grid or {}).get("epochs") or 20
        cap = max(c["batch_size"] for c in grid["cells"]) if grid else 256
        task = build_task(StudyConfig(task=name, model=spec["model"]))
        answers = []
        for seed in range(1 if args.quick else args.seeds):
            config = StudyConfig(
                task=name,
                model=spec["model"],
                epochs=epochs,
                max_batch_size=cap,
                device="cpu",
                seed=seed,
                tolerance=args.tolerance,
            ).validate()
            began = time.process_time()
            answer, text = run_branch(
                config,
                TorchBackend(task),
                points=args.points,
                window=args.window,
                repeats=args.repeats,
                loss_tolerance=args.loss_tolerance,
                log=None,
            )
            cpu = time.process_time() - began
            print(f"== {name} seed {seed} ({cpu:.0f} s CPU)\n{text}", flush=True)
            answers.append(answer)
            verdict = judge(answer, grid, args.tolerance) if grid and not args.quick else None
            rows.append((name, seed, answer, verdict, cpu))
        if grid is None or args.quick or not args.schedule_runs:
            continue
        answer = answers[0]
        schedule = BatchSchedule.from_list(answer["schedule"])
        rule = answer["recommended"]["scaling_rule"]
        config = StudyConfig(task=name, model=spec["model"], epochs=epochs, max_batch_size=cap)
        values, seconds = [], []
        for seed in range(args.schedule_runs):
            value, secs = train_schedule(task, config, schedule, rule, 100 + seed)
            values.append(value)
            seconds.append(secs)
        schedule_rows.append((name, schedule, rule, values, seconds, grid))
    print_tables(rows, schedule_rows, args.tolerance)
    print(f"total CPU {time.process_time() - started_all:.0f} s")


def print_tables(rows: list, schedule_rows: list, tolerance: float) -> None:
    out = io.StringIO()
    out.write(
        "\n| task | seed | recommended (batch, rule) | grid mean | grid best | shortfall | truly "
        "within | speed-up | grid's fastest within | ratio | trainings | CPU s |\n"
        "| --- | ---: | --- | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | ---: |\n"
    )
    for name, seed, answer, v, cpu in rows:
        rec = answer["recommended"]
        if v is None:
            out.write(
                f"| {name} | {seed} | {rec['batch_size']} {rec['scaling_rule']} | - | - | - | - "
                f"| - | - | - | {answer['trainings']:.2f} | {cpu:.0f} |\n"
            )
            continue
        out.write(
            f"| {name} | {seed} | {rec['batch_size']} {rec['scaling_rule']} | "
            f"{v['grid_mean']:.4f} | {v['best'][0]} {v['best'][1]} {v['best_mean']:.4f} | "
            f"{v['shortfall']:+.4f} | {'yes' if v['within'] else 'NO'} | {v['speedup']:.1f}x | "
            f"{v['fast'][0]} {v['fast'][1]} {v['fast_speedup']:.1f}x | {v['ratio']:.2f} | "
            f"{v['trainings']:.2f} | {cpu:.0f} |\n"
        )
    judged = [v for *_, v, _ in rows if v is not None]
    if judged:
        out.write(
            f"\ngoals: truly within on every task: {sum(v['within'] for v in judged)}/"
            f"{len(judged)}; speed-up >= 0.7x the grid's fastest within: "
            f"{sum(v['ratio'] >= 0.7 for v in judged)}/{len(judged)}; <= 3 trainings: "
            f"{sum(v['trainings'] <= 3 for v in judged)}/{len(judged)} (tolerance {tolerance})\n"
        )
    if schedule_rows:
        out.write(
            "\n| task | schedule (rule) | runs | mean val ± SD | grid best | grid fastest within | "
            "time from the grid's cells | best's time | fastest's time | measured s (median) |\n"
            "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |\n"
        )
        for name, schedule, rule, values, seconds, grid in schedule_rows:
            cells = grid_cells(grid)
            sign = 1.0 if grid["metric"]["direction"] == "maximize" else -1.0
            best = max(cells, key=lambda k: sign * cells[k]["mean"])
            within = [
                k for k in cells if sign * (cells[best]["mean"] - cells[k]["mean"]) <= tolerance
            ]
            fast = min(within, key=lambda k: (cells[k]["time"], -k[0]))
            estimate = schedule_time(schedule, rule, grid)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out.write(
                f"| {name} | {schedule.label} ({rule}) | {len(values)} | "
                f"{statistics.fmean(values):.4f} ± {sd:.4f} | {best[0]} {best[1]} "
                f"{cells[best]['mean']:.4f} | {fast[0]} {fast[1]} {cells[fast]['mean']:.4f} | "
                f"{estimate:.2f} s | {cells[best]['time']:.2f} s | {cells[fast]['time']:.2f} s | "
                f"{statistics.median(seconds):.2f} |\n"
                if estimate is not None
                else f"| {name} | {schedule.label} ({rule}) | {len(values)} | "
                f"{statistics.fmean(values):.4f} ± {sd:.4f} | - | - | - | - | - | "
                f"{statistics.median(seconds):.2f} |\n"
            )
    print(out.getvalue())


if __name__ == "__main__":
    main()
