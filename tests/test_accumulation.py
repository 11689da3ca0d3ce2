"""Gradient accumulation is exact: k micro-batches give the update of one batch of k*b; and
every update is the batch it is labelled: exactly batch_size samples, the epoch's short tail
left out of that epoch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from objectives.data import Tensors, make_loader
from objectives.metrics import MSE, mse
from objectives.models import mlp
from objectives.tasks import Task
from objectives.train import (
    TrainSettings,
    make_step,
    plan_periods,
    samples_left_out,
    steps_per_epoch,
    train_model,
    update_groups,
)


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train_once(model, data, batch_size, micro, optimizer="sgd"):
    model = copy.deepcopy(model)
    settings = TrainSettings(
        epochs=1, batch_size=batch_size, micro_batch_size=micro, lr=0.1, optimizer=optimizer
    )
    train_model(model, data, data, settings)
    return _params(model)


def _big_batch_epoch(model, data, batch_size, optimizer, seed=0):
    """One epoch written out with torch alone: each update is the mean loss of its whole
    group (no micro-batches), in the trainer's shuffled order, the short tail left out."""
    model = copy.deepcopy(model)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    for group in order[: len(data) - len(data) % batch_size].split(batch_size):
        opt.zero_grad()
        F.cross_entropy(model(data.x[group]), data.y[group]).backward()
        opt.step()
    return _params(model)


@pytest.mark.parametrize("micro", [1, 3, 5, 8])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulated_update_equals_the_big_batch(micro: int, optimizer: str) -> None:
    # 37 samples in groups of 8: four full groups, the shuffled tail of 5 left out; micro-
    # batches of 3 or 5 leave short last micro-batches inside every group; 8 is the whole
    # group, checked against the big batch written out with torch alone.
    torch.manual_seed(0)
    data = Tensors(torch.randn(37, 6, dtype=torch.float64), torch.randint(0, 3, (37,)))
    model = mlp((6,), 3, (16,)).double()
    reference = _big_batch_epoch(model, data, batch_size=8, optimizer=optimizer)
    trained = _train_once(model, data, batch_size=8, micro=micro, optimizer=optimizer)
    assert not torch.allclose(trained, _params(model))  # it trained
    assert torch.allclose(trained, reference, rtol=1e-10, atol=1e-12)


def test_one_update_over_micro_batches_has_the_gradient_of_the_whole_group() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    model = mlp((6,), 3, (16,)).double()
    whole = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    step = make_step(model, TrainSettings(1, 8, 3, lr=0.0, optimizer="sgd"))
    micro_batches = zip(x.split(3), y.split(3), strict=True)  # 3 + 3 + 2 samples
    loss = step.update(micro_batches, samples=8)
    assert torch.allclose(loss, F.cross_entropy(model(x), y, reduction="sum"))
    for param, expected in zip(model.parameters(), whole, strict=True):
        assert torch.allclose(param.grad, expected, rtol=1e-10, atol=1e-12)


def test_accumulation_differs_from_unweighted_averaging() -> None:
    """The checks above can fail: averaging micro-batch means instead gives another update."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    model = mlp((6,), 3, (16,)).double()
    loss = torch.nn.functional.cross_entropy
    exact = torch.autograd.grad(loss(model(x), y), list(model.parameters()))
    naive_loss = (loss(model(x[:3]), y[:3]) + loss(model(x[3:]), y[3:])) / 2
    naive = torch.autograd.grad(naive_loss, list(model.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(exact, naive, strict=True))


def _group_sizes(data, batch_size: int, micro: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    groups = update_groups(data, batch_size, micro, generator, torch.device("cpu"))
    return [[len(y) for _, y in micro_batches] + [size] for micro_batches, size in groups]


class _Items(Dataset):
    """A plain dataset (not tensors): streamed through a DataLoader."""

    def __init__(self, n: int) -> None:
        self.x = torch.arange(n, dtype=torch.float32).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"x": self.x[i]}, int(i)


@pytest.mark.parametrize("kind", ["tensors", "loader"])
def test_every_update_is_exactly_batch_size_and_the_tail_sits_out_by_turns(kind: str) -> None:
    n, batch = 1078, 64  # 16 updates of 64, 54 left out per epoch
    data = (
        Tensors(torch.arange(n).float().unsqueeze(1), torch.arange(n))
        if kind == "tensors"
        else _Items(n)
    )
    assert steps_per_epoch(n, batch) == 16 and samples_left_out(n, batch) == 54
    generator = torch.Generator().manual_seed(0)
    seen_by_epoch = []
    for _ in range(3):
        seen: list[int] = []
        groups = list(update_groups(data, batch, 24, generator, torch.device("cpu")))
        assert len(groups) == 16
        for micro_batches, size in groups:
            targets = [y for _, y in micro_batches]
            assert size == batch and [len(y) for y in targets] == [24, 24, 16]
            seen += torch.cat(targets).tolist()
        assert len(seen) == len(set(seen)) == n - 54
        seen_by_epoch.append(set(seen))
    left_out = [set(range(n)) - s for s in seen_by_epoch]
    assert left_out[0] != left_out[1]  # a new shuffle: other samples sit out


def test_a_batch_size_above_the_training_set_is_refused() -> None:
    data = Tensors(torch.randn(10, 2), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size 16 is not in 1..10"):
        train_model(mlp((2,), 2, (4,)), data, data, TrainSettings(1, 16, 16, lr=0.1))
    with pytest.raises(ValueError, match="not in 1..10"):
        samples_left_out(10, 16)
    assert samples_left_out(10, 10) == 0 and steps_per_epoch(10, 10) == 1


def test_accumulation_is_exact_with_a_custom_loss_and_dict_inputs() -> None:
    """A regression task through the DataLoader path (dict inputs): micro-batches of 3 give
    the update of the whole group of 8 under the task's own per-sample loss."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(6, 2).double()

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.linear(features)

    class Data(Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(37, 6, generator=g, dtype=torch.float64)
            self.y = torch.randn(37, 2, generator=g, dtype=torch.float64)

        def __len__(self) -> int:
            return 37

        def __getitem__(self, i: int):
            return {"features": self.x[i]}, self.y[i]

    data = Data()
    task = Task("reg", Model, data, data, data, loss=mse, metric=MSE)
    torch.manual_seed(0)
    model = Model()
    results = []
    for micro in (3, 8):
        trained = copy.deepcopy(model)
        settings = TrainSettings(1, 8, micro, lr=0.1, optimizer="sgd")
        train_model(trained, data, data, settings, task=task)
        results.append(_params(trained))
    reference = copy.deepcopy(model)  # whole groups, in the loader's order, torch alone
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    loader = make_loader(data, 8, "cpu", torch.Generator().manual_seed(0), drop_last=True)
    for inputs, targets in loader:
        assert len(targets) == 8
        opt.zero_grad()
        ((reference(**inputs) - targets) ** 2).mean().backward()
        opt.step()
    assert not torch.allclose(results[0], _params(model))
    assert torch.allclose(results[0], results[1], rtol=1e-10, atol=1e-12)
    assert torch.allclose(results[0], _params(reference), rtol=1e-10, atol=1e-12)


def test_the_periods_are_planned_before_the_loop_for_epochs_step_budgets_and_schedules() -> None:
    base = dict(batch_size=64, micro_batch_size=32, lr=0.1)
    epochs, total = plan_periods(TrainSettings(epochs=3, **base), 1078, start_epoch=2)
    assert [(p.epoch, p.batch_size, p.steps) for p in epochs] == [
        (3, 64, None),
        (4, 64, None),
        (5, 64, None),
    ]
    assert total == 3 * 16  # the updates of this call when the trial's total is not given
    budget = TrainSettings(epochs=2, period_steps=(20, 20), first_step=40, **base)
    steps, total = plan_periods(budget, 1078)
    assert [p.steps for p in steps] == [20, 20] and total == 80  # walks on across epochs
    phases = ((32, 32, 0.05), (128, 64, 0.2))
    schedule, total = plan_periods(TrainSettings(epochs=2, batch_phases=phases, **base), 1078)
    assert [(p.batch_size, p.micro_batch_size, p.peak_lr) for p in schedule] == list(phases)
    assert total == 1078 // 32 + 1078 // 128
    with pytest.raises(ValueError, match="not in 1..1078"):
        plan_periods(TrainSettings(epochs=1, batch_phases=((2048, 64, 0.1),), **base), 1078)
