"""Workers on a real PostgreSQL server (started on 127.0.0.1 for these tests): one study
joined from several "machines" (parent processes), an exact budget, killed workers, and
storage errors that never show the password.

The server binaries are needed (see ``tests/support/pg_server.py``); without them these tests are
skipped, unless ``BATCHSIZE_REQUIRE_POSTGRES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_script
from tests.support.pg_server import PostgresServer, PostgresUnavailable
from tests.test_attrs import check_one_transaction
from tests.test_workers import BEAT, LONG, QUICK, _mid_trial, _pid, _start, counts, race

pytestmark = pytest.mark.postgres
_names = itertools.count()


@pytest.fixture(scope="module")
def pg():
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        if os.environ.get("BATCHSIZE_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def db(pg) -> str:
    """A fresh, empty database (Optuna creates its tables): its URL, password included."""
    return pg.create_database(f"study_{os.getpid()}_{next(_names)}")


@pytest.mark.parametrize("attempt", range(2))
def test_four_racing_workers_spend_exactly_the_budget(db, attempt):
    race(db, total=24)
    trials = optuna.load_study(study_name="race", storage=db).trials
    assert counts(trials) == {"COMPLETE": 24}  # not one trial created past the budget


@pytest.mark.slow
def test_two_machines_join_one_new_study_and_end_with_exactly_the_budget(db, tmp_path, pg):
    # The same command started twice at once on a new database: the schema and the study
    # are created once, the others join; two workers each.
    args = [*QUICK, "--workers", "2", "--checkpoint-dir", str(tmp_path)]
    machines = [_start(db, 8, *args) for _ in range(2)]
    outputs = [m.communicate(timeout=300) for m in machines]
    for machine, (out, err) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, err
        assert pg.PASSWORD not in out + err  # never printed, by the parent or any worker
    trials = optuna.load_study(study_name="batch-size", storage=db).trials
    assert counts(trials) == {"COMPLETE": 8}
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    assert sum("created in" in out for out, _ in outputs) == 1  # one created, one resumed


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_retried_and_resumed(db, tmp_path):
    args = [*LONG, *BEAT, "--workers", "2", "--checkpoint-dir", str(tmp_path)]
    proc = _start(db, 3, *args)
    victim = _wait_for_pg(db, proc, _mid_trial(min_epochs=1, checkpoints=tmp_path / "batch-size"))
    os.kill(_pid(victim), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    trials = optuna.load_study(study_name="batch-size", storage=db).trials
    assert counts(trials) == {"COMPLETE": 3, "FAIL": 1}
    assert trials[victim.number].state == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1


def _wait_for_pg(url, proc, ready, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            found = ready(optuna.load_study(study_name="batch-size", storage=url).trials)
        except KeyError:  # not created yet
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the study")


def test_a_wrong_password_is_one_line_exit_2_and_never_shown(pg):
    url = pg.url("postgres", password="hunter2-wrong")
    proc = run_script("run_study.py", "--trials", "1", *QUICK, "--storage", url)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "authentication failed" in lines[0], proc.stderr
    assert "hunter2-wrong" not in proc.stdout + proc.stderr
    assert pg.PASSWORD not in proc.stdout + proc.stderr


def test_a_missing_database_is_one_line_exit_2(pg):
    proc = run_script("run_study.py", "--trials", "1", *QUICK, "--storage", pg.url("nope"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'database "nope" does not exist' in lines[0], proc.stderr
    assert pg.PASSWORD not in proc.stderr


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_postgresql_stores_a_trial_record_in_one_commit(db):
    check_one_transaction(db)
