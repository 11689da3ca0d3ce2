"""The measured critical batch size: steps to a target accuracy per batch size, and the fit.

McCandlish et al. (2018) model the trade between optimizer steps ``S`` and samples ``E = B S``
needed to reach a fixed target as ``(S / S_min - 1)(E / E_min - 1) = 1``. Its solution is
``S = S_min (1 + B_crit / B)`` with ``B_crit = E_min / S_min``: linear in ``1 / B``, so a least
squares fit of measured steps against ``1 / B`` gives ``S_min`` (intercept) and ``E_min``
(slope), and their ratio is the critical batch size. The noise scale ``B_simple`` predicts it.

Example:
    >>> fit = fit_critical_batch([8, 16, 32, 64], [900, 500, 300, 200])
    >>> round(fit.b_crit)
    64
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from objectives.data import Tensors
from objectives.train import (
    TrainSettings,
    check_batch_fits,
    evaluate,
    make_step,
    update_groups,
)


@dataclass
class CriticalBatchFit:
    """``S = s_min (1 + b_crit / B)`` fitted to measured steps; ``e_min = s_min * b_crit``."""

    s_min: float
    e_min: float
    b_crit: float
    residual: float


def fit_critical_batch(batch_sizes: list[int], steps: list[float]) -> CriticalBatchFit:
    """Least-squares fit of ``steps = s_min + e_min / B``; ``b_crit = e_min / s_min``.

    ``b_crit`` is ``inf`` when the intercept is not positive (steps still halve with every
    doubling across the measured range: the critical batch lies beyond it).
    """
    if len(batch_sizes) != len(steps) or len(steps) < 2:
        raise ValueError("need steps for at least two batch sizes")
    design = torch.tensor([[1.0, 1.0 / b] for b in batch_sizes], dtype=torch.float64)
    target = torch.tensor(steps, dtype=torch.float64).unsqueeze(1)
    solution = torch.linalg.lstsq(design, target).solution.flatten()
    s_min, e_min = solution.tolist()
    residual = (design @ solution.unsqueeze(1) - target).pow(2).mean().sqrt().item()
    b_crit = e_min / s_min if s_min > 0 else math.inf
    return CriticalBatchFit(s_min, e_min, b_crit, residual)


def steps_to_target(
    model: torch.nn.Module,
    train: Tensors,
    val: Tensors,
    batch_size: int,
    lr: float,
    target: float,
    max_steps: int,
    eval_every: int = 10,
    optimizer: str = "adam",
    seed: int = 0,
) -> int | None:
    """Optimizer steps until validation accuracy first reaches ``target`` (``None``: never).

    Validation is checked every ``eval_every`` steps, so the count is exact to that grain.
    Each update is the trials' own (:meth:`objectives.train.Step.update`, fp32) and uses
    exactly ``batch_size`` samples (each epoch's short tail sits out).

    Raises:
        ValueError: ``batch_size`` is above the training set.
    """
    check_batch_fits(len(train), batch_size)
    generator = torch.Generator().manual_seed(seed)
    device = train.x.device
    settings = TrainSettings(
        epochs=1,
        batch_size=batch_size,
        micro_batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        device=str(device),
    )
    update = make_step(model, settings).update
    step = 0
    while step < max_steps:
        for micro_batches, group_size in update_groups(
            train, batch_size, batch_size, generator, device
        ):
            update(micro_batches, group_size)
            step += 1
            if step % eval_every == 0:
                if evaluate(model, val, 4096, device) >= target:
                    return step
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    return None
            if step >= max_steps:
                return None
    return None
