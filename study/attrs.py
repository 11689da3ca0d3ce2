"""Store a trial's record (many user attributes), or several of its intermediate values, in
one database transaction.

``optuna.Trial.set_user_attr`` commits each attribute on its own: a trial's ~16-attribute
record costs ~16 transactions, each an fsync on SQLite (~4 ms) and a round trip on a shared
PostgreSQL server. On relational storages :func:`set_user_attrs` writes them through the
same per-attribute upsert Optuna uses, inside one session, so the record is stored whole or
not at all in one commit. Other storages (journal files, in-memory) get the plain loop.

The one-transaction path reaches into Optuna's RDB storage internals through
:mod:`study.compat`; where a future Optuna lacks them, it falls back to the plain loop, which
is always correct, only slower.

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

from study.compat import (
    cache_intermediate_values,
    cache_user_attrs,
    rdb_backend,
    reported_values,
    set_intermediate_values_in_one_commit,
    set_user_attrs_in_one_commit,
    trial_id_of,
)


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set every ``attrs`` item as a user attribute of the running ``trial``, in one commit
    where the storage is relational (SQLite, PostgreSQL), else one call per attribute."""
    rdb = rdb_backend(trial.storage)
    if rdb is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    set_user_attrs_in_one_commit(rdb, trial_id_of(trial), attrs)  # all or nothing
    cache_user_attrs(trial, attrs)  # as Trial.set_user_attr keeps it


def report_values(trial: optuna.Trial, values: dict[int, float]) -> None:
    """Report ``values`` (step -> value) of the running ``trial`` as ``Trial.report`` would,
    in one commit where the storage is relational; a step already reported keeps its first
    value (as ``Trial.report`` does).

    Example:
        >>> study = optuna.create_study(storage="sqlite:///:memory:")
        >>> trial = study.ask()
        >>> report_values(trial, {1: 0.5, 2: 0.75})
        >>> study.trials[0].intermediate_values
        {1: 0.5, 2: 0.75}
    """
    known = reported_values(trial)
    values = {int(k): float(v) for k, v in values.items() if int(k) not in known}
    if not values:
        return
    rdb = rdb_backend(trial.storage)
    if rdb is not None and set_intermediate_values_in_one_commit(rdb, trial_id_of(trial), values):
        cache_intermediate_values(trial, values)
        return
    for step, value in values.items():
        trial.report(value, step)
