"""Store a trial's record, many user attributes, in one database transaction.

``optuna.Trial.set_user_attr`` commits each attribute on its own: a trial's ~16-attribute
record costs ~16 transactions, each an fsync on SQLite (~4 ms) and a round trip on a shared
PostgreSQL server. On relational storages :func:`set_user_attrs` writes them through the
same per-attribute upsert Optuna uses, inside one session, so the record is stored whole or
not at all in one commit. Other storages (journal files, in-memory) get the plain loop.

The one-transaction path reaches into Optuna's RDB storage internals
(``_set_trial_attr_without_commit``, ``_create_scoped_session``); where a future Optuna
lacks them, it falls back to the plain loop, which is always correct, only slower.

Example:
    >>> import optuna
    >>> study = optuna.create_study(storage="sqlite:///:memory:")
    >>> trial = study.ask()
    >>> set_user_attrs(trial, {"batch_size": 64, "lr": 0.01})
    >>> study.trials[0].user_attrs == {"batch_size": 64, "lr": 0.01}
    True
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import RDBStorage

try:  # the internals of Optuna's RDB storage that one transaction needs
    from optuna.storages._rdb import models as _models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - an Optuna that moved them: the plain loop
    _models = None
    _create_scoped_session = None


def _relational(storage: optuna.storages.BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind ``storage`` (Optuna wraps it in a cache), if that is what it is."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage) or _create_scoped_session is None:
        return None
    if not hasattr(backend, "_set_trial_attr_without_commit"):
        return None
    return backend


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set every ``attrs`` item as a user attribute of the running ``trial``, in one commit
    where the storage is relational (SQLite, PostgreSQL), else one call per attribute."""
    rdb = _relational(trial.storage)
    if rdb is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    trial_id = trial._trial_id
    with _create_scoped_session(rdb.scoped_session) as session:  # all or nothing
        for key, value in attrs.items():
            rdb._set_trial_attr_without_commit(
                session, _models.TrialUserAttributeModel, trial_id, key, value
            )
    trial._cached_frozen_trial.user_attrs.update(attrs)  # as Trial.set_user_attr keeps it
