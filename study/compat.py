"""Every use of Optuna's private internals, each behind one small named function.

Optuna's public API has no way to run trials outside ``Study.optimize`` with heartbeats, to
write a trial's attributes in one transaction, or to reach a study's storage. The project
needs all of these, so they live here and nowhere else: a new Optuna that changes one breaks
this module only, and ``tests/test_compat.py`` says which function, on a real SQLite
storage. torch's private internals have their own module on the PyTorch side,
:mod:`objectives.compat`.

Example:
    >>> import optuna
    >>> study = optuna.create_study(storage="sqlite:///:memory:")
    >>> study_id_of(study) == storage_of(study).get_study_id_from_name(study.study_name)
    True
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._heartbeat import fail_stale_trials as _fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread as _get_heartbeat_thread
from optuna.storages._heartbeat import is_heartbeat_enabled as _is_heartbeat_enabled
from optuna.trial import FrozenTrial

try:  # the internals of Optuna's RDB storage that one transaction needs
    from optuna.storages._rdb import models as _rdb_models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - an Optuna that moved them: the plain loop
    _rdb_models = None
    _create_scoped_session = None

__all__ = [
    "BaseHeartbeat",
    "cache_user_attrs",
    "fail_stale_trials",
    "heartbeat_enabled",
    "heartbeat_thread",
    "in_optimize_loop",
    "rdb_backend",
    "set_user_attrs_in_one_commit",
    "storage_of",
    "study_id_of",
    "trial_id_of",
    "trial_system_attrs",
]

# --------------------------------------------------------------------------- Optuna: handles


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes (Optuna's ``Study._storage``)."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The storage's id of ``study`` (Optuna's ``Study._study_id``)."""
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a running or frozen trial (Optuna's ``_trial_id``)."""
    return trial._trial_id


def trial_system_attrs(trial: optuna.Trial | FrozenTrial) -> dict[str, Any]:
    """The system attributes of a running or frozen trial (Optuna 5's ``Trial`` no longer
    shows them, so they are read from its storage by id)."""
    if isinstance(trial, FrozenTrial):
        return trial.system_attrs
    return trial.storage.get_trial_system_attrs(trial_id_of(trial))


@contextlib.contextmanager
def in_optimize_loop(study: optuna.Study) -> Iterator[None]:
    """Run the block as if inside ``Study.optimize`` (Optuna's ``_thread_local`` flag).

    The grid sampler stops "the optimize loop" when its grid is spent, which outside the loop
    raises; a loop of its own (:func:`study.runner.run_trials`) sets the flag as Optuna does.
    """
    local = study._thread_local
    before = local.in_optimize_loop
    local.in_optimize_loop = True
    try:
        yield
    finally:
        local.in_optimize_loop = before


# --------------------------------------------------------------------------- Optuna: heartbeats


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """``storage`` records heartbeats of running trials (Optuna's ``is_heartbeat_enabled``)."""
    return _is_heartbeat_enabled(storage)


def heartbeat_thread(trial_id: int, storage: BaseStorage) -> contextlib.AbstractContextManager:
    """A context that records trial ``trial_id``'s heartbeat while it is open (a no-op
    where ``storage`` has heartbeats off; Optuna's ``get_heartbeat_thread``)."""
    return _get_heartbeat_thread(trial_id, storage)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose heartbeat is past the grace period and run the storage's
    stale-trial callback on each (Optuna's ``fail_stale_trials``, without its warning that
    heartbeats are experimental)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _fail_stale_trials(study)


# --------------------------------------------------------------------------- Optuna: RDB storage


def rdb_backend(storage: BaseStorage | None) -> RDBStorage | None:
    """The :class:`RDBStorage` behind ``storage`` (Optuna wraps it in a cache, ``_backend``),
    or ``None`` where it is not relational or lacks what one transaction needs."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage) or _create_scoped_session is None:
        return None
    if not hasattr(backend, "_set_trial_attr_without_commit"):
        return None
    return backend


def set_user_attrs_in_one_commit(rdb: RDBStorage, trial_id: int, attrs: dict[str, Any]) -> None:
    """Write every ``attrs`` item as a user attribute of trial ``trial_id`` in one session
    and one commit, through the per-attribute upsert Optuna itself uses (all or nothing)."""
    with _create_scoped_session(rdb.scoped_session) as session:
        for key, value in attrs.items():
            rdb._set_trial_attr_without_commit(
                session, _rdb_models.TrialUserAttributeModel, trial_id, key, value
            )


def set_intermediate_values_in_one_commit(
    rdb: RDBStorage, trial_id: int, values: dict[int, float]
) -> bool:
    """Write ``values`` (step -> value) as trial ``trial_id``'s intermediate values in one
    session and one commit, through the per-value upsert ``Trial.report`` reaches; ``False``
    (nothing written) where this Optuna lacks that upsert."""
    upsert = getattr(rdb, "_set_trial_intermediate_value_without_commit", None)
    if upsert is None:
        return False
    with _create_scoped_session(rdb.scoped_session, True) as session:
        for step, value in values.items():
            upsert(session, trial_id, step, value)
    return True


def reported_values(trial: optuna.Trial) -> dict[int, float]:
    """The running ``trial``'s intermediate values as it knows them (``Trial.report`` checks
    a step against these)."""
    return trial._cached_frozen_trial.intermediate_values


def cache_intermediate_values(trial: optuna.Trial, values: dict[int, float]) -> None:
    """Keep the running ``trial``'s own view of its intermediate values current after a write
    that bypassed ``Trial.report`` (Optuna's ``_cached_frozen_trial``)."""
    trial._cached_frozen_trial.intermediate_values.update(values)


def cache_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Keep the running ``trial``'s own view of its user attributes current after a write
    that bypassed ``Trial.set_user_attr`` (Optuna's ``_cached_frozen_trial``)."""
    trial._cached_frozen_trial.user_attrs.update(attrs)


# ------------------------------------------------------------------ optuna-dashboard: notes

#: optuna-dashboard stores a study's note in study system attributes: a version and chunks.
NOTE_VERSION_KEY = "dashboard:note_ver"
NOTE_CHUNK_PREFIX = "dashboard:note_str:"
NOTE_CHUNK_CHARS = 2045


def save_study_note(study: optuna.Study, body: str) -> None:
    """Save ``body`` as the study's note, as ``optuna_dashboard.save_note`` would.

    Writing the attributes here avoids importing optuna-dashboard's web app (which pulls in
    scikit-learn through Optuna's importance module, about 0.8 s) at the end of every run;
    the test checks that ``optuna_dashboard.get_note`` reads back what this wrote.
    """
    storage, study_id = storage_of(study), study_id_of(study)
    attrs = storage.get_study_system_attrs(study_id)
    old_chunks = [k for k in attrs if k.startswith(NOTE_CHUNK_PREFIX)]
    storage.set_study_system_attr(study_id, NOTE_VERSION_KEY, attrs.get(NOTE_VERSION_KEY, 0) + 1)
    chunks = [body[i : i + NOTE_CHUNK_CHARS] for i in range(0, len(body), NOTE_CHUNK_CHARS)]
    for i, chunk in enumerate(chunks):
        storage.set_study_system_attr(study_id, f"{NOTE_CHUNK_PREFIX}{i}", chunk)
    for i in range(len(chunks), len(old_chunks)):  # a shorter note clears the old tail
        storage.set_study_system_attr(study_id, f"{NOTE_CHUNK_PREFIX}{i}", "")


#: optuna-dashboard keeps a figure of a study's page in study system attributes: its Plotly
#: JSON in chunks under ``dashboard:plot_data:<id>:<i>``.
FIGURE_CHUNK_PREFIX = "dashboard:plot_data:"


def save_dashboard_figure(study: optuna.Study, figure_json: str, graph_id: str) -> str:
    """Save a Plotly figure (its JSON) on the study's dashboard page under ``graph_id``, as
    ``optuna_dashboard.save_plotly_graph_object`` would: saving the same id again replaces it.

    Written here for the reason :func:`save_study_note` is (optuna-dashboard's import costs
    about 0.8 s); the test checks that optuna-dashboard reads the figure back.
    """
    storage, study_id = storage_of(study), study_id_of(study)
    prefix = f"{FIGURE_CHUNK_PREFIX}{graph_id}:"
    step = NOTE_CHUNK_CHARS  # the same chunk size as the note's
    chunks = [figure_json[i : i + step] for i in range(0, len(figure_json), step)]
    for i, chunk in enumerate(chunks):
        storage.set_study_system_attr(study_id, f"{prefix}{i}", chunk)
    old = [k for k in storage.get_study_system_attrs(study_id) if k.startswith(prefix)]
    for i in range(len(chunks), len(old)):  # a shorter figure clears the old tail
        storage.set_study_system_attr(study_id, f"{prefix}{i}", "")
    return graph_id


# -------------------------------------------------------------------- Optuna: study artifacts

#: Where Optuna's ``upload_artifact`` keeps an artifact's metadata (a study system attribute).
ARTIFACT_ATTR_PREFIX = "artifacts:"


def put_study_artifact(study: optuna.Study, store: Any, path: str, artifact_id: str) -> str:
    """Store the file at ``path`` as the study's artifact ``artifact_id``, as Optuna's
    ``upload_artifact`` would, but under a given id: storing it again replaces the file and
    its one listing instead of adding a copy (``upload_artifact`` draws a new id every call).
    The test checks that ``optuna.artifacts.get_all_artifact_meta`` reads it back.
    """
    import json
    import mimetypes
    import os

    filename = os.path.basename(path)
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = {
        "artifact_id": artifact_id,
        "filename": filename,
        "mimetype": mimetype or "application/octet-stream",
        "encoding": encoding,
    }
    with open(path, "rb") as f:
        store.write(artifact_id, f)
    storage_of(study).set_study_system_attr(
        study_id_of(study), ARTIFACT_ATTR_PREFIX + artifact_id, json.dumps(meta)
    )
    return artifact_id
