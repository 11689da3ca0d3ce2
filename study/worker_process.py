"""A worker process's entry: the backend by its import name, then :func:`worker_main`.

``run`` with ``--workers`` or ``--gpus`` starts each worker as ``python -m study.worker_process
--backend MODULE:CLASS --worker-index N`` (:func:`study.orchestrate.worker_command`), its
settings on stdin. The worker builds the backend it is named (the PyTorch one is
``objectives.backend:TorchBackend``) with no arguments, so this side never imports what trains
and never goes back through the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from study import collector
from study.orchestrate import Backend, worker_main
from study.workers import EXIT_USAGE


def backend_named(name: str) -> Backend:
    """The backend class ``MODULE:CLASS`` names, built with no arguments.

    Raises:
        ValueError: ``name`` is not ``MODULE:CLASS`` or names nothing importable.
    """
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"--backend {name!r}: give MODULE:CLASS")
    try:
        kind = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--backend {name!r}: {exc}") from exc
    return kind()


def main(argv: list[str] | None = None) -> int:
    """Parse ``--backend``, build it, and run :func:`worker_main` with the other flags."""
    parser = argparse.ArgumentParser(prog="python -m study.worker_process")
    parser.add_argument("--backend", required=True, help="MODULE:CLASS of the backend")
    args, rest = parser.parse_known_args(argv)
    collector.pause()  # resumed by run_trials, before the first trial
    try:
        backend = backend_named(args.backend)
    except ValueError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return worker_main(backend, rest)


if __name__ == "__main__":
    sys.exit(main())
