"""Journal files that hold whole records only, even when the disk fills up.

Optuna's journal (``JournalFileBackend``) is one JSON record per line, appended. A write cut
short (a full disk, a crash mid-write) leaves a half-written last line; Optuna skips it while
it is last, but the next record is appended to it, and from then on every read of the file
fails: the study, finished trials included, can no longer be read. Two guards:

* :class:`WholeRecordBackend` appends under Optuna's journal lock and, when a write fails,
  cuts the file back to where it was (the records are written whole or not at all); a full
  disk is a :class:`~study.disk.DiskFullError`.
* :func:`set_aside_torn_tail`, called when a writer opens the file, moves a half-written last
  record (from a crash, or an older writer) into ``<file>.torn-<time>.bak`` and cuts it from
  the file, under the same lock, so that nothing is ever appended to it.
* :func:`mend_glued_records` repairs a file where records were already appended to a
  half-written one (the study could not be read): the torn bytes go to the backup, every
  whole record stays, in order.

Readers (reports, the dashboard) change nothing: Optuna's reader already skips a half-written
last line, and a writer may be in the middle of writing it.

Example (not run as a doctest: it needs a study, files or a server)::

    note = set_aside_torn_tail(Path("storage/study.log"))  # None: the file was whole
    storage = JournalStorage(WholeRecordBackend("storage/study.log"))
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from study.disk import DiskFullError, disk_full, is_disk_full
from study.outputs import write_atomic

#: Bytes read at a time when looking back for the start of the last record.
TAIL_CHUNK = 1 << 16


class WholeRecordBackend(JournalFileBackend):
    """Optuna's journal file backend, whose appends are whole records or nothing.

    Args:
        file_path: The journal file (created empty if missing, as Optuna's backend does).
    """

    def __init__(self, file_path: str) -> None:
        self._whole_lock = JournalFileSymlinkLock(file_path)
        super().__init__(file_path, lock_obj=self._whole_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
        self._whole_lock.acquire()
        try:
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND)
            try:
                start = os.fstat(fd).st_size
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(fd, data[written:])
                    os.fsync(fd)
                except BaseException as exc:
                    try:  # cut the partial record: the file ends with its last whole record
                        os.ftruncate(fd, start)
                        os.fsync(fd)
                    except OSError:
                        pass
                    if isinstance(exc, Exception) and is_disk_full(exc):
                        raise disk_full(self._file_path, "the journal", len(data)) from None
                    raise
            finally:
                os.close(fd)
        finally:
            self._whole_lock.release()


def _torn_start(path: Path) -> int | None:
    """Where the file's half-written last record starts, or ``None`` when it ends whole."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        ends_whole = handle.read(1) == b"\n"
        position, start = size - 1 if ends_whole else size, 0
        while position > 0:  # look back for the newline before the last line
            step = min(TAIL_CHUNK, position)
            position -= step
            handle.seek(position)
            cut = handle.read(step).rfind(b"\n")
            if cut >= 0:
                start = position + cut + 1
                break
        handle.seek(start)
        last = handle.read()
    if ends_whole:
        try:
            if isinstance(json.loads(last), dict):
                return None
        except (ValueError, UnicodeDecodeError):
            pass
    return start


def set_aside_torn_tail(path: Path) -> str | None:
    """Move a half-written last record of the journal at ``path`` aside; say what was done.

    Runs under Optuna's journal lock (so that a record another process is writing right now is
    not taken for a torn one). The torn bytes go to ``<file>.torn-<time>.bak`` and are cut
    from the file; every whole record, every finished trial included, stays.

    Returns:
        One line saying what was moved where, or ``None`` when the file ended whole.

    Raises:
        DiskFullError: the backup cannot be written for space (nothing was changed).
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        start = _torn_start(path)
        if start is None:
            return None
        with open(path, "rb") as handle:
            handle.seek(start)
            torn = handle.read()
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}.bak")
        try:
            write_atomic(backup, torn, "the torn journal record's backup")
        except DiskFullError:
            raise
        with open(path, "rb+") as handle:
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        lock.release()
    return (
        f"note: the journal {path} ended with a half-written record ({len(torn)} bytes, from a "
        f"write cut short, e.g. by a full disk); it was moved to {backup} and the study "
        "continues from its last whole record"
    )


#: How every record Optuna writes begins.
RECORD_START = b'{"op_code"'


def _glued(data: bytes) -> bool:
    """Whether a record starts in the middle of a line (appended to a half-written one)."""
    at_line_start = data.count(b"\n" + RECORD_START) + data.startswith(RECORD_START)
    return data.count(RECORD_START) != at_line_start


def _split_glued(data: bytes) -> tuple[bytes, list[bytes]]:
    """``data`` without its half-written records, and those records' bytes."""
    kept: list[bytes] = []
    torn: list[bytes] = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines):
        end = b"" if number == len(lines) - 1 else b"\n"
        if not line:
            kept.append(end)
            continue
        try:
            json.loads(line)
            kept.append(line + end)
            continue
        except (ValueError, UnicodeDecodeError):
            pass
        cut = line.rfind(RECORD_START)
        while cut > 0:  # the whole record appended to the torn one starts here
            try:
                json.loads(line[cut:])
                break
            except (ValueError, UnicodeDecodeError):
                cut = line.rfind(RECORD_START, 0, cut)
        if cut > 0:
            torn.append(line[:cut])
            kept.append(line[cut:] + end)
        else:
            torn.append(line)
    return b"".join(kept), torn


def mend_glued_records(path: Path) -> str | None:
    """Set aside half-written records that later records were appended to; say what was done.

    Such a journal (left by a version that appended after a failed write) cannot be read at
    all: Optuna stops at the broken line. Under the journal's lock the half-written bytes are
    moved to ``<file>.torn-<time>.bak`` and the file is rewritten whole (temporary file,
    rename) with every whole record, in order, so that the study and its finished trials read
    again.

    Returns:
        One line saying what was moved where, or ``None`` when no record was glued.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        if not _glued(data):
            return None
        kept, torn = _split_glued(data)
        if not torn:  # (a record's text inside a string value: nothing is broken)
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}.bak")
        write_atomic(backup, b"\n".join(torn) + b"\n", "the torn journal records' backup")
        write_atomic(path, kept, "the mended journal")
    finally:
        lock.release()
    return (
        f"note: the journal {path} held {len(torn)} half-written record(s) with later records "
        f"appended to them (from a write cut short); they were moved to {backup} and every "
        "whole record was kept"
    )
