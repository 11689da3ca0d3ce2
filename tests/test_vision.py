"""Image datasets: tiny files written in each dataset's own format load through the real path.

The files are written here byte by byte as their publishers lay them out (idx for MNIST and
Fashion-MNIST, plain and gzipped; pickled "python version" batches for CIFAR-10) into the
folders torchvision uses, then read by ``load_task`` exactly as a study reads them.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from objectives import TaskError, load_task
from objectives.data import labels_of
from objectives.models import build_model_factory
from objectives.train import TrainSettings, train_task
from objectives.vision import DATASETS, DataError, download, read_cifar_batch, read_idx
from tests.conftest import run_script

N_TRAIN, N_TEST = 60, 20  # six training images per class: one per class goes to validation


def _images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class brightens its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    band = shape[-2] // 10
    for i, label in enumerate(labels):
        images[i, ..., label * band : (label + 1) * band, :] = 200
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An idx file: 0, 0, type 0x08 (unsigned byte), ndim, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_like(root: Path, folder: str, gz: bool = False) -> tuple[np.ndarray, ...]:
    raw = root / folder
    train_x, train_y = _images(N_TRAIN, (28, 28), seed=1)
    test_x, test_y = _images(N_TEST, (28, 28), seed=2)
    write_idx(raw / "train-images-idx3-ubyte", train_x, gz)
    write_idx(raw / "train-labels-idx1-ubyte", train_y, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y, gz)
    return train_x, train_y, test_x, test_y


def write_cifar(root: Path, bytes_keys: bool = True) -> tuple[np.ndarray, ...]:
    """Five training batches and a test batch: dicts of data (N x 3072 uint8) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = _images(N_TRAIN, (3, 32, 32), seed=3)
    test_x, test_y = _images(N_TEST, (3, 32, 32), seed=4)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)  # Python 2 wrote bytes
        batch = {key("data"): x.reshape(len(x), -1), key("labels"): [int(v) for v in y]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    per_batch = N_TRAIN // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        dump(f"data_batch_{i + 1}", train_x[part], train_y[part])
    dump("test_batch", test_x, test_y)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize(
    "name, folder, gz",
    [("mnist", "MNIST/raw", False), ("mnist", "MNIST/raw", True)]
    + [("fashion-mnist", "FashionMNIST/raw", False), ("cifar10", "", False)],
)
def test_image_tasks_load_their_own_file_formats(tmp_path: Path, name, folder, gz):
    if name == "cifar10":
        train_x, train_y, test_x, test_y = write_cifar(tmp_path)
    else:
        train_x, train_y, test_x, test_y = write_mnist_like(tmp_path, folder, gz)
    task = load_task(name, model="cnn", data_dir=str(tmp_path))
    shape = DATASETS[name].input_shape
    assert task.info["input_shape"] == list(shape) and task.num_classes == 10
    assert (len(task.train), len(task.val), len(task.test)) == (50, 10, 20)
    # The official test split is kept whole and in order; validation is a tenth per class.
    assert torch.equal(labels_of(task.test), torch.as_tensor(test_y, dtype=torch.long))
    assert torch.equal(torch.bincount(labels_of(task.val), minlength=10), torch.ones(10).long())
    # Standardised per channel with the training split's statistics.
    x = task.train.tensors[0]
    assert x.dtype == torch.float32 and x.shape[1:] == shape
    channel_mean = x.transpose(0, 1).reshape(shape[0], -1).mean(dim=1)
    assert torch.allclose(channel_mean, torch.zeros(shape[0]), atol=1e-4)
    # The pixels are the files' pixels: per channel an increasing affine map of the bytes.
    test = task.test.tensors[0]
    raw = torch.as_tensor(test_x.reshape(-1, *shape)).float()
    for c in range(shape[0]):
        r, t = raw[:, c].flatten(), test[:, c].flatten()
        scale = (t.max() - t.min()) / (r.max() - r.min())
        assert scale > 0 and torch.allclose(t, scale * (r - r.min()) + t.min(), atol=1e-4)
    assert load_task(name, data_dir=str(tmp_path), seed=1).val.tensors[1].numel() == 10


def test_a_study_trains_on_the_written_files(tmp_path: Path):
    write_mnist_like(tmp_path, "FashionMNIST/raw", gz=True)
    task = load_task("fashion-mnist", model="cnn", hidden=(32,), data_dir=str(tmp_path))
    settings = TrainSettings(epochs=8, batch_size=8, micro_batch_size=8, lr=3e-3)
    assert train_task(task, settings).val_metric >= 0.5  # learnable bands; chance is 0.1


def test_resnet_takes_cifar_images_and_cnn_both_sizes():
    for name, shape in (("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)), ("resnet", (3, 32, 32))):
        model = build_model_factory(name, shape, num_classes=10)()
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
    resnet = build_model_factory("resnet", (3, 32, 32), 10)()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in resnet.modules())


def test_missing_files_say_where_and_how_to_get_them(tmp_path: Path):
    with pytest.raises(TaskError) as info:
        load_task("cifar10", data_dir=str(tmp_path / "empty"))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "--download" in message and "copy" in message
    write_mnist_like(tmp_path, "MNIST/raw")
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(TaskError, match="lacks t10k-labels-idx1-ubyte"):
        load_task("mnist", data_dir=str(tmp_path))


def test_damaged_files_are_named(tmp_path: Path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="damaged"):
        read_idx(path)
    path.write_bytes(b"\x08\x03\x00\x00junk")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(path)
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": print}))  # a pickle that names a callable
    with pytest.raises(DataError, match="not allowed"):
        read_cifar_batch(evil)


def test_cifar_batches_with_python3_string_keys_load_too(tmp_path: Path):
    write_cifar(tmp_path, bytes_keys=False)
    x, y = read_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert x.shape == (N_TEST, 3, 32, 32) and x.dtype == torch.uint8 and len(y) == N_TEST


def test_download_without_torchvision_is_one_clear_line(tmp_path: Path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DataError) as info:
        download("mnist", tmp_path)
    message = str(info.value)
    assert "\n" not in message and "pip install -e '.[vision]'" in message
    assert str(tmp_path / "MNIST" / "raw") in message


def test_missing_data_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path):
    proc = run_script(
        "run_study.py",
        "--task",
        "mnist",
        "--data-dir",
        str(tmp_path / "nothing"),
        "--max-batch-size",
        "16",
        "--trials",
        "1",
        "--storage",
        f"sqlite:///{tmp_path / 's.db'}",
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mnist data not found" in lines[0] and "--download" in lines[0]


@pytest.mark.slow
def test_run_study_on_cifar_files_with_resnet(tmp_path: Path):
    write_cifar(tmp_path)
    proc = run_script(
        "run_study.py",
        "--task",
        "cifar10",
        "--model",
        "resnet",
        "--data-dir",
        str(tmp_path),
        "--trials",
        "2",
        "--epochs",
        "1",
        "--min-batch-size",
        "16",
        "--max-batch-size",
        "32",
        "--precision",
        "bf16",
        "--storage",
        f"sqlite:///{tmp_path / 's.db'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "batch sizes [16, 32]" in proc.stdout


def test_our_readers_agree_with_torchvision_on_the_same_files(tmp_path: Path):
    """Where torchvision is installed, its MNIST reader sees the same pixels and labels."""
    try:
        from torchvision.datasets import MNIST
    except Exception:  # not installed, or built for another torch
        pytest.skip("torchvision is not importable here")
    write_mnist_like(tmp_path, "MNIST/raw")
    theirs = MNIST(str(tmp_path), train=False)
    ours = read_idx(tmp_path / "MNIST/raw/t10k-images-idx3-ubyte")
    assert torch.equal(theirs.data, ours)
    labels = read_idx(tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").long()
    assert torch.equal(theirs.targets, labels)
