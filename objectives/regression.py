"""The built-in ``regression`` task: scikit-learn's diabetes data, mean squared error.

442 patients, 10 numeric features (age, sex, body mass index, blood pressure and six blood
serum measurements) and a float target (disease progression one year later). The data is
read from the two gzipped files scikit-learn ships (``diabetes_data_raw.csv.gz`` and
``diabetes_target.csv.gz``) without importing scikit-learn, falling back to
``sklearn.datasets.load_diabetes`` if they are not where expected. Split 60/20/20 by the seed
(265/88/89 samples); features and target are standardised with the training split's mean and
standard deviation, so an MSE of 1.0 is what predicting the training mean scores (about).

Items are ``(features [10] float32, target [1] float32)``; the model (``mlp``) has one output.
Loss: per-sample squared error. Metric: ``mse`` on the standardised target, minimised
(``task.info["target_std"] ** 2`` converts it back to the original units). Unit: samples.

Example:
    >>> task = regression_task()
    >>> len(task.train), len(task.val), len(task.test)
    (265, 88, 89)
    >>> x, y = task.train[0]
    >>> x.shape, y.shape, task.build_model()(x[None]).shape
    (torch.Size([10]), torch.Size([1]), torch.Size([1, 1]))
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from objectives.builtin import sklearn_data_files
from objectives.contract import Task, TaskError
from objectives.metrics import MSE, mse
from objectives.models import build_model_factory

#: The two files of the diabetes data in scikit-learn's ``datasets/data`` folder.
DIABETES_FILES = ("diabetes_data_raw.csv.gz", "diabetes_target.csv.gz")
#: Fractions of the samples in train, val and test.
FRACTIONS = (0.6, 0.2, 0.2)


def _diabetes_files() -> tuple[Path, Path] | None:
    """scikit-learn's bundled diabetes files, found without importing scikit-learn."""
    return sklearn_data_files(*DIABETES_FILES)


def load_diabetes_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The diabetes data as ``(features, target)``: float64 ``(442, 10)`` and ``(442,)``.

    The same arrays as ``sklearn.datasets.load_diabetes(scaled=False)``, read from the files
    scikit-learn ships (whitespace-separated, gzipped).

    Raises:
        TaskError: scikit-learn, which ships the data, is not installed.
    """
    paths = _diabetes_files()
    if paths is None:
        try:
            from sklearn.datasets import load_diabetes
        except ImportError as exc:
            raise TaskError(
                "--task regression reads the copy of the diabetes data that scikit-learn "
                "ships: pip install scikit-learn"
            ) from exc
        data = load_diabetes(scaled=False)
        return np.asarray(data.data, dtype=float), np.asarray(data.target, dtype=float)
    arrays = []
    for path in paths:
        with gzip.open(path, mode="rt", encoding="utf-8") as text:
            arrays.append(np.loadtxt(text))
    return arrays[0], arrays[1]


def split_indices(n: int, seed: int, fractions: Sequence[float] = FRACTIONS) -> list[torch.Tensor]:
    """A seeded random partition of ``range(n)`` into train/val/test by ``fractions``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(n * fractions[0]), round(n * fractions[1])
    bounds = (0, n_train, n_train + n_val, n)
    return [order[bounds[k] : bounds[k + 1]].sort().values for k in range(3)]


def _standardise(
    values: torch.Tensor, train_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``values`` standardised by the training rows' mean and std (zero std left unscaled)."""
    mean = values[train_idx].mean(dim=0, keepdim=True)
    std = values[train_idx].std(dim=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (values - mean) / std, mean, std


def regression_task(model: str = "mlp", hidden: tuple[int, ...] = (128, 64), seed: int = 0) -> Task:
    """The ``regression`` task: the diabetes data, an MLP with one output, MSE minimised.

    Args:
        model: Ignored (``--model`` names the image tasks' model; its default is ``cnn``):
            the inputs are 10 numbers, so the model is always the ``mlp``.
        hidden: The MLP's hidden layer sizes.
        seed: Chooses the 60/20/20 split.

    Raises:
        TaskError: scikit-learn (which ships the data) is not installed.
    """
    features, target = load_diabetes_arrays()
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(target, dtype=torch.float32).reshape(-1, 1)
    factory = build_model_factory("mlp", (x.shape[1],), num_classes=1, hidden=hidden)
    parts = split_indices(len(x), seed)
    x, _, _ = _standardise(x, parts[0])
    y, y_mean, y_std = _standardise(y, parts[0])
    splits = [TensorDataset(x[i].contiguous(), y[i].contiguous()) for i in parts]
    info = {
        "dataset": "diabetes (scikit-learn)",
        "features": int(x.shape[1]),
        "model": f"mlp (hidden {list(hidden)}, 1 output)",
        "target_mean": float(y_mean),
        "target_std": float(y_std),
    }
    return Task("regression", factory, *splits, loss=mse, metric=MSE, unit="samples", info=info)
