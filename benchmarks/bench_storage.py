"""Trials per minute with 1, 2 and 4 workers on SQLite, journal and PostgreSQL storage.

Two tables, measured side by side in one run:

1. ``run_study.py --workers W`` on the default task (digits) with short trials (an MLP with
   one hidden layer of 64, 1 epoch, batches up to 64, no pruning), each cell on a fresh
   storage: trials per minute from the moment every worker has started its first trial to the
   last trial's end (start-up excluded), and the wall time of the whole command.
2. The storage's own cost per trial: the same claim loop (count and claim under the lock,
   heartbeat, sample, tell) around an objective that trains nothing but writes what a trial
   writes (two parameters, one reported epoch, 16 user attributes), in milliseconds per trial,
   with 1 worker and with 4 racing worker processes.

PostgreSQL runs on a throwaway local server (``tests/support/pg_server.py``, fsync on) unless
``--postgres-url`` names one (an empty database per cell is created in it: the user needs
CREATEDB); without server binaries its rows are skipped.

    python benchmarks/bench_storage.py                 # about 5 minutes on two CPU cores
    python benchmarks/bench_storage.py --trials 40 --workers 1,2,4,8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna

from study.locks import storage_lock
from study.record import read_record
from study.runner import run_trials
from study.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent

TASK = ["--task", "digits", "--model", "mlp", "--hidden", "64", "--epochs", "1"]
TASK += ["--max-batch-size", "64", "--pruner", "none"]
STORAGES = ("sqlite", "journal", "postgresql")

# What a trial writes, without training: two parameters, one epoch reported (and the pruner
# asked), and as many user attributes as the real objective records, either in one
# transaction as the objective writes them (study.attrs) or one commit per attribute.
RECORD_ONLY = textwrap.dedent(
    """
    from study.attrs import set_user_attrs

    BATCHED = True

    def record_only(trial):
        trial.suggest_categorical("batch_size", [8, 16, 32, 64])
        trial.suggest_categorical("scaling_rule", ["linear", "sqrt", "none"])
        trial.report(0.5, 1)
        trial.should_prune()
        record = {f"attr{i}": i for i in range(16)}
        if BATCHED:
            set_user_attrs(trial, record)
        else:
            for key, value in record.items():
                trial.set_user_attr(key, value)
        return 0.5
    """
)
NOOP_WORKER = RECORD_ONLY + textwrap.dedent(
    """
    import sys
    import optuna
    from study.locks import storage_lock
    from study.runner import run_trials
    from study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, total, BATCHED = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "batched"
    study = optuna.load_study(study_name="noop", storage=open_storage(url))
    run_trials(study, record_only, total, lock=storage_lock(url), poll_s=0.05)
    """
)


def _pg_server():
    """The tests' throwaway-server helper (tests/support/pg_server.py), loaded from its file:
    tests/ is not an installed package, and this benchmark shares only that helper with it."""
    import importlib.util

    path = ROOT / "tests" / "support" / "pg_server.py"
    spec = importlib.util.spec_from_file_location("pg_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Storages:
    """Fresh storage URLs of each kind, in a temporary folder or on a PostgreSQL server."""

    def __init__(self, folder: Path, postgres_url: str | None) -> None:
        self.folder = folder
        self.count = 0
        self.server = None
        self.postgres_base = postgres_url
        self.postgres_note = ""
        if postgres_url is None:
            try:
                self.server = _pg_server().PostgresServer(durable=True).start()
                self.postgres_base = self.server.url("postgres")
                self.postgres_note = "local throwaway server, fsync on"
            except Exception as exc:  # no binaries: skip the rows
                self.postgres_note = f"skipped: {exc}"
        else:
            self.postgres_note = "given server"

    def new(self, kind: str) -> str | None:
        self.count += 1
        name = f"bench{self.count}"
        if kind == "sqlite":
            return f"sqlite:///{self.folder / name}.db"
        if kind == "journal":
            return f"journal:///{self.folder / name}.log"
        if self.postgres_base is None:
            return None
        import psycopg
        from sqlalchemy.engine import make_url

        base = make_url(self.postgres_base)
        admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return base.set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def run_cell(url: str, trials: int, workers: int, folder: Path) -> tuple[float, float]:
    """``(trials per minute, wall seconds)`` of one ``run_study.py`` on a fresh storage."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/run_study.py"), "--trials", str(trials), *TASK]
        + ["--workers", str(workers), "--storage", url, "--checkpoint-dir", str(folder / "ck")],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    study = optuna.load_study(study_name="batch-size", storage=open_storage(url))
    return steady_rate(study.trials), wall


def steady_rate(trials: list) -> float:
    """Trials per minute once every worker has started its first trial, to the last end.

    (Before that, workers still starting up, importing torch and loading the task, take CPU
    from those already training.)
    """
    done = [t for t in trials if t.datetime_complete is not None and t.state.is_finished()]
    first_by_worker: dict[str, object] = {}
    for t in done:
        worker = read_record(t).worker or ""
        first_by_worker[worker] = min(
            first_by_worker.get(worker, t.datetime_start), t.datetime_start
        )
    start = max(first_by_worker.values())
    counted = [t for t in done if t.datetime_start >= start]
    end = max(t.datetime_complete for t in counted)
    return len(counted) / max((end - start).total_seconds(), 1e-9) * 60


def noop_ms_per_trial(url: str, trials: int, workers: int, batched: bool = True) -> float:
    """Milliseconds of storage work per trial (the objective only records, see RECORD_ONLY);
    ``batched``: the record in one transaction, else one commit per attribute."""
    study = optuna.create_study(study_name="noop", storage=open_storage(url))
    if workers == 1:
        started = time.perf_counter()
        namespace: dict = {}
        exec(RECORD_ONLY, namespace)
        namespace["BATCHED"] = batched
        run_trials(study, namespace["record_only"], trials, lock=storage_lock(url))
        return (time.perf_counter() - started) * 1000 / trials
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NOOP_WORKER, url, str(trials)]
            + ["batched" if batched else "per-attribute"]
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.wait()
    done = optuna.load_study(study_name="noop", storage=open_storage(url)).trials
    return 60_000 / steady_rate(done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="trials per cell")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, e.g. 1,2,4")
    parser.add_argument("--storages", default=",".join(STORAGES), help="sqlite,journal,postgresql")
    parser.add_argument("--noop-trials", type=int, default=100, help="trials of the cost table")
    parser.add_argument("--postgres-url", default=None, help="an existing server (CREATEDB)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = [int(w) for w in args.workers.split(",")]
    kinds = [k for k in args.storages.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        folder = Path(tmp)
        storages = Storages(folder, args.postgres_url)
        try:
            print(
                f"machine: {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} "
                f"at the start); Python {sys.version.split()[0]}, Optuna {optuna.__version__}; "
                f"PostgreSQL: {storages.postgres_note}"
            )
            print(
                f"task: digits, mlp hidden 64, 1 epoch per trial, batch sizes 8-64, no pruning, "
                f"one torch thread per worker; {args.trials} trials per cell on a fresh storage; "
                "heartbeats every 10 s\n"
            )
            print(
                "1. trials per minute once every worker runs, to the last trial's end "
                "(the whole command's wall time in brackets)"
            )
            header = f"{'storage':<11}" + "".join(f"{f'{w} worker(s)':>20}" for w in counts)
            print(header)
            for kind in kinds:
                cells = []
                for workers in counts:
                    url = storages.new(kind)
                    if url is None:
                        cells.append("skipped")
                        continue
                    rate, wall = run_cell(url, args.trials, workers, folder)
                    cells.append(f"{rate:7.0f} ({wall:5.1f} s)")
                print(f"{kind:<11}" + "".join(f"{c:>20}" for c in cells), flush=True)
            print(
                "\n2. storage cost per trial: trains nothing, writes what a trial writes "
                f"(2 params, 1 epoch reported, 16 attributes); {args.noop_trials} trials; "
                "ms per trial; the record in one transaction (as trials write it) beside one "
                "commit per attribute (Optuna's set_user_attr)"
            )
            cells = [(1, True), (4, True), (1, False), (4, False)]
            print(
                f"{'storage':<11}{'1 worker':>12}{'4 workers':>12}"
                f"{'1 w, per-attr':>16}{'4 w, per-attr':>16}{'1 w ratio':>11}"
            )
            for kind in kinds:
                row: list[float | None] = []
                for workers, batched in cells:
                    url = storages.new(kind)
                    row.append(
                        None
                        if url is None
                        else noop_ms_per_trial(url, args.noop_trials, workers, batched)
                    )
                text = ["skipped" if ms is None else f"{ms:.1f}" for ms in row]
                ratio = f"{row[2] / row[0]:.2f}x" if None not in (row[0], row[2]) else "-"
                print(
                    f"{kind:<11}{text[0]:>12}{text[1]:>12}{text[2]:>16}{text[3]:>16}{ratio:>11}",
                    flush=True,
                )
        finally:
            storages.close()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print(
        "(4 workers: ms of wall time per trial with all four claiming at once, i.e. the "
        "storage's throughput limit; on fewer cores than workers the processes also compete "
        "for the CPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
