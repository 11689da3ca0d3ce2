"""Learning-rate scaling rules: how the learning rate follows the batch size.

With base learning rate ``lr0`` tuned at batch ``B0``:

- ``linear``: ``lr0 * B / B0`` (Goyal et al. 2017; SGD with momentum),
- ``sqrt``: ``lr0 * sqrt(B / B0)`` (Krizhevsky 2014, Hoffer et al. 2017; Malladi et al. 2022
  for Adam),
- ``none``: ``lr0``.

``auto`` resolves to linear for SGD and square root for Adam/AdamW; ``search`` lets the study
sample the rule as a categorical parameter.

Example:
    >>> scaled_lr("sqrt", base_lr=1e-3, base_batch_size=32, batch_size=128)
    0.002
"""

from __future__ import annotations

import math

RULES = ("linear", "sqrt", "none")
SCALING_CHOICES = (*RULES, "auto", "search")


def resolve_rule(scaling: str, optimizer: str) -> str:
    """The concrete rule for ``scaling`` (``auto`` depends on the optimizer).

    Returns ``search`` unchanged: the study samples the rule per trial.
    """
    if scaling == "auto":
        return "linear" if optimizer == "sgd" else "sqrt"
    if scaling not in SCALING_CHOICES:
        raise ValueError(f"unknown scaling rule {scaling!r}: choose one of {SCALING_CHOICES}")
    return scaling


def scaled_lr(rule: str, base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """The learning rate at ``batch_size`` under ``rule``.

    Args:
        rule: One of :data:`RULES`.
        base_lr: Learning rate known to work at ``base_batch_size``.
        base_batch_size: The reference batch size.
        batch_size: The effective batch size (micro-batch times accumulation).
    """
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown scaling rule {rule!r}: choose one of {RULES}")
