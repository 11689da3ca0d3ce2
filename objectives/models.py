"""Model factories: ``mlp`` for any input, ``cnn`` and ``resnet`` for images ``(C, H, W)``.

- ``mlp``: a ReLU multilayer perceptron over the flattened input.
- ``cnn``: for small images. Below 16 pixels a side (the 8x8 digits) two 3x3 convolutions and
  one 2x2 max-pool; from 16 pixels up (MNIST and Fashion-MNIST 1x28x28, CIFAR-10 3x32x32) two
  conv-ReLU-pool stages (32 and 64 channels, each halving the side), then the head.
- ``resnet``: a small ResNet-style network for 32x32 colour images (CIFAR-10): a 3x3 stem,
  three stages of two residual blocks (32, 64, 128 channels; the last two stages halve the side
  with a strided convolution), global average pooling and a linear classifier. It normalises
  with GroupNorm, which normalises each sample on its own, so it does not see the
  micro-batches.
- :class:`CharTransformer`: a tiny causal transformer language model over token ids (the
  built-in ``charlm`` task); it normalises with LayerNorm, per token.

None uses batch normalisation, so gradient accumulation over micro-batches gives exactly the
update of one large batch (batch norm would see the micro-batches; see docs/training.md).

Example:
    >>> factory = build_model_factory("resnet", input_shape=(3, 32, 32), num_classes=10)
    >>> factory()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from study.config import MODELS

#: Images at least this many pixels a side get the pooled two-stage ``cnn``.
LARGE_IMAGE_SIDE = 16


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
    """A small convolutional network; ``hidden[0]`` is the width of its classifier head.

    Images below :data:`LARGE_IMAGE_SIDE` pixels a side (the 8x8 digits): two 3x3
    convolutions, one 2x2 max-pool. Larger images (28x28, 32x32): conv(32)-ReLU-maxpool,
    conv(64)-ReLU-maxpool, so the head sees 64 channels at a quarter of the side (7x7 for
    MNIST, 8x8 for CIFAR-10).
    """
    channels, height, width = input_shape
    head = hidden[0] if hidden else 128
    if min(height, width) < LARGE_IMAGE_SIDE:
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
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (height // 4) * (width // 4), head),
        nn.ReLU(),
        nn.Linear(head, num_classes),
    )


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of (at most) 8 channels: per-sample, so accumulation is exact."""
    return nn.GroupNorm(max(1, channels // 8), channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a skip connection (a strided 1x1 when shapes
    change): ``relu(x' + f(x))``, the basic block of He et al. 2016."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.norm1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), _norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet(
    input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (32, 64, 128)
) -> nn.Module:
    """A small ResNet-style network (about 0.7M parameters at the default widths).

    Stem: 3x3 convolution to ``widths[0]`` channels. Then one stage per width, each two
    :class:`ResidualBlock` s; every stage after the first halves the side. Global average
    pooling and a linear layer give the logits. Any ``(C, H, W)`` input works; it is sized
    for CIFAR-10's 3x32x32.
    """
    channels = input_shape[0]
    layers: list[nn.Module] = [
        nn.Conv2d(channels, widths[0], 3, padding=1, bias=False),
        _norm(widths[0]),
        nn.ReLU(),
    ]
    previous = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        layers += [ResidualBlock(previous, width, stride), ResidualBlock(width, width)]
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
    return nn.Sequential(*layers)


class CharTransformer(nn.Module):
    """A small causal (decoder-only) transformer language model over token ids.

    Token and learned position embeddings, ``layers`` pre-norm transformer blocks with a causal
    mask, a final LayerNorm and a linear head: ``[n, t]`` int64 ids in, ``[n, t, vocab_size]``
    logits out, position ``i`` predicting token ``i + 1``. No dropout, no batch statistics, so
    gradient accumulation is exact. Right padding needs no attention mask: under the causal
    mask a real token never attends to a later padded one.

    Args:
        vocab_size: Number of token ids.
        context: Longest sequence the position embedding covers.
        d_model: Width of the embeddings and blocks.
        layers: Number of transformer blocks.
        heads: Attention heads per block (``d_model`` must be divisible by it).
        ff_mult: Width of each block's feed-forward layer, in multiples of ``d_model``.

    Example:
        >>> model = CharTransformer(vocab_size=97, context=64)
        >>> model(torch.zeros(2, 10, dtype=torch.long)).shape
        torch.Size([2, 10, 97])
    """

    def __init__(
        self,
        vocab_size: int,
        context: int,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ModelError(f"d_model {d_model} is not divisible by {heads} attention heads")
        self.context = context
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        block = nn.TransformerEncoderLayer(
            d_model, heads, ff_mult * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        mask = nn.Transformer.generate_square_subsequent_mask(context)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, t, vocab_size]`` for token ids ``[n, t]`` (``t <= context``)."""
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"sequence of {length} tokens, longer than the context {self.context}")
        positions = torch.arange(length, device=tokens.device)
        hidden = self.token(tokens) + self.position(positions)
        mask = self.causal_mask[:length, :length].to(hidden.dtype)
        hidden = self.blocks(hidden, mask=mask, is_causal=True)
        return self.head(self.norm(hidden))


def char_transformer_factory(
    vocab_size: int, context: int, d_model: int = 64, layers: int = 2, heads: int = 4
) -> Callable[[], nn.Module]:
    """Return a function that builds a fresh :class:`CharTransformer` with these sizes."""
    return lambda: CharTransformer(vocab_size, context, d_model, layers, heads)


def build_model_factory(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)
) -> Callable[[], nn.Module]:
    """Return a function that builds a fresh model ``name`` for these inputs and classes.

    ``hidden`` sets the mlp's layers and the cnn's head width; ``resnet`` ignores it.

    Raises:
        ModelError: unknown name, or ``cnn``/``resnet`` asked for inputs that are not
            ``(C, H, W)``.
    """
    input_shape = tuple(int(d) for d in input_shape)
    hidden = tuple(int(h) for h in hidden)
    if name == "mlp":
        return lambda: mlp(input_shape, num_classes, hidden)
    if name in ("cnn", "resnet"):
        if len(input_shape) != 3:
            raise ModelError(
                f"--model {name} needs image-shaped inputs (C, H, W), this task gives "
                f"{input_shape}: use --model mlp"
            )
        if name == "cnn":
            return lambda: cnn(input_shape, num_classes, hidden)
        return lambda: resnet(input_shape, num_classes)
    raise ModelError(f"unknown --model {name!r}: choose one of {', '.join(MODELS)}")
