"""Metrics of a whole split (micro-F1, torchmetrics objects) and models that return objects."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from sklearn.metrics import f1_score
from torch.utils.data import TensorDataset

from batchsize_study.api import run_study
from objectives import Metric, Task
from objectives.metrics import f1
from objectives.tasks import TaskError, validate_task
from objectives.train import TrainSettings, evaluate, train_task
from study.record import study_metric

torchmetrics = pytest.importorskip("torchmetrics", reason="torchmetrics is not installed")


def blobs(n: int, g: torch.Generator, centres: torch.Tensor) -> TensorDataset:
    y = torch.arange(n) % 4
    return TensorDataset(centres[y] + 1.5 * torch.randn(n, 8, generator=g), y)


def blobs_task(build=lambda: torch.nn.Linear(8, 4), **more) -> Task:
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 8, generator=g)
    train, val, test = blobs(256, g, centres), blobs(96, g, centres), blobs(96, g, centres)
    return Task("blobs", build, train, val, test, **more)


def settings(tmp_path, **more) -> dict:
    return {
        "trials": 2,
        "epochs": 2,
        "min_batch_size": 16,
        "max_batch_size": 32,
        "sampler": "grid",
        "scaling": "none",
        "base_lr": 0.05,
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "artifact_dir": "none",
        "device": "cpu",
        **more,
    }


def test_a_split_metric_is_the_whole_splits_value_not_a_mean_of_batches():
    task = blobs_task()
    torch.manual_seed(0)
    model = task.build_model()
    x, y = task.val.tensors
    predicted = model(x).argmax(-1)
    for average in ("micro", "macro"):
        task.metric = f1(4, average)
        expected = f1_score(y.numpy(), predicted.numpy(), average=average)
        assert evaluate(model, task.val, 7, "cpu", task=task) == pytest.approx(expected, abs=1e-6)

    def macro(outputs, targets):  # one call on the split's outputs, concatenated
        assert outputs.shape == (96, 4)
        return f1_score(targets.numpy(), outputs.argmax(-1).numpy(), average="macro")

    task.metric = Metric("sk_macro", "maximize", macro, per="split")
    value = evaluate(model, task.val, 7, "cpu", task=task)
    assert value == pytest.approx(f1_score(y.numpy(), predicted.numpy(), average="macro"))
    tm = Metric("auroc", "maximize", torchmetrics.AUROC(task="multiclass", num_classes=4))
    assert tm.per_split  # an update/compute object is a split metric by itself


def test_a_micro_f1_metric_through_a_study(tmp_path):
    result = run_study(task=blobs_task(metric=f1(4, "micro")), **settings(tmp_path))
    study = result.study
    assert study_metric(study).name == "f1_micro"
    values = [t.user_attrs["val_f1_micro"] for t in study.trials if t.state.is_finished()]
    assert len(values) == 2 and all(0.5 < v <= 1 for v in values)
    frame = study.trials_dataframe()  # pandas is a dependency: the docs' call works
    assert len(frame) == 2 and "user_attrs_val_f1_micro" in frame.columns


def test_a_bare_torchmetrics_object_is_named_by_its_class_and_directed_by_it(tmp_path):
    auroc = torchmetrics.classification.MulticlassAUROC(num_classes=4)
    task = blobs_task(metric=auroc)
    assert (task.metric.name, task.metric.direction) == ("multiclass_auroc", "maximize")
    result = run_study(task=task, **settings(tmp_path, trials=1, max_batch_size=16))
    assert 0.5 < result.study.trials[0].user_attrs["val_multiclass_auroc"] <= 1


def test_a_per_sample_metric_that_returns_one_number_is_told_about_split_metrics():
    bad = Metric("acc", "maximize", lambda out, y: (out.argmax(-1) == y).float().mean())
    with pytest.raises(TaskError, match=r"Metric\(\.\.\., per='split'\) or a torchmetrics"):
        validate_task(blobs_task(metric=bad), "t")
    with pytest.raises(ValueError, match="per 'batch' must be 'sample' or 'split'"):
        Metric("m", "maximize", lambda o, t: o, per="batch")


class DictModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x):
        return {"logits": self.linear(x), "features": x}


@dataclass
class Output:  # what a Hugging Face ModelOutput looks like to the tool: attributes
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class ObjectModel(DictModel):
    def forward(self, x):
        logits = self.linear(x)
        return Output(logits, loss=logits.mean())  # a batch mean: never used


def test_models_returning_a_dict_or_an_object_with_logits_train_with_the_default_loss(tmp_path):
    dict_result = run_study(task=blobs_task(DictModel), **settings(tmp_path))
    values = [t.value for t in dict_result.study.trials if t.value is not None]
    assert len(values) == 2 and min(values) > 0.5  # accuracy read from the dict's logits
    torch_seed = 3
    plain = train_task(blobs_task(), TrainSettings(2, 32, 16, lr=0.05, seed=torch_seed))

    def same_weights() -> torch.nn.Module:
        torch.manual_seed(torch_seed)  # the tensor model and the object model start equal
        return ObjectModel()

    def plain_weights() -> torch.nn.Module:
        torch.manual_seed(torch_seed)
        return DictModel().linear

    a = train_task(blobs_task(same_weights), TrainSettings(2, 32, 16, lr=0.05, seed=torch_seed))
    b = train_task(blobs_task(plain_weights), TrainSettings(2, 32, 16, lr=0.05, seed=torch_seed))
    assert a.val_metric == pytest.approx(b.val_metric)  # .logits, accumulated exactly
    assert [e.train_loss for e in a.epochs] == pytest.approx([e.train_loss for e in b.epochs])
    assert plain.val_metric > 0.5


def test_outputs_without_scores_get_an_error_naming_how_to_supply_a_loss():
    class TupleModel(DictModel):
        def forward(self, x):
            return (self.linear(x), x)

    with pytest.raises(TaskError, match="give the task a loss\\(outputs, targets\\) -> \\[n\\]"):
        validate_task(blobs_task(TupleModel), "t")
    with pytest.raises(TaskError, match="Hugging Face model's own .loss"):
        validate_task(blobs_task(ObjectModel, loss=lambda out, y: out.loss), "t")


def test_the_chance_level_of_token_targets_counts_tokens_and_leaves_padding_out():
    from objectives.metrics import IGNORE_INDEX
    from objectives.objective import chance_level

    x = torch.randn(4, 3, 8)
    y = torch.tensor([[1, 1, 2], [1, 0, IGNORE_INDEX], [1, 2, IGNORE_INDEX], [0, 1, 1]])

    class PerToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.linear(x)  # [n, tokens, classes]

    task = Task("tokens", PerToken, TensorDataset(x, y), TensorDataset(x, y), TensorDataset(x, y))
    validate_task(task, "tokens")
    assert chance_level(task, "accuracy") == pytest.approx(6 / 10)  # token 1: 6 of 10 tokens
