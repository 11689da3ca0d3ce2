"""The user's training recipe: optimizer, weight decay, a schedule over each trial's updates."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from torch.utils.data import TensorDataset

from batchsize_study.api import run_study
from objectives import StepHook, Task
from objectives.tasks import TaskError, validate_task
from objectives.train import TrainSettings, Update, train_task
from study.config import ConfigError, StudyConfig, differences
from study.schedule import LRSchedule
from tests.conftest import run_script


def blobs_task(**more) -> Task:
    """Four Gaussian blobs in 8 dimensions, 256 training samples: seconds per study."""
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 8, generator=g)

    def split(n: int) -> TensorDataset:
        y = torch.arange(n) % 4
        return TensorDataset(centres[y] + torch.randn(n, 8, generator=g), y)

    return Task("blobs", lambda: torch.nn.Linear(8, 4), split(256), split(64), split(64), **more)


def settings(tmp_path, **more) -> dict:
    return {
        "trials": 2,
        "epochs": 3,
        "min_batch_size": 16,
        "max_batch_size": 32,
        "scaling": "linear",
        "sampler": "grid",
        "base_lr": 0.01,
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "artifact_dir": "none",
        "device": "cpu",
        **more,
    }


def test_cosine_and_linear_decay_to_the_final_fraction_after_a_warm_up():
    cosine = LRSchedule("cosine", final_fraction=0.1, warmup_steps=2)
    rates = [cosine.lr(i, 10, 1.0, start_lr=0.5) for i in range(10)]
    assert rates[:3] == [0.75, 1.0, 1.0]  # the ramp ends at the peak, where the decay starts
    assert all(a > b for a, b in zip(rates[2:], rates[3:], strict=False))  # then only falls
    assert rates[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    linear = LRSchedule("linear", final_fraction=0.0)
    assert [linear.lr(i, 4, 2.0) for i in range(4)] == [2.0, 1.5, 1.0, 0.5]
    assert LRSchedule().lr(99, 100, 0.3) == 0.3 and not LRSchedule().varies


def test_every_batch_size_of_a_study_gets_the_same_cosine_shape_over_its_own_updates(tmp_path):
    seen: dict[int, list[Update]] = defaultdict(list)

    def record(model, optimizer, update: Update) -> None:
        assert optimizer.param_groups[0]["lr"] == update.lr  # the rate the update runs at
        seen[update.total].append(update)

    task = blobs_task(step=StepHook(before_update=record))
    result = run_study(task=task, **settings(tmp_path, lr_schedule="cosine", final_lr_fraction=0.1))
    assert {t.params["batch_size"] for t in result.study.trials} == {16, 32}
    seen.pop(0, None)  # steps outside a trial (the task's check, the timing): total 0
    # 256 samples: 16 updates per epoch at batch 16, 8 at batch 32; three epochs each.
    assert set(seen) == {48, 24}
    for total, updates in seen.items():
        batch = 256 * 3 // total
        peak = 0.01 * batch / 32  # the linear rule sets the peak
        assert [u.index for u in updates] == list(range(total))
        for u in updates:
            expected = peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * u.index / total)))
            assert u.lr == pytest.approx(expected)
        assert updates[-1].lr < 0.11 * peak  # near the final fraction at the budget's end
    assert result.study.user_attrs["config"]["lr_schedule"] == "cosine"


def test_weight_decay_reaches_the_optimizer_and_a_task_may_give_its_own_optimizer():
    decays = []

    def record(model, optimizer):
        decays.append(optimizer.param_groups[0]["weight_decay"])

    task = blobs_task(step=StepHook(before_update=record))
    settings = TrainSettings(1, 32, 32, lr=0.01, optimizer="adamw", weight_decay=0.25)
    train_task(task, settings)
    assert decays and set(decays) == {0.25}
    decays.clear()
    train_task(task, TrainSettings(1, 32, 32, lr=0.01, optimizer="adamw"))
    assert set(decays) == {0.01}  # torch's default for AdamW, as the docs say

    built = []

    def own(params, lr):
        built.append(lr)
        return torch.optim.RMSprop(params, lr=lr, weight_decay=0.5)

    kinds = []
    task = blobs_task(
        optimizer=own,
        lr_schedule=lambda index, total: 1.0 - index / total,
        step=StepHook(before_update=lambda m, o, u: kinds.append((type(o).__name__, u.lr))),
    )
    train_task(task, TrainSettings(1, 64, 64, lr=0.2))
    assert built == [0.2] and [k for k, _ in kinds] == ["RMSprop"] * 4
    assert [lr for _, lr in kinds] == pytest.approx([0.2, 0.15, 0.1, 0.05])


def test_a_task_optimizer_or_schedule_that_breaks_the_contract_is_one_clear_error():
    with pytest.raises(TaskError, match="optimizer.*returned str"):
        validate_task(blobs_task(optimizer=lambda params, lr: "sgd"), "t")
    with pytest.raises(TaskError, match=r"lr_schedule\(0, 10\) gave -1.0"):
        validate_task(blobs_task(lr_schedule=lambda i, n: -1.0), "t")


@pytest.mark.parametrize(
    ("more", "message"),
    [
        ({"lr_schedule": "step"}, "--lr-schedule 'step' is not one of"),
        ({"final_lr_fraction": 0.1}, "--final-lr-fraction 0.1 needs a decaying schedule"),
        ({"lr_schedule": "cosine", "final_lr_fraction": 2.0}, "fraction of the peak from 0"),
        ({"weight_decay": -1.0}, "--weight-decay -1.0: use a number of at least 0"),
        ({"warmup_steps": 5, "warmup_epochs": 1}, "give the warm-up in one unit"),
        ({"budget": "steps", "steps": 10, "warmup_steps": 10}, "fewer than --steps 10"),
    ],
)
def test_bad_recipe_settings_name_the_flag_and_the_fix(more, message):
    with pytest.raises(ConfigError, match=message):
        StudyConfig(**more).validate()


def test_the_recipe_is_part_of_the_studys_identity_and_shown_in_its_report(tmp_path):
    stored = StudyConfig(lr_schedule="cosine", weight_decay=0.1).validate().identity()
    changed = differences(stored, StudyConfig(weight_decay=0.1).validate().identity())
    assert changed == ["--lr-schedule 'cosine' (stored) vs 'constant' (now)"]
    url = f"sqlite:///{tmp_path / 's.db'}"
    common = ["--task", "digits", "--model", "mlp", "--hidden", "16", "--epochs", "2",
              "--trials", "1", "--max-batch-size", "64", "--min-batch-size", "64",
              "--storage", url, "--artifact-dir", "none", "--device", "cpu"]  # fmt: skip
    recipe = ["--optimizer", "adamw", "--weight-decay", "0.05", "--lr-schedule", "linear",
              "--final-lr-fraction", "0.2", "--warmup-steps", "3"]  # fmt: skip
    first = run_script("run_study.py", *common, *recipe)
    assert first.returncode == 0, first.stderr
    again = run_script("run_study.py", *common, "--trials", "2", "--optimizer", "adamw")
    assert again.returncode == 2
    assert "--weight-decay 0.05 (stored) vs None (now)" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    report = run_script("report.py", "--storage", url, "--format", "text")
    assert report.returncode == 0, report.stderr
    assert "adamw, weight decay 0.05" in report.stdout
    assert "linear to 0.2 of the peak over each trial's updates, 3 warm-up updates" in (
        report.stdout
    )
