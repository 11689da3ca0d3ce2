"""Where a study lives: opening a storage URL with errors a user can act on.

Any SQLAlchemy URL Optuna accepts works; SQLite is the default, PostgreSQL the choice when
several machines share a study. Heartbeats are on, so a trial whose process was killed is
marked FAIL after the grace period instead of staying RUNNING forever. Passwords in URLs are
never printed: every message uses :func:`redact`.

Example:
    >>> storage = open_storage("sqlite:///storage/example.db")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

#: Seconds between a running trial's heartbeats, and after which a silent trial is failed.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30

DRIVER_HINTS = {
    "postgresql": "pip install 'psycopg[binary]' (or: pip install -e '.[postgres]')",
    "mysql": "pip install pymysql and use mysql+pymysql://",
}


class StorageError(RuntimeError):
    """The storage cannot be used; the message says why and how to fix it (no passwords)."""


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``; unparsable URLs are hidden whole."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable storage URL>"


def _check_url(url: str) -> sqlalchemy.URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(
            f"--storage {redact(url)} is not a database URL: use e.g. sqlite:///storage/x.db "
            "or postgresql://user@host/db"
        ) from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StorageError(
            f"--storage {redact(url)}: unknown database kind {parsed.drivername!r}; "
            "use sqlite:/// or postgresql://"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        hint = DRIVER_HINTS.get(parsed.get_backend_name(), f"install the driver ({exc.name})")
        raise StorageError(
            f"--storage {redact(url)}: the database driver is missing: {hint}"
        ) from None
    return parsed


def _prepare_sqlite(parsed: sqlalchemy.URL, url: str) -> None:
    database = parsed.database
    if not database or database == ":memory:":
        raise StorageError(
            f"--storage {url}: an in-memory SQLite database cannot be resumed or shared; "
            "give a file, e.g. sqlite:///storage/x.db"
        )
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"--storage {url}: cannot create folder {path.parent} ({exc.strerror}); "
            "choose a writable path"
        ) from None
    if path.exists():
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header and header != b"SQLite format 3\x00":
            raise StorageError(
                f"--storage {url}: {path} is not an SQLite database (corrupt or another "
                "kind of file); move it away or choose another path"
            )
        if not os.access(path, os.W_OK):
            raise StorageError(f"--storage {url}: {path} is read-only; make it writable")


def open_storage(
    url: str,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
) -> optuna.storages.RDBStorage:
    """Open the study database at ``url``, creating an SQLite file and its folder if needed.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///storage/batch-size.db``.
        heartbeat_interval: Seconds between a running trial's heartbeats; ``None`` turns
            heartbeats off. With them on, a trial whose process died is marked FAIL after
            ``grace_period`` seconds without a heartbeat and retried (twice at most).
        grace_period: Seconds of silence after which a RUNNING trial counts as dead.

    Raises:
        StorageError: malformed URL, missing driver, unreachable, locked or corrupt database.
    """
    parsed = _check_url(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, url)
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    kwargs: dict = {"engine_kwargs": engine_kwargs}
    heartbeat = heartbeat_interval is not None
    if heartbeat:
        if not 0 < heartbeat_interval < grace_period:
            raise StorageError(
                f"--heartbeat-interval {heartbeat_interval} must be positive and below "
                f"--grace-period {grace_period}"
            )
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                kwargs["heartbeat_stale_trial_callback"] = (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=2, inherit_intermediate_values=True
                    )
                )
            return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # SQLAlchemy/driver errors carry the URL: never echo them raw
        raise StorageError(f"--storage {redact(url)}: {_reason(exc, parsed.password)}") from None


def _reason(exc: BaseException, password: str | None) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if password:
        text = text.replace(str(password), "***")
    lowered = text.lower()
    if "locked" in lowered:
        return "the database is locked by another program; wait for it or close it"
    if "not a database" in lowered or "malformed" in lowered:
        return "the file is not a usable SQLite database (corrupt); move it away"
    if "connection" in lowered or "could not" in lowered or "refused" in lowered:
        return f"cannot connect ({text}); check the host, port and that the server runs"
    if "password" in lowered or "authentication" in lowered:
        return "authentication failed; check the user and password"
    return f"cannot open the database ({type(exc).__name__}: {text})"
