"""The exact budget: a worker claims a trial only while ``finished + running < total``.

Optuna's ``MaxTrialsCallback`` counts after the fact, so parallel workers overshoot. Here the
count and the claim are one step under a lock that fits the storage (see :mod:`study.locks`):

* ``finished`` (COMPLETE + PRUNED) ``>= total``: the study is done.
* ``finished + running < total``: claim a trial. A WAITING trial (the retry of a trial whose
  worker died) is taken first, else a new trial is created.
* otherwise the rest of the budget is in flight: wait, and claim again later (a running trial
  may still fail, or its worker may die and its retry become WAITING).

With a decision plan (:mod:`study.decision`), a claim first enqueues the next confirmation
run when one is due and nothing is WAITING, then claims it; once the decision is done
(decided, or stopped undecided) the study ends early. The count, the plan and the claim are
one step under the lock, so workers never enqueue a run twice. Every claimed trial carries
the user attribute ``phase`` (``search`` or ``confirm``).

``finished + running`` never exceeds ``total``, so no worker trains a trial past the budget
and a study ends with exactly ``total`` finished trials. FAIL records (killed or interrupted
attempts) do not count. Stale trials (no heartbeat for the grace period) are failed under the
same lock before each count, and their retries queued as WAITING; WAITING trials still left
when the budget is spent are closed as FAIL with the user attribute ``dropped``. On an SQLite
or journal file a RUNNING trial whose process on this machine is gone is failed and retried at
once, without waiting for the grace period (:mod:`study.owners`).

Example (not run as a doctest: it needs a study, files or a server)::

    claim = claim_trial(study, total=20, lock=storage_lock(url))
    claim.done, claim.trial
    (False, <optuna.trial._trial.Trial object at ...>)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.compat import (
    fail_stale_trials,
    heartbeat_enabled,
    storage_of,
    study_id_of,
    trial_id_of,
)
from study.confirm import Plan, enqueue_confirm
from study.locks import StorageLock
from study.owners import fail_orphans, record_owner
from study.record import SEARCH, TrialRecord

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Tally:
    """Trials by what they mean for the budget."""

    finished: int
    running: int
    waiting: int

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial]) -> Tally:
        states = [t.state for t in trials]
        return cls(
            finished=sum(s in FINISHED for s in states),
            running=states.count(TrialState.RUNNING),
            waiting=states.count(TrialState.WAITING),
        )


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_trial` got: a trial to run, nothing yet, or the end of the budget."""

    trial: optuna.Trial | None = None
    done: bool = False


def fail_stale(study: optuna.Study) -> None:
    """Fail RUNNING trials whose process is gone (on a one-machine storage, at once, see
    :mod:`study.owners`) or whose heartbeat is older than the grace period; queue retries."""
    fail_orphans(study)
    if heartbeat_enabled(storage_of(study)):
        fail_stale_trials(study)


def reap(study: optuna.Study, lock: StorageLock) -> None:
    """:func:`fail_stale` under the study's lock (for a process that runs no trials)."""
    with lock.scope(study_id_of(study)):
        fail_stale(study)


def claim_trial(
    study: optuna.Study,
    total: int,
    lock: StorageLock,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    confirm: Plan | None = None,
) -> Claim:
    """Count and, if the budget allows, claim one trial, all under ``lock``.

    Args:
        study: The study.
        total: The budget: finished trials the study should end with.
        lock: The storage's lock (:func:`study.locks.storage_lock`).
        sampler_for: Given the number the new trial will get, returns the sampler it samples
            with (so that its random stream depends on the trial, not on the worker).
        confirm: The study's decision plan (:class:`study.decision.Plan`): when a
            confirmation run is due (and no trial is WAITING), it is enqueued here, under the
            lock, and claimed at once; when the decision is done (decided, or stopped
            undecided) the claim reports the study done, whatever budget is left; while the
            runs it waits for are in flight elsewhere, nothing is claimed. A trial without a
            ``phase`` is marked ``search``.

    Returns:
        A :class:`Claim`: ``trial`` is RUNNING for this worker, with a first heartbeat already
        recorded (so it can be found stale should the worker die at once).
    """
    with lock.scope(study_id_of(study)):
        fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        count = Tally.of(trials)
        if count.finished >= total:
            if count.running == 0:
                _drop_waiting(study, trials)
            return Claim(done=True)
        if count.finished + count.running >= total:
            return Claim()
        if confirm is not None:
            decision = enqueue_confirm(study, trials, confirm)
            if count.waiting == 0 and decision.next_cell is None:
                if decision.stage == "done":
                    return Claim(done=True)
                if decision.stage in ("confirm", "wait"):
                    return Claim()  # the runs the decision waits for are in flight elsewhere
        if sampler_for is not None:
            study.sampler = sampler_for(len(trials))
        with warnings.catch_warnings():  # "heartbeats are meant for optimize": we run them
            warnings.simplefilter("ignore")
            trial = study.ask()  # pops a WAITING trial first (retry, confirmation), else new
        try:
            storage = storage_of(study)
            record_owner(storage, trial_id_of(trial))
            if heartbeat_enabled(storage):
                storage.record_heartbeat(trial_id_of(trial))
            if "phase" not in trial.user_attrs:
                trial.set_user_attr("phase", SEARCH)
        except BaseException:  # interrupted: leave nothing RUNNING
            study.tell(trial, state=TrialState.FAIL)
            raise
        return Claim(trial=trial)


def _drop_waiting(study: optuna.Study, trials: list[FrozenTrial]) -> None:
    """Close WAITING trials the spent budget has no room for (FAIL, ``dropped``)."""
    storage = storage_of(study)
    dropped = TrialRecord(dropped="budget spent").to_user_attrs()
    for t in trials:
        if t.state != TrialState.WAITING:
            continue
        try:
            for key, value in dropped.items():
                storage.set_trial_user_attr(trial_id_of(t), key, value)
            storage.set_trial_state_values(trial_id_of(t), TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
