"""Write a study's report: ``python scripts/report.py [--storage URL] [--study-name NAME]``.

Thin entry point: open the stored study (never creating one), write one self-contained HTML
file (``--format html``, the default) or print the same tables (``--format text``). A bad
storage or study name prints one line on stderr and exits with code 2. See README.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.cli import OneLineParser  # noqa: E402
from study.report.html import (  # noqa: E402
    DEFAULT_STORAGE,
    DEFAULT_STUDY_NAME,
    ReportError,
    build_report,
    default_report_path,
    load_study_for_report,
    render_text_report,
    write_report,
)

USER_ERROR_EXIT = 2


def build_parser() -> argparse.ArgumentParser:
    """The report's flags."""
    parser = OneLineParser(
        prog="report.py",
        description="Write the report of a batch-size study (HTML, or text tables).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the study")
    parser.add_argument("--study-name", default=DEFAULT_STUDY_NAME, help="study in the storage")
    parser.add_argument(
        "--out",
        default=None,
        help="HTML file to write (default: storage/<study-name>-report.html); with "
        "--format text, a text file instead of the terminal",
    )
    parser.add_argument("--format", choices=("html", "text"), default="html")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = load_study_for_report(args.storage, args.study_name)
        if args.format == "text":
            text = render_text_report(build_report(study, storage_url=args.storage, figures=False))
            if args.out is None:
                sys.stdout.write(text)
                return 0
            path = Path(args.out)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise ReportError(f"--out {path}: cannot write ({exc.strerror})") from None
            print(f"wrote {path}")
            return 0
        out = Path(args.out) if args.out else default_report_path(args.study_name)
        path, report = write_report(study, out, storage_url=args.storage)
    except ReportError as exc:
        print(f"report.py: error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    size_mb = path.stat().st_size / 1e6
    print(
        f"wrote {path} ({len(report.drawn)} figures, {size_mb:.1f} MB, opens offline); "
        f"{report.data.state_summary()}"
    )
    status = report.data.status_sentence()
    if status:
        print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
