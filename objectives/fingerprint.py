"""The fingerprint of a task's data: what a resumed study checks it still trains on.

For each split (train, val, test): its size, and a SHA-256 of the items at
:func:`~objectives.datacheck.sample_indices` (at most 64, at seeded positions that depend only
on the size), hashed from each tensor's dtype, shape and bytes (numbers by value, dicts by
key). It costs 64 item reads per split whatever the dataset's size. A dataset that makes its
items on the fly is fingerprinted by the items it returns at those positions: one that draws
them at random without a fixed seed differs in every process. Changes outside the sampled
items of a split of unchanged size go unnoticed; a change of size, of labels or of inputs
throughout is always seen.

The study stores it at creation (study attribute ``data_fingerprint``);
:func:`study.datamatch.data_changes` compares it on resume.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> one = TensorDataset(torch.arange(10.0).reshape(5, 2), torch.arange(5))
    >>> two = TensorDataset(torch.arange(10.0).reshape(5, 2), torch.arange(5).flip(0))
    >>> split_fingerprint(one, "train")["size"]
    5
    >>> split_fingerprint(one, "train") == split_fingerprint(two, "train")
    False
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from objectives.datacheck import SAMPLE_ITEMS, read_item, sample_indices

#: Changes when the hashed representation changes (fingerprints of two versions are not
#: compared).
FINGERPRINT_VERSION = 1
SPLITS = ("train", "val", "test")


def _feed(digest: Any, obj: Any) -> None:
    """Add ``obj`` (a tensor, array, number, string or a structure of them) to ``digest``."""
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        tensor = tensor.contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}|".encode())
        try:
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):  # a dtype without a byte view: its values
            digest.update(repr(tensor.tolist()).encode())
    elif isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        digest.update(f"A{array.dtype}{array.shape}|".encode())
        digest.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key in sorted(obj, key=str):
            digest.update(f"{key!r}:".encode())
            _feed(digest, obj[key])
        digest.update(b"}")
    elif isinstance(obj, (tuple, list)):
        digest.update(b"(" if isinstance(obj, tuple) else b"[")
        for value in obj:
            _feed(digest, value)
        digest.update(b")")
    elif obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        digest.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:  # another object: its kind only (its repr may hold a memory address)
        digest.update(f"<{type(obj).__qualname__}>|".encode())


def split_fingerprint(dataset: Dataset, split: str) -> dict:
    """``{"size", "sampled", "sha256"}`` of one split (an item that fails is named)."""
    size = len(dataset)
    indices = sample_indices(size)
    digest = hashlib.sha256()
    for index in indices:
        digest.update(f"#{index}|".encode())
        _feed(digest, read_item(dataset, split, index))
    return {"size": size, "sampled": len(indices), "sha256": digest.hexdigest()}


def data_fingerprint(task: Any) -> dict:
    """The fingerprint of a task's three splits, JSON-ready (stored with the study)."""
    return {
        "version": FINGERPRINT_VERSION,
        "sample_items": SAMPLE_ITEMS,
        "splits": {split: split_fingerprint(getattr(task, split), split) for split in SPLITS},
    }
