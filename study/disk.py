"""A full disk, said in one line: which filesystem, how much is free, how much was needed.

A write that fails for space (``OSError`` ``ENOSPC``/``EDQUOT``, SQLite's "database or disk
is full", PyTorch's failed stream writer on a full disk) is the machine's state, not a bug:
the commands turn it into :class:`DiskFullError`, whose message names the disk (the
filesystem holding the path, by its mount point) and the space, and exit with code 2.

Torch- and Optuna-free.

Example:
    >>> import errno
    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> is_disk_full(ValueError("bad value"))
    False
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

#: Words of errors that mean "no space" in the messages of SQLite and PyTorch's writers.
FULL_WORDS = ("database or disk is full", "no space left on device", "disk quota exceeded")
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """A write failed for space; the message names the disk, the free and needed space."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write that ran out of space."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        text = str(current).lower()
        if any(word in text for word in FULL_WORDS):
            return True
        orig = getattr(current, "orig", None)  # SQLAlchemy wraps the driver's error
        if isinstance(orig, BaseException) and is_disk_full(orig):
            return True
        current = current.__cause__ or current.__context__
    return False


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent)."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def free_bytes(path: str | Path) -> tuple[int, int] | None:
    """``(free, total)`` bytes of the filesystem holding ``path`` for this user, or ``None``."""
    try:
        stats = os.statvfs(mount_point(path))
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize


def human(size: float) -> str:
    """``size`` bytes in binary units, e.g. ``256.0 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def disk_full(path: str | Path, what: str, needed: int | None = None) -> DiskFullError:
    """The error of a write of ``what`` at ``path`` that failed for space.

    Args:
        path: The file whose write failed.
        what: What was written, e.g. ``"the study database"``.
        needed: Bytes the write needed, when known.
    """
    disk = mount_point(path)
    space = free_bytes(path)
    free = f"{human(space[0])} free of {human(space[1])}" if space else "free space unknown"
    need = f"; it needs about {human(needed)}" if needed else ""
    return DiskFullError(
        f"the disk is full: writing {what} ({path}) failed on the filesystem mounted at {disk} "
        f"({free}{need}); nothing already stored is lost: free some space there, then run the same "
        "command again"
    )
