"""Putting a dataset where training reads it fast: whole tensors on the device when it fits.

In-memory data is batched by slicing device tensors with a per-epoch permutation (one index
operation per micro-batch) instead of a per-sample DataLoader that collates item by item.
A split is held on the device when it takes at most :data:`DEVICE_DATA_FRACTION` of the
device's free memory (on CPU: always, for a ``TensorDataset``, which is used without a copy;
other datasets of ``(tensor, tensor or number)`` items are stacked when under
:data:`IN_MEMORY_LIMIT_BYTES`). Data that does not fit, data of other structures (dicts,
tuples) and data whose task gives a ``collate`` streams through :func:`make_loader`: a
DataLoader with the task's ``collate``, worker processes and pinned memory (on CUDA).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from objectives.datacheck import read_item

#: Datasets whose stacked tensors stay under this size are stacked into host tensors.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3
#: A split is held on a CUDA device when it takes at most this fraction of its free memory.
DEVICE_DATA_FRACTION = 0.5
#: Most DataLoader worker processes for streamed data on CUDA (on CPU: none, the trainer
#: uses the cores).
MAX_LOADER_WORKERS = 4


@dataclass
class Tensors:
    """A split held as two tensors: inputs ``x`` and targets ``y`` (one row per sample)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return self.x.element_size() * self.x.numel() + self.y.element_size() * self.y.numel()

    def to(self, device: torch.device | str) -> Tensors:
        non_blocking = torch.device(device).type == "cuda"
        return Tensors(
            self.x.to(device, non_blocking=non_blocking),
            self.y.to(device, non_blocking=non_blocking),
        )


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of a dataset as a long tensor (read from the tensors where possible)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def _targets(y: torch.Tensor) -> torch.Tensor:
    """Integer class labels as ``long`` (what the default loss wants); others as they are."""
    integer = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    return y.long() if integer else y


def _plain(item: Any) -> bool:
    """Whether an item is ``(tensor, tensor or number)``, which stacks into :class:`Tensors`."""
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], torch.Tensor)
        and isinstance(item[1], (torch.Tensor, int, float))
        and not isinstance(item[1], bool)
    )


def as_tensors(
    dataset: Dataset, limit_bytes: int = IN_MEMORY_LIMIT_BYTES, split: str = "data"
) -> Tensors | None:
    """Return the dataset as :class:`Tensors`, or ``None`` when it cannot or should not be.

    A two-tensor ``TensorDataset`` is used as it is (no copy; integer labels become ``long``);
    other datasets of ``(tensor, tensor or number)`` items are stacked item by item when their
    estimated size (first item's bytes times length) is under ``limit_bytes`` and the items
    have equal shapes. Inputs keep their dtype (token ids stay integers). Anything else
    (dict or tuple inputs, items of different lengths): ``None``. An item that cannot be read
    raises :class:`~objectives.datacheck.DataItemError` naming ``split`` and its index.
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return Tensors(x, _targets(y))
    if isinstance(dataset, TensorDataset) or len(dataset) == 0 or not _plain(dataset[0]):
        return None
    first = dataset[0][0]
    if first.element_size() * first.numel() * len(dataset) > limit_bytes:
        return None
    items = [read_item(dataset, split, i) for i in range(len(dataset))]
    if not all(_plain(item) and item[0].shape == first.shape for item in items):
        return None
    xs, ys = zip(*items, strict=True)
    if isinstance(ys[0], torch.Tensor):
        y = torch.stack([torch.as_tensor(v) for v in ys])
    else:
        y = torch.tensor(ys)
    return Tensors(torch.stack(list(xs)), _targets(y))


def fits_on_device(nbytes: int, device: torch.device | str) -> bool:
    """Whether ``nbytes`` of data may be held on ``device`` (CPU: always; it is already there).

    On CUDA: at most :data:`DEVICE_DATA_FRACTION` of the free memory, so that batches keep
    room (the probe measures with the data held, so its cap accounts for it).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_FRACTION * free


class NamedItems(Dataset):
    """``dataset`` read item by item, an item that fails named by ``split`` and index.

    What a streamed split is read through, so that an item beyond those the task's check read
    ends a run with one line (:class:`~objectives.datacheck.DataItemError`), not a traceback.
    """

    def __init__(self, dataset: Dataset, split: str) -> None:
        self.dataset, self.split = dataset, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return read_item(self.dataset, self.split, index)


def place(
    dataset: Dataset,
    device: torch.device | str,
    collate: Callable | None = None,
    split: str = "data",
) -> Tensors | Dataset:
    """The dataset as device tensors when it fits (:func:`fits_on_device`), else itself.

    Moved once (a non-blocking copy on CUDA); training then batches it by slicing. A dataset
    with a ``collate`` (its task's) always stays itself: its batches are built by ``collate``.
    A dataset that stays itself and is not a ``TensorDataset`` is read through
    :class:`NamedItems` (``split`` names it in errors).
    """
    if collate is None:
        tensors = as_tensors(dataset, split=split)
        if tensors is not None and fits_on_device(tensors.nbytes, device):
            return tensors.to(device)
    return dataset if isinstance(dataset, TensorDataset) else NamedItems(dataset, split)


def loader_workers(device: torch.device | str, requested: int | None = None) -> int:
    """Worker processes for a streaming DataLoader: ``requested``, else an automatic count.

    Automatic: on CUDA up to :data:`MAX_LOADER_WORKERS`, leaving one core to the trainer;
    on CPU none (the training step itself uses the cores).
    """
    if requested is not None:
        return max(0, int(requested))
    if torch.device(device).type != "cuda":
        return 0
    return max(0, min(MAX_LOADER_WORKERS, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    workers: int | None = None,
    drop_last: bool = False,
    collate: Callable | None = None,
) -> DataLoader:
    """A DataLoader that streams ``dataset`` in batches: workers, pinned memory on CUDA.

    Workers live for one pass (an epoch), so nothing outlives a trial that stops early; on
    Linux starting them costs milliseconds beside an epoch too large to hold on the device.
    A ``TensorDataset`` without ``collate`` is read a whole batch per index operation (a batch
    sampler hands each worker the batch's indices) rather than collated sample by sample.
    Training passes ``drop_last=True`` (every update has exactly ``batch_size`` samples) and
    the task's ``collate`` (``None``: items stacked by ``default_collate``).
    """
    device = torch.device(device)
    n_workers = loader_workers(device, workers)
    common = dict(num_workers=n_workers, pin_memory=device.type == "cuda")
    if isinstance(dataset, TensorDataset) and collate is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else None
        indices = sampler if sampler is not None else range(len(dataset))
        batches = BatchSampler(indices, batch_size, drop_last=drop_last)
        return DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        collate_fn=collate,
        **common,
    )
