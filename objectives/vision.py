"""Standard image datasets: MNIST, Fashion-MNIST and CIFAR-10, read from their own files.

The files are read in the formats their authors publish, by the small readers below, so that
training needs no torchvision: MNIST and Fashion-MNIST as idx files (``*-idx3-ubyte`` images,
``*-idx1-ubyte`` labels, plain or ``.gz``), CIFAR-10 as the pickled "python version" batches.
They are looked for where torchvision keeps them, so a folder torchvision filled serves as it
is::

    <data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <data_dir>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}

torchvision is used only by ``download=True`` (``pip install -e '.[vision]'``), which fetches
the official files, checks their MD5 sums and unpacks them into that layout.

Splits: the official test set is the test split, untouched. The validation split is a seeded,
stratified tenth of the official training set (``seed`` picks it); the rest trains. Pixels
are scaled to [0, 1] and standardised per channel with the training split's mean and
standard deviation. The images are held as float32 tensors (CIFAR-10: about 0.7 GiB).

Example (not run as a doctest: it needs a study, files or a server)::

    task = vision_task("mnist", data_dir="storage/data", model="cnn")
    task.train[0][0].shape, len(task.test)
    (torch.Size([1, 28, 28]), 10000)
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from objectives.contract import Task, TaskError
from objectives.models import build_model_factory

#: Fraction of the official training set held out, stratified, as the validation split.
VAL_FRACTION = 0.1


class DataError(TaskError):
    """Dataset files are missing or malformed; the message names the files and the fix."""


@dataclass(frozen=True)
class VisionDataset:
    """Where one dataset lives under the data folder and what it holds."""

    name: str
    folder: str  # under data_dir, as torchvision names it
    files: tuple[str, ...]
    input_shape: tuple[int, int, int]
    torchvision_class: str

    def path(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / self.folder


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

DATASETS: dict[str, VisionDataset] = {
    "mnist": VisionDataset("mnist", "MNIST/raw", _IDX_FILES, (1, 28, 28), "MNIST"),
    "fashion-mnist": VisionDataset(
        "fashion-mnist", "FashionMNIST/raw", _IDX_FILES, (1, 28, 28), "FashionMNIST"
    ),
    "cifar10": VisionDataset(
        "cifar10", "cifar-10-batches-py", _CIFAR_FILES, (3, 32, 32), "CIFAR10"
    ),
}
VISION_TASKS = tuple(DATASETS)


# ---------------------------------------------------------------------------- file formats


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file of unsigned bytes (MNIST's format; ``.gz`` is unpacked on the fly).

    The format: two zero bytes, a type byte (``0x08``: unsigned byte), the number of
    dimensions ``n``, then ``n`` big-endian 32-bit sizes, then the data in row-major order.

    Raises:
        DataError: the file is not an idx file of unsigned bytes, or is cut short.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); download it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number); download it again")
    if raw[2] != 0x08:
        raise DataError(f"{path}: idx element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for size in shape:
        count *= size
    if len(raw) != header + count:
        raise DataError(
            f"{path}: holds {len(raw) - header} data bytes, its header says {count} "
            f"({'x'.join(map(str, shape))}); the file is damaged, download it again"
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8) if count else None
    return data.reshape(shape) if data is not None else torch.zeros(shape, dtype=torch.uint8)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 "python version" batch: ``(images uint8 (N, 3, 32, 32), labels)``.

    A batch is a pickled dict with ``data`` (N x 3072 unsigned bytes: the red, green and blue
    32x32 planes of each image, row-major) and ``labels`` (N integers in 0..9). The official
    files were pickled by Python 2 (byte-string keys); both kinds of keys are accepted.

    Raises:
        DataError: the file is not such a batch.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc}); download it again") from exc
    if isinstance(batch, dict):
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 python batch (no data/labels); download it again")
    data = torch.as_tensor(batch["data"])
    labels = torch.as_tensor(list(batch["labels"]), dtype=torch.long)
    if data.dtype != torch.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: data is {tuple(data.shape)} {data.dtype}, expected (N, 3072) uint8; "
            "download it again"
        )
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


# ------------------------------------------------------------------------------- locating


def _find(folder: Path, name: str, gz: bool = True) -> Path | None:
    """``folder/name``, else (with ``gz``) ``folder/name.gz``; ``None`` when neither exists."""
    candidates = (folder / name, folder / f"{name}.gz") if gz else (folder / name,)
    return next((c for c in candidates if c.is_file()), None)


def missing_files(name: str, data_dir: str | Path) -> list[str]:
    """The files of dataset ``name`` that are not under ``data_dir`` (empty: all there)."""
    spec = DATASETS[name]
    folder = spec.path(data_dir)
    gz = name != "cifar10"  # idx files may stay gzipped; CIFAR batches come unpacked
    return [f for f in spec.files if _find(folder, f, gz) is None]


def missing_message(name: str, data_dir: str | Path, missing: list[str]) -> str:
    """One line: which files are missing where, and the two ways to get them."""
    spec = DATASETS[name]
    folder = spec.path(data_dir)
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    gz = " (plain or .gz)" if spec.name != "cifar10" else ""
    return (
        f"{name} data not found: {folder} lacks {shown}{gz}. Run once with --download on a "
        f"machine with internet (needs pip install -e '.[vision]'), or copy the official files "
        f"into {folder} (or point --data-dir at a folder that holds {spec.folder})"
    )


def download(name: str, data_dir: str | Path) -> None:
    """Fetch dataset ``name`` into ``data_dir`` with torchvision (MD5-checked, unpacked).

    Raises:
        DataError: torchvision is not importable, or the download failed.
    """
    spec = DATASETS[name]
    try:
        import torchvision.datasets as tv_datasets
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise DataError(
            f"--download {name} needs torchvision built for torch {torch.__version__}: "
            f"pip install -e '.[vision]' (importing it failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); or copy the files into "
            f"{spec.path(data_dir)}"
        ) from exc
    dataset_class = getattr(tv_datasets, spec.torchvision_class)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            dataset_class(root=str(root), train=train, download=True)
    except Exception as exc:  # URLError, RuntimeError (checksum), OSError
        raise DataError(
            f"downloading {name} into {root} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): check the internet connection, "
            f"or copy the official files into {spec.path(data_dir)}"
        ) from exc


def read_dataset(
    name: str, data_dir: str | Path, download_missing: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, test_images, test_labels)`` of ``name``, images uint8.

    Args:
        name: One of :data:`VISION_TASKS`.
        data_dir: The folder that holds ``MNIST/raw``, ``FashionMNIST/raw`` or
            ``cifar-10-batches-py``.
        download_missing: Download (with torchvision) when files are missing.

    Raises:
        DataError: files are missing (and not downloaded) or malformed.
    """
    if name not in DATASETS:
        raise DataError(f"unknown image dataset {name!r}: choose one of {', '.join(DATASETS)}")
    missing = missing_files(name, data_dir)
    if missing and download_missing:
        download(name, data_dir)
        missing = missing_files(name, data_dir)
    if missing:
        raise DataError(missing_message(name, data_dir, missing))
    folder = DATASETS[name].path(data_dir)
    if name == "cifar10":
        parts = [read_cifar_batch(folder / f) for f in _CIFAR_FILES]
        train_x = torch.cat([p[0] for p in parts[:5]])
        train_y = torch.cat([p[1] for p in parts[:5]])
        test_x, test_y = parts[5]
    else:
        train_x, train_y, test_x, test_y = (read_idx(_find(folder, f)) for f in _IDX_FILES)
        for images, labels, which in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(
                    f"{folder}: {which} images {tuple(images.shape)} and labels "
                    f"{tuple(labels.shape)} do not match (N x 28 x 28 and N); download again"
                )
        train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
        train_y, test_y = train_y.long(), test_y.long()
    expected = DATASETS[name].input_shape
    if tuple(train_x.shape[1:]) != expected or tuple(test_x.shape[1:]) != expected:
        raise DataError(
            f"{folder}: images are {tuple(train_x.shape[1:])}, {name} images are {expected}"
        )
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------------- task


def _val_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified ``(train_index, val_index)``: :data:`VAL_FRACTION` of each class."""
    generator = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = round(len(idx) * VAL_FRACTION)
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 ``images`` scaled to [0, 1].

    Exact, from each channel's histogram of the 256 byte values (no float copy of the data).
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].flatten(), minlength=256).double()
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / max(n - 1, 1)
        means.append(mean)
        stds.append(var.sqrt())
    mean = torch.stack(means).float().view(1, -1, 1, 1)
    return mean, torch.stack(stds).float().clamp_min(1e-6).view(1, -1, 1, 1)


def vision_splits(
    name: str, data_dir: str | Path, seed: int = 0, download_missing: bool = False
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train, validation and test splits of ``name`` as standardised float32 tensors."""
    train_x, train_y, test_x, test_y = read_dataset(name, data_dir, download_missing)
    train_idx, val_idx = _val_split(train_y, seed)
    train_part = train_x[train_idx]
    mean, std = _channel_stats(train_part)

    def standardise(images: torch.Tensor) -> torch.Tensor:
        return (images.float().div_(255).sub_(mean).div_(std)).contiguous()

    return (
        TensorDataset(standardise(train_part), train_y[train_idx].contiguous()),
        TensorDataset(standardise(train_x[val_idx]), train_y[val_idx].contiguous()),
        TensorDataset(standardise(test_x), test_y.contiguous()),
    )


def vision_task(
    name: str,
    data_dir: str | Path = "storage/data",
    download: bool = False,
    model: str = "cnn",
    hidden: tuple[int, ...] = (128, 64),
    seed: int = 0,
) -> Task:
    """The :class:`~objectives.contract.Task` of image dataset ``name`` (10 classes).

    Args:
        name: ``mnist``, ``fashion-mnist`` or ``cifar10``.
        data_dir: Folder holding the dataset's files (see the module docstring).
        download: Fetch the files with torchvision when they are missing.
        model: ``cnn`` (any of them), ``resnet`` (meant for cifar10) or ``mlp``.
        hidden: The cnn's head width (first entry) or the mlp's layers.
        seed: Picks the validation split.

    Raises:
        DataError: files missing or malformed (the message says how to get them).
    """
    train, val, test = vision_splits(name, data_dir, seed, download)
    shape = DATASETS[name].input_shape
    factory = build_model_factory(model, input_shape=shape, num_classes=10, hidden=hidden)
    return Task(name, factory, train, val, test, num_classes=10)
