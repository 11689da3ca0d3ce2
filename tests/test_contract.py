"""The task contract: any model, any loss, dict and variable-length batches, a
step hook, tokens as the unit, all through the public names and a real study on SQLite."""

from __future__ import annotations

import math
import types
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch.utils.data import Dataset, TensorDataset

from objectives import (
    MSE,
    BatchSizeObjective,
    Metric,
    StepHook,
    Task,
    TaskError,
    TrainSettings,
    train_task,
    validate_task,
)
from objectives.metrics import BITS_PER_CHAR, mse
from objectives.train import make_step, steps_per_epoch
from study.config import StudyConfig
from study.space import build_space

# ---------------------------------------------------------------- three kinds of task


def regression_task(n: int = 240) -> Task:
    """A noisy linear target: float targets, MSE loss and metric (minimised)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    splits = [TensorDataset(x[i::3].contiguous(), y[i::3].contiguous()) for i in range(3)]
    return Task("line", lambda: torch.nn.Linear(4, 1), *splits, loss=mse, metric=MSE)


class Sequences(Dataset):
    """Token sequences of 3..12 tokens; the label is whether the first token is >= 5.

    Items are ``({"tokens": long[L]}, label)``: dict inputs of variable length.
    """

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 13, (n,), generator=g).tolist()
        self.items = [torch.randint(1, 10, (length,), generator=g) for length in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        tokens = self.items[i]
        return {"tokens": tokens}, int(tokens[0] >= 5)


def pad(items: list) -> tuple[dict, torch.Tensor]:
    """Pad the tokens to the batch's longest (0 is padding) and give a mask."""
    tokens = torch.nn.utils.rnn.pad_sequence([x["tokens"] for x, _ in items], batch_first=True)
    labels = torch.tensor([y for _, y in items])
    return {"tokens": tokens, "mask": tokens != 0}, labels


class Pooled(torch.nn.Module):
    """Embedding, then the first token's and the masked mean's features, then classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)
        mean = (e * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(torch.cat([e[:, 0], mean], dim=1))


def count_tokens(inputs: dict, targets: torch.Tensor) -> torch.Tensor:
    return inputs["mask"].sum()


def sequence_task() -> Task:
    splits = [Sequences(n, seed) for n, seed in ((240, 0), (80, 1), (80, 2))]
    return Task("seq", Pooled, *splits, collate=pad, unit="tokens", count=count_tokens)


def clipped_task(max_norm: float = 1e-3, calls: list | None = None) -> Task:
    """Digits-like classification with gradient clipping and label smoothing in a hook."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] > 0).long()
    data = TensorDataset(x, y)

    def smoothed(losses, outputs, targets, model):
        return F.cross_entropy(outputs, targets, label_smoothing=0.2, reduction="none")

    def clip(model, optimizer):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if calls is not None:
            calls.append(float(norm))

    hook = StepHook(loss=smoothed, before_update=clip)
    return Task("clipped", lambda: torch.nn.Linear(6, 2), data, data, data, step=hook)


TASKS = {"regression": regression_task, "sequence": sequence_task, "hook": clipped_task}

# ---------------------------------------------------------------- train and study


def test_a_regression_task_trains_to_a_small_error():
    task = validate_task(regression_task(), "line")
    assert task.num_classes is None and task.metric_info()["direction"] == "minimize"
    result = train_task(task, TrainSettings(epochs=15, batch_size=16, micro_batch_size=8, lr=0.05))
    variance = float(task.val.tensors[1].var())
    assert result.val_metric < 0.1 * variance  # far below predicting the mean
    assert result.test_metric is not None and result.train_metric < 0.1 * variance


def test_a_variable_length_dict_task_with_collate_trains_and_counts_tokens():
    task = validate_task(sequence_task(), "seq")
    assert task.num_classes == 2
    result = train_task(task, TrainSettings(epochs=12, batch_size=16, micro_batch_size=5, lr=0.05))
    assert result.val_metric > 0.8  # the label is the first token's half: learnable
    assert result.unit == "tokens" and result.samples_seen == 12 * (240 - 240 % 16)
    tokens_per_sample = result.units_seen / result.samples_seen
    assert 3 <= tokens_per_sample <= 12 and tokens_per_sample != int(tokens_per_sample)
    assert result.units_per_s == pytest.approx(result.units_seen / result.train_time_s)


def test_the_step_hook_clips_every_update_and_its_loss_is_the_one_trained():
    calls: list[float] = []
    task = validate_task(clipped_task(1e-3, calls), "clipped")
    calls.clear()  # validation ran the hook once
    model = task.build_model()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    x, y = task.train.tensors[0][:16], task.train.tensors[1][:16]
    with torch.no_grad():
        smoothed = F.cross_entropy(model(x), y, label_smoothing=0.2, reduction="sum")
        plain = F.cross_entropy(model(x), y, reduction="sum")
    step = make_step(model, TrainSettings(1, 16, 4, lr=1.0, optimizer="sgd"), task)
    loss = step.update(zip(x.split(4), y.split(4), strict=True), samples=16)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert float(loss) == pytest.approx(float(smoothed), rel=1e-5)  # the hook's loss trained
    assert abs(float(smoothed) - float(plain)) > 0.1  # and it is not the plain loss
    assert len(calls) == 1 and calls[0] > 1e-2  # the gradient was far larger ...
    assert float(moved.norm()) == pytest.approx(1e-3, rel=1e-3)  # ... and the update clipped
    calls.clear()
    result = train_task(task, TrainSettings(epochs=2, batch_size=32, micro_batch_size=8, lr=0.5))
    assert len(calls) == 2 * steps_per_epoch(160, 32)  # once per update in the loop too
    assert 0.0 <= result.val_metric <= 1.0


def test_gradients_are_unscaled_before_the_hook_under_a_gradient_scaler():
    seen: list[float] = []

    def record(model, optimizer):
        seen.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))

    hook = StepHook(before_update=record)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    expected = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    step = make_step(model, TrainSettings(1, 8, 8, lr=0.0, optimizer="sgd"))
    step.hook = hook
    step.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # as fp16 scales on CUDA
    step.update([(x, y)], samples=8)
    assert seen == [pytest.approx(float(torch.cat([g.flatten() for g in expected]).norm()))]


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_a_study_runs_each_kind_of_task_and_stores_its_metric(kind: str, tmp_path: Path):
    task = validate_task(TASKS[kind](), kind)
    config = StudyConfig(trials=3, epochs=2, seed=0).validate()
    space = build_space(8, 16, 2, len(task.train), "none", "test")
    objective = BatchSizeObjective(task, config, space, "cpu")
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", direction=task.metric.direction
    )
    study.optimize(objective, n_trials=3)
    name = task.metric.name
    for trial in study.trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED), trial.user_attrs
        attrs = trial.user_attrs
        assert attrs["samples_left_out"] == len(task.train) % attrs["batch_size"]
        assert attrs["samples_per_s"] > 0
        if trial.state == TrialState.COMPLETE:
            assert math.isfinite(trial.value) and attrs[f"val_{name}"] == trial.value
            assert f"test_{name}" in attrs


# ---------------------------------------------------------------- one line per violation


class Items(Dataset):
    """A dataset of given items (and the same item where none is given)."""

    def __init__(self, items: dict[int, object], default: object, n: int = 32) -> None:
        self.items, self.default, self.n = items, default, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.items.get(i, self.default)


def _linear() -> torch.nn.Module:
    return torch.nn.Linear(4, 2)


def _task(train=None, model=_linear, **kwargs) -> Task:
    data = TensorDataset(torch.randn(32, 4), torch.arange(32) % 2)
    return Task("t", model, train if train is not None else data, data, data, **kwargs)


_ITEM = (torch.randn(4), 1)
BAD = {
    "loss not per sample": (
        lambda: _task(loss=lambda out, y: F.cross_entropy(out, y)),
        "the loss gives [] for 8 train items: it must return one value per sample",
    ),
    "metric not per sample": (
        lambda: _task(metric=Metric("m", "maximize", lambda out, y: out.sum())),
        "the metric 'm' gives []",
    ),
    "bad direction": (
        lambda: _task(metric=types.SimpleNamespace(name="m", direction="up", fn=len)),
        "direction 'up' must be 'maximize' or 'minimize'",
    ),
    "three-part items": (
        lambda: _task(Items({}, (torch.randn(4), 1, 2))),
        "items must be (inputs, targets) pairs",
    ),
    "a later item differs": (
        lambda: _task(Items({31: ({"x": torch.randn(4)}, 1)}, _ITEM)),
        "train item 31 is tuple(dict(x: float32[4]), int) but item 0 is",
    ),
    "val differs from train": (
        lambda: Task(
            "t",
            _linear,
            TensorDataset(torch.randn(8, 4), torch.arange(8) % 2),
            Items({}, (torch.randn(4, dtype=torch.float64), 1), n=8),
            TensorDataset(torch.randn(8, 4), torch.arange(8) % 2),
        ),
        "val item 0 is tuple(float64[4], int) but train item 0 is tuple(float32[4], int64[])",
    ),
    "variable length without collate": (
        lambda: _task(Items({9: (torch.randn(5), 1)}, _ITEM)),
        "need a collate(items)",
    ),
    "float targets with the default loss": (
        lambda: _task(Items({}, (torch.randn(4), 0.5))),
        "labels must be integers",
    ),
    "collate returns no pair": (
        lambda: _task(collate=lambda items: torch.zeros(3)),
        "a batch must be (inputs, targets)",
    ),
    "model does not take dict inputs": (
        lambda: Task("t", _linear, *[Items({}, ({"features": torch.randn(4)}, 1))] * 3),
        "the forward pass on 8 train items, inputs dict(features: float32[8, 4]), raised",
    ),
    "hook fails": (
        lambda: _task(step=StepHook(before_update=lambda m, o: 1 / 0)),
        "the step hook's before_update raised ZeroDivisionError",
    ),
    "hook loss not per sample": (
        lambda: _task(step=StepHook(loss=lambda losses, out, y, m: losses.mean())),
        "the step hook's loss gives []",
    ),
    "count gives text": (
        lambda: _task(unit="tokens", count=lambda x, y: "many"),
        "count(inputs, targets) gives str",
    ),
    "step is not a hook": (lambda: _task(step=42), "step must be an objectives.StepHook"),
    "no unit": (lambda: _task(unit=""), "unit '' must name"),
    "loss not callable": (lambda: _task(loss="mse"), "loss must be callable"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_broken_contract_is_one_clear_line(case: str):
    make, message = BAD[case]
    with pytest.raises(TaskError) as error:
        validate_task(make(), "t")
    text = str(error.value)
    assert message in text and "\n" not in text, text


def test_metric_checks_its_arguments_up_front():
    with pytest.raises(ValueError, match="direction 'higher'"):
        Metric("acc", "higher", lambda o, t: o)
    with pytest.raises(ValueError, match="metric name 'val acc'"):
        Metric("val acc", "maximize", lambda o, t: o)
    for bad in ((1, 0), (0,), ("0", 1), (0, float("inf"))):
        with pytest.raises(ValueError, match="bounds"):
            Metric("acc", "maximize", lambda o, t: o, bounds=bad)
    assert Metric("r2", "maximize", lambda o, t: o, bounds=(None, 1)).bounds == (None, 1)
    assert BITS_PER_CHAR.direction == "minimize" and MSE.name == "mse"
    outputs = torch.zeros(2, 3, 4)  # uniform over 4 symbols: exactly 2 bits per token
    assert torch.allclose(
        BITS_PER_CHAR.fn(outputs, torch.zeros(2, 3, dtype=torch.long)), 2 * torch.ones(2)
    )


def test_tuple_inputs_are_passed_as_positional_arguments():
    class Pair(Dataset):
        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(n)
            self.a, self.b = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)

        def __len__(self) -> int:
            return len(self.a)

        def __getitem__(self, i: int):
            return (self.a[i], self.b[i]), int(self.a[i, 0] + self.b[i, 0] > 0)

    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(5, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.linear(torch.cat([a, b], dim=1))

    task = validate_task(Task("pair", TwoInputs, Pair(200), Pair(60), Pair(61)), "pair")
    result = train_task(task, TrainSettings(epochs=8, batch_size=16, micro_batch_size=8, lr=0.05))
    assert result.val_metric > 0.8 and result.samples_seen == 8 * 192
