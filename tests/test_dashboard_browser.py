"""A person's view, in a real headless Chromium: the dashboard and the HTML report.

The dashboard test starts ``scripts/dashboard.py`` as a real process on a real SQLite study
(with its note and report artifacts) and browses it; the report test opens the HTML file
offline. Each saves a screenshot: into the test's temporary folder, or over the README's
images in docs/screenshots/ when BATCHSIZE_UPDATE_SCREENSHOTS=1 (so a plain test run leaves
the working tree untouched). Install the browser with ``bash .ci/install_browser.sh``
(Debian's chromium and Python Playwright).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.report.dashboard import attach_report
from study.report.html import write_report
from study.report.note import write_study_note
from tests.conftest import ROOT, script_env

try:
    from report_studies import build_study
except ImportError:  # tests/ imported as a package
    from tests.report_studies import build_study

README_SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is absent: run `bash .ci/install_browser.sh` (apt chromium)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="Python Playwright is absent: run `bash .ci/install_browser.sh`",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Debian Chromium for the module, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page that records console errors and uncaught exceptions in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.errors = errors
    yield page
    context.close()


def _start_dashboard(url: str, artifacts: Path) -> tuple[subprocess.Popen, str]:
    """Run ``scripts/dashboard.py --port 0``; return the process and the address it printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "dashboard.py"),
            *("--storage", url, "--artifact-dir", str(artifacts), "--port", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=script_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"dashboard.py printed no address in 30 s: {seen}")
        seen.append(line)
        if "http://127.0.0.1:" in line:
            address = line.split("http://", 1)[1].split("/", 1)[0]
            return proc, f"http://{address}"


def test_dashboard_shows_metric_trials_note_and_report(tmp_path: Path, page, shots: Path) -> None:
    db = tmp_path / "study.db"
    study = build_study(db)
    write_study_note(study)
    artifacts = tmp_path / "artifacts"
    attach_report(study, artifacts)
    proc, base = _start_dashboard(f"sqlite:///{db}", artifacts)
    try:
        page.goto(f"{base}/dashboard/")
        page.locator("a[href^='/dashboard/studies/']", has_text="batch-size").click()
        page.wait_for_url("**/dashboard/studies/*")
        study_id = page.url.rstrip("/").rsplit("/", 1)[1]
        page.get_by_text("val_accuracy", exact=True).first.wait_for()  # the metric's name
        page.get_by_text("Best Trial (number=7)").wait_for()
        page.get_by_text("batch-size-report.html").wait_for()  # the report artifact
        page.locator(".js-plotly-plot").nth(3).wait_for()  # history, importance, timeline, ours
        page.get_by_text("Final accuracy against batch size").first.wait_for()
        page.set_viewport_size({"width": 1400, "height": 1650})  # history down to our figures
        page.screenshot(path=str(shots / "dashboard.png"))
        page.set_viewport_size({"width": 1400, "height": 1000})

        page.get_by_role("link", name="Trials (List)").click()
        page.get_by_text("18 Trials").wait_for()
        for text in ("Trial 17", "Pruned", "Fail"):
            page.get_by_text(text, exact=True).first.wait_for()
        page.get_by_text("val_accuracy 0.8263").wait_for()  # trial 0's user attributes

        page.get_by_role("link", name="Note").click()
        page.get_by_text("Answer", exact=True).wait_for()  # the note opens with the answer
        page.get_by_text("Too small to name a winner", exact=False).first.wait_for()
        page.get_by_text("Best single trial").wait_for()
        page.get_by_text("val_accuracy 89.8%").wait_for()
        page.get_by_text("so no verdict on the rule of thumb", exact=False).wait_for()
        page.screenshot(path=str(shots / "dashboard-note.png"))

        report = page.request.get(f"{base}/artifacts/{study_id}/{_report_id(study)}")
        assert report.ok and "Final accuracy against batch size" in report.text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert page.errors == []


def _report_id(study) -> str:
    import optuna

    metas = optuna.artifacts.get_all_artifact_meta(study)
    return next(m.artifact_id for m in metas if m.filename.endswith("-report.html"))


def _open_report(page, path: Path) -> int:
    """Open a report file offline; wait until every figure it announces has rendered."""
    page.goto(path.resolve().as_uri())
    expected = int(page.locator("body").get_attribute("data-figure-count"))
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n", arg=expected
    )
    return expected


def test_report_renders_every_figure_offline(tmp_path: Path, page, shots: Path) -> None:
    study = build_study(tmp_path / "study.db")
    out, _ = write_report(study, tmp_path / "report.html")
    page.route(  # offline: anything but the file itself fails
        "**/*",
        lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort(),
    )
    expected = _open_report(page, out)
    assert expected == 6
    assert page.locator(".js-plotly-plot").count() == 6
    for title in ("Final accuracy against batch size", "Learning curves", "Parameter importances"):
        page.locator(".gtitle", has_text=title).first.wait_for()
    assert page.locator("#table-cells tr").count() == 1 + 15  # one row per cell
    page.set_viewport_size({"width": 1300, "height": 1900})
    page.screenshot(path=str(shots / "report.png"))
    assert page.errors == []


def test_pareto_and_multiplier_reports_render_every_figure(
    tmp_path: Path, page, shots: Path
) -> None:
    """A two-objective study and one that searched the LR multiplier: every figure draws."""
    page.route(
        "**/*",
        lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort(),
    )
    for kind, title, rows in (
        ("pareto", "Pareto front: validation accuracy against training time", 3),
        ("multiplier", "Best learning-rate multiplier against batch size", None),
    ):
        study = build_study(tmp_path / f"{kind}.db", kind=kind)
        out, _ = write_report(study, tmp_path / f"{kind}.html")
        assert _open_report(page, out) == page.locator(".js-plotly-plot").count() == 7
        page.locator(".gtitle", has_text=title).wait_for()
        page.get_by_text("B_simple (gradient noise scale) \u2248", exact=False).first.wait_for()
        if rows:
            assert page.locator("#table-pareto-front tr").count() == 1 + rows
            page.locator("#section-pareto").screenshot(path=str(shots / "report-pareto.png"))
        else:
            page.locator("#advice code", has_text="--warmup-epochs").wait_for()
    assert page.errors == []


def test_report_of_only_pruned_trials_renders_and_says_so(tmp_path: Path, page) -> None:
    study = build_study(tmp_path / "study.db", kind="pruned")
    out, _ = write_report(study, tmp_path / "report.html")
    assert _open_report(page, out) == page.locator(".js-plotly-plot").count() == 3
    page.get_by_text("No trial completed").wait_for()
    page.get_by_text("No complete trial yet: no final accuracy to plot.").wait_for()
    assert page.errors == []


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: the README's images only when asked to refresh them."""
    if os.environ.get("BATCHSIZE_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return README_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")
