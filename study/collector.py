"""Python's garbage collector around a run's start-up: paused while the run imports torch,
Optuna and SQLAlchemy and builds its task, frozen and resumed before the first trial (in a
run with worker processes, before the parent starts watching them; at the latest when the
command returns).

Start-up makes some 350,000 long-lived objects (modules, classes, the task's data), and the
collector's full passes, triggered as that count grows, walk all of them: six passes, about
0.5 s of CPU on the 2-core machine ``benchmarks/bench_overhead.py`` measures on, for nothing,
since none of it is garbage. Paused until the first trial, then
:func:`gc.freeze` moves the survivors out of the collector's sight, so later passes walk only
what trials make. Only the commands that train pause it (``run`` and its worker processes); a
library caller's collector is never touched.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Pause collection for start-up (nothing when it is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what start-up made and collect again; nothing unless :func:`pause` paused it.

    Example:
        >>> pause(); gc.isenabled()
        False
        >>> resume(); gc.isenabled()
        True
        >>> gc.unfreeze()  # (this doctest's process: its objects back in the collector's sight)
    """
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
