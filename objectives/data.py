"""Putting a dataset where training reads it fast: whole tensors on the device when it fits.

In-memory data is batched by slicing device tensors with a per-epoch permutation (one index
operation per micro-batch) instead of a per-sample DataLoader that collates item by item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset

#: Datasets whose stacked tensors stay under this size are held whole on the device.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3


@dataclass
class Tensors:
    """A split held as two tensors: inputs ``x`` and integer labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

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


def as_tensors(dataset: Dataset, limit_bytes: int = IN_MEMORY_LIMIT_BYTES) -> Tensors | None:
    """Return the dataset as :class:`Tensors`, or ``None`` when it is too large to hold.

    A ``TensorDataset`` is used as it is (no copy); other datasets are stacked item by item
    when their estimated size (first item's bytes times length) is under ``limit_bytes``.
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return Tensors(x.float() if not x.is_floating_point() else x, y.long())
    first = dataset[0][0]
    if first.element_size() * first.numel() * len(dataset) > limit_bytes:
        return None
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return Tensors(torch.stack(list(xs)), torch.tensor([int(v) for v in ys], dtype=torch.long))
