"""Tune batch size and learning rate: ``python scripts/run_study.py --trials 50``.

Thin entry point: parse flags into a StudyConfig, run the study, print. See README.md.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.cli import fail, parse_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    import optuna

    from objectives.launch import USER_ERRORS, WorkersError, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # e.g. Kubernetes: stop cleanly
    try:
        run_study(config)
    except USER_ERRORS as exc:
        fail(str(exc))
    except WorkersError as exc:
        fail(str(exc), exc.code)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished trials are stored; run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
