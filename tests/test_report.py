"""The study report: HTML, text, the dashboard note and artifacts, and the CLI's errors.

Studies are real SQLite files written in the core's record format (tests/report_studies.py);
the scripts run in real subprocesses where their exit code and output are the behaviour.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note

from batchsize_study import commands
from study.record import read_record
from study.report.answer import ANSWER_KEYS, CELL_KEYS
from study.report.dashboard import attach_report, save_dashboard_figures
from study.report.data import Folklore, collect_report_data, rule_of_thumb
from study.report.html import (
    build_report,
    load_study_for_report,
    render_html_report,
    render_text_report,
    write_report,
)
from study.report.note import study_note, write_study_note
from study.report.summary import summary, trial_line
from tests.conftest import ROOT, script_env

try:
    from report_studies import LR_WIDTH, STEPS, TRAIN_SIZE, build_study
except ImportError:  # tests/ imported as a package
    from tests.report_studies import LR_WIDTH, STEPS, TRAIN_SIZE, build_study

ALL_FIGURES = ["accuracy", "learning-curves", "hardware", "learning-rate", "history", "importances"]
PARETO_FIGURES = ["pareto", *ALL_FIGURES]
MULTIPLIER_FIGURES = [*ALL_FIGURES[:4], "lr-multiplier", *ALL_FIGURES[4:]]
NOISE_LABEL = "B_simple (gradient noise scale) \u2248 "


def run_report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python scripts/report.py ARGS`` in a real subprocess."""
    env = script_env()
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def full_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study whose rule is searched: complete, pruned, diverged and failed trials."""
    path = tmp_path_factory.mktemp("full") / "study.db"
    build_study(path)
    return path


@pytest.fixture(scope="module")
def full_html(full_db: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("out") / "report.html"
    study = load_study_for_report(_url(full_db), "batch-size")
    write_report(study, out, storage_url=_url(full_db))
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pareto_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """--objectives accuracy,time --noise-scale: two objectives, every trial's B_simple."""
    path = tmp_path_factory.mktemp("pareto") / "study.db"
    build_study(path, kind="pareto")
    return path


@pytest.fixture(scope="module")
def pareto_html(pareto_db: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("out") / "report.html"
    write_report(load_study_for_report(_url(pareto_db), "batch-size"), out)
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def multiplier_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LR multiplier searched, a step budget, the noise_scale study attribute, no warm-up."""
    path = tmp_path_factory.mktemp("multiplier") / "study.db"
    build_study(path, kind="multiplier")
    return path


@pytest.fixture(scope="module")
def multiplier_html(multiplier_db: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("out") / "report.html"
    write_report(load_study_for_report(_url(multiplier_db), "batch-size"), out)
    return out.read_text(encoding="utf-8")


def _figures(html: str) -> dict[str, dict]:
    """Each embedded figure's JSON (data and layout) by its div id, in page order."""
    decoder = json.JSONDecoder()
    figures = {}
    for match in re.finditer(r"Plotly\.newPlot\(", html):
        values, pos = [], match.end()
        for _ in range(3):  # div id, data, layout
            pos = re.compile(r"[\s,]*").match(html, pos).end()
            value, pos = decoder.raw_decode(html, pos)
            values.append(value)
        div_id, data, layout = values
        figures[div_id.removeprefix("fig-")] = {"data": data, "layout": layout}
    return figures


def test_rule_of_thumb_ranges_follow_the_dataset_size() -> None:
    assert rule_of_thumb(999) == (16, 32)
    assert rule_of_thumb(1_000) == (32, 256)
    assert rule_of_thumb(100_000) == (32, 256)
    assert rule_of_thumb(100_001) == (256, 2048)
    with pytest.raises(ValueError, match="negative"):
        rule_of_thumb(-1)


def test_report_data_reads_the_core_record_format(full_db: Path) -> None:
    study = optuna.load_study(study_name="batch-size", storage=_url(full_db))
    data = collect_report_data(study)
    assert data.metric_name == "val_accuracy"
    assert data.counts["COMPLETE"] == 15 and data.counts["PRUNED"] == 2
    assert data.counts["FAIL"] == 1
    best = max(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    assert data.best is not None and data.best.number == best.number
    assert data.best.batch_size == best.params["batch_size"]
    assert data.rules == ["linear", "sqrt", "none"]
    row = next(c for c in data.cells if (c.batch_size, c.scaling_rule) == (16, "none"))
    assert (row.runs, row.pruned) == (1, 1)
    diverged = [t for t in data.trials if t.diverged]
    assert len(diverged) == 1 and diverged[0].state == "PRUNED"
    assert data.folklore is not None and data.folklore.train_size == TRAIN_SIZE
    assert (data.folklore.low, data.folklore.high) == (32, 256)
    assert data.folklore.optimum == data.best.batch_size == 64
    assert data.folklore.verdict == "unconfirmed"  # one run per cell: no verdict
    assert set(data.importances or {}) == {"batch_size", "scaling_rule"}


class _Scripts(HTMLParser):
    """Collects each <script>'s attributes and the start of its text, and <link> tags."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self.links: list[dict] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
            self._in_script = True
        elif tag == "link":
            self.links.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and len(self.scripts[-1][1]) < 200:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data[:200])


def test_html_report_is_self_contained_with_plotly_embedded_once(full_html: str) -> None:
    parser = _Scripts()
    parser.feed(full_html)
    assert not [attrs for attrs, _ in parser.scripts if "src" in attrs], "no external scripts"
    assert not [a for a in parser.links if a.get("rel") == "stylesheet"]
    library = [text for _, text in parser.scripts if "plotly.js v" in text]
    assert len(library) == 1, "plotly.js embedded exactly once"
    assert 'data-figure-count="6"' in full_html
    assert list(_figures(full_html)) == ALL_FIGURES


@pytest.mark.parametrize("which", ["full_html", "pareto_html", "multiplier_html"])
def test_every_figure_has_titled_axes_with_units(
    which: str, request: pytest.FixtureRequest
) -> None:
    html = request.getfixturevalue(which)
    for key, figure in _figures(html).items():
        layout = figure["layout"]
        axes = [
            name
            for name in layout
            if re.fullmatch(r"[xy]axis\d*", name) and "matches" not in layout[name]
        ]  # an axis that matches another shares its (titled) scale
        assert axes, key
        for name in axes:
            title = (layout[name].get("title") or {}).get("text", "")
            assert title, f"{key}: {name} has no title"
        titles = " ".join(layout[name]["title"]["text"] for name in axes)
        assert "(" in titles, f"{key}: no unit in axis titles {titles!r}"
    if which != "full_html":
        return
    acc = _figures(html)["accuracy"]["layout"]
    assert "log2" in acc["xaxis"]["title"]["text"]
    assert acc["xaxis"]["ticktext"] == ["16", "32", "64", "128", "256"]


def test_accuracy_figure_has_points_and_cell_means_per_rule(full_html: str) -> None:
    names = [trace["name"] for trace in _figures(full_html)["accuracy"]["data"]]
    for rule in ("linear", "sqrt", "none"):
        assert f"rule {rule}: trials" in names and f"rule {rule}: cell mean" in names


def test_learning_curves_fade_pruned_trials(full_html: str) -> None:
    traces = _figures(full_html)["learning-curves"]["data"]
    faded = [t for t in traces if t.get("opacity", 1) < 0.5]
    assert len(faded) == 2  # two pruned (one diverged); the failed trial reported no epoch
    assert all(t["line"]["dash"] == "dot" for t in faded)
    assert all(t.get("opacity", 1) > 0.9 for t in traces if t not in faded)


def test_hardware_figure_marks_the_probe_cap_and_knee(full_html: str) -> None:
    layout = _figures(full_html)["hardware"]["layout"]
    texts = [a.get("text", "") for a in layout.get("annotations", [])]
    assert any(t.startswith("cap 256") for t in texts)
    assert any(t.startswith("knee 128") for t in texts)


def test_html_shows_best_trial_tables_and_folklore(full_html: str) -> None:
    for text in (
        "Best single trial",
        "Results per cell (batch size x rule)",
        "Rule-of-thumb range",
        "32-256",
        "so no verdict on the rule of thumb",
        "Hardware probe",
        "89.8%",
    ):
        assert text in full_html, text
    assert "folklore held" not in full_html and "folklore missed" not in full_html


def test_text_format_prints_the_same_tables(full_db: Path, capsys: pytest.CaptureFixture) -> None:
    assert commands.report(["--storage", _url(full_db), "--format", "text"]) == 0
    out = capsys.readouterr().out
    for text in (
        "Best single trial",
        "Results per cell (batch size x rule)",
        "Rule of thumb against the measurement",
        "Hardware probe",
        "Parameter importances",
        "89.8%",
        "no verdict",
    ):
        assert text in out, text
    header = next(line for line in out.splitlines() if line.startswith("Batch  "))
    assert header.split()[:7] == ["Batch", "Rule", "LR", "Runs", "Pruned", "Failed", "Diverged"]


def test_fixed_rule_degrades_importances_with_a_sentence(tmp_path: Path) -> None:
    study = build_study(tmp_path / "fixed.db", kind="fixed")
    report = build_report(study)
    assert [f.key for f in report.drawn] == ALL_FIGURES[:5]
    assert "only batch_size varies" in render_html_report(report)
    assert "only batch_size varies" in render_text_report(report)


def test_only_pruned_and_failed_trials_say_so(tmp_path: Path) -> None:
    study = build_study(tmp_path / "pruned.db", kind="pruned")
    out = tmp_path / "r.html"
    path, report = write_report(study, out)
    html = path.read_text(encoding="utf-8")
    assert "No trial completed" in html
    assert "No complete trial yet, so there is no best trial." in html
    assert [f.key for f in report.drawn] == ["learning-curves", "hardware", "learning-rate"]
    assert "No complete trial yet" in render_text_report(study)


def test_running_and_empty_studies_are_reported(tmp_path: Path) -> None:
    running = build_study(tmp_path / "running.db", kind="running")
    assert "still running (1 trial(s) in progress)" in render_text_report(running)
    empty = build_study(tmp_path / "empty.db", kind="empty")
    _, report = write_report(empty, tmp_path / "empty.html")
    assert "no trials yet" in (tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "Running" in render_text_report(running).split("Results per cell")[1]
    assert report.data.best is None


def test_defaults_write_storage_report_for_batch_size(tmp_path: Path) -> None:
    (tmp_path / "storage").mkdir()
    build_study(tmp_path / "storage" / "batch-size.db")
    result = run_report(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "storage" / "batch-size-report.html"
    assert out.is_file() and f"wrote {Path('storage') / 'batch-size-report.html'}" in result.stdout
    assert "6 figures" in result.stdout


def test_missing_database_is_one_line_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    result = run_report("--storage", _url(tmp_path / "nope.db"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no study database at" in result.stderr
    assert "run scripts/run_study.py first" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_study_name_lists_the_names(full_db: Path, capsys: pytest.CaptureFixture) -> None:
    assert commands.report(["--storage", _url(full_db), "--study-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no study named 'nope'" in err and "studies there: batch-size" in err


def test_password_in_storage_url_is_never_printed(capsys: pytest.CaptureFixture) -> None:
    url = "postgresql://user:s3cret-pw@127.0.0.1:1/db"
    assert commands.report(["--storage", url]) == 2
    captured = capsys.readouterr()
    assert "s3cret-pw" not in captured.err + captured.out
    assert "user:***@127.0.0.1" in captured.err


def test_a_study_of_another_kind_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    optuna.create_study(storage=_url(tmp_path / "x.db"), study_name="quadratic")  # minimises
    assert commands.report(["--storage", _url(tmp_path / "x.db"), "--study-name", "quadratic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not made by run_study.py" in err


def test_dashboard_refuses_a_missing_database_or_a_taken_port(
    tmp_path: Path, full_db: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "nope.db"
    assert commands.dashboard(["--storage", _url(missing), "--artifact-dir", str(tmp_path)]) == 2
    assert "no study database at" in capsys.readouterr().err and not missing.exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["--storage", _url(full_db), "--artifact-dir", str(tmp_path), "--port", port]
        assert commands.dashboard(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_bad_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        commands.report(["--format", "pdf"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_study_note_summarises_setup_and_best(tmp_path: Path) -> None:
    study = build_study(tmp_path / "note.db")
    body = write_study_note(study)
    assert get_note(study) == body
    for text in (
        "### Answer",
        "### Setup",
        "### Best single trial",
        "Trial 7",
        "val_accuracy 89.8%",
        "batch size **64**",
    ):
        assert text in body, text
    assert body.index("### Answer") < body.index("### Setup")
    assert "Too small to name a winner" in body.split("### Setup")[0]
    assert "4 epochs per trial" in body and "linear, sqrt, none" in body
    empty = build_study(tmp_path / "empty.db", kind="empty")
    assert "No complete trial yet" in write_study_note(empty)


def test_attach_report_uploads_html_and_figures(tmp_path: Path) -> None:
    study = build_study(tmp_path / "art.db")
    artifacts = tmp_path / "artifacts"
    ids = attach_report(study, artifacts)
    assert len(ids) == 1 + len(ALL_FIGURES)
    metas = {m.artifact_id: m for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert metas[ids[0]].filename == "batch-size-report.html"
    assert metas[ids[0]].mimetype == "text/html"
    assert sorted(m.filename for m in metas.values())[0] == "batch-size-accuracy.json"
    assert "Final accuracy against batch size" in (artifacts / ids[0]).read_text(encoding="utf-8")
    figure = json.loads((artifacts / ids[1]).read_text(encoding="utf-8"))
    assert figure["data"] and figure["layout"]["xaxis"]["title"]["text"]
    storage = optuna.storages.RDBStorage(_url(tmp_path / "art.db"))
    study_id = storage.get_study_id_from_name("batch-size")

    def graph_chunks() -> list[str]:
        attrs = storage.get_study_system_attrs(study_id)
        return sorted(k for k, v in attrs.items() if k.startswith("dashboard:plot_data:") and v)

    chunks = graph_chunks()
    assert {k.split(":")[2] for k in chunks} == {"report-accuracy", "report-learning-rate"}
    save_dashboard_figures(study)  # again: replaces, does not add
    assert graph_chunks() == chunks
    again = attach_report(study, artifacts)  # a resumed run publishes again: no copies
    assert again == ids
    listed = optuna.artifacts.get_all_artifact_meta(study)
    assert sorted(m.artifact_id for m in listed) == sorted(ids)
    assert len(list(artifacts.iterdir())) == len(ids)


def test_study_package_does_not_import_torch() -> None:
    code = (
        "import sys, study, study.report, study.report.dashboard, study.report.note; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _annotations(layout: dict) -> list[str]:
    return [a.get("text") or "" for a in layout.get("annotations", [])]


def _vlines(layout: dict) -> list[dict]:
    return [sh for sh in layout.get("shapes", []) if sh.get("x0") == sh.get("x1")]


def test_two_objective_study_reports_its_pareto_front(
    pareto_db: Path, pareto_html: str, capsys: pytest.CaptureFixture
) -> None:
    study = optuna.load_study(study_name="batch-size", storage=_url(pareto_db))
    data = collect_report_data(study, importances=False)
    assert data.multi_objective and data.metric_names == ["val_accuracy", "train_time_s"]
    assert data.best is None  # no single best: the front stands in
    front = {t.number for t in study.best_trials}
    assert [t.number for t in data.front] == [4, 8, 7] and set(front) == {4, 8, 7}
    times = [t.train_time_s for t in data.front]
    assert times == sorted(times)  # fastest first
    assert data.counts["COMPLETE"] == 10 and data.counts["FAIL"] == 1

    figures = _figures(pareto_html)
    assert list(figures) == PARETO_FIGURES
    traces = {t["name"]: t for t in figures["pareto"]["data"]}
    line = traces["Pareto front"]
    assert len(line["x"]) == 3 and "lines" in line["mode"]
    assert sum(len(t["x"]) for t in traces.values()) == 10  # every complete trial once
    assert "batch %{customdata[1]}, rule %{customdata[2]}" in line["hovertemplate"]
    assert "lr %{customdata[3]" in line["hovertemplate"]
    assert line["customdata"][0][:3] == [4, 256, "sqrt"]
    layout = figures["pareto"]["layout"]
    assert layout["xaxis"]["title"]["text"].startswith("Training time (s")
    assert layout["yaxis"]["title"]["text"].startswith("Validation accuracy (%")
    for text in (
        "objectives val_accuracy (maximised) and train_time_s (minimised)",
        "Trials on the Pareto front",
        "there is no single best trial",
        "maximise val_accuracy, minimise train_time_s",
        "<td>#8</td><td>128</td><td>none</td>",
    ):
        assert text in pareto_html, text
    assert "Best single trial" not in pareto_html

    assert commands.report(["--storage", _url(pareto_db), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "Trials on the Pareto front" in out and "Best single trial" not in out
    row = next(line for line in out.splitlines() if line.startswith("#7 "))
    assert row.split() == ["#7", "64", "sqrt", "0.05", "89.8%", "88.8%", "26.7", "s"]


def test_two_objective_note_and_artifacts(tmp_path: Path) -> None:
    study = build_study(tmp_path / "note.db", kind="pareto")
    body = write_study_note(study)
    assert "### Pareto front" in body and "### Best single trial" not in body
    assert "| 4 | 256 | sqrt | 0.1 | 84.6% | 83.6% | 8.9 s |" in body
    assert body.index("| 4 |") < body.index("| 8 |") < body.index("| 7 |")
    assert NOISE_LABEL + "105" in body
    attach_report(study, tmp_path / "artifacts")
    names = {m.filename for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert {"batch-size-report.html", "batch-size-pareto.json"} <= names


def test_a_two_objective_trial_s_record_reads_its_values_by_name() -> None:
    names = ["val_accuracy", "train_time_s"]
    bare = optuna.trial.create_trial(values=[0.9, 12.5], user_attrs={"batch_size": 64})
    record = read_record(bare, "sqrt", names)
    assert (record.val_metric, record.train_time_s, record.scaling_rule) == (0.9, 12.5, "sqrt")
    assert record.curve == () and record.b_simple is None and record.lr_multiplier is None
    attrs = {"val_accuracy_per_epoch": [0.5, 0.7], "b_simple": 99.0, "lr_multiplier": 2.0}
    rich = optuna.trial.create_trial(values=[0.7, 3.0], user_attrs={**attrs, "lr": 0.2})
    record = read_record(rich, None, names)
    assert record.curve == ((1, 0.5), (2, 0.7)) and record.b_simple == 99.0
    assert record.rule_lr == pytest.approx(0.1)


def test_other_multi_objective_shapes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = _url(tmp_path / "x.db")
    optuna.create_study(storage=url, study_name="maxmax", directions=["maximize", "maximize"])
    optuna.create_study(storage=url, study_name="three", directions=["maximize"] * 3)
    for name, why in (("maxmax", "objective 1 (maximize)"), ("three", "has 3 objectives")):
        assert commands.report(["--storage", url, "--study-name", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was not made by run_study.py" in err and why in err
        with pytest.raises(ValueError, match="a batch-size study maximizes val_accuracy"):
            collect_report_data(optuna.load_study(study_name=name, storage=url))
    plain = optuna.create_study(
        storage=url, study_name="plain", directions=["maximize", "minimize"]
    )
    with pytest.raises(ValueError, match="not val_accuracy"):  # no names, no config: refused
        collect_report_data(plain)
    plain.set_user_attr("config", {"objectives": ["accuracy", "time"]})
    assert collect_report_data(plain, importances=False).multi_objective


def test_noise_scale_is_marked_on_accuracy_and_time_figures(
    pareto_html: str, multiplier_html: str, full_html: str
) -> None:
    for html, value, band in ((pareto_html, 105, None), (multiplier_html, 128, (64, 256))):
        figures = _figures(html)
        label = NOISE_LABEL + str(value)
        for key in ("accuracy", "hardware"):
            layout = figures[key]["layout"]
            marks = [sh for sh in _vlines(layout) if sh["line"].get("dash") == "dashdot"]
            panels = 2 if key == "accuracy" else 3
            assert len(marks) == panels, key
            assert marks[0]["x0"] == pytest.approx(math.log2(value))
            assert label in [t["name"] for t in figures[key]["data"]]  # legend entry
            rects = [sh for sh in layout.get("shapes", []) if sh["type"] == "rect"]
            noise_bands = [r for r in rects if r.get("fillcolor") == "#9467bd"]
            if band is None:
                assert not noise_bands
            else:
                assert len(noise_bands) == panels
                assert noise_bands[0]["x0"] == pytest.approx(math.log2(band[0]))
                assert noise_bands[0]["x1"] == pytest.approx(math.log2(band[1]))
        assert label in _annotations(figures["accuracy"]["layout"])
        assert "Gradient noise scale B_simple" in html
    assert "B_simple" not in full_html  # no noise-scale attributes: nothing shown


def test_noise_scale_summary_in_text(pareto_db: Path, multiplier_db: Path) -> None:
    text = render_text_report(load_study_for_report(_url(pareto_db), "batch-size"))
    section = text.split("Gradient noise scale B_simple")[1]
    assert "median 105 samples over 10 trial(s) (range 80-155" in section
    assert "measured optimum" not in section  # no cell has 3 runs: no comparison
    text = render_text_report(load_study_for_report(_url(multiplier_db), "batch-size"))
    section = text.split("Gradient noise scale B_simple")[1]
    assert "B_simple 41.5 \u00b1 6 at initialisation, 150 \u00b1 21 after epoch 3" in section
    assert "recommended batch 128 (range 64-256)" in section


def test_step_budget_and_lr_multiplier(multiplier_db: Path, multiplier_html: str) -> None:
    study = optuna.load_study(study_name="batch-size", storage=_url(multiplier_db))
    data = collect_report_data(study, importances=False)
    assert data.step_budget and data.steps == STEPS and data.epochs is None
    assert data.budget_phrase() == f"a budget of {STEPS} optimizer steps per trial"
    assert data.searched_multiplier and data.lr_search_width == LR_WIDTH
    epochs = {t.batch_size: t.epochs_completed for t in data.trials if t.state == "COMPLETE"}
    assert epochs[16] == 1 and epochs[256] == 16  # a step budget: epochs grow with the batch
    best = data.best
    assert best is not None and best.optimizer_steps == STEPS
    passes = STEPS * best.batch_size / TRAIN_SIZE
    assert f"{passes:g} passes over the training data" in multiplier_html
    assert best.lr == pytest.approx(best.rule_lr * best.lr_multiplier)

    assert f"a budget of {STEPS} optimizer steps per trial" in multiplier_html
    assert "epochs per trial" not in multiplier_html
    assert f"after {STEPS} optimizer steps" in multiplier_html
    assert "searched log-uniformly in 0.25-4 x the rule" in multiplier_html
    figures = _figures(multiplier_html)
    assert list(figures) == MULTIPLIER_FIGURES
    assert "optimizer steps" in figures["accuracy"]["layout"]["yaxis"]["title"]["text"]
    assert "steps" in figures["learning-curves"]["layout"]["xaxis"]["title"]["text"]
    fig = figures["lr-multiplier"]
    layout = fig["layout"]
    assert layout["yaxis"]["type"] == "log" and "multiplier" in layout["yaxis"]["title"]["text"]
    assert layout["yaxis"]["tickvals"] == [0.25, 0.5, 1, 2, 4]
    hline = [sh for sh in layout["shapes"] if sh.get("y0") == sh.get("y1") == 1]
    assert len(hline) == 1 and "x1: the rule's own learning rate" in " ".join(_annotations(layout))
    for rule in ("linear", "sqrt", "none"):  # per cell: never the best across rules
        winners = next(
            t for t in fig["data"] if t["name"] == f"rule {rule}: best trial per batch size"
        )
        per_batch = {}
        for t in data.trials:
            if t.state != "COMPLETE" or t.scaling_rule != rule:
                continue
            if t.val_metric > per_batch.get(t.batch_size, (0, 0))[0]:
                per_batch[t.batch_size] = (t.val_metric, t.lr_multiplier)
        assert winners["y"] == [per_batch[b][1] for b in sorted(per_batch)]
    faint = [t for t in fig["data"] if t["name"].endswith(": trials")]
    assert sum(len(t["y"]) for t in faint) == 17  # every trial, pruned ones too
    assert "LR mult." in multiplier_html and "LR multiplier" in multiplier_html


def test_warmup_is_suggested_where_linear_scaling_diverged(
    multiplier_db: Path, tmp_path: Path
) -> None:
    study = optuna.load_study(study_name="batch-size", storage=_url(multiplier_db))
    data = collect_report_data(study, importances=False)
    advice = data.warmup_advice()
    assert advice is not None and "diverged at batch 128, 256 (2 trials)" in advice
    assert "--warmup-epochs 2 to 5" in advice and "Goyal" in advice
    text = render_text_report(study)
    assert "Advice: Linear scaling diverged" in text
    data.config = dict(data.config, warmup_epochs=3)
    assert "even with 3 warm-up epoch(s)" in data.warmup_advice()
    fixed = collect_report_data(build_study(tmp_path / "f.db", kind="fixed"), importances=False)
    assert fixed.warmup_advice() is None  # nothing diverged
    html = render_html_report(build_report(study, figures=False))
    assert '<section id="advice">' in html and "<code>--warmup-epochs</code>" in html


@pytest.mark.slow
def test_report_reads_a_study_the_core_ran(tmp_path: Path) -> None:
    url = _url(tmp_path / "run.db")
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_study.py"),
            *("--trials", "3", "--epochs", "1", "--model", "mlp", "--max-batch-size", "32"),
            *("--storage", url),
        ],
        cwd=tmp_path,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    study = load_study_for_report(url, "batch-size")
    report = build_report(study)
    assert report.data.metric_name == "val_accuracy"
    assert report.data.best is not None and report.data.best.test_metric is not None
    assert summary(study).startswith("Answer")  # 3 trials: too small to confirm a cell
    assert "\nAnswer" in run.stdout  # the run's own summary opens with it too
    assert {"accuracy", "learning-curves", "hardware", "learning-rate", "history"} <= {
        f.key for f in report.drawn
    }
    assert report.data.folklore is not None
    assert "Results per cell (batch size x rule)" in render_text_report(report)


# --------------------------------------------------------------------------- the answer, cells


@pytest.fixture(scope="module")
def confirmed_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Confirmed cells (3 runs), one single-run cell, and the stored recommendation."""
    path = tmp_path_factory.mktemp("confirmed") / "study.db"
    build_study(path, kind="confirmed")
    return path


def _study(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="batch-size", storage=_url(path))


def test_summary_opens_with_the_answer_and_its_trade_off(confirmed_db: Path) -> None:
    lines = summary(_study(confirmed_db)).splitlines()
    assert lines[0].startswith(
        "Answer, by validation accuracy (higher is better): With 95% confidence, batch 256 linear"
    )
    assert "at 4 epochs each" in lines[0] and "Decided after 16 of 16 trials." in lines[0]
    assert lines[1].startswith("  most accurate: batch 16 (rule linear, lr 0.0125): mean ")
    assert "90.0% (95% interval 89.8%-90.2%, 3 runs)" in lines[1]  # its confirmation runs
    assert lines[2].startswith("  fastest within 1.0 points: batch 256 (rule linear")
    assert "89.7% (95% interval 89.5%-89.9%, 3 runs)" in lines[2]
    assert lines[3] == "    trade-off: 7.8x faster, costs 0.3 points of validation accuracy (mean)"
    assert lines[5].startswith("study 'batch-size': 16 complete")


def test_a_study_too_small_to_confirm_says_so_first(full_db: Path) -> None:
    text = summary(_study(full_db))
    assert text.startswith("Answer: Too small to name a winner")
    assert "most accurate:" not in text
    note = write_study_note(build_study(Path(full_db.parent / "note-small.db")))
    assert "Too small to name a winner" in note.split("### Setup")[0]


def test_html_and_note_open_with_the_answer(confirmed_db: Path, tmp_path: Path) -> None:
    study = _study(confirmed_db)
    path, _ = write_report(study, tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([^"]+)"', html)
    assert sections[0] == "table-answer"
    answer = html.split('<section id="table-answer">')[1].split("</section>")[0]
    for text in ("Most accurate", "Fastest within 1.0 points", "89.8%-90.2%", "7.8x"):
        assert text in answer, text
    text = render_text_report(study)
    assert text.splitlines()[2] == "The answer"  # after the head line and its underline
    note = study_note(study)
    answer_md = note.split("### Answer")[1].split("### Setup")[0]
    assert "**Most accurate**" in answer_md and "**batch 16**" in answer_md
    assert "**Fastest within 1.0 points**" in answer_md and "**batch 256**" in answer_md
    figure = _figures(html)["accuracy"]["data"]
    stars = [t for t in figure if t["name"].startswith("answer: ")]
    assert [t["name"] for t in stars] == [
        "answer: most accurate",
        "answer: fastest within tolerance",
    ]


def test_cell_tables_never_merge_scaling_rules(confirmed_db: Path, tmp_path: Path) -> None:
    study = _study(confirmed_db)
    data = collect_report_data(study, importances=False)
    keys = [(c.batch_size, c.scaling_rule) for c in data.cells]
    assert keys == [(16, "linear"), (64, "linear"), (64, "none"), (256, "linear"), (256, "none")]
    assert [c.runs for c in data.cells if c.batch_size == 256] == [4, 3]  # not 7 pooled
    rows = [line.split() for line in summary(study).splitlines() if line.startswith("  256")]
    # 256 none has no confirmation run: starred, no conclusion from it
    assert [r[:3] for r in rows] == [["256", "linear", "4"], ["256", "none", "3*"]]
    assert rows[0][4] != rows[1][4]  # each rule its own mean
    text = render_text_report(study).split("Results per cell")[1].split("Rule of thumb")[0]
    assert len([line for line in text.splitlines() if line.startswith("256 ")]) == 2
    path, _ = write_report(study, tmp_path / "r.html")
    figures = _figures(path.read_text(encoding="utf-8"))
    for key, suffix in (("accuracy", ": cell mean"), ("hardware", ": cell median")):
        lines = [t for t in figures[key]["data"] if t["name"].endswith(suffix)]
        assert {t["name"].split(":")[0] for t in lines} == {"rule linear", "rule none"}, key
    none = next(t for t in figures["accuracy"]["data"] if t["name"] == "rule none: cell mean")
    assert len(none["x"]) == 2 and none["y"][1] == pytest.approx(0.80)  # 64 and 256 none


def test_phase_is_shown_per_trial(confirmed_db: Path, tmp_path: Path) -> None:
    study = _study(confirmed_db)
    trial = study.trials[2]  # the third run of a cell is a confirmation trial
    assert "  confirm  batch" in trial_line(trial)
    assert "confirm" not in trial_line(study.trials[0])
    path, _ = write_report(study, tmp_path / "r.html")
    table = path.read_text(encoding="utf-8").split('<section id="table-trials">')[1]
    assert "<th>Phase</th>" in table and "<td>#2</td><td>confirm</td>" in table
    assert "<td>#0</td><td>search</td>" in table


@pytest.mark.parametrize("kind", ["mse", "charlm"])
def test_a_minimised_metric_is_reported_by_its_name_and_direction(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = {"mse": "mse", "charlm": "bits_per_char"}[kind]
    study = build_study(tmp_path / "m.db", kind=kind)
    data = collect_report_data(study, importances=False)
    assert data.metric_name == f"val_{name}" and data.metric.sign == -1
    assert data.best is not None and data.best.val_metric == pytest.approx(0.19)  # the lowest
    best = data.recommendation["most_accurate"]
    assert (best["batch_size"], best["scaling_rule"]) == (64, "linear")  # lowest confirmed mean
    assert data.folklore is not None and data.folklore.optimum == 64
    text = summary(study)
    assert text.startswith(f"Answer, by val {name} (lower is better): ")
    assert f"most accurate: batch 64 (rule linear, lr 0.05): mean val {name} 0.2 " in text
    rows = text.split("per cell")[1].splitlines()[2:]
    assert rows and not [row for row in rows if "%" in row]  # plain numbers, not percentages
    path, report = write_report(study, tmp_path / "m.html")
    html = path.read_text(encoding="utf-8")
    for words in (f"val {name} (lower is better)", f"Mean val {name}", f"metric val_{name}"):
        assert words in html, words
    assert "accuracy" not in render_text_report(report).lower()
    figures = _figures(html)
    titles = figures["accuracy"]["layout"]["yaxis"]["title"]["text"]
    assert titles.startswith(f"val {name} (lower is better")
    assert "tickformat" not in figures["accuracy"]["layout"]["yaxis"]
    unit = "tokens/s" if kind == "charlm" else "samples/s"
    assert f"Throughput ({unit})" in figures["hardware"]["layout"]["yaxis2"]["title"]["text"]
    assert f"median {unit}" in text
    note = study_note(study)
    assert f"val {name} (lower is better)" in note and "accuracy" not in note.lower()
    assert commands.report(["--storage", _url(tmp_path / "m.db"), "--format", "text"]) == 0
    assert f"val {name}" in capsys.readouterr().out


def test_json_format_prints_the_recommendation_contract(confirmed_db: Path, tmp_path: Path) -> None:
    result = run_report("--storage", _url(confirmed_db), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(ANSWER_KEYS) <= set(answer)
    for which in ("most_accurate", "fastest_within"):
        assert set(CELL_KEYS) <= set(answer[which]), which
    assert answer == _study(confirmed_db).user_attrs["recommendation"]
    assert answer["most_accurate"]["batch_size"] == 16
    assert answer["fastest_within"]["batch_size"] == 256
    assert list(tmp_path.iterdir()) == []  # printed, nothing written


def test_json_format_computes_the_answer_of_an_older_study(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_study(path, kind="confirmed-bare")
    assert "recommendation" not in _study(path).user_attrs
    out = tmp_path / "answer.json"
    assert commands.report(["--storage", _url(path), "--format", "json", "--out", str(out)]) == 0
    answer = json.loads(out.read_text(encoding="utf-8"))
    assert answer["most_accurate"]["batch_size"] == 16 and set(ANSWER_KEYS) <= set(answer)
    assert "recommendation" not in _study(path).user_attrs  # the report never writes
    small = tmp_path / "small.db"
    build_study(small)
    result = run_report("--storage", _url(small), "--format", "json", cwd=tmp_path)
    answer = json.loads(result.stdout)
    assert answer["most_accurate"] is None and answer["fastest_within"] is None
    assert "Too small" in answer["statement"]


def _folklore(runs: int, tied: tuple[int, ...] = (), optimum: int = 64) -> Folklore:
    return Folklore(
        train_size=TRAIN_SIZE,
        low=32,
        high=256,
        optimum=optimum,
        optimum_rule="linear",
        optimum_mean_val=0.9,
        optimum_runs=runs,
        optimum_ci95=(0.88, 0.92) if runs >= 2 else None,
        tied=tied,
    )


def test_no_verdict_from_fewer_than_three_runs_or_inside_the_intervals(
    confirmed_db: Path, full_db: Path
) -> None:
    held = _folklore(3)
    assert held.verdict == "inside" and held.sentence().endswith("the folklore held.")
    assert _folklore(3, optimum=16).sentence().endswith("the folklore missed here.")
    for folklore in (_folklore(2), _folklore(1), _folklore(3, tied=(512,))):
        sentence = folklore.sentence()
        assert "folklore" not in sentence and "no verdict" in sentence, sentence
    assert _folklore(2).verdict == "unconfirmed"
    assert _folklore(3, tied=(512,)).verdict == "inconclusive"
    assert _folklore(3, tied=(128,)).verdict == "inside"  # tied, but on the same side

    # batch 16 is best, but 64 (inside the range) is within its interval
    data = collect_report_data(_study(confirmed_db), importances=False)
    assert data.folklore.optimum == 16 and data.folklore.verdict == "inconclusive"
    assert set(data.folklore.tied) == {64}
    for study_db in (confirmed_db, full_db):  # one run per cell in the full study
        study = _study(study_db)
        texts = [
            render_text_report(study),
            render_html_report(build_report(study, figures=False)),
            study_note(study),
            summary(study),
        ]
        for text in texts:
            assert "folklore held" not in text and "folklore missed" not in text
            assert "is near it" not in text and "is below it" not in text
