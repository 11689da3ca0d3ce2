"""Hugging Face models built from tiny configs (no download) through a study, per-token losses."""

from __future__ import annotations

import pytest
import torch

from batchsize_study.api import run_study
from objectives.batch import call_model, stack_items
from objectives.metrics import cross_entropy
from objectives.tasks import load_task
from tests.conftest import ROOT

pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install -e '.[huggingface]'"
)
EXAMPLE = ROOT / "examples" / "huggingface_task.py"


def example(name: str):
    return load_task(f"{EXAMPLE}:{name}")


def settings(tmp_path, **more) -> dict:
    return {
        "trials": 2,
        "epochs": 2,
        "min_batch_size": 16,
        "max_batch_size": 32,
        "sampler": "grid",
        "scaling": "none",
        "optimizer": "adamw",
        "base_lr": 3e-3,
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "artifact_dir": "none",
        "device": "cpu",
        **more,
    }


def test_a_tiny_bert_classifier_runs_through_a_study(tmp_path):
    task = example("classifier")
    assert task.info["model"] == "BertForSequenceClassification"  # the report's name for it
    result = run_study(task=task, **settings(tmp_path))
    finished = [t for t in result.study.trials if t.state.is_finished()]
    assert {t.params["batch_size"] for t in finished} == {16, 32}
    assert all(0 <= t.user_attrs["val_accuracy"] <= 1 for t in finished)
    assert result.study.user_attrs["task_info"]["model"] == "BertForSequenceClassification"


def test_a_tiny_causal_language_model_trains_on_per_token_losses_exactly_accumulated(tmp_path):
    task = example("causal_lm")
    torch.manual_seed(0)
    model = task.build_model()
    inputs, targets = stack_items([task.train[i] for i in range(4)])
    out = call_model(model, inputs)
    losses = cross_entropy(out, targets)  # one per sequence: the mean over its tokens
    assert losses.shape == (4,)
    by_hand = torch.nn.functional.cross_entropy(out.logits[1], targets[1])
    assert losses[1].item() == pytest.approx(by_hand.item(), rel=1e-5)
    result = run_study(task=task, **settings(tmp_path, trials=1, max_batch_size=16))
    trial = result.study.trials[0]
    assert trial.state.is_finished() and trial.user_attrs["val_accuracy"] > 0.1
    assert result.study.user_attrs["metric"]["unit"] == "tokens"
