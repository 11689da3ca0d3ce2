"""Browse a study in optuna-dashboard: ``python scripts/dashboard.py [--storage URL]``.

Thin entry point: open the existing study database (never creating one) and serve
optuna-dashboard on it, bound to 127.0.0.1, with the report artifacts from ``--artifact-dir``.
The same as ``optuna-dashboard sqlite:///storage/batch-size.db --artifact-dir
storage/artifacts --host 127.0.0.1``. ``--port 0`` picks a free port; the first line printed
gives the address.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.cli import OneLineParser  # noqa: E402
from study.report.html import DEFAULT_STORAGE, ReportError, open_existing_storage  # noqa: E402

USER_ERROR_EXIT = 2


def build_parser() -> argparse.ArgumentParser:
    """The dashboard's flags."""
    parser = OneLineParser(
        prog="dashboard.py",
        description="Serve optuna-dashboard on a batch-size study, with its report artifacts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the study")
    parser.add_argument(
        "--artifact-dir", default="storage/artifacts", help="folder of the report artifacts"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one")
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from study.report.dashboard import make_dashboard_server
    from study.storage import redact

    try:
        storage = open_existing_storage(args.storage)
    except ReportError as exc:
        print(f"dashboard.py: error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        server = make_dashboard_server(
            storage,
            artifact_dir=args.artifact_dir,
            host=args.host,
            port=args.port,
            quiet=not args.verbose,
        )
    except OSError as exc:
        print(
            f"dashboard.py: error: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
            "pass another --port, or --port 0 for a free one",
            file=sys.stderr,
        )
        return USER_ERROR_EXIT
    host, port = server.server_address[:2]
    print(
        f"optuna-dashboard on http://{host}:{port}/dashboard/ (storage {redact(args.storage)}, "
        f"artifacts {args.artifact_dir}); Ctrl-C to stop",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
