"""Gradient accumulation is exact: k micro-batches give the update of one batch of k*b."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from objectives.data import Tensors
from objectives.models import mlp
from objectives.train import TrainSettings, make_step, train_model


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
    group (no micro-batches), in the trainer's shuffled order."""
    model = copy.deepcopy(model)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    for group in order.split(batch_size):
        opt.zero_grad()
        F.cross_entropy(model(data.x[group]), data.y[group]).backward()
        opt.step()
    return _params(model)


@pytest.mark.parametrize("micro", [1, 3, 5, 8])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulated_update_equals_the_big_batch(micro: int, optimizer: str) -> None:
    # 37 samples in groups of 8: four full groups and a short last group of 5; micro-batches
    # of 3 or 5 also leave short last micro-batches inside every group; 8 is the whole group,
    # checked against the big batch written out with torch alone.
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
