"""The data check: values a model cannot learn from, named by split and item before a study.

A NaN or an infinity in the inputs or targets makes every trial's loss NaN, so a study would
spend its whole budget on runs stopped as ``diverged`` without saying why. This check names
the first such item of each split instead, before anything is stored:

* a split held as a ``TensorDataset`` is checked whole (one vectorised pass over its
  floating-point tensors: about a tenth of a second for CIFAR-10's 150 million values);
* any other dataset (items read one by one, possibly made on the fly) is checked on the items
  of :func:`sample_indices`: at most :data:`SAMPLE_ITEMS` at fixed, seeded positions, the
  items the data's fingerprint hashes (:mod:`objectives.fingerprint`).

An item that cannot be read is named the same way (:func:`read_item`).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> x = torch.zeros(10, 3)
    >>> x[7, 1] = float("nan")
    >>> nonfinite_problem("train", TensorDataset(x, torch.zeros(10)))
    'train item 7 has NaN in its inputs'
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

#: Items of a split that the fingerprint hashes and the data check reads (when the split is
#: not held as tensors).
SAMPLE_ITEMS = 64
#: Seeds the sampled positions: the same split size gives the same items in every process.
SAMPLE_SEED = 0


class DataItemError(ValueError):
    """An item of a split could not be read; the message names the split and the index."""


def sample_indices(size: int, count: int = SAMPLE_ITEMS) -> list[int]:
    """``count`` item positions of a split of ``size`` items, seeded, ascending (all of a
    split of at most ``count`` items).

    Example:
        >>> sample_indices(5), len(sample_indices(100_000)), sample_indices(10**6, 3)
        ([0, 1, 2, 3, 4], 64, [403958, 794772, 885440])
    """
    if size <= count:
        return list(range(size))
    return sorted(random.Random(SAMPLE_SEED).sample(range(size), count))


def read_item(dataset: Dataset, split: str, index: int) -> Any:
    """``dataset[index]``, or a :class:`DataItemError` naming ``split`` and ``index``."""
    try:
        return dataset[index]
    except Exception as exc:
        raise DataItemError(f"{split} item {index} could not be read: {_first_line(exc)}") from exc


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _bad_values(tensor: torch.Tensor) -> torch.Tensor | None:
    """Per row (item) of ``tensor``: whether it holds a non-finite value; ``None`` for
    tensors that cannot hold one (integers, booleans)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    bad = ~torch.isfinite(tensor)
    return bad.reshape(len(tensor), -1).any(dim=1) if tensor.dim() else bad.reshape(1)


def _kind(tensor: torch.Tensor) -> str:
    """``NaN`` or ``an infinite value``: what makes ``tensor`` non-finite."""
    return "NaN" if bool(torch.isnan(tensor).any()) else "an infinite value"


def _leaves(obj: Any) -> list[torch.Tensor | float]:
    """The tensors and floats of an item's structure (tuples, lists, dicts), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [leaf for key in sorted(obj, key=str) for leaf in _leaves(obj[key])]
    if isinstance(obj, (tuple, list)):
        return [leaf for value in obj for leaf in _leaves(value)]
    return []


def _item_problem(item: Any) -> str | None:
    """What is non-finite in an ``(inputs, targets)`` item, or ``None``."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return None
    for part, name in zip(item, ("inputs", "targets"), strict=True):
        for leaf in _leaves(part):
            if isinstance(leaf, float):
                if not math.isfinite(leaf):
                    return f"{'NaN' if math.isnan(leaf) else 'an infinite value'} in its {name}"
            elif (leaf.is_floating_point() or leaf.is_complex()) and not bool(
                torch.isfinite(leaf).all()
            ):
                return f"{_kind(leaf)} in its {name}"
    return None


def nonfinite_problem(split: str, dataset: Dataset) -> str | None:
    """The first item of ``dataset`` holding a NaN or an infinity, named, or ``None``.

    A ``TensorDataset`` is checked whole; other datasets on :func:`sample_indices`'s items
    (read with :func:`read_item`, so an item that fails is named too).
    """
    if isinstance(dataset, TensorDataset):
        found: list[tuple[int, str]] = []
        for tensor, name in zip(dataset.tensors, ("inputs", "targets", "tensors"), strict=False):
            rows = _bad_values(tensor)
            if rows is not None and bool(rows.any()):
                index = int(rows.nonzero()[0])
                found.append((index, f"{_kind(tensor[index])} in its {name}"))
        if found:
            index, what = min(found)
            return f"{split} item {index} has {what}"
        return None
    for index in sample_indices(len(dataset)):
        problem = _item_problem(read_item(dataset, split, index))
        if problem:
            return f"{split} item {index} has {problem}"
    return None


def data_problem(splits: dict[str, Dataset]) -> str | None:
    """The first non-finite item of any split (see :func:`nonfinite_problem`), with the fix."""
    for split, dataset in splits.items():
        problem = nonfinite_problem(split, dataset)
        if problem:
            return (
                f"{problem}: every loss would be NaN; remove or repair such items (e.g. "
                "torch.nan_to_num) before giving the data to the task"
            )
    return None
