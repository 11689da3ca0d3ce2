"""Guards for what a user points the commands at: foreign files, secrets, leftovers and crashes.

* :func:`sqlite_problem` and :func:`journal_problem` say why an existing file is not an Optuna
  storage (a folder, a text file, another program's SQLite database), read-only, before
  Optuna would write its tables or a journal record into it.
* :func:`redact` hides every secret of a storage URL (the password of the user-info, however
  it is written, and the value of every query parameter that is not known to be harmless,
  such as ``?password=``, ``?auth_token=`` or ``?api-key=``); :func:`scrub` removes them from
  any text (a driver's error message, a traceback).
* :class:`Leftovers` removes what a failed run created before it stored anything (a
  schema-only SQLite file, an empty journal file, their lock files and new folders).
* :func:`internal_error` turns an unexpected exception into one line naming the log file that
  holds the full traceback.

Torch- and Optuna-free.

Example:
    >>> redact("postgresql://alice:s3c@ret@db.example/x?sslmode=require&password=hunter2")
    'postgresql://alice:***@db.example/x?sslmode=require&password=***'
    >>> scrub("login failed for s3c@ret", ["postgresql://alice:s3c@ret@db.example/x"])
    'login failed for ***'
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

#: URL prefix of journal files: ``journal:///relative/path.log`` or ``journal:////abs/path``.
JOURNAL_PREFIX = "journal:///"
#: Query parameters whose values are shown (compared in lower case): connection settings that
#: hold no secret. Every other parameter's value is a secret (``password``, ``auth_token``,
#: ``client_secret``, ``api-key``, and any name not listed here).
HARMLESS_QUERY_KEYS = frozenset(
    {
        "sslmode",
        "timeout",
        "connect_timeout",
        "application_name",
        "target_session_attrs",
        "client_encoding",
        "charset",
        "gssencmode",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "check_same_thread",
        "mode",
        "cache",
        "uri",
    }
)
#: Tables every Optuna RDB storage has; a database holding other tables but not these is not
#: an Optuna storage.
OPTUNA_TABLES = frozenset({"studies", "version_info"})
#: Where :func:`internal_error` writes tracebacks.
CRASH_DIR = Path(tempfile.gettempdir()) / "batchsize-study"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)


def _split_url(url: str) -> tuple[str, str | None, str | None, str, str] | None:
    """``(scheme, user, password, rest, query)`` of a URL; ``None`` if it has no scheme and
    neither a user-info nor a query (a text without a scheme has the scheme ``""``).

    The user-info ends at the *last* ``@`` before the query, so a password holding an
    unencoded ``@`` (which SQLAlchemy would split into a wrong host name) is still whole.
    """
    match = _SCHEME.match(url)
    if match:
        scheme, body = match.groups()
    elif "?" in url or "@" in url:  # no scheme, but what may hold a secret: split it too
        scheme, body = "", url
    else:
        return None
    before_query, _, query = body.partition("?")
    if before_query.startswith("/"):  # sqlite:///path: no authority (and '@' may be a path)
        return scheme, None, None, before_query, query
    at = before_query.rfind("@")
    if at < 0:
        return scheme, None, None, before_query, query
    user, colon, password = before_query[:at].partition(":")
    return scheme, user, password if colon else None, before_query[at + 1 :], query


def is_secret_query_key(key: str) -> bool:
    """Whether the value of query parameter ``key`` is hidden: unless it is known harmless.

    Example:
        >>> is_secret_query_key("sslmode"), is_secret_query_key("client_secret")
        (False, True)
    """
    return unquote(key).strip().lower() not in HARMLESS_QUERY_KEYS


def url_secrets(url: str) -> list[str]:
    """Every secret string in ``url``: the password (raw and decoded), secret query values."""
    parts = _split_url(url) if isinstance(url, str) else None
    if parts is None:
        return []
    _, _, password, rest, query = parts
    found = []
    if password:
        found += [password, unquote(password)]
        if "@" in password:  # what SQLAlchemy takes for the password, and for the host
            head, _, tail = password.partition("@")
            found += [head, unquote(head)]
            found += [tail, unquote(tail)]
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if not eq:  # a bare word: it may be a token itself
            value = key
        if is_secret_query_key(key) and value:
            found += [value, unquote(value)]
    return sorted({s for s in found if len(s) >= 2}, key=len, reverse=True)


def redact(url: str) -> str:
    """``url`` with every secret replaced by ``***`` (journal file URLs are shown as they are).

    Example:
        >>> redact("postgresql://alice@host/db?password=x1y2")
        'postgresql://alice@host/db?password=***'
        >>> redact("sqlite:///storage/x.db")
        'sqlite:///storage/x.db'
    """
    if url.startswith(JOURNAL_PREFIX):
        return url
    parts = _split_url(url)
    if parts is None:
        return "<unparsable storage URL>" if url_secrets(url) or "@" in url else url
    scheme, user, password, rest, query = parts
    shown = f"{scheme}://" if scheme else ""
    if user is not None:
        shown += user + (":***" if password is not None else "") + "@"
    shown += rest
    if query:
        pairs = []
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            secret = is_secret_query_key(key)
            if not eq:  # a bare word: it may be a token itself
                pairs.append("***" if secret and key else pair)
            else:
                pairs.append(f"{key}{eq}***" if secret and value else pair)
        shown += "?" + "&".join(pairs)
    return shown


def unencoded_userinfo_problem(url: str) -> str | None:
    """Why the user-info of ``url`` would be misread (an unencoded ``@``), or ``None``."""
    parts = _split_url(url)
    if parts is None or parts[1] is None:
        return None
    _, user, password, _, _ = parts
    if "@" in (user or "") + (password or ""):
        return (
            "the user or password holds an unencoded '@', which would be read as part of the "
            "host name: percent-encode it (@ -> %40, : -> %3A, / -> %2F)"
        )
    return None


def scrub(text: str, urls: Iterable[str]) -> str:
    """``text`` with every secret of ``urls`` replaced by ``***``."""
    for url in urls:
        for secret in url_secrets(url):
            text = text.replace(secret, "***")
    return text


def urls_in(argv: Iterable[str]) -> list[str]:
    """The arguments (or ``--flag=value`` values) that look like URLs with user-info/query."""
    found = []
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if "://" in value:
            found.append(value)
    return found


# ------------------------------------------------------------------ is it an Optuna storage?


def sqlite_problem(path: Path, require_optuna: bool = False) -> str | None:
    """Why the SQLite file at ``path`` must not be opened as a study storage, or ``None``.

    Read-only: a folder, or a database holding tables of another program (and none of
    Optuna's) is refused; a missing or empty file, or an Optuna database, passes (with
    ``require_optuna``, for readers, only an Optuna database passes).
    """
    if path.is_dir():
        return f"{path} is a folder, not an SQLite file; give a file, e.g. {path / 'study.db'}"
    special = special_file_problem(path)
    if special:
        return special
    if not path.is_file():
        return f"no study database at {path}" if require_optuna else None
    if path.stat().st_size == 0:
        return f"{path} is empty: it holds no study" if require_optuna else None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None  # the header and lock checks that follow say what is wrong
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in rows}
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    if OPTUNA_TABLES <= tables or not (tables or require_optuna):
        return None
    if not tables:
        return f"{path} is an SQLite database without tables: it holds no study"
    listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return (
        f"{path} is another program's SQLite database (tables: {listed}), not an Optuna "
        "storage; it was left unchanged: choose another file"
    )


def journal_problem(path: Path) -> str | None:
    """Why the file at ``path`` must not be opened as an Optuna journal, or ``None``.

    A folder, or a non-empty file whose first line is not a journal record (a JSON object
    with an ``op_code``), is refused before Optuna appends to it.
    """
    if path.is_dir():
        return f"{path} is a folder, not a journal file; give a file, e.g. {path / 'study.log'}"
    special = special_file_problem(path)
    if special:
        return special
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    if not first:
        return None
    try:
        record = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        record = None
    if isinstance(record, dict) and "op_code" in record:
        return None
    return (
        f"{path} is not an Optuna journal file (its first line is not a journal record); it "
        "was left unchanged: choose another file"
    )


def special_file_problem(path: Path) -> str | None:
    """Why ``path`` is neither a regular file, a folder nor missing (a FIFO, a device, a
    socket), or ``None``: opening one as a storage would block or read another program's
    stream, so it is refused without being opened."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None  # missing (or a broken link): the storage is created, or says why not
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    return f"{path} is {kind}, not a storage file; it was not opened: give a regular file"


def folder_problem(flag: str, folder: str | Path) -> str | None:
    """Why ``folder`` cannot be (or become) a folder: it, or a parent, is a file."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            what = "is a file" if candidate == path else f"is under {candidate}, a file"
            return f"{flag} {folder} {what}, not a folder: give a folder"
    return None


# ------------------------------------------------------------------ leftovers of a failed run


def storage_file(url: str | None) -> Path | None:
    """The file behind a SQLite or journal URL (``None`` for servers and odd URLs)."""
    if not url:
        return None
    if url.startswith(JOURNAL_PREFIX):
        journal = url[len(JOURNAL_PREFIX) :]
        return Path(journal) if Path(journal).name and "\x00" not in journal else None
    parts = _split_url(url)
    if parts is None or not parts[0].lower().startswith("sqlite"):
        return None
    database = unquote(parts[3].removeprefix("/"))
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if not Path(database).name or "\x00" in database:  # sqlite:////: the root folder
        return None
    return Path(database)


class Leftovers:
    """What a run may create at a file-backed storage before it stores a study.

    Take a snapshot before the run (:meth:`before`); if the run fails, :meth:`remove` deletes
    what it created while the storage holds no study: the storage file, its lock and journal
    side files, and the folders it made for them (only when empty). An empty file given as
    the storage is kept, and emptied again of the tables the run wrote into it. The lock file
    it created beside a storage that does hold a study (a refused resume) goes too, unless
    another process holds the lock.
    """

    SIDE_SUFFIXES = ("-journal", "-wal", "-shm", ".claim-lock", ".lock")

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.created: list[Path] = []
        self.new_folder: Path | None = None
        #: An empty file given as the storage: emptied again (not deleted) after a failure.
        self.was_empty = False
        if path is None:
            return
        self.created = [path] + [path.with_name(path.name + s) for s in self.SIDE_SUFFIXES]
        self.created = [p for p in self.created if not os.path.lexists(p)]
        self.was_empty = path.is_file() and path.stat().st_size == 0
        if path.exists():
            return
        for parent in path.parents:
            if parent.exists():
                break
            self.new_folder = parent

    @classmethod
    def before(cls, url: str | None) -> Leftovers:
        return cls(storage_file(url))

    def remove(self) -> None:
        """Delete what the failed run created, if it stored nothing; never raises."""
        if not (self.created or self.was_empty) or self.path is None:
            return
        if not self.path.is_file():
            return  # (a storage that is not a file was refused before anything was made)
        try:
            for created in self.created:
                if created.name.endswith(".claim-lock"):
                    _remove_free_lock(created)
            if not _holds_no_study(self.path):
                return
            if self.was_empty:
                os.truncate(self.path, 0)  # no schema left in the user's empty file
            for created in self.created:
                if os.path.lexists(created) and not created.is_dir():
                    created.unlink()
            folder = self.path.parent
            while self.new_folder is not None and folder != self.new_folder.parent:
                folder.rmdir()  # fails (and stops) when not empty
                folder = folder.parent
        except OSError:
            return


def _remove_free_lock(path: Path) -> None:
    """Delete the lock file at ``path`` if no process holds its lock now."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held elsewhere: leave it
        path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def _holds_no_study(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    with open(path, "rb") as handle:
        header = handle.read(16)
    if header == b"SQLite format 3\x00":
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                tables = {n for (n,) in connection.execute("SELECT name FROM sqlite_master")}
                if "studies" not in tables:
                    return not tables
                return connection.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
            finally:
                connection.close()
        except sqlite3.Error:
            return False
    try:  # a journal file: no study until a create-study record (op_code 0) is written
        with open(path, encoding="utf-8") as handle:
            return all(json.loads(line).get("op_code") != 0 for line in handle if line.strip())
    except (ValueError, OSError, AttributeError):
        return False


# ------------------------------------------------------------------ the machine's limits

#: Messages of allocator failures: CUDA's, and the CPU allocator's (which raises RuntimeError;
#: "not enough memory" is its wording on Windows).
OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator failure, told without importing torch.

    Python's ``MemoryError``, torch's ``OutOfMemoryError`` (by name), or a ``RuntimeError``
    with one of :data:`OOM_MESSAGES` (the CPU allocator's).

    Example:
        >>> is_out_of_memory(MemoryError()), is_out_of_memory(RuntimeError("shape mismatch"))
        (True, False)
        >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: ..."))
        True
    """
    if isinstance(exc, MemoryError):
        return True
    if any(kind.__name__ == "OutOfMemoryError" for kind in type(exc).__mro__):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(m in text for m in OOM_MESSAGES)
    return False


def out_of_memory_line(prog: str, exc: BaseException, argv: Iterable[str]) -> str:
    """The one line that reports running out of memory (secrets of ``argv``'s URLs scrubbed)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = scrub(text if len(text) <= 160 else text[:157] + "...", urls_in(argv))
    return (
        f"{prog}: error: out of memory ({text}): this task does not fit in the memory "
        "available; use a smaller --max-batch-size, --memory-budget or model, or a machine "
        "with more memory (finished trials are kept; the same command continues)"
    )


def silence_stdout() -> None:
    """Point standard output at the null device: after the reader of a pipe has gone (``|
    head``), so that flushing at exit raises no second ``BrokenPipeError``."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
        pass


# ------------------------------------------------------------------ unexpected errors


def internal_error(prog: str, exc: BaseException, argv: Iterable[str] | None = None) -> int:
    """Write ``exc``'s traceback to a log file, print one line naming it; return exit code 1.

    Secrets of any URL in ``argv`` (default ``sys.argv``) are scrubbed from both.
    """
    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    urls = urls_in(args)
    text = scrub("".join(traceback.format_exception(exc)), urls)
    summary = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0], urls)
    if len(summary) > 160:
        summary = summary[:157] + "..."
    try:
        CRASH_DIR.mkdir(parents=True, exist_ok=True)
        log = CRASH_DIR / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.write_text(f"{prog} {scrub(' '.join(args), urls)}\n{text}")
        where = f"the full traceback is in {log}"
    except OSError:
        where = "the traceback could not be written to a log file"
    print(
        f"{prog}: internal error ({summary}): this is a bug, not a mistake in your input; "
        f"{where} (please attach it to a bug report)",
        file=sys.stderr,
    )
    return 1
