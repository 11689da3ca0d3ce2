"""The data is part of the study: a resume on changed data is refused, on the same data accepted.

Across real processes: a study is created with ``--task task.py:make`` from a file the test
writes; the file is then rewritten (fewer samples, flipped labels) and the same command run
again. Also the data check: NaN or infinite values and items that cannot be read are named by
split and index before anything is stored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from objectives.datacheck import DataItemError, data_problem, sample_indices
from objectives.fingerprint import data_fingerprint
from objectives.tasks import Task, TaskError, validate_task
from study.datamatch import FINGERPRINT_ATTR, data_changes
from tests.conftest import run_script

TASK_FILE = """
import torch
from torch.utils.data import TensorDataset
from objectives.tasks import Task

SAMPLES = {samples}
FLIP = {flip}

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 4, generator=g)
    y = (x[:, 0] > 0).long()
    if FLIP:
        y = 1 - y
    n = SAMPLES // 2
    m = SAMPLES // 4
    split = lambda a, b: TensorDataset(x[a:b], y[a:b])
    return Task("mine", lambda: torch.nn.Linear(4, 2), split(0, n), split(n, n + m),
                split(n + m, SAMPLES))
"""
FLAGS = ["--epochs", "1", "--max-batch-size", "16", "--min-batch-size", "8", "--model", "mlp"]
FLAGS += ["--task", "task.py:make", "--storage", "sqlite:///study.db"]
FLAGS += ["--artifact-dir", "none", "--checkpoint-dir", "none", "--scaling", "none"]


def _write_task(folder: Path, samples: int = 96, flip: bool = False) -> None:
    (folder / "task.py").write_text(TASK_FILE.format(samples=samples, flip=flip))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_resume_on_the_same_data_is_accepted_and_on_changed_data_refused(tmp_path):
    _write_task(tmp_path)
    made = run_script("run_study.py", *FLAGS, "--trials", "1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="batch-size", storage=f"sqlite:///{tmp_path}/study.db")
    stored = study.user_attrs[FINGERPRINT_ATTR]
    assert stored["splits"]["train"]["size"] == 48 and stored["splits"]["test"]["size"] == 24

    same = run_script("run_study.py", *FLAGS, "--trials", "2", cwd=tmp_path)
    assert same.returncode == 0 and "resumed" in same.stdout, same.stderr
    assert (
        len(
            optuna.load_study(
                study_name="batch-size", storage=f"sqlite:///{tmp_path}/study.db"
            ).trials
        )
        == 2
    )
    before = _digest(tmp_path / "study.db")

    for samples, flip, message in (
        (80, False, "train size 48 -> 40; val size 24 -> 20; test size 24 -> 20"),
        (96, True, "train: content of sampled items differs; val: content of sampled items"),
    ):
        _write_task(tmp_path, samples, flip)
        refused = run_script("run_study.py", *FLAGS, "--trials", "3", cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "was created on other data: " + message in lines[0], lines
        assert "Traceback" not in refused.stdout + refused.stderr
        assert _digest(tmp_path / "study.db") == before  # untouched: no trial, no attribute

    _write_task(tmp_path)  # the data it was made on: the study continues
    again = run_script("run_study.py", *FLAGS, "--trials", "3", cwd=tmp_path)
    assert again.returncode == 0 and "resumed" in again.stdout, again.stderr


def _task(train: Dataset, val: Dataset | None = None) -> Task:
    val = val if val is not None else train
    return Task("t", lambda: torch.nn.Linear(4, 2), train, val, val)


def _data(n: int = 100) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 2)


def test_the_fingerprint_sees_size_and_content_and_not_the_object():
    one, two = data_fingerprint(_task(_data())), data_fingerprint(_task(_data()))
    assert one == two
    fewer = data_fingerprint(_task(_data(90)))
    assert data_changes(one, fewer) == [
        "train size 100 -> 90",
        "val size 100 -> 90",
        "test size 100 -> 90",
    ]
    flipped = TensorDataset(_data().tensors[0], 1 - _data().tensors[1])
    assert data_changes(one, data_fingerprint(_task(_data(), flipped))) == [
        "val: content of sampled items differs",
        "test: content of sampled items differs",
    ]
    assert data_changes(None, one) == [] and data_changes({"version": 0}, one) == []


class Items(Dataset):
    """Items made on the fly; ``broken`` raises, ``nan`` holds a NaN."""

    def __init__(self, n: int = 200, broken: int | None = None, nan: int | None = None):
        self.n, self.broken, self.nan = n, broken, nan

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.broken:
            raise OSError(f"cannot read record {i}")
        x = torch.full((4,), float(i % 7))
        if i == self.nan:
            x[2] = float("nan")
        return x, i % 2


def test_a_streamed_dataset_is_fingerprinted_on_its_sampled_items():
    assert data_fingerprint(_task(Items())) == data_fingerprint(_task(Items()))
    sampled = sample_indices(200)[5]
    changed = data_fingerprint(_task(Items(nan=sampled)))
    assert "train: content of sampled items differs" in data_changes(
        data_fingerprint(_task(Items())), changed
    )


def test_nan_and_infinite_values_are_named_by_split_and_item():
    x = torch.randn(100, 4)
    x[37, 1] = float("nan")
    y = torch.randn(100)
    y[12] = float("inf")
    problem = data_problem({"train": TensorDataset(torch.randn(100, 4), y)})
    assert problem.startswith("train item 12 has an infinite value in its targets: ")
    assert data_problem({"val": TensorDataset(x, torch.zeros(100))}).startswith(
        "val item 37 has NaN in its inputs"
    )
    streamed = data_problem({"test": Items(nan=sample_indices(200)[3])})
    assert streamed.startswith(f"test item {sample_indices(200)[3]} has NaN in its inputs")
    with pytest.raises(TaskError, match="task 'nan': val item 37 has NaN in its inputs"):
        validate_task(_task(_data(), TensorDataset(x, torch.arange(100) % 2)), "nan")


def test_an_item_that_cannot_be_read_is_named_by_split_and_index():
    broken = sample_indices(200)[10]
    with pytest.raises(TaskError, match=f"train item {broken} could not be read: OSError"):
        validate_task(_task(Items(broken=broken), Items()), "broken")
    from objectives.data import as_tensors, place

    unsampled = next(i for i in range(200) if i not in sample_indices(200))
    with pytest.raises(DataItemError, match=f"^val item {unsampled} could not be read"):
        as_tensors(Items(broken=unsampled), split="val")
    streamed = place(Items(broken=unsampled), "cpu", collate=lambda items: items, split="test")
    with pytest.raises(DataItemError, match=f"^test item {unsampled} could not be read"):
        streamed[unsampled]
    assert len(streamed) == 200 and streamed[0][1] == 0
