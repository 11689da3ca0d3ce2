"""Each private Optuna or torch internal the project uses, checked on the installed versions.

A failure here names the :mod:`study.compat` (Optuna) or :mod:`objectives.compat` (torch)
function whose internal the new version changed: mend that function, and the rest of the
project follows.
"""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy
from optuna.samplers import GridSampler
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from study import compat
from study.storage import HeartbeatJournalStorage, open_storage

# ask() on a storage with heartbeats warns that they are meant for optimize(): expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    """A study on a real SQLite file, opened as a run opens it (heartbeats on)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    return optuna.create_study(study_name="compat", storage=open_storage(url, 1, 2))


def test_storage_study_and_trial_ids_address_the_stored_study(study):
    storage = compat.storage_of(study)
    assert storage.get_study_id_from_name("compat") == compat.study_id_of(study)
    trial = study.ask()
    frozen = study.tell(trial, 0.5)
    assert compat.trial_id_of(trial) == compat.trial_id_of(frozen)
    assert storage.get_trial(compat.trial_id_of(frozen)).number == frozen.number


def test_trial_system_attrs_reads_running_and_frozen_trials(study):
    trial = study.ask()
    storage = compat.storage_of(study)
    storage.set_trial_system_attr(compat.trial_id_of(trial), "failed_trial", 3)
    assert compat.trial_system_attrs(trial)["failed_trial"] == 3
    assert compat.trial_system_attrs(study.trials[0])["failed_trial"] == 3


def test_in_optimize_loop_lets_a_grid_end_outside_optimize_and_restores_the_flag():
    def one_grid_trial(study: optuna.Study) -> None:  # the grid's last point: it stops "the loop"
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.0)

    outside = optuna.create_study(sampler=GridSampler({"x": [0.0]}, seed=0))
    with pytest.raises(RuntimeError, match="Study.stop"):  # what run_trials would meet
        one_grid_trial(outside)
    inside = optuna.create_study(sampler=GridSampler({"x": [0.0]}, seed=0))
    with compat.in_optimize_loop(inside):
        one_grid_trial(inside)
    assert inside.trials[0].state == TrialState.COMPLETE
    with pytest.raises(RuntimeError, match="Study.stop"):  # the flag is restored afterwards
        inside.stop()


def test_heartbeats_keep_a_trial_alive_and_stale_ones_are_failed_and_retried(study):
    storage = compat.storage_of(study)
    assert compat.heartbeat_enabled(storage)
    assert not compat.heartbeat_enabled(optuna.storages.InMemoryStorage())
    alive, dead = study.ask(), study.ask()
    storage.record_heartbeat(compat.trial_id_of(dead))  # one beat, then its worker "died"
    with compat.heartbeat_thread(compat.trial_id_of(alive), storage):
        time.sleep(3.5)  # past the grace period of 2 s (SQLite keeps whole seconds)
        compat.fail_stale_trials(study)
    states = [t.state for t in study.trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[2].system_attrs["failed_trial"] == dead.number  # the retry callback


def test_the_heartbeat_interface_is_what_the_journal_storage_implements():
    assert compat.BaseHeartbeat.__abstractmethods__ == frozenset(
        {
            "record_heartbeat",
            "_get_stale_trial_ids",
            "get_heartbeat_interval",
            "get_heartbeat_stale_trial_callback",
        }
    )
    assert issubclass(HeartbeatJournalStorage, compat.BaseHeartbeat)
    assert not HeartbeatJournalStorage.__abstractmethods__


def test_rdb_backend_finds_the_relational_storage_behind_the_cache(study, tmp_path):
    rdb = compat.rdb_backend(compat.storage_of(study))
    assert isinstance(rdb, RDBStorage) and isinstance(rdb.engine, sqlalchemy.Engine)
    assert compat.rdb_backend(open_storage(f"journal:///{tmp_path}/j.log", None)) is None
    assert compat.rdb_backend(optuna.storages.InMemoryStorage()) is None
    assert compat.rdb_backend(None) is None


def test_user_attrs_in_one_commit_and_the_trial_s_cached_view(study):
    trial = study.ask()
    rdb = compat.rdb_backend(compat.storage_of(study))
    commits: list[int] = []
    sqlalchemy.event.listen(rdb.engine, "commit", lambda _conn: commits.append(1))
    attrs = {"a": 1, "b": [1, 2], "c": "x"}
    compat.set_user_attrs_in_one_commit(rdb, compat.trial_id_of(trial), attrs)
    assert len(commits) == 1
    assert study.trials[0].user_attrs == attrs
    compat.cache_user_attrs(trial, attrs)
    assert trial.user_attrs == attrs


def test_allocation_events_list_the_cpu_allocator_s_allocations_and_frees():
    import torch

    from objectives import compat as torch_compat

    profile = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    )
    with profile:
        block = torch.ones(1024, 256)  # 1 MiB
        del block
    events = torch_compat.allocation_events(profile)
    sizes = [size for _, size in events]
    assert 1024 * 256 * 4 in sizes and -1024 * 256 * 4 in sizes
    assert all(isinstance(ns, int) and ns > 0 for ns, _ in events)


def test_a_study_note_saved_here_is_the_note_optuna_dashboard_reads(study):
    from optuna_dashboard import get_note, save_note

    long = "# answer\n" + "x" * 5000  # three chunks of the dashboard's 2045 characters
    compat.save_study_note(study, long)
    assert get_note(study) == long
    compat.save_study_note(study, "short")  # a shorter note replaces, not appends
    assert get_note(study) == "short"
    save_note(study, "from the dashboard")  # and the dashboard's own writer continues the count
    assert get_note(study) == "from the dashboard"
    compat.save_study_note(study, "again")
    assert get_note(study) == "again"


def test_a_dashboard_figure_saved_here_is_the_figure_optuna_dashboard_reads(study):
    import json

    import plotly.graph_objects as go
    from optuna_dashboard import save_plotly_graph_object
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    def read(graph_id: str) -> dict:
        attrs = study._storage.get_study_system_attrs(study._study_id)
        return json.loads(get_plotly_graph_objects(attrs)[graph_id])

    big = go.Figure(go.Scatter(x=list(range(600)), y=list(range(600))))  # several chunks
    assert compat.save_dashboard_figure(study, big.to_json(), "report-a") == "report-a"
    assert read("report-a")["data"][0]["x"] == list(range(600))
    small = go.Figure(go.Bar(x=[1], y=[2]))
    compat.save_dashboard_figure(study, small.to_json(), "report-a")  # replaces, shorter
    assert read("report-a")["data"][0]["type"] == "bar"
    save_plotly_graph_object(study, big, graph_object_id="report-a")  # the dashboard's writer
    assert read("report-a")["data"][0]["type"] == "scatter"
    compat.save_dashboard_figure(study, small.to_json(), "report-a")
    assert read("report-a")["data"][0]["type"] == "bar"
