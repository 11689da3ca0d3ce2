"""Locks that serialise claiming trials, and creating a study, across processes and machines.

Workers claim a trial only while ``finished + running < budget``; the count and the claim
must be one step, or two workers both see room for the last trial. The lock fits the storage:

* PostgreSQL: a transaction-scoped advisory lock (``pg_advisory_xact_lock``) keyed by the
  study, held on a connection of its own. Every machine that reaches the server shares it,
  and the server releases it when the holder's connection ends (a killed worker included).
* SQLite and journal files: an exclusive ``flock`` on ``<file>.claim-lock`` next to the
  file. The operating system releases it when the holder dies. SQLite's own write lock
  (``BEGIN IMMEDIATE``) is not used because it would also block Optuna's writes made from the
  same process while the lock is held. (Both kinds of file are for one machine: neither
  SQLite nor ``flock`` is reliable on network filesystems.)
* Anything else (MySQL, ...): no lock; several workers may then overshoot the budget.

Example (not run as a doctest: it needs a study, files or a server)::

    lock = storage_lock("sqlite:///storage/example.db")
    with lock.scope(1):
        pass  # count and claim here
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from study.safety import JOURNAL_PREFIX

#: First half of the PostgreSQL advisory-lock key: marks locks taken by this tool.
ADVISORY_NAMESPACE = 0x62_73_74  # "bst"
#: Second half for creating schemas and studies (study ids start at 1).
SETUP_SCOPE = 0


class StorageLock:
    """A lock with scopes (a study id, or :data:`SETUP_SCOPE`); see the module docstring."""

    def scope(self, key: int) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (connections) held between uses."""


class NoLock(StorageLock):
    """For storages without a lock that fits: only threads of this process are serialised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def scope(self, key: int) -> Iterator[None]:
        with self._lock:
            yield


class FileLock(StorageLock):
    """An exclusive ``flock`` on ``path`` (created if missing); scopes share the one file.

    Each use opens its own file descriptor, so threads of one process exclude each other
    too. Uses must not nest (the same process would wait for itself).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def scope(self, key: int) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


class AdvisoryLock(StorageLock):
    """PostgreSQL ``pg_advisory_xact_lock(namespace, key)`` on a connection of its own."""

    def __init__(self, url: str, connect_args: dict | None = None) -> None:
        # One kept connection (checked before use): claims do not pay a new login each time.
        self._engine = sqlalchemy.create_engine(
            url,
            pool_size=1,
            max_overflow=2,
            pool_pre_ping=True,
            connect_args=connect_args or {},
        )

    @contextlib.contextmanager
    def scope(self, key: int) -> Iterator[None]:
        with self._engine.connect() as connection, connection.begin():
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
                {"namespace": ADVISORY_NAMESPACE, "key": int(key)},
            )
            yield  # commit (leaving the block) releases the lock

    def close(self) -> None:
        self._engine.dispose()


def lock_path(database: str) -> Path:
    """The lock file of an SQLite database or journal file: ``<file>.claim-lock``.

    (Not ``<file>.lock``: Optuna's journal backend uses that name for its own lock.)
    """
    return Path(database + ".claim-lock")


def storage_lock(url: str) -> StorageLock:
    """The lock that fits the storage at ``url`` (see the module docstring).

    ``url`` must already be checked (see :func:`study.storage.open_storage`): this function
    does not report unreachable servers itself; the first :meth:`StorageLock.scope` would.
    """
    if url.startswith(JOURNAL_PREFIX):
        return FileLock(lock_path(url[len(JOURNAL_PREFIX) :]))
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        return FileLock(lock_path(parsed.database))
    if backend == "postgresql":
        return AdvisoryLock(url, connect_args={"connect_timeout": 10})
    return NoLock()
