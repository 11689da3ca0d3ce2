"""Tasks: the data and the model factory one study trains.

A :class:`Task` is what a trial needs from the user's problem: a way to build a fresh model and
three datasets yielding ``(input_tensor, int_label)``. Built in are ``digits`` (scikit-learn's
bundled handwritten digits), ``synthetic`` (a learnable problem of any size) and the image
datasets ``mnist``, ``fashion-mnist`` and ``cifar10`` (read from ``data_dir``; see
:mod:`objectives.vision`); a user's own task is ``package.module:factory`` or
``path/to/file.py:factory``.

Example:
    >>> from objectives.tasks import load_task
    >>> task = load_task("digits", model="mlp")
    >>> len(task.train) + len(task.val) + len(task.test)
    1797
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from objectives.models import build_model_factory
from study.config import BUILTIN_TASKS


class TaskError(ValueError):
    """A task could not be built or is malformed; the message says what and how to fix it."""


@dataclass
class Task:
    """Data plus a model factory.

    Args:
        name: Short name shown in reports and stored in the study.
        build_model: Returns a fresh, untrained ``torch.nn.Module`` on each call.
        train: Training split; items are ``(input_tensor, int_label)``.
        val: Validation split (the study selects on it).
        test: Test split (recorded for every trial, never used to select).
        num_classes: Number of classes; inferred from the labels when not given.
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int | None = None
    info: dict = field(default_factory=dict)


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


def _digits_file() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


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


def _import_factory(spec: str) -> Callable[[], object]:
    """Resolve ``package.module:factory`` or ``path/to/file.py:factory`` to the callable."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise TaskError(
            f"--task {spec!r} is not a built-in task ({', '.join(BUILTIN_TASKS)}) nor "
            "'package.module:factory' or 'path/to/file.py:factory'"
        )
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise TaskError(f"--task {spec!r}: file {target} not found; check the path")
            name = f"_user_task_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except TaskError:
        raise
    except Exception as exc:  # any import-time failure of user code
        raise TaskError(
            f"--task {spec!r}: importing {target} failed ({type(exc).__name__}: {exc}); "
            "fix the module or the path"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"--task {spec!r}: {target} has no callable named {attr!r}")
    return factory


def _check_split(spec: str, split_name: str, dataset: object) -> None:
    """Check that a split is a non-empty dataset of ``(tensor, int label)`` items."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TaskError(f"task {spec!r}: split {split_name} is not a Dataset (needs __len__)")
    if len(dataset) == 0:
        raise TaskError(f"task {spec!r}: split {split_name} is empty; give it samples")
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TaskError(f"task {spec!r}: {split_name} items must be (input_tensor, int_label)")
    inputs, label = item
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TaskError(f"task {spec!r}: {split_name} inputs must be float tensors")
    is_int_tensor = (
        isinstance(label, torch.Tensor)
        and label.numel() == 1
        and not (label.is_floating_point() or label.is_complex())
    )
    if not (isinstance(label, int) or is_int_tensor) or isinstance(label, bool):
        raise TaskError(
            f"task {spec!r}: {split_name} labels must be integers, got {type(label).__name__}"
            + (f" {label.dtype}" if isinstance(label, torch.Tensor) else "")
        )


def validate_task(task: object, spec: str) -> Task:
    """Check a user's task and fill in ``num_classes``; raise :class:`TaskError` if wrong."""
    if not isinstance(task, Task):
        raise TaskError(
            f"task {spec!r}: the factory returned {type(task).__name__}, not objectives.Task"
        )
    for split_name in ("train", "val", "test"):
        _check_split(spec, split_name, getattr(task, split_name))
    if not callable(task.build_model):
        raise TaskError(f"task {spec!r}: build_model is not callable")
    if task.num_classes is None:
        from objectives.data import labels_of

        task.num_classes = int(labels_of(task.train).max().item()) + 1
    check_task_runs(task, spec)
    return task


#: Items of each split sent through a fresh model by :func:`check_task_runs`.
CHECK_ITEMS = 8
#: Labels read per split by the range check when a split is not held as tensors.
CHECK_LABELS = 4096


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _split_labels(dataset: Dataset) -> torch.Tensor:
    """The split's labels: all of a TensorDataset, else the first :data:`CHECK_LABELS`."""
    from torch.utils.data import TensorDataset

    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long().reshape(-1)
    n = min(len(dataset), CHECK_LABELS)
    return torch.tensor([int(dataset[i][1]) for i in range(n)], dtype=torch.long)


def check_task_runs(task: Task, spec: str) -> None:
    """One forward and backward pass of a few items of each split through a fresh model.

    Run when a task is loaded, before anything is stored, so that a model that does not fit
    its data, a label outside the model's outputs, or a ``build_model`` that returns no
    module is one line (:class:`TaskError`) instead of a crash inside the first trial. The
    global random state is left as it was.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(16, 4), torch.arange(16) % 3)
        >>> task = Task("t", lambda: torch.nn.Linear(4, 2), data, data, data, num_classes=3)
        >>> check_task_runs(task, "t")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        objectives.tasks.TaskError: task 't': the model gives 2 outputs per item but ...
    """
    import torch.nn.functional as F

    labels_of_split = {
        name: _split_labels(getattr(task, name)) for name in ("train", "val", "test")
    }
    for split_name, labels in labels_of_split.items():
        if labels.numel() and int(labels.min()) < 0:
            where = int((labels < 0).nonzero()[0])
            raise TaskError(
                f"task {spec!r}: {split_name} item {where} has label {int(labels[where])}: "
                f"labels must be class indices 0..{task.num_classes - 1}"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = task.build_model()
        except Exception as exc:
            raise TaskError(f"task {spec!r}: build_model() raised {_first_line(exc)}") from exc
        if not isinstance(model, torch.nn.Module):
            raise TaskError(
                f"task {spec!r}: build_model() returned {type(model).__name__}, not a "
                "torch.nn.Module: return a fresh model on each call"
            )
        for split_name in ("train", "val", "test"):
            dataset = getattr(task, split_name)
            items = [dataset[i] for i in range(min(CHECK_ITEMS, len(dataset)))]
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
            try:
                out = model(x)
            except Exception as exc:
                raise TaskError(
                    f"task {spec!r}: the model does not fit its data: the forward pass on "
                    f"{len(items)} {split_name} items of shape {list(x.shape[1:])} raised "
                    f"{_first_line(exc)}"
                ) from exc
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(y):
                shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise TaskError(
                    f"task {spec!r}: the model's forward pass gives {shape} for {len(y)} "
                    "items: it must return class scores of shape [items, classes]"
                )
            if out.shape[1] < task.num_classes:
                raise TaskError(
                    f"task {spec!r}: the model gives {out.shape[1]} outputs per item but the "
                    f"labels go up to {task.num_classes - 1}: it needs at least "
                    f"{task.num_classes} outputs (one per class)"
                )
            high = int(labels_of_split[split_name].max())
            if high >= out.shape[1]:
                raise TaskError(
                    f"task {spec!r}: {split_name} has label {high} but the model gives "
                    f"{out.shape[1]} outputs: labels must be class indices below it"
                )
            try:
                F.cross_entropy(out.float(), y).backward()
            except Exception as exc:
                raise TaskError(
                    f"task {spec!r}: the backward pass through the model on {split_name} "
                    f"items raised {_first_line(exc)}"
                ) from exc


def load_task(
    name: str,
    model: str = "mlp",
    hidden: tuple[int, ...] = (128, 64),
    seed: int = 0,
    synthetic_samples: int = 4096,
    synthetic_features: int = 32,
    synthetic_classes: int = 4,
    data_dir: str = "storage/data",
    download: bool = False,
) -> Task:
    """Build the task called ``name`` (built-in or ``module:factory``).

    ``data_dir`` and ``download`` concern the image datasets only (``mnist``,
    ``fashion-mnist``, ``cifar10``): where their files are, and whether to fetch missing ones.

    Raises:
        TaskError: the name is unknown, dataset files are missing, the user's factory fails,
            or its task is malformed.
    """
    from objectives.vision import VISION_TASKS, vision_task

    if name == "digits":
        task = digits_task(model=model, hidden=hidden, seed=seed)
    elif name == "synthetic":
        task = synthetic_task(
            synthetic_samples, synthetic_features, synthetic_classes, model, hidden, seed
        )
    elif name in VISION_TASKS:
        task = vision_task(name, data_dir, download, model=model, hidden=hidden, seed=seed)
    else:
        factory = _import_factory(name)
        try:
            task = factory()
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(
                f"--task {name!r}: the factory raised {type(exc).__name__}: {exc}"
            ) from exc
    task = validate_task(task, name)
    task.info.update(
        train_size=len(task.train),
        val_size=len(task.val),
        test_size=len(task.test),
        num_classes=task.num_classes,
        input_shape=list(task.train[0][0].shape),
    )
    return task
