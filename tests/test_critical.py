"""The critical-batch fit recovers B_crit from steps that follow the McCandlish model."""

from __future__ import annotations

import math

import torch

from objectives.critical import fit_critical_batch, steps_to_target
from objectives.data import as_tensors
from objectives.tasks import load_task


def test_fit_recovers_the_critical_batch_from_model_steps():
    sizes = [8, 16, 32, 64, 128, 256]
    s_min, b_crit = 120.0, 50.0
    steps = [s_min * (1 + b_crit / b) * (1.03 if i % 2 else 0.97) for i, b in enumerate(sizes)]
    fit = fit_critical_batch(sizes, steps)
    assert abs(fit.b_crit - b_crit) / b_crit < 0.1
    assert abs(fit.e_min - s_min * b_crit) / (s_min * b_crit) < 0.1


def test_perfect_scaling_across_the_range_means_the_critical_batch_is_beyond_it():
    fit = fit_critical_batch([8, 16, 32], [800, 400, 200])
    assert fit.b_crit > 1e6 or math.isinf(fit.b_crit)


def test_steps_to_target_counts_steps_and_reports_never():
    task = load_task("digits", model="mlp", hidden=(32,))
    train, val = as_tensors(task.train), as_tensors(task.val)
    torch.manual_seed(0)
    model = task.build_model()
    steps = steps_to_target(model, train, val, 32, 3e-3, target=0.8, max_steps=500)
    assert steps is not None and 0 < steps <= 500 and steps % 10 == 0
    torch.manual_seed(0)
    assert steps_to_target(task.build_model(), train, val, 32, 3e-3, 1.01, max_steps=20) is None


def _bench():
    """benchmarks/bench_critical_batch.py as a module (benchmarks is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_critical_batch.py"
    spec = importlib.util.spec_from_file_location("bench_critical_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_learning_rate_grid_widens_until_the_optimum_is_inside():
    bench = _bench()
    # steps fall up to multiplier 16, then rise: the grid must grow from 4 to 32
    steps = {0.5: 200, 1: 150, 2: 100, 4: 70, 8: 50, 16: 40, 32: 45, 64: None}
    tried, best, inside = bench.tune_lr(lambda m: steps.get(m), [0.5, 1, 2, 4])
    assert (best, inside) == (16, True) and max(tried) == 32 and 64 not in tried
    # optimum below the grid: it grows downward
    low = {0.125: 90, 0.25: 60, 0.5: 70, 1: 80, 2: 90, 4: None}
    tried, best, inside = bench.tune_lr(lambda m: low.get(m), [0.5, 1, 2, 4])
    assert (best, inside) == (0.25, True) and min(tried) == 0.125
    # still falling at the last widening allowed: reported as on the edge
    falling = bench.tune_lr(lambda m: int(1000 / m), [1, 2], max_extensions=2)
    assert falling[1:] == (8, False)
    # nothing reaches the target: both sides widened, no optimum
    tried, best, inside = bench.tune_lr(lambda m: None, [1, 2], max_extensions=1)
    assert best is None and not inside and sorted(tried) == [0.5, 1, 2, 4]


def test_validation_is_checked_at_most_5_percent_of_the_counted_steps_apart():
    bench = _bench()
    assert bench.check_interval(None) == 1 and bench.check_interval(19) == 1
    assert bench.check_interval(200) == 10
    intervals = []

    def run(m: float, every: int) -> int:  # the target is reached at step 53 (m = 1)
        intervals.append(every)
        true_steps = 53 if m == 1 else 80
        return -(-true_steps // every) * every  # the first check at or after it

    tried, best, inside, every = bench.steps_for_batch(run, [0.5, 1, 2], 2, guess=400)
    assert best == 1 and inside and every <= 0.05 * tried[best]
    assert intervals[0] == 20 and every == 2 and tried[best] == 54
