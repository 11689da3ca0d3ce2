"""A trial's record, and batches of its epoch values, in one transaction: real SQLite files
and journal logs.

The PostgreSQL case runs in ``test_postgres.py`` on its real server.
"""

from __future__ import annotations

import math

import optuna
import pytest
import sqlalchemy

from study.attrs import report_values, set_user_attrs
from study.compat import rdb_backend, storage_of
from study.storage import open_storage

# ask() on a storage with heartbeats warns that they are meant for optimize(): expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
RECORD = {"batch_size": 64, "lr": 0.0125, "oom": [{"micro_batch_size": 32}], "note": "x"}


def committed_transactions(storage: optuna.storages.BaseStorage) -> list[int]:
    """A counter of the commits the RDB storage's engine makes from now on."""
    engine = rdb_backend(storage).engine
    commits: list[int] = []
    sqlalchemy.event.listen(engine, "commit", lambda _conn: commits.append(1))
    return commits


def check_one_transaction(url: str) -> None:
    """Shared with test_postgres: the record lands whole in one commit; a bad value stores
    none of its record and the trial still takes the next record. The storage is opened as
    a study opens it (heartbeats on)."""
    study = optuna.create_study(study_name="attrs", storage=open_storage(url))
    trial = study.ask()
    commits = committed_transactions(storage_of(study))
    set_user_attrs(trial, RECORD)
    assert len(commits) == 1  # the plain loop commits once per attribute
    assert study.trials[0].user_attrs == RECORD
    assert trial.user_attrs == RECORD  # the trial's own view is kept current too

    with pytest.raises(TypeError):  # not JSON: the whole record is refused, none of it kept
        set_user_attrs(trial, {"kept": False, "bad": object()})
    assert study.trials[0].user_attrs == RECORD
    set_user_attrs(trial, {"lr": 0.025, "epochs_completed": 3})  # overwrite and add
    study.tell(trial, 0.9)
    stored = optuna.load_study(study_name="attrs", storage=url).trials[0].user_attrs
    assert stored == {**RECORD, "lr": 0.025, "epochs_completed": 3}


def test_sqlite_stores_the_record_in_one_commit(tmp_path):
    check_one_transaction(f"sqlite:///{tmp_path / 's.db'}")


def test_a_finished_trial_takes_no_more_attributes(tmp_path):
    study = optuna.create_study(study_name="attrs", storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(RuntimeError, match="finished"):
        set_user_attrs(trial, {"late": 1})
    assert study.trials[0].user_attrs == {}


def test_journal_and_in_memory_storages_take_the_plain_loop(tmp_path):
    for storage in (open_storage(f"journal:///{tmp_path}/s.log", None), None):
        study = optuna.create_study(storage=storage)
        trial = study.ask()
        set_user_attrs(trial, {**RECORD, "nan": math.inf})
        study.tell(trial, 0.5)
        assert study.trials[0].user_attrs == {**RECORD, "nan": math.inf}


def test_epoch_values_land_in_one_commit_and_a_reported_step_keeps_its_first_value(tmp_path):
    study = optuna.create_study(study_name="v", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    trial = study.ask()
    trial.report(0.25, 1)  # as a retry's earlier attempt left it
    commits = committed_transactions(storage_of(study))
    report_values(trial, {1: 0.9, 2: 0.5, 3: 0.75})
    assert len(commits) == 1  # Trial.report commits once per value
    report_values(trial, {3: 0.1})  # nothing new: no transaction at all
    assert len(commits) == 1
    study.tell(trial, 0.75)
    assert study.trials[0].intermediate_values == {1: 0.25, 2: 0.5, 3: 0.75}


def test_epoch_values_on_a_journal_take_trial_report(tmp_path):
    study = optuna.create_study(storage=open_storage(f"journal:///{tmp_path}/s.log", None))
    trial = study.ask()
    report_values(trial, {1: 0.5, 2: 0.75})
    report_values(trial, {2: 0.1, 3: 1.0})
    study.tell(trial, 1.0)
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 0.75, 3: 1.0}
