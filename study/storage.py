"""Where a study lives: opening a storage URL with errors a user can act on.

Any SQLAlchemy URL Optuna accepts works; SQLite is the default, PostgreSQL the choice when
several machines share a study. ``journal:///path/to/study.log`` opens Optuna's journal
storage (one append-only file; ``optuna-dashboard path/to/study.log`` reads it). Heartbeats
are on, so a trial whose process was killed is marked FAIL after the grace period instead of
staying RUNNING forever (journal files get heartbeats from :class:`HeartbeatJournalStorage`).
Passwords in URLs are never printed: every message uses :func:`redact`. A study is read
back (the report, the dashboard) with :func:`open_existing_storage` and
:func:`load_existing_study`: read-only, never created, refused in one line when it is missing
or not the shape of a batch-size study (:func:`study_shape_problem`).

Example (not run as a doctest: it needs a study, files or a server)::

    storage = open_storage("sqlite:///storage/example.db")
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from study import safety
from study.compat import BaseHeartbeat, trial_id_of
from study.journal import WholeRecordBackend, mend_glued_records, set_aside_torn_tail
from study.locks import SETUP_SCOPE, NoLock, storage_lock
from study.record import study_metric
from study.safety import JOURNAL_PREFIX

#: Seconds between a running trial's heartbeats, and after which a silent trial is failed.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
#: How often a trial whose worker died is retried (then it stays FAIL and a new trial runs).
MAX_RETRY = 2
#: Seconds to wait for another program's write lock on an SQLite file before giving up.
SQLITE_LOCK_WAIT_S = 5

#: Query parameters of an SQLite URL that its driver uses (others are refused: SQLAlchemy
#: would ignore them with a warning).
SQLITE_QUERY_KEYS = frozenset(
    {"timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}
    | {"uri", "mode", "cache", "vfs", "immutable", "nolock"}
)

DRIVER_HINTS = {
    "postgresql": "pip install 'psycopg[binary]' (or: pip install -e '.[postgres]')",
    "mysql": "pip install pymysql and use mysql+pymysql://",
}


class StorageError(RuntimeError):
    """The storage cannot be used; the message says why and how to fix it (no passwords)."""


def redact(url: str) -> str:
    """``url`` with every secret replaced by ``***`` (see :func:`study.safety.redact`)."""
    return safety.redact(url)


def _parse_url(url: str) -> sqlalchemy.URL:
    """``url`` parsed by SQLAlchemy, or a :class:`StorageError` that says how to write one."""
    try:
        return make_url(url)
    except ArgumentError:
        raise StorageError(
            f"--storage {redact(url)} is not a database URL: use e.g. sqlite:///storage/x.db "
            "or postgresql://user@host/db"
        ) from None
    except ValueError:  # e.g. a port that is not a number
        raise StorageError(
            f"--storage {redact(url)} is not a valid database URL (is the port a number?): "
            "use e.g. postgresql://user@host:5432/db"
        ) from None


def _check_url(url: str) -> sqlalchemy.URL:
    problem = safety.unencoded_userinfo_problem(url)
    if problem:
        raise StorageError(f"--storage {redact(url)}: {problem}")
    parsed = _parse_url(url)
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
            f"--storage {redact(url)}: an in-memory SQLite database cannot be resumed or shared; "
            "give a file, e.g. sqlite:///storage/x.db"
        )
    if "\x00" in database:
        raise StorageError(f"--storage {redact(url)}: the path holds a NUL character; fix it")
    if not Path(database).name or database.endswith("/"):
        raise StorageError(
            f"--storage {redact(url)} names a folder, not a file: give a file, e.g. "
            "sqlite:///storage/x.db (relative) or sqlite:////abs/path/x.db (absolute)"
        )
    unknown = sorted(set(parsed.query) - SQLITE_QUERY_KEYS)
    if unknown:
        raise StorageError(
            f"--storage {redact(url)}: SQLite takes no parameter {', '.join(unknown)}; "
            "remove it from the URL"
        )
    if database.startswith("file:"):
        raise StorageError(
            f"--storage {redact(url)}: an SQLite file: URI opens the database for readers "
            "(report, dashboard); a run writes: give a plain path, e.g. sqlite:///storage/x.db"
        )
    path = Path(database)
    problem = safety.sqlite_problem(path)
    if problem:
        raise StorageError(f"--storage {redact(url)}: {problem}")
    _make_parent(url, path)
    if path.exists():
        header = _check_sqlite_header(path, url)
        if not os.access(path, os.W_OK):
            raise StorageError(f"--storage {redact(url)}: {path} is read-only; make it writable")
        if header:
            _check_sqlite_unlocked(path, url)


def _check_sqlite_header(path: Path, url: str) -> bytes:
    """The first 16 bytes of ``path``; a file of another kind is refused."""
    with open(path, "rb") as handle:
        header = handle.read(16)
    if header and header != b"SQLite format 3\x00":
        raise StorageError(
            f"--storage {redact(url)}: {path} is not an SQLite database (corrupt or another "
            "kind of file); move it away or choose another path"
        )
    return header


def sqlite_path(database: str) -> Path:
    """The file of an SQLite URL's database part (a ``file:`` URI name is unwrapped)."""
    if database.startswith("file:"):
        return Path(unquote(database[len("file:") :].split("?", 1)[0]))
    return Path(database)


def _read_only_connect(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that only read ``path`` (``mode=ro``): no lock file, no journal, nothing
    written, so they work on a read-only mount and beside a writer holding the file."""
    uri = f"{path.resolve().as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)

    return connect


def _check_sqlite_unlocked(path: Path, url: str, wait_s: float = SQLITE_LOCK_WAIT_S) -> None:
    """Fail fast, with one clear line, when another program holds the file's write lock.

    (Optuna's own connections wait up to a minute for a lock, which suits many workers taking
    turns but not a database held open by, say, a database browser in the middle of a write.)
    """
    connection = sqlite3.connect(path, timeout=wait_s)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.rollback()
    except sqlite3.DatabaseError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise StorageError(
                f"--storage {redact(url)}: the database is locked by another program (waited "
                f"{wait_s:g} s); close that program or wait for it, then run again"
            ) from None
        raise StorageError(
            f"--storage {redact(url)}: the file is not a usable SQLite database ({exc}); "
            "move it away or choose another path"
        ) from None
    finally:
        connection.close()


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats, so killed workers' trials are failed too.

    Each running trial's heartbeat is a system attribute holding the worker's clock
    (``time.time()``), so the workers of one journal file should share a clock (one machine).
    It implements Optuna's private heartbeat interface (:data:`study.compat.BaseHeartbeat`,
    ``_get_stale_trial_ids`` included), which ``tests/test_compat.py`` checks.

    Args:
        backend: The journal backend (e.g. ``WholeRecordBackend(path)``).
        heartbeat_interval: Seconds between heartbeats.
        grace_period: Seconds without a heartbeat after which a RUNNING trial is stale.
        stale_trial_callback: Called for each trial failed as stale (e.g. to retry it).
    """

    HEARTBEAT_ATTR = "batchsize_heartbeat"

    def __init__(
        self,
        backend: JournalFileBackend,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, self.HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [
            trial_id_of(t)
            for t in running
            if now - t.system_attrs.get(self.HEARTBEAT_ATTR, now) > self._grace_period
        ]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_trial_callback


def _make_parent(url: str, path: Path) -> None:
    """Create the folder of a file-backed storage, or say which folder cannot be made."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"--storage {redact(url)}: cannot create folder {path.parent} ({exc.strerror}); "
            "choose a writable path"
        ) from None


def _open_journal(
    url: str, heartbeat: dict, read_only: bool = False
) -> HeartbeatJournalStorage | JournalStorage:
    path = Path(url[len(JOURNAL_PREFIX) :])
    if not path.name or url.endswith("/"):
        raise StorageError(f"--storage {redact(url)}: give a file, e.g. journal:///storage/x.log")
    if "\x00" in str(path):
        raise StorageError(f"--storage {redact(url)}: the path holds a NUL character; fix it")
    problem = safety.journal_problem(path)
    if problem:
        raise StorageError(f"--storage {redact(url)}: {problem}")
    if not read_only:  # a reader takes no lock and changes nothing
        _make_parent(url, path)
        if path.exists() and not os.access(path, os.W_OK):
            raise StorageError(f"--storage {redact(url)}: {path} is read-only; make it writable")
        for mend in (mend_glued_records, set_aside_torn_tail):
            note = mend(path)
            if note:
                print(note, file=sys.stderr)
    try:
        backend = JournalFileBackend(str(path)) if read_only else WholeRecordBackend(str(path))
        if heartbeat:
            return HeartbeatJournalStorage(
                backend,
                heartbeat["heartbeat_interval"],
                heartbeat["grace_period"],
                heartbeat["heartbeat_stale_trial_callback"],
            )
        return JournalStorage(backend)
    except Exception as exc:
        fix = "move it away or choose another path"
        if read_only and isinstance(exc, ValueError):  # a half-written record inside
            fix = "run the study's run command once: it sets half-written records aside"
        raise StorageError(
            f"--storage {redact(url)}: cannot read the journal file ({type(exc).__name__}: "
            f"{exc}); {fix}"
        ) from None


def open_storage(
    url: str,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    *,
    read_only: bool = False,
) -> BaseStorage:
    """Open the study storage at ``url``, creating an SQLite file and its folder if needed.

    With ``read_only`` (reports, the dashboard) an SQLite file must already hold Optuna's
    tables (nothing is created in it, not even the lock file next to it).

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///storage/batch-size.db``, or a journal file,
            ``journal:///storage/batch-size.log``.
        heartbeat_interval: Seconds between a running trial's heartbeats; ``None`` turns
            heartbeats off. With them on, a trial whose process died is marked FAIL after
            ``grace_period`` seconds without a heartbeat and retried (twice at most).
        grace_period: Seconds of silence after which a RUNNING trial counts as dead.

    Raises:
        StorageError: malformed URL, missing driver, unreachable, locked or corrupt database.
    """
    heartbeat: dict = {}
    if heartbeat_interval is not None:
        if not 0 < heartbeat_interval < grace_period:
            raise StorageError(
                f"--heartbeat-interval {heartbeat_interval} must be positive and below "
                f"--grace-period {grace_period}"
            )
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY, inherit_intermediate_values=True
                ),
            }
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal(url, heartbeat, read_only)
    parsed = _check_url(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if read_only:
            path = sqlite_path(parsed.database or "")
            problem = safety.sqlite_problem(path, require_optuna=True)
            if problem:
                raise StorageError(f"--storage {redact(url)}: {problem}")
            _check_sqlite_header(path, url)
            engine_kwargs["creator"] = _read_only_connect(path)
        else:
            _prepare_sqlite(parsed, url)
            engine_kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    # new schemas race when several processes create them at once (a reader creates none)
    lock = NoLock() if read_only else storage_lock(url)
    try:
        with lock.scope(SETUP_SCOPE), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except Exception as exc:  # SQLAlchemy/driver errors carry the URL: never echo them raw
        reason = safety.scrub(_reason(exc, parsed.password), [url])
        raise StorageError(f"--storage {redact(url)}: {reason}") from None
    finally:
        lock.close()


def _reason(exc: BaseException, password: str | None) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if password:
        text = text.replace(str(password), "***")
    lowered = text.lower()
    if "locked" in lowered:
        return "the database is locked by another program; wait for it or close it"
    if "not a database" in lowered or "malformed" in lowered:
        return "the file is not a usable SQLite database (corrupt); move it away"
    if "password" in lowered or "authentication" in lowered:
        return "authentication failed; check the user and password"
    if "invalid connection option" in lowered or "invalid dsn" in lowered:
        return (
            f"the database refused a URL parameter ({text}); remove the parameters it does "
            "not know from the URL's query string"
        )
    if "does not exist" in lowered:
        return f"{text.split('FATAL:')[-1].strip()}; create it first (e.g. createdb NAME)"
    if "connection" in lowered or "could not" in lowered or "refused" in lowered:
        return f"cannot connect ({text}); check the host, port and that the server runs"
    return f"cannot open the database ({type(exc).__name__}: {text})"


# --------------------------------------------------------------------------- reading back
# A study this tool made, opened to be read (the report, the dashboard): never created,
# never changed, and refused in one line when it is missing or not a batch-size study.

#: The ``config["objectives"]`` that ask for the two-objective shape (metric and time).
TWO_OBJECTIVES_CONFIG = (("metric", "time"), ("accuracy", "time"))


def _direction(name: str) -> optuna.study.StudyDirection:
    return optuna.study.StudyDirection[name.upper()]


def study_shape_problem(study: optuna.Study) -> str | None:
    """Why ``study`` is not a batch-size study's shape (``it ...``), or ``None`` if it is.

    A batch-size study optimises its metric (``val_<name>``) in the metric's direction
    (the study attribute ``metric``; accuracy, maximised, when absent); with
    ``--objectives metric,time`` it also minimises ``train_time_s``. Any other shape is
    refused.
    """
    metric = study_metric(study)
    first = _direction(metric.direction)
    directions = tuple(study.directions)
    if directions == (first,):
        return None
    if len(directions) == 1:
        word = "minimises" if directions[0] == optuna.study.StudyDirection.MINIMIZE else "maximises"
        return f"{word} its objective, but its metric {metric.name} is to be {metric.direction}d"
    config = study.user_attrs.get("config")
    asked = config.get("objectives") if isinstance(config, dict) else None
    names = study.metric_names
    expected = (f"val_{metric.name}", "train_time_s")
    named = names is not None and tuple(names) == expected
    asked_two = asked is not None and tuple(asked) in TWO_OBJECTIVES_CONFIG
    two = (first, optuna.study.StudyDirection.MINIMIZE)
    if directions == two and (named or (names is None and asked_two)):
        return None
    if len(directions) == 2:
        shown = ", ".join(
            f"{n} ({d.name.lower()})"
            for n, d in zip(names or ["objective 0", "objective 1"], directions, strict=False)
        )
        return (
            f"has the objectives {shown}, not {expected[0]} ({metric.direction}), "
            "train_time_s (minimize)"
        )
    return f"has {len(directions)} objectives"


def shape_words(study: optuna.Study) -> str:
    """What a batch-size study of this metric optimises, for error messages."""
    metric = study_metric(study)
    return (
        f"a batch-size study {metric.direction}s val_{metric.name} (and, with --objectives "
        "metric,time, minimises train_time_s)"
    )


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL, ``None`` for other databases; a URL that cannot hold a
    stored study (malformed, in-memory) is a :class:`StorageError`."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:":
        raise StorageError(
            f"--storage {redact(url)}: an in-memory SQLite database holds no stored study; "
            "give the study's file, e.g. sqlite:///storage/batch-size.db"
        )
    return sqlite_path(database)


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """Open the storage at ``url`` for reading; an SQLite file that does not exist is an error.

    Raises:
        StorageError: malformed URL, missing SQLite or journal file, or a storage that cannot
            be opened (never created: a missing file stays missing).
    """
    if url.startswith(JOURNAL_PREFIX):
        journal = Path(url[len(JOURNAL_PREFIX) :])
        if not journal.is_file():
            raise StorageError(
                f"no journal file at {journal}: run scripts/run_study.py first, or pass the "
                "study's --storage (journal:///relative/path.log or journal:////abs/path.log)"
            )
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        where = "" if path.parent.is_dir() else f" (folder {path.parent} does not exist)"
        raise StorageError(
            f"no study database at {path}{where}: run scripts/run_study.py first, or pass "
            "--storage sqlite:///PATH/TO/FILE.db"
        )
    return open_storage(url, heartbeat_interval=None, read_only=True)


def load_existing_study(url: str, study_name: str) -> optuna.Study:
    """Open an existing study for reading; never creates a database or a study.

    Args:
        url: SQLAlchemy storage URL of the study database.
        study_name: Name of the study in it.

    Raises:
        StorageError: the SQLite file does not exist, the storage cannot be opened, or it holds
            no study of that name (the message lists the names it holds).
    """
    storage = open_existing_storage(url)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if study_name not in names:
        held = ", ".join(names) if names else "none"
        raise StorageError(
            f"no study named {study_name!r} in {redact(url)}; studies there: {held} "
            "(pass --study-name NAME)"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    problem = study_shape_problem(study)
    if problem is not None:
        raise StorageError(
            f"study {study_name!r} in {redact(url)} was not made by run_study.py (it "
            f"{problem}; {shape_words(study)}); pass the --study-name of a batch-size study"
        )
    attrs = study.user_attrs
    if "config" not in attrs and "space" not in attrs:
        count = len(study.get_trials(deepcopy=False))
        raise StorageError(
            f"study {study_name!r} in {redact(url)} was not made by run_study.py (a plain "
            f"Optuna study of {count} trials, without the settings and batch-size space this "
            "tool stores); pass the --study-name of a batch-size study, or browse it with "
            "optuna-dashboard"
        )
    return study
