"""Batches of any structure: ``(inputs, targets)`` where each is a tensor, a tuple/list of
tensors or a dict of tensors.

A task's items and batches are ``(inputs, targets)``. These helpers are what the training
loop, the evaluation, the probe and the task check use to handle such structures without
knowing their shape: move them to a device (recursively), call the model the way the inputs
say (``model(x)``, ``model(*x)`` or ``model(**x)``), count their samples, split them into
micro-batches, and stack items into a batch when the task has no ``collate``.

Example:
    >>> x = {"tokens": torch.zeros(4, 7, dtype=torch.long), "mask": torch.ones(4, 7)}
    >>> batch_len(x), [batch_len(part) for part in split_batch(x, 3)]
    (4, [3, 1])
    >>> call_model(lambda tokens, mask: tokens.shape, x)
    torch.Size([4, 7])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

#: A tensor, or a tuple/list/dict of tensors (nested structures are allowed).
Structure = Any
#: One item or one batch: ``(inputs, targets)``.
Batch = tuple[Structure, Structure]


def to_device(obj: Structure, device: torch.device | str, non_blocking: bool = False) -> Structure:
    """``obj`` with every tensor in it moved to ``device`` (tuples, lists and dicts kept).

    Example:
        >>> to_device((torch.ones(2), {"a": torch.zeros(1)}), "cpu")
        (tensor([1., 1.]), {'a': tensor([0.])})
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device, non_blocking) for v in obj]
    return obj


def call_model(model: Callable[..., Any], inputs: Structure) -> Any:
    """Run ``model`` on ``inputs``: ``model(**x)`` for a dict, ``model(*x)`` for a tuple or
    list, ``model(x)`` for a tensor."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def leaves(obj: Structure) -> Iterator[torch.Tensor]:
    """The tensors in ``obj``, in order (dict values in insertion order)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from leaves(value)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            yield from leaves(value)


def batch_len(obj: Structure) -> int:
    """Samples in a batch: the first dimension of its first tensor (a tensor, tuple, list or
    dict of them).

    Raises:
        ValueError: there is no tensor with a first dimension in ``obj``.
    """
    if isinstance(obj, torch.Tensor) and obj.dim() > 0:
        return obj.shape[0]
    for tensor in leaves(obj):
        if tensor.dim() > 0:
            return tensor.shape[0]
    raise ValueError(f"a batch needs a tensor with a batch dimension, got {describe(obj)}")


def numel(obj: Structure) -> int:
    """Elements of all the tensors in ``obj`` (the size of an item, for sorting by length)."""
    return sum(t.numel() for t in leaves(obj))


def split_batch(obj: Structure, size: int) -> list[Structure]:
    """``obj`` cut along its first dimension into parts of at most ``size`` samples."""
    if isinstance(obj, torch.Tensor):
        return list(obj.split(size))
    if isinstance(obj, Mapping):
        parts = {k: split_batch(v, size) for k, v in obj.items()}
        count = len(next(iter(parts.values()))) if parts else 0
        return [{k: v[i] for k, v in parts.items()} for i in range(count)]
    if isinstance(obj, (tuple, list)):
        columns = [split_batch(v, size) for v in obj]
        return [type(obj)(column) for column in zip(*columns, strict=True)]
    raise TypeError(f"cannot split {type(obj).__name__} into micro-batches: use tensors")


def index_batch(obj: Structure, index: torch.Tensor) -> Structure:
    """The samples of ``obj`` at ``index`` (along the first dimension of every tensor)."""
    if isinstance(obj, torch.Tensor):
        return obj[index]
    if isinstance(obj, Mapping):
        return {k: index_batch(v, index) for k, v in obj.items()}
    return type(obj)(index_batch(v, index) for v in obj)


def micro_batches(batch: Batch, size: int) -> Iterator[Batch]:
    """A batch ``(inputs, targets)`` as micro-batches of at most ``size`` samples."""
    inputs, targets = batch
    if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor):
        return zip(inputs.split(size), targets.split(size), strict=True)
    return zip(split_batch(inputs, size), split_batch(targets, size), strict=True)


def stack_items(items: Sequence[Batch]) -> Batch:
    """Items stacked into a batch, as when a task has no ``collate`` (``default_collate``:
    tensors stacked, numbers made tensors, tuples and dicts kept)."""
    inputs, targets = default_collate(list(items))
    return inputs, targets


def describe(obj: Structure) -> str:
    """A short description of a structure for error messages, e.g. ``dict(ids: long[12])``."""
    if isinstance(obj, torch.Tensor):
        dtype = str(obj.dtype).removeprefix("torch.")
        return f"{dtype}{list(obj.shape)}"
    if isinstance(obj, Mapping):
        return "dict(" + ", ".join(f"{k}: {describe(v)}" for k, v in obj.items()) + ")"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}(" + ", ".join(describe(v) for v in obj) + ")"
    return type(obj).__name__


def layout(obj: Structure) -> Structure:
    """The structure of ``obj`` without the data: kinds, keys and dtypes (shapes left out,
    since items of variable length differ in them)."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", obj.dtype, obj.dim())
    if isinstance(obj, Mapping):
        return ("dict", tuple((k, layout(v)) for k, v in obj.items()))
    if isinstance(obj, (tuple, list)):
        return ("seq", tuple(layout(v) for v in obj))
    return ("other", type(obj).__name__)
