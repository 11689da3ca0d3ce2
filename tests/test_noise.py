"""The gradient noise scale estimator against the exact value from every per-sample gradient."""

from __future__ import annotations

import json
import math

import pytest
import torch

from objectives.data import as_tensors
from objectives.noise import estimate_noise_scale, exact_noise_scale, nearest_power_of_two
from objectives.tasks import load_task
from objectives.train import TrainSettings, train_model
from tests.conftest import run_script


@pytest.fixture(scope="module")
def small_problem():
    task = load_task(
        "synthetic",
        synthetic_samples=500,
        synthetic_features=8,
        synthetic_classes=3,
        model="mlp",
        hidden=(16,),
    )
    torch.manual_seed(0)
    return task.build_model(), as_tensors(task.train)


def test_estimate_is_within_20_percent_of_the_exact_value_before_and_after_training(
    small_problem,
):
    model, data = small_problem
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        exact, exact_trace, exact_norm = exact_noise_scale(model, data)
        est = estimate_noise_scale(
            model, data, b_small=4, b_big=64, repeats=40, generator=generator
        )
        assert abs(est.b_simple - exact) / exact < 0.2, (est, exact)
        assert abs(est.trace_sigma - exact_trace) / exact_trace < 0.2
        assert abs(est.grad_norm_sq - exact_norm) / exact_norm < 0.2
        assert 0 < est.b_simple_se < est.b_simple
        train_model(model, data, data, TrainSettings(2, 32, 32, 3e-3))


def test_estimate_leaves_the_model_and_its_gradients_alone(small_problem):
    model, data = small_problem
    model.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    estimate_noise_scale(model, data, b_small=4, b_big=16, repeats=2)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_bad_batch_pair_is_refused(small_problem):
    model, data = small_problem
    with pytest.raises(ValueError, match="multiple of b_small"):
        estimate_noise_scale(model, data, b_small=6, b_big=16)


def test_nearest_power_of_two():
    assert nearest_power_of_two(90) == 64 and nearest_power_of_two(100) == 128
    assert nearest_power_of_two(math.inf, 1, 512) == 512 and nearest_power_of_two(-3) == 1


def test_script_prints_the_json_keys():
    proc = run_script(
        "noise_scale.py",
        "--task",
        "digits",
        "--hidden",
        "32",
        "--epochs",
        "1",
        "--repeats",
        "4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("b_simple", "trace_sigma", "grad_norm_sq", "per_epoch", "recommended_batch_size"):
        assert key in out
    assert len(out["per_epoch"]) == 2 and out["b_simple"] > 0
    rec = out["recommended_batch_size"]
    assert rec & (rec - 1) == 0
