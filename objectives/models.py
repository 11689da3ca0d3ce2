"""Model factories: ``mlp`` for any input shape, ``cnn`` for image-shaped ``(C, H, W)`` inputs.

Neither uses batch normalisation, so gradient accumulation over micro-batches gives exactly the
update of one large batch (batch norm would see the micro-batches; see the README).

Example:
    >>> factory = build_model_factory("mlp", input_shape=(64,), num_classes=10, hidden=(32,))
    >>> factory()(torch.zeros(2, 64)).shape  # doctest: +SKIP
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

MODELS = ("mlp", "cnn")


class ModelError(ValueError):
    """The model does not fit the task; the message says which model to use instead."""


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """A ReLU multilayer perceptron that flattens its input first."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Two 3x3 convolutions, a 2x2 max-pool, and a small classifier head.

    Sized for small images such as the 8x8 digits; ``hidden[0]`` is the head's width.
    """
    channels, height, width = input_shape
    head = hidden[0] if hidden else 128
    pooled = (max(height // 2, 1), max(width // 2, 1))
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(pooled),
        nn.Flatten(),
        nn.Linear(64 * pooled[0] * pooled[1], head),
        nn.ReLU(),
        nn.Linear(head, num_classes),
    )


def build_model_factory(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)
) -> Callable[[], nn.Module]:
    """Return a function that builds a fresh model ``name`` for these inputs and classes.

    Raises:
        ModelError: unknown name, or ``cnn`` asked for inputs that are not ``(C, H, W)``.
    """
    input_shape = tuple(int(d) for d in input_shape)
    hidden = tuple(int(h) for h in hidden)
    if name == "mlp":
        return lambda: mlp(input_shape, num_classes, hidden)
    if name == "cnn":
        if len(input_shape) != 3:
            raise ModelError(
                f"--model cnn needs image-shaped inputs (C, H, W), this task gives "
                f"{input_shape}: use --model mlp"
            )
        return lambda: cnn(input_shape, num_classes, hidden)
    raise ModelError(f"unknown --model {name!r}: choose one of {', '.join(MODELS)}")
