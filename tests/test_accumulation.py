"""Gradient accumulation is exact: k micro-batches give the update of one batch of k*b."""

from __future__ import annotations

import copy

import pytest
import torch

from objectives.data import Tensors
from objectives.models import mlp
from objectives.train import TrainSettings, train_model


def _train_once(model, data, batch_size, micro, optimizer="sgd"):
    model = copy.deepcopy(model)
    settings = TrainSettings(
        epochs=1, batch_size=batch_size, micro_batch_size=micro, lr=0.1, optimizer=optimizer
    )
    train_model(model, data, data, settings)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("micro", [1, 3, 5, 8])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulated_update_equals_the_big_batch(micro: int, optimizer: str) -> None:
    # 37 samples in groups of 8: four full groups and a short last group of 5; micro-batches
    # of 3 or 5 also leave short last micro-batches inside every group.
    torch.manual_seed(0)
    data = Tensors(torch.randn(37, 6, dtype=torch.float64), torch.randint(0, 3, (37,)))
    model = mlp((6,), 3, (16,)).double()
    reference = _train_once(model, data, batch_size=8, micro=8, optimizer=optimizer)
    accumulated = _train_once(model, data, batch_size=8, micro=micro, optimizer=optimizer)
    assert torch.allclose(accumulated, reference, rtol=1e-10, atol=1e-12)


def test_accumulation_differs_from_unweighted_averaging() -> None:
    """The check above can fail: averaging micro-batch means instead gives another update."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    model = mlp((6,), 3, (16,)).double()
    loss = torch.nn.functional.cross_entropy
    exact = torch.autograd.grad(loss(model(x), y), list(model.parameters()))
    naive_loss = (loss(model(x[:3]), y[:3]) + loss(model(x[3:]), y[3:])) / 2
    naive = torch.autograd.grad(naive_loss, list(model.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(exact, naive, strict=True))
