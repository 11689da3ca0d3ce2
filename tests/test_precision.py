"""Training settings for speed: precision, compile, the shared step, and streamed data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from objectives.data import Tensors, make_loader
from objectives.models import mlp
from objectives.train import TrainSettings, make_step, torch_flags, train_model
from study.cli import parse_config
from study.config import ConfigError, StudyConfig, check_precision, differences
from tests.conftest import run_script


def _data(n: int = 40, features: int = 6) -> Tensors:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return Tensors(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_bf16_autocast_runs_the_forward_in_bfloat16_on_cpu_and_still_learns():
    data = _data(200)
    model = mlp((6,), 3, (32,))
    settings = TrainSettings(epochs=15, batch_size=16, micro_batch_size=8, lr=1e-2)
    bf16 = TrainSettings(**{**settings.__dict__, "precision": "bf16"})
    step = make_step(model, bf16)
    with step.autocast():
        assert model(data.x[:4]).dtype == torch.bfloat16
    assert model(data.x[:4]).dtype == torch.float32  # only inside the context
    result = train_model(model, data, data, bf16)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.val_metric > 0.8


def test_fp16_needs_cuda_one_clear_error_everywhere():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU.*bf16"):
        StudyConfig(precision="fp16", device="cpu").validate()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        TrainSettings(1, 8, 8, 0.1, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="not one of"):
        TrainSettings(1, 8, 8, 0.1, precision="fp8")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU.*trains on cpu"):
        check_precision("fp16", "cpu")
    for precision, device in (("fp16", "cuda:1"), ("fp16", "auto"), ("bf16", "cpu")):
        check_precision(precision, device)  # the device decides later (auto), or it can
    proc = run_script("run_study.py", "--precision", "fp16", "--device", "cpu")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_precision_and_compile_are_flags_and_part_of_the_study_identity():
    config = parse_config(["--precision", "bf16", "--compile", "--data-dir", "/data"])
    assert (config.precision, config.compile, config.data_dir) == ("bf16", True, "/data")
    identity = config.identity()
    assert identity["precision"] == "bf16" and identity["compile"] is True
    assert identity["data_dir"] == "/data" and "download" not in identity  # files, not fetching
    other = StudyConfig(precision="fp32").validate().identity()
    changed = differences(identity, other)
    assert any("--precision" in c for c in changed) and any("--compile" in c for c in changed)
    with pytest.raises(ConfigError, match="drop --download"):
        StudyConfig(task="digits", download=True).validate()


def test_global_torch_flags_are_set_only_inside_training_and_restored():
    """``cudnn.benchmark`` (on for CUDA) is set by ``torch_flags`` only, never by building
    a step, and is back to the caller's value afterwards (also after an error)."""
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        make_step(mlp((6,), 3, (8,)), TrainSettings(1, 8, 8, 0.1))
        assert torch.backends.cudnn.benchmark is False
        with torch_flags("cpu"):
            assert torch.backends.cudnn.benchmark is False
        with pytest.raises(RuntimeError), torch_flags("cuda"):
            assert torch.backends.cudnn.benchmark is True
            raise RuntimeError("training failed")
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_compiled_training_matches_eager():
    data = _data(24)
    torch.manual_seed(0)
    eager = mlp((6,), 3, (8,))
    compiled = copy.deepcopy(eager)
    settings = TrainSettings(epochs=1, batch_size=8, micro_batch_size=4, lr=0.1, optimizer="sgd")
    a = train_model(eager, data, data, settings)
    b = train_model(compiled, data, data, TrainSettings(**{**settings.__dict__, "compile": True}))
    assert torch.allclose(_params(eager), _params(compiled), atol=1e-5)
    assert a.val_metric == b.val_metric


class _ItemDataset(Dataset):
    """A map-style dataset that is not a TensorDataset (read sample by sample)."""

    def __init__(self, data: Tensors) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.x[i], int(self.data.y[i])


@pytest.mark.parametrize("kind", ["tensor_dataset", "item_dataset"])
def test_streamed_data_reads_every_sample_once_per_epoch(kind: str):
    data = _data(37)
    dataset = TensorDataset(data.x, data.y) if kind == "tensor_dataset" else _ItemDataset(data)
    loader = make_loader(dataset, 8, "cpu", torch.Generator().manual_seed(0), workers=1)
    for _epoch in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [8, 8, 8, 8, 5]
        seen = torch.cat([x for x, _ in batches])
        assert torch.equal(seen[seen[:, 0].argsort()], data.x[data.x[:, 0].argsort()])


def test_streamed_training_keeps_accumulation_exact():
    data = _data(37)
    torch.manual_seed(0)
    model = mlp((6,), 3, (8,)).double()
    data = Tensors(data.x.double(), data.y)
    dataset = _ItemDataset(data)
    results = []
    for micro in (8, 3):
        trained = copy.deepcopy(model)
        settings = TrainSettings(epochs=1, batch_size=8, micro_batch_size=micro, lr=0.1)
        train_model(trained, dataset, data, settings)
        results.append(_params(trained))
    assert torch.allclose(results[0], results[1], rtol=1e-10, atol=1e-12)
