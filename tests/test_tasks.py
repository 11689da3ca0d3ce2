"""Tasks: built-in digits and synthetic, a user's own factory, and clear errors for bad ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from objectives import Task, TaskError, load_task
from objectives.data import labels_of
from objectives.models import ModelError
from tests.conftest import run_script, script_env


def test_digits_split_is_stratified_seeded_and_standardised_with_training_statistics():
    task = load_task("digits", model="mlp")
    sizes = [len(task.train), len(task.val), len(task.test)]
    assert sum(sizes) == 1797 and sizes[0] > sizes[1] > 0 and sizes[2] > 0
    for split in (task.train, task.val, task.test):
        counts = torch.bincount(labels_of(split), minlength=10).float()
        share = counts / counts.sum()
        assert torch.all((share - 0.1).abs() < 0.02)  # every class in proportion
    x_train = task.train.tensors[0]
    assert x_train.shape[1:] == (1, 8, 8)
    varying = x_train.std(dim=0) > 0
    assert torch.allclose(x_train.mean(dim=0)[varying], torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(x_train.std(dim=0)[varying], torch.tensor(1.0), atol=1e-4)
    assert abs(task.val.tensors[0].mean().item()) > 1e-6  # val was not standardised on itself
    again = load_task("digits", model="mlp")
    assert torch.equal(again.test.tensors[1], task.test.tensors[1])
    other = load_task("digits", model="mlp", seed=1)
    assert not torch.equal(other.test.tensors[0], task.test.tensors[0])


def test_digits_are_scikit_learns_digits_read_without_importing_scikit_learn():
    from sklearn.datasets import load_digits

    from objectives.tasks import load_digits_arrays

    images, target = load_digits_arrays()
    expected = load_digits()
    assert images.dtype == expected.images.dtype and target.dtype == expected.target.dtype
    assert np.array_equal(images, expected.images) and np.array_equal(target, expected.target)
    code = (
        "import sys; from objectives.tasks import load_task; load_task('digits'); "
        "print('sklearn' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=script_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_synthetic_is_deterministic_sized_by_flags_and_learnable():
    a = load_task("synthetic", synthetic_samples=500, synthetic_features=7, synthetic_classes=3)
    b = load_task("synthetic", synthetic_samples=500, synthetic_features=7, synthetic_classes=3)
    assert len(a.train) + len(a.val) + len(a.test) == 500
    assert a.train[0][0].shape == (7,) and a.num_classes == 3
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    from objectives.train import TrainSettings, train_task

    result = train_task(a, TrainSettings(epochs=5, batch_size=16, micro_batch_size=16, lr=3e-3))
    assert result.val_metric > 0.6  # well above chance (1/3)


def test_models_build_fresh_and_cnn_refuses_flat_inputs():
    task = load_task("digits", model="cnn")
    m1, m2 = task.build_model(), task.build_model()
    assert m1 is not m2
    assert m1(task.train.tensors[0][:4]).shape == (4, 10)
    with pytest.raises(ModelError, match="use --model mlp"):
        load_task("synthetic", model="cnn")


USER_TASK = """
import torch
from torch.utils.data import TensorDataset
from objectives import Task

def _split(n, label_dtype=torch.long):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 5, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).to(label_dtype))

def make():
    model = lambda: torch.nn.Sequential(torch.nn.Linear(5, 2))
    return Task("mine", model, _split(64), _split(32), _split(32))

def not_a_task():
    return {"train": []}

def float_labels():
    model = lambda: torch.nn.Linear(5, 2)
    return Task("f", model, _split(64, torch.float32), _split(32), _split(32))

def empty_split():
    model = lambda: torch.nn.Linear(5, 2)
    return Task("e", model, _split(64), TensorDataset(torch.zeros(0, 5), torch.zeros(0)), _split(8))
"""


@pytest.fixture
def user_task_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(USER_TASK))
    return path


def test_user_task_from_file_and_from_module(user_task_file: Path, monkeypatch):
    task = load_task(f"{user_task_file}:make")
    assert isinstance(task, Task) and task.num_classes == 2 and task.info["train_size"] == 64
    monkeypatch.syspath_prepend(str(user_task_file.parent))
    assert load_task("my_task:make").name == "mine"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{file}:not_a_task", "returned dict, not objectives.Task"),
        ("{file}:float_labels", "labels must be integers"),
        ("{file}:empty_split", "split val is empty"),
        ("{file}:missing", "has no callable named 'missing'"),
        ("no_such_module_xyz:make", "importing no_such_module_xyz failed"),
        ("{dir}/nowhere.py:make", "not found"),
        ("mnist-ish", "is not a built-in task"),
    ],
)
def test_bad_user_tasks_are_one_clear_error(user_task_file: Path, spec: str, message: str):
    spec = spec.format(file=user_task_file, dir=user_task_file.parent)
    with pytest.raises(TaskError, match=message):
        load_task(spec)


def test_bad_task_on_the_command_line_is_one_line_and_exit_2(user_task_file, tmp_path):
    db = tmp_path / "s.db"
    proc = run_script(
        "run_study.py",
        "--task",
        f"{user_task_file}:float_labels",
        "--trials",
        "1",
        "--max-batch-size",
        "16",
        "--storage",
        f"sqlite:///{db}",
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "labels must be integers" in lines[0], proc.stderr


def test_user_task_runs_a_study(user_task_file, tmp_path):
    proc = run_script(
        "run_study.py",
        "--task",
        f"{user_task_file}:make",
        "--trials",
        "2",
        "--epochs",
        "2",
        "--min-batch-size",
        "8",
        "--max-batch-size",
        "16",
        "--storage",
        f"sqlite:///{tmp_path / 's.db'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "batch sizes [8, 16]" in proc.stdout


def test_a_task_is_run_once_before_use_and_leaves_the_random_state_alone():
    from torch.utils.data import TensorDataset

    from objectives.tasks import check_task_runs

    good = TensorDataset(torch.randn(16, 4), torch.arange(16) % 2)
    high = TensorDataset(torch.randn(16, 4), torch.full((16,), 3))  # a label the model lacks
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_task_runs(
        Task("ok", lambda: torch.nn.Linear(4, 2), good, good, good, num_classes=2), "ok"
    )
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(TaskError, match="val has label 3 but the model gives 2 outputs"):
        check_task_runs(
            Task("high", lambda: torch.nn.Linear(4, 2), good, high, good, num_classes=2), "high"
        )


def test_a_file_task_imports_the_module_beside_it(tmp_path):
    (tmp_path / "helper_for_task.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def data(n):\n    g = torch.Generator().manual_seed(n)\n"
        "    return TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 2)\n"
    )
    (tmp_path / "my_task.py").write_text(
        "import torch\nfrom helper_for_task import data\nfrom objectives import Task\n"
        "class Tiny(torch.nn.Linear):\n    pass\n"
        "def make():\n    return Task('t', lambda: Tiny(4, 2), data(32), data(8), data(8))\n"
    )
    before = list(sys.path)
    task = load_task(f"{tmp_path / 'my_task.py'}:make")
    assert task.info["model"] == "Tiny" and sys.path == before  # only while it loads
    sys.modules.pop("helper_for_task", None)
