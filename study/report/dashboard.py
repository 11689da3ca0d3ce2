"""What optuna-dashboard shows of a study: the report as artifacts, figures, and the server.

:func:`attach_report` uploads the HTML report and each of its figures (Plotly JSON, readable
with ``plotly.io.read_json``) as study-level artifacts, and saves the headline figures so the
dashboard draws them on the study's page. :func:`make_dashboard_server` serves optuna-dashboard
with those artifacts, bound to 127.0.0.1 by default.

The command-line equivalent of the server::

    optuna-dashboard sqlite:///storage/batch-size.db --artifact-dir storage/artifacts

Example (not run as a doctest: it needs a study, files or a server)::

    study = optuna.load_study(study_name="batch-size", storage=url)
    attach_report(study, "storage/artifacts")
    server = make_dashboard_server(url, artifact_dir="storage/artifacts", port=8080)
    server.serve_forever()
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import plotly.graph_objects as go
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage

from study.compat import put_study_artifact, save_dashboard_figure, study_id_of
from study.report.html import Report, build_report, file_stem, render_html_report

DEFAULT_ARTIFACT_DIR = "storage/artifacts"
#: Figures drawn on the dashboard's study page (kept small: they live in the study's attributes);
#: the LR multiplier figure only exists when the study searched the multiplier.
DASHBOARD_FIGURES = ("accuracy", "learning-rate", "lr-multiplier")


def save_dashboard_figures(study: optuna.Study, report: Report | None = None) -> list[str]:
    """Save the accuracy, learning-rate (and LR multiplier) figures on the study's dashboard page.

    The figures are stored in the study's system attributes under fixed ids, so calling this
    again (after more trials) replaces them rather than adding copies.

    Args:
        study: The study (its storage must be writable).
        report: Its report, if already built.

    Returns:
        The graph-object ids saved (figures with nothing to draw yet are skipped).
    """
    report = report or build_report(study)
    ids = []
    for fig in report.drawn:
        if fig.key not in DASHBOARD_FIGURES:
            continue
        figure = go.Figure(fig.figure)  # a copy: the report's own figure stays as it is
        figure.layout.template = None  # the template alone is ~10 kB per figure
        figure.update_layout(height=None)
        ids.append(save_dashboard_figure(study, figure.to_json(), f"report-{fig.key}"))
    return ids


def attach_report(
    study: optuna.Study, artifact_dir: str | Path, *, dashboard_figures: bool = True
) -> list[str]:
    """Upload the study's HTML report and its figures as study artifacts.

    Files: ``<study>-report.html`` (self-contained) and ``<study>-<figure>.json`` per figure
    (Plotly JSON). Each file has a fixed id per study and file name, so a later call (a
    resumed run) replaces the files and their listings instead of adding copies.

    Args:
        study: The study (its storage must be writable).
        artifact_dir: Folder of the :class:`~optuna.artifacts.FileSystemArtifactStore`
            (created if missing); give the same folder to ``optuna-dashboard --artifact-dir``.
        dashboard_figures: Also draw the headline figures on the study's dashboard page
            (see :func:`save_dashboard_figures`).

    Returns:
        The artifact ids, the HTML report's first.
    """
    folder = Path(artifact_dir)
    folder.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(folder)
    report = build_report(study)
    name = file_stem(study.study_name)
    ids = []
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        files = [Path(tmp) / f"{name}-report.html"]
        files[0].write_text(render_html_report(report), encoding="utf-8")
        for fig in report.drawn:
            path = Path(tmp) / f"{name}-{fig.key}.json"
            path.write_text(fig.figure.to_json(), encoding="utf-8")
            files.append(path)
        for path in files:
            ids.append(put_study_artifact(study, store, str(path), artifact_id(study, path.name)))
    if dashboard_figures:
        save_dashboard_figures(study, report)
    return ids


def artifact_id(study: optuna.Study, filename: str) -> str:
    """The fixed artifact id of ``filename`` in ``study``: the same on every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"batchsize-study/{study_id_of(study)}/{filename}"))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        return None


def make_dashboard_server(
    storage: str | BaseStorage,
    *,
    artifact_dir: str | Path | None = DEFAULT_ARTIFACT_DIR,
    host: str = "127.0.0.1",
    port: int = 8080,
    quiet: bool = True,
) -> WSGIServer:
    """A threaded optuna-dashboard server, bound but not yet serving.

    Call ``serve_forever()`` on it (in a thread, if you like) and ``shutdown()`` to stop.

    Args:
        storage: Storage URL or an opened storage.
        artifact_dir: Folder of the artifact store (created if missing); ``None``: no artifacts.
        host: Address to bind; 127.0.0.1 keeps the dashboard on this machine.
        port: Port to listen on; 0 picks a free one (read ``server.server_port``).
        quiet: Do not log every request on stderr.

    Raises:
        OSError: the port is taken or the address cannot be bound.
    """
    from optuna_dashboard import wsgi  # its web app: imported only to serve

    store = None
    if artifact_dir is not None:
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(Path(artifact_dir))
    app = wsgi(storage, artifact_store=store)
    handler = _QuietHandler if quiet else WSGIRequestHandler
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=handler)
