"""Files the commands write: never an input, never someone else's file, always whole.

Every writer of a user-named path (``report --out`` in HTML, text or JSON, checkpoints) asks
:func:`output_problem` first and writes with :func:`write_atomic`:

* a path that is the study's storage (or one of its side files), any SQLite database (its
  header) or Optuna journal file (its first record) is refused: writing there would destroy a
  study. ``--force`` replaces another storage file, never the storage being read.
* an existing file this tool did not write (recognised by :func:`made_here`: the report's
  ``generator`` tag, the text report's first words, the answer's JSON keys) is refused unless
  ``--force``.
* the file appears whole or not at all: it is written to a temporary file in the same folder,
  flushed to disk (``fsync``) and renamed over the target (``os.replace``); a failed write
  removes the temporary file, and a full disk is a :class:`~study.disk.DiskFullError`.

Torch- and Optuna-free.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomic(folder / "a.txt", "Batch-size study x\\n")
    >>> output_problem("--out", folder / "a.txt") is None  # written here: may be replaced
    True
    >>> (folder / "notes.txt").write_text("mine")
    4
    >>> output_problem("--out", folder / "notes.txt")  # doctest: +ELLIPSIS
    '--out ... exists and was not written by this tool: ... or add --force to replace it'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from study import safety
from study.disk import disk_full, is_disk_full

SQLITE_HEADER = b"SQLite format 3\x00"
#: What the HTML report carries in its ``<head>`` so that a later report may replace it.
GENERATOR_TAG = '<meta name="generator" content="batchsize-study report">'
#: How a text report begins.
TEXT_REPORT_START = "Batch-size study "
#: Keys every stored answer (``report --format json``) has.
ANSWER_KEYS = frozenset({"most_accurate", "statement", "decided"})
#: Keys every answer of the branch command (``branch --output``) has.
BRANCH_ANSWER_KEYS = frozenset({"recommended", "schedule", "points", "trainings"})
#: Side files of a storage file (SQLite's journals, the locks).
SIDE_SUFFIXES = ("-journal", "-wal", "-shm", ".claim-lock", ".lock")
#: Bytes read to recognise a file.
HEAD_BYTES = 1 << 16


class OutputError(ValueError):
    """An output path that must not be written; the message names it and the fix."""


def storage_kind(path: Path) -> str | None:
    """``"an SQLite database"`` or ``"an Optuna journal file"`` when ``path`` holds one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    if head.startswith(SQLITE_HEADER):
        return "an SQLite database"
    first = head.split(b"\n", 1)[0]
    try:
        record = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(record, dict) and "op_code" in record:
        return "an Optuna journal file"
    return None


def made_here(path: Path) -> bool:
    """Whether the file at ``path`` is one this tool writes (a report, a text report, an
    answer as JSON, the branch command's answer), so that writing it again loses nothing of
    the user's."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return False
    text = head.decode("utf-8", errors="replace")
    if GENERATOR_TAG in text or text.startswith(TEXT_REPORT_START):
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and (
        ANSWER_KEYS <= data.keys() or BRANCH_ANSWER_KEYS <= data.keys()
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _is_storage_side(path: Path, storage: Path) -> bool:
    return any(_same_file(path, storage.with_name(storage.name + s)) for s in SIDE_SUFFIXES)


def output_problem(
    flag: str, path: str | Path, *, storage_url: str | None = None, force: bool = False
) -> str | None:
    """Why ``path`` must not be written, or ``None`` (see the module docstring).

    Args:
        flag: The flag that named the path (for the message), e.g. ``"--out"``.
        path: The file about to be written.
        storage_url: The storage the command reads; its file (and side files) is never
            written, even with ``force``.
        force: Replace an existing file that is not ours, or another storage's file.
    """
    path = Path(path)
    storage = safety.storage_file(storage_url)
    if storage is not None and (_same_file(path, storage) or _is_storage_side(path, storage)):
        return (
            f"{flag} {path} is the study's storage ({safety.redact(storage_url or '')}): "
            "writing there would destroy the study; choose another path"
        )
    if path.is_dir():
        return f"{flag} {path} is a folder: give a file name, e.g. {path / 'report.html'}"
    if not path.exists() or force:
        return None
    kind = storage_kind(path)
    if kind is not None:
        return (
            f"{flag} {path} is {kind} (a study storage): writing there would destroy it; "
            "choose another path, or add --force to replace it"
        )
    if not made_here(path):
        return (
            f"{flag} {path} exists and was not written by this tool: choose another path, "
            "or add --force to replace it"
        )
    return None


def check_output(
    flag: str, path: str | Path, *, storage_url: str | None = None, force: bool = False
) -> None:
    """Raise :class:`OutputError` when :func:`output_problem` finds one."""
    problem = output_problem(flag, path, storage_url=storage_url, force=force)
    if problem:
        raise OutputError(problem)


def write_atomic(path: str | Path, data: str | bytes, what: str = "the output") -> None:
    """Write ``data`` to ``path`` whole or not at all (temporary file, fsync, rename).

    The folder is created if missing. On failure the temporary file is removed and the target
    is as it was; a full disk raises :class:`~study.disk.DiskFullError` naming the disk.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full(path, what, needed=len(raw)) from None
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
