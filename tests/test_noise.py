"""The gradient noise scale estimator against the exact value from every per-sample gradient."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from objectives.data import as_tensors
from objectives.noise import (
    STOP_MAX_REPEATS,
    STOP_PRECISE,
    STOP_TIME,
    choose_estimate,
    combine_repeats,
    estimate_noise_scale,
    estimate_until_precise,
    exact_noise_scale,
    nearest_power_of_two,
    noise_scale_over_training,
)
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
        ex = exact_noise_scale(model, data)
        exact, exact_trace, exact_norm = ex.b_simple, ex.trace_sigma, ex.grad_norm_sq
        assert ex.b_simple_se == 0 and ex.stop == "exact"
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
    for key in ("b_simple_se", "relative_se", "stop", "epoch", "trusted", "chosen_because"):
        assert key in out
    assert all("b_simple_se" in e and "stop" in e for e in out["per_epoch"])
    assert len(out["per_epoch"]) == 2 and out["b_simple"] > 0
    rec = out["recommended_batch_size"]
    assert rec & (rec - 1) == 0


def test_the_loss_is_a_parameter_and_a_scaled_loss_scales_both_terms(small_problem):
    model, data = small_problem

    def doubled(outputs, targets):
        return 2 * F.cross_entropy(outputs, targets, reduction="none")

    plain = estimate_noise_scale(model, data, 4, 32, 8, torch.Generator().manual_seed(3))
    scaled = estimate_noise_scale(
        model, data, 4, 32, 8, torch.Generator().manual_seed(3), loss=doubled
    )
    assert scaled.trace_sigma == pytest.approx(4 * plain.trace_sigma, rel=1e-4)
    assert scaled.grad_norm_sq == pytest.approx(4 * plain.grad_norm_sq, rel=1e-4)
    assert scaled.b_simple == pytest.approx(plain.b_simple, rel=1e-4)
    exact = exact_noise_scale(model, data, loss=doubled)
    assert exact.trace_sigma == pytest.approx(4 * exact_noise_scale(model, data).trace_sigma)


def test_every_estimate_carries_its_standard_error(small_problem):
    model, data = small_problem
    fixed = estimate_noise_scale(model, data, 4, 32, 4)
    assert math.isfinite(fixed.b_simple_se) and fixed.b_simple_se > 0
    assert fixed.to_dict()["relative_se"] == pytest.approx(fixed.b_simple_se / fixed.b_simple)
    # |G|^2 estimated at 0 or below: B_simple and its error are infinite, said as such
    hopeless = combine_repeats([1.0, -1.0, -0.5], [2.0, 2.0, 2.0], 4, 32)
    assert hopeless.b_simple == math.inf and hopeless.b_simple_se == math.inf
    assert hopeless.relative_se == math.inf and hopeless.to_dict()["relative_se"] is None


class FakeDraws:
    """Per-repeat estimates with known means and noise, on a fake clock (``dt`` per repeat).

    ``noise`` is the standard deviation of each |G|^2 draw (absolute) and of each tr(Sigma) draw
    relative to ``trace``.
    """

    def __init__(self, norm: float, trace: float, noise: float, dt: float = 0.01, seed: int = 0):
        self.norm, self.trace, self.noise, self.dt = norm, trace, noise, dt
        self.rng = random.Random(seed)
        self.now = 0.0
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, repeats: int):
        self.calls.append(repeats)
        self.now += repeats * self.dt
        norms = [self.norm + self.rng.gauss(0, self.noise) for _ in range(repeats)]
        traces = [self.trace + self.rng.gauss(0, self.noise * self.trace) for _ in range(repeats)]
        return norms, traces


def test_a_precise_first_batch_of_repeats_stops_at_once():
    draws = FakeDraws(norm=1.0, trace=50.0, noise=0.05)
    est = estimate_until_precise(draws, 8, 128, min_repeats=16, clock=draws.clock)
    assert draws.calls == [16] and est.repeats == 16 and est.stop == STOP_PRECISE
    assert est.b_simple == pytest.approx(50, rel=0.1) and est.relative_se <= 0.2


def test_repeats_are_added_until_the_error_is_at_most_20_percent():
    draws = FakeDraws(norm=1.0, trace=50.0, noise=2.0)  # per-repeat |G|^2 very noisy
    est = estimate_until_precise(draws, 8, 128, min_repeats=8, max_seconds=1e6, clock=draws.clock)
    assert est.stop == STOP_PRECISE and est.relative_se <= 0.2
    assert len(draws.calls) > 1 and est.repeats == sum(draws.calls) > 8
    assert all(more <= sum(draws.calls[:i]) for i, more in enumerate(draws.calls) if i)
    assert est.seconds == pytest.approx(est.repeats * 0.01)


def test_the_time_limit_stops_a_hopeless_estimate_and_says_so():
    draws = FakeDraws(norm=1e-6, trace=50.0, noise=1.0)  # |G|^2 ~ 0: the error never shrinks
    est = estimate_until_precise(draws, 8, 128, min_repeats=8, max_seconds=2.0, clock=draws.clock)
    assert est.stop == STOP_TIME and est.relative_se > 0.2
    assert 2.0 <= est.seconds <= 2.0 + 0.01 * 8 * 2  # overshoots by at most one addition
    capped = estimate_until_precise(
        FakeDraws(1e-6, 50.0, 1.0), 8, 128, min_repeats=8, max_repeats=40, clock=lambda: 0.0
    )
    assert capped.stop == STOP_MAX_REPEATS and capped.repeats == 40


def test_a_zero_time_limit_still_gives_an_estimate_with_its_error():
    draws = FakeDraws(norm=1.0, trace=50.0, noise=3.0)
    est = estimate_until_precise(draws, 8, 128, min_repeats=4, max_seconds=0, clock=draws.clock)
    assert est.repeats == 4 and est.stop in (STOP_TIME, STOP_PRECISE)
    assert est.b_simple_se > 0


def _entry(epoch: int, b: float, rel: float | None) -> dict:
    return {"epoch": epoch, "b_simple": b, "relative_se": rel}


def test_the_reported_estimate_is_not_the_one_at_initialisation_when_a_later_one_is_precise():
    run = [_entry(0, 1051, 1.2), _entry(1, 60, 0.3), _entry(2, 90, 0.1), _entry(3, 300, 0.15)]
    assert choose_estimate(run)[:2] == (2, True)
    precise_init = [_entry(0, 70, 0.05), _entry(1, 45, 0.04)]
    assert choose_estimate(precise_init)[:2] == (1, True)
    only_init = [_entry(0, 70, 0.05), _entry(1, 45, 0.5)]
    index, trusted, why = choose_estimate(only_init)
    assert (index, trusted) == (0, True) and "initialisation" in why
    none = [_entry(0, 1051, 1.2), _entry(1, 60, 0.4), _entry(2, 90, None)]
    index, trusted, why = choose_estimate(none)
    assert (index, trusted) == (1, False) and "not trustworthy" in why


def test_over_training_every_estimate_has_its_error_and_the_top_level_is_chosen():
    task = load_task("digits", model="mlp", hidden=(16,))
    out = noise_scale_over_training(task, epochs=1, repeats=4, max_seconds=20)
    for entry in out["per_epoch"]:
        assert entry["b_simple_se"] >= 0 and entry["stop"] in (STOP_PRECISE, STOP_TIME)
        assert entry["repeats"] >= 4
    chosen = out["per_epoch"][[e["epoch"] for e in out["per_epoch"]].index(out["epoch"])]
    assert out["b_simple"] == chosen["b_simple"] and out["b_simple_se"] == chosen["b_simple_se"]
    assert out["trusted"] == (out["relative_se"] is not None and out["relative_se"] <= 0.2)
    assert out["recommended_batch_size"] == nearest_power_of_two(out["b_simple"], 1, 1024)


@pytest.mark.parametrize(
    ("flags", "stopped", "trusted"),
    [
        (["--relative-error", "0.9"], "stopped by precision", True),
        (["--relative-error", "0.0001", "--max-seconds", "0.2"], "stopped by time limit", False),
    ],
)
def test_the_command_says_which_stop_condition_ended_the_estimate(flags, stopped, trusted):
    proc = run_script(
        "noise_scale.py",
        "--task",
        "digits",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--repeats",
        "4",
        *flags,
    )
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stdout.splitlines() if line.startswith("B_simple =")]
    assert len(summary) == 1 and stopped in summary[0]
    assert ("NOT TRUSTWORTHY" in proc.stdout) is not trusted
    assert ("not trustworthy" in proc.stderr) is not trusted


def test_bad_precision_flags_are_one_line_errors():
    proc = run_script("noise_scale.py", "--task", "digits", "--relative-error", "0")
    assert proc.returncode == 2 and "--relative-error" in proc.stderr
    proc = run_script("noise_scale.py", "--task", "digits", "--max-seconds", "-1")
    assert proc.returncode == 2 and "--max-seconds" in proc.stderr


def test_a_model_that_diverges_is_named_in_the_result_and_warned_by_the_command():
    args = ("noise_scale.py", "--task", "digits", "--hidden", "16", "--epochs", "1")
    args += ("--repeats", "4", "--max-seconds", "5")
    diverging = run_script(*args, "--lr", "1e6", "--json")
    assert diverging.returncode == 0, diverging.stderr
    assert "the training loss went from" in json.loads(diverging.stdout)["diverged"]
    assert "the model diverged during training" in diverging.stderr
    trained = run_script(*args, "--lr", "1e-3", "--json")
    assert "diverged" not in json.loads(trained.stdout)
    assert "diverged" not in trained.stderr
