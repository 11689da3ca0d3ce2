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
