"""The built-in tasks beyond classification: ``charlm`` and ``regression``.

They are built offline from files every installation has (the standard library's help text,
scikit-learn's bundled diabetes data) and speak the task contract: per-sample loss, a metric
with a direction, a unit.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import urllib.request

import numpy as np
import optuna
import pytest
import torch

from objectives import regression, text
from objectives.models import CharTransformer
from objectives.tasks import TaskError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Train on one thread, as the scripts the tests start do (``OMP_NUM_THREADS=1``): on a
    shared machine, two spinning threads per process make the transformer many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def charlm():
    return text.charlm_task()


@pytest.fixture(scope="module")
def diabetes():
    return regression.regression_task()


def _train_steps(task, steps: int, batch: int, lr: float) -> tuple[float, float]:
    """Validation metric before and after ``steps`` Adam steps on the task's own loss."""
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    val_x, val_y = task.val.tensors

    def val_metric() -> float:
        with torch.no_grad():
            return float(task.metric.fn(model(val_x), val_y).mean())

    before = val_metric()
    train_x, train_y = task.train.tensors
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(train_x), (batch,), generator=generator)
        loss = task.loss(model(train_x[idx]), train_y[idx])
        assert loss.shape == (batch,)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    return before, val_metric()


# --- charlm -------------------------------------------------------------------------------


def test_charlm_items_are_next_character_windows(charlm):
    assert (len(charlm.train), len(charlm.val), len(charlm.test)) == text.SPLIT_SEQUENCES
    x, y = charlm.train[3]
    assert x.shape == y.shape == (text.CONTEXT,)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(x[1:], y[:-1])
    assert int(x.min()) >= 0 and int(x.max()) < text.VOCAB_SIZE
    assert charlm.info["vocab_size"] == text.VOCAB_SIZE == 97
    # the shipped corpus, the same on every Python: a changed file fails here
    assert charlm.info["corpus_sha256"] == (
        "81220e778163ca38e9e0fa751b104ef61478469e44b49dbc9c29411c72dfbd0d"
    )


def test_charlm_text_round_trips_through_the_fixed_vocabulary():
    assert text.decode(text.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    assert text.encode("a\tb’c").tolist()[1::2] == [text.UNKNOWN_ID, text.UNKNOWN_ID]
    corpus = text.encode(text.corpus_text()[:20_000])
    assert float((corpus == text.UNKNOWN_ID).float().mean()) < 0.01  # mostly plain ASCII


def test_charlm_splits_share_no_character_of_the_corpus():
    for seed in (0, 1):
        spans = [
            set((starts[:, None] + torch.arange(text.CONTEXT + 1)).reshape(-1).tolist())
            for starts in text.window_starts(seed)
        ]
        assert [len(s) for s in spans] == [n * (text.CONTEXT + 1) for n in text.SPLIT_SEQUENCES]
        assert not spans[0] & spans[1] and not spans[0] & spans[2] and not spans[1] & spans[2]


def test_charlm_items_are_the_corpus_at_their_split_offsets(charlm):
    corpus = text.encode(text.corpus_text())
    for dataset, starts in zip(
        (charlm.train, charlm.val, charlm.test), text.window_starts(0), strict=True
    ):
        for i in (0, 17, len(dataset) - 1):
            x, y = dataset[i]
            start = int(starts[i])
            assert torch.equal(x, corpus[start : start + text.CONTEXT])
            assert torch.equal(y, corpus[start + 1 : start + text.CONTEXT + 1])


def test_charlm_is_deterministic_and_the_seed_chooses_the_split(charlm):
    again = text.charlm_task()
    assert torch.equal(charlm.train.tensors[0], again.train.tensors[0])
    assert torch.equal(charlm.test.tensors[1], again.test.tensors[1])
    other = text.charlm_task(seed=1)
    assert not torch.equal(charlm.val.tensors[0], other.val.tensors[0])
    # the same text overall: the seed deals the same blocks differently
    pooled = [
        torch.cat([t.train.tensors[0], t.val.tensors[0], t.test.tensors[0]])
        for t in (charlm, other)
    ]
    assert sorted(map(tuple, pooled[0].tolist())) == sorted(map(tuple, pooled[1].tolist()))


def test_charlm_contract_metric_unit_and_token_count(charlm):
    assert charlm.metric.name == "bits_per_char" and charlm.metric.direction == "minimize"
    assert charlm.unit == "tokens"
    x, y = charlm.train.tensors[0][:5], charlm.train.tensors[1][:5]
    assert charlm.count(x, y) == 5 * text.CONTEXT
    model = charlm.build_model()
    assert isinstance(model, CharTransformer)
    with torch.no_grad():
        out = model(x)
        loss, bits = charlm.loss(out, y), charlm.metric.fn(out, y)
    assert out.shape == (5, text.CONTEXT, text.VOCAB_SIZE)
    assert loss.shape == bits.shape == (5,)
    torch.testing.assert_close(bits, loss / np.log(2))
    # an untrained model is near uniform: about log2(97) = 6.6 bits per character
    assert 5.5 < float(bits.mean()) < 7.5


def test_charlm_model_is_causal():
    torch.manual_seed(0)
    model = text.charlm_task().build_model().eval()
    x = torch.randint(text.VOCAB_SIZE, (1, 20))
    changed = x.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % text.VOCAB_SIZE
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, :12], model(changed)[0, :12])


def test_charlm_training_lowers_validation_bits_per_char(charlm):
    before, after = _train_steps(charlm, steps=40, batch=32, lr=3e-3)
    assert after < before - 1.0, (before, after)


def test_charlm_trains_its_transformer_whatever_the_model_flag():
    # --model defaults to cnn (for the image tasks); charlm has one model of its own
    assert isinstance(text.charlm_task(model="cnn").build_model(), CharTransformer)


def test_charlm_reads_its_shipped_corpus_whatever_the_python(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # a stripped Python
    assert len(text.corpus_text()) == 200_000
    assert text.charlm_task().info["corpus"].startswith(text.CORPUS_FILE)
    # a context longer than the shipped text allows is one clear line
    with pytest.raises(TaskError, match="a context of 200 needs 308736 characters"):
        text.charlm_task(context=200)


def test_charlm_variable_length_pads_without_changing_the_loss():
    task = text.charlm_variable_task()
    lengths = [len(task.train[i][0]) for i in range(len(task.train))]
    assert min(lengths) >= 8 and max(lengths) == text.CONTEXT and len(set(lengths)) > 10
    items = [task.train[i] for i in range(6)]
    x, y = task.collate(items)
    assert x.shape == y.shape == (6, max(len(i[0]) for i in items))
    assert int(task.count(x, y)) == sum(len(i[1]) for i in items)
    torch.manual_seed(0)
    model = task.build_model()
    with torch.no_grad():
        padded = task.loss(model(x), y)
        alone = torch.cat([task.loss(model(a[None]), b[None]) for a, b in items])
    torch.testing.assert_close(padded, alone)


# --- regression ---------------------------------------------------------------------------


def test_regression_reads_the_same_data_as_scikit_learn():
    from sklearn.datasets import load_diabetes

    features, target = regression.load_diabetes_arrays()
    reference = load_diabetes(scaled=False)
    np.testing.assert_allclose(features, reference.data)
    np.testing.assert_allclose(target, reference.target)
    assert features.shape == (442, 10)


def test_regression_falls_back_to_scikit_learn_when_the_files_are_missing(monkeypatch):
    monkeypatch.setattr(regression, "_diabetes_files", lambda: None)
    features, target = regression.load_diabetes_arrays()
    assert features.shape == (442, 10) and target.shape == (442,)


def test_regression_without_scikit_learn_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(regression, "_diabetes_files", lambda: None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(TaskError, match="pip install scikit-learn"):
        regression.regression_task()


def test_regression_split_is_seeded_disjoint_and_complete():
    parts = regression.split_indices(442, seed=0)
    assert [len(p) for p in parts] == [265, 88, 89]
    assert sorted(torch.cat(parts).tolist()) == list(range(442))
    assert all(
        torch.equal(a, b) for a, b in zip(parts, regression.split_indices(442, 0), strict=True)
    )
    assert not torch.equal(parts[1], regression.split_indices(442, seed=1)[1])


def test_regression_standardises_with_training_statistics(diabetes):
    x, y = diabetes.train.tensors
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=0), torch.ones(10), atol=1e-5, rtol=0)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-5
    assert y.shape == (265, 1) and y.dtype == torch.float32
    # the original units come back from the info
    raw = regression.load_diabetes_arrays()[1]
    info = diabetes.info
    restored = y.reshape(-1) * info["target_std"] + info["target_mean"]
    idx = regression.split_indices(442, 0)[0]
    np.testing.assert_allclose(restored.numpy(), raw[idx.numpy()], rtol=1e-4)


def test_regression_contract_and_training_lowers_mse(diabetes):
    assert diabetes.metric.name == "mse" and diabetes.metric.direction == "minimize"
    assert diabetes.unit == "samples"
    x, y = diabetes.train[0]
    assert x.shape == (10,) and y.shape == (1,)
    before, after = _train_steps(diabetes, steps=150, batch=32, lr=1e-3)
    assert after < 0.7 < before, (before, after)


def test_regression_trains_an_mlp_whatever_the_model_flag():
    task = regression.regression_task(model="cnn", hidden=(16,))
    model = task.build_model()
    assert [type(m).__name__ for m in model] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert model(task.val.tensors[0]).shape == (88, 1)
    assert task.info["model"] == "mlp (hidden [16], 1 output)"


# --- end to end: study (with the noise scale), probe, report, dashboard --------------------

#: A study sized for seconds: two trials of one short budget, small batches only.
STUDY = {"trials": 2, "min_batch_size": 32, "max_batch_size": 64, "device": "cpu"}


def _run_study(tmp_path, task: str, **settings):
    from objectives.backend import TorchBackend
    from study.config import StudyConfig
    from study.orchestrate import run_study

    config = StudyConfig(
        task=task,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        artifact_dir=str(tmp_path / "artifacts"),
        **(STUDY | settings),
    ).validate()
    out = io.StringIO()
    return run_study(config, TorchBackend(), out=out), config, out.getvalue()


@pytest.fixture(scope="module")
def charlm_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("charlm")
    return _run_study(folder, "charlm", budget="steps", steps=10, noise_scale=True)


@pytest.fixture(scope="module")
def regression_study(tmp_path_factory):
    return _run_study(tmp_path_factory.mktemp("regression"), "regression", epochs=3)


@pytest.mark.parametrize(
    ("which", "metric", "unit"),
    [("charlm_study", "bits_per_char", "tokens"), ("regression_study", "mse", "samples")],
)
def test_a_study_minimises_the_task_metric(request, which, metric, unit):
    study, _, out = request.getfixturevalue(which)
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == [f"val_{metric}"]
    stored = {"name": metric, "direction": "minimize", "unit": unit, "bounds": [0.0, None]}
    assert study.user_attrs["metric"] == stored
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 2
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.value == attrs[f"val_{metric}"] and np.isfinite(trial.value)
        assert np.isfinite(attrs[f"test_{metric}"]) and attrs["samples_per_s"] > 0
        assert 32 <= attrs["batch_size"] <= 64
    assert f"val {metric}" in out and f"median {unit}/s" in out


def test_the_charlm_study_measures_the_noise_scale(charlm_study):
    study, _, _ = charlm_study
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        attrs = trial.user_attrs
        assert 0 < attrs["b_simple"] < 1e6 and attrs["b_simple_se"] >= 0, sorted(attrs)


@pytest.mark.parametrize("which", ["charlm_study", "regression_study"])
def test_the_report_and_the_dashboard_name_the_metric(request, which, tmp_path):
    from tests.conftest import run_script

    study, config, _ = request.getfixturevalue(which)
    metric = study.user_attrs["metric"]["name"]
    text_report = run_script("report.py", "--storage", config.storage, "--format", "text")
    assert text_report.returncode == 0, text_report.stderr
    assert f"val {metric}" in text_report.stdout and "accuracy" not in text_report.stdout
    html = tmp_path / "report.html"
    proc = run_script("report.py", "--storage", config.storage, "--out", str(html))
    assert proc.returncode == 0, proc.stderr
    assert f"{metric}" in html.read_text(encoding="utf-8")
    # the dashboard serves the study with the report attached as artifacts
    from study.report.dashboard import make_dashboard_server

    server = make_dashboard_server(config.storage, artifact_dir=config.artifact_dir, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/api/studies"
        with urllib.request.urlopen(f"{base}/{study._study_id}", timeout=30) as reply:
            detail = json.load(reply)
    finally:
        server.shutdown()
        server.server_close()
    assert detail["artifacts"], sorted(detail)


@pytest.mark.parametrize(
    ("task", "unit", "variable"),
    [
        ("charlm", "tokens", False),
        ("regression", "samples", False),
        ("objectives.text:charlm_variable_task", "tokens", True),
    ],
)
def test_the_probe_runs_on_the_task(task, unit, variable):
    from tests.conftest import run_script

    proc = run_script(
        "probe.py", "--task", task, "--min-batch-size", "16", "--max-batch-size", "64", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["task"] == task.replace("objectives.text:charlm_variable_task", "charlm-variable")
    assert result["unit"] == unit and result["longest_items"] is variable
    assert result["max_batch_size"] == 64 and result["rows"][-1]["measured_bytes"] > 0


@pytest.mark.parametrize("task", ["charlm", "regression"])
def test_the_noise_scale_script_runs_on_the_task(task):
    from tests.conftest import run_script

    quick = ["--b-small", "8", "--b-big", "32", "--repeats", "2", "--max-seconds", "5"]
    proc = run_script("noise_scale.py", "--task", task, "--epochs", "1", *quick, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["b_simple"] > 0 and len(result["per_epoch"]) == 2
    assert result["measured_with"]["train_size"] == {"charlm": 1024, "regression": 265}[task]


def test_worker_processes_train_the_regression_task(tmp_path):
    study, _, out = _run_study(tmp_path, "regression", epochs=2, workers=2)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 2, out
    pids = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials}
    assert os.getpid() not in pids  # trained in the worker processes, not here
    assert all(np.isfinite(t.user_attrs["val_mse"]) for t in trials)


def test_a_study_trains_the_variable_length_charlm(tmp_path):
    task = "objectives.text:charlm_variable_task"
    study, _, out = _run_study(tmp_path, task, trials=1, budget="steps", steps=10)
    (trial,) = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert 0 < trial.user_attrs["val_bits_per_char"] < 7, out
    assert study.user_attrs["metric"]["unit"] == "tokens"
