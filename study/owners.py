"""Which process runs a trial, and recognising a trial whose process is gone.

Each claimed trial records its owner (``hostname:pid``) in the trial system attribute
``batchsize_owner``. Heartbeats find a dead worker's trial only after the grace period (and a
storage without heartbeats never would); on a storage of one machine (an SQLite or journal
file) a RUNNING trial whose owner on this host no longer exists is certainly orphaned, so it
is failed at the next claim, and retried the way a stale trial is (see :mod:`study.budget`).

Example (not run as a doctest: it needs a study, files or a server)::

    record_owner(storage, trial_id)   # when the trial is claimed
    fail_orphans(study)               # before counting: [numbers of the trials failed]
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.trial import TrialState

from study.compat import heartbeat_enabled, storage_of, trial_id_of

#: The trial system attribute naming the process that runs it.
OWNER_ATTR = "batchsize_owner"


def this_process() -> str:
    """``hostname:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def record_owner(storage: BaseStorage, trial_id: int) -> None:
    """Record this process as the owner of trial ``trial_id``."""
    storage.set_trial_system_attr(trial_id, OWNER_ATTR, this_process())


def process_gone(pid: int) -> bool:
    """Whether no live process has id ``pid`` on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's live process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def one_machine(storage: BaseStorage) -> bool:
    """Whether ``storage`` is a file of one machine (a journal or SQLite file), where a
    process id names the same process for every reader."""
    if isinstance(storage, JournalStorage):
        return True
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in a cache
    engine = getattr(backend, "engine", None)
    return engine is not None and engine.url.get_backend_name() == "sqlite"


def orphaned(trial: optuna.trial.FrozenTrial, host: str | None = None) -> bool:
    """Whether RUNNING ``trial`` is owned by a process of this host that is gone."""
    owner = trial.system_attrs.get(OWNER_ATTR)
    if not isinstance(owner, str):
        return False
    owner_host, _, pid = owner.rpartition(":")
    if owner_host != (host or socket.gethostname()) or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and process_gone(int(pid))


def fail_orphans(study: optuna.Study) -> list[int]:
    """Fail the study's orphaned RUNNING trials and queue their retries; their numbers.

    Only on one-machine storages (see :func:`one_machine`). The retry is the storage's
    stale-trial callback (the same retry a dead worker's trial gets after its heartbeats
    stop); without heartbeats the trial is only failed.
    """
    storage = storage_of(study)
    if not one_machine(storage):
        return []
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    retry = storage.get_heartbeat_stale_trial_callback() if heartbeat_enabled(storage) else None
    failed = []
    for trial in running:
        if not orphaned(trial, host):
            continue
        try:
            if not storage.set_trial_state_values(trial_id_of(trial), state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile
        failed.append(trial.number)
        if retry is not None:
            retry(study, storage.get_trial(trial_id_of(trial)))
    return failed
