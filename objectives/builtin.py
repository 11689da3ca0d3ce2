"""The small built-in tasks, held in memory: ``digits`` and ``synthetic``.

``digits`` is scikit-learn's 1,797 handwritten 8x8 digits, read from the file scikit-learn
ships (:func:`sklearn_data_files`, also used by the ``regression`` task); ``synthetic`` is a
learnable classification problem of any size generated from the seed. Both are split
60/20/20, stratified and seeded, and standardised with the training split's statistics. The
other built-in tasks have modules of their own (:mod:`objectives.text`,
:mod:`objectives.regression`, :mod:`objectives.vision`).

Example:
    >>> task = digits_task(model="mlp")
    >>> len(task.train) + len(task.val) + len(task.test)
    1797
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from objectives.contract import Task, TaskError
from objectives.models import build_model_factory


def _split_indices(labels: torch.Tensor, seed: int, fractions=(0.6, 0.2, 0.2)):
    """Stratified, seeded split of indices into train/val/test by ``fractions``."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)].tolist()
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        parts[0] += idx[:n_train]
        parts[1] += idx[n_train : n_train + n_val]
        parts[2] += idx[n_train + n_val :]
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


def _standardised_splits(x: torch.Tensor, y: torch.Tensor, seed: int):
    """Split stratified, then standardise every split with the training split's statistics."""
    train_idx, val_idx, test_idx = _split_indices(y, seed)
    mean = x[train_idx].mean(dim=0, keepdim=True)
    std = x[train_idx].std(dim=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    return [
        TensorDataset(x[i].contiguous(), y[i].contiguous()) for i in (train_idx, val_idx, test_idx)
    ]


def sklearn_data_files(*names: str) -> tuple[Path, ...] | None:
    """Files scikit-learn ships in ``sklearn/datasets/data``, found without importing it (an
    import costs most of a second of start-up); ``None`` unless every one is there."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        paths = tuple(Path(folder) / "datasets" / "data" / name for name in names)
        if all(path.is_file() for path in paths):
            return paths
    return None


def _digits_file() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz``."""
    found = sklearn_data_files("digits.csv.gz")
    return found[0] if found else None


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The handwritten digits as ``(images, target)``: float64 ``(1797, 8, 8)`` and int labels.

    The same arrays as ``sklearn.datasets.load_digits()``'s ``images`` and ``target``, read
    from the file scikit-learn ships (a gzipped CSV: 64 pixels and the label per row) without
    importing scikit-learn, which would cost most of a second of start-up. Falls back to
    scikit-learn itself if the file is not where it is expected.

    Raises:
        TaskError: scikit-learn, which ships the data, is not installed.
    """
    path = _digits_file()
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise TaskError(
                "--task digits reads the copy of the digits that scikit-learn ships: "
                "pip install scikit-learn"
            ) from exc
        data = load_digits()
        return data.images, data.target
    with gzip.open(path, mode="rt", encoding="utf-8") as text:
        data = np.loadtxt(text, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def digits_task(model: str = "mlp", hidden: tuple[int, ...] = (128, 64), seed: int = 0) -> Task:
    """scikit-learn's handwritten digits: 1797 8x8 images, 10 classes, split 60/20/20.

    Inputs are image-shaped ``(1, 8, 8)`` float tensors, standardised per pixel with the
    training split's mean and standard deviation (pixels constant in training stay unscaled).
    The data is read by :func:`load_digits_arrays` (scikit-learn's file, not its import).
    """
    images, target = load_digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(target, dtype=torch.long)
    train, val, test = _standardised_splits(x, y, seed)
    factory = build_model_factory(model, input_shape=(1, 8, 8), num_classes=10, hidden=hidden)
    return Task("digits", factory, train, val, test, num_classes=10)


def synthetic_task(
    samples: int = 4096,
    features: int = 32,
    classes: int = 4,
    model: str = "mlp",
    hidden: tuple[int, ...] = (128, 64),
    seed: int = 0,
) -> Task:
    """A learnable classification problem generated deterministically from ``seed``.

    Each class is a Gaussian blob around a random centre in ``features`` dimensions, pushed
    through a fixed random nonlinearity so that a linear model is not enough. Split 60/20/20.
    """
    if samples < 10 * classes:
        raise TaskError(
            f"--synthetic-samples {samples} is too small for {classes} classes: "
            f"use at least {10 * classes}"
        )
    g = torch.Generator().manual_seed(10_007 + seed)
    centres = torch.randn(classes, features, generator=g) * 1.5
    y = torch.arange(samples) % classes
    y = y[torch.randperm(samples, generator=g)]
    x = centres[y] + torch.randn(samples, features, generator=g)
    mix = torch.randn(features, features, generator=g) / features**0.5
    x = x + 0.5 * torch.tanh(x @ mix)
    train, val, test = _standardised_splits(x, y, seed)
    factory = build_model_factory(model, (features,), num_classes=classes, hidden=hidden)
    return Task("synthetic", factory, train, val, test, num_classes=classes)
