"""Creating or resuming a study and running trials until its budget is spent.

The study's settings and its batch-size space are stored in the study when it is created, so
a resume (or another worker) samples exactly the same space; a resume whose settings differ
is refused rather than mixing incomparable trials. ``--trials N`` is the study's total: a run
continues until N trials are finished (COMPLETE or PRUNED), never redoing finished ones, and
with any number of workers it ends with exactly N (the claims of :mod:`study.budget`).

Example (not run as a doctest: it needs a study, files or a server)::

    config = StudyConfig(trials=3).validate()
    study, space, created = create_or_resume(config, storage, make_space)
    run_trials(study, objective, total=config.trials)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import collector
from study.budget import FINISHED, claim_trial
from study.compat import (
    heartbeat_enabled,
    heartbeat_thread,
    in_optimize_loop,
    storage_of,
    trial_id_of,
)
from study.config import EVALUATION_PERIODS, ConfigError, StudyConfig, differences
from study.decision import Plan, plan_settings
from study.disk import is_disk_full
from study.locks import SETUP_SCOPE, NoLock, StorageLock
from study.pruning import FairMedianPruner
from study.record import MetricInfo, TrialRecord, write_record
from study.space import BatchSpace
from study.workers import raise_if_interrupted

MAX_CONSECUTIVE_FAILURES = 3


class TrialRetry(Exception):
    """A trial failed for a cause outside its settings (a rank of a trial on several devices
    died, timed out or ran out of memory): it is marked FAIL and queued again to resume from
    its checkpoint, and the worker goes on claiming trials. After
    :data:`MAX_CONSECUTIVE_FAILURES` of them in a row the worker stops with the last one."""


#: Seconds between claims while the rest of the budget is running in other workers.
POLL_S = 1.0


def make_sampler(
    config: StudyConfig, space: BatchSpace, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The sampler ``config.sampler`` seeded with ``seed`` (default ``config.seed``)."""
    seed = config.seed if seed is None else seed
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "grid":
        grid: dict[str, list] = {"batch_size": list(space.choices)}
        if len(space.scaling_rules) > 1:
            grid["scaling_rule"] = list(space.scaling_rules)
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)


def trial_sampler(
    config: StudyConfig, space: BatchSpace
) -> Callable[[int], optuna.samplers.BaseSampler]:
    """Samplers seeded from ``config.seed`` and the trial number, for :func:`run_trials`.

    One sampler seeded once per process would give every worker the same random stream (the
    same batch sizes at the same time); seeding by trial number keeps workers apart and a
    one-process run reproducible. The grid sampler is the exception: its seed shuffles the
    grid, and every worker must share that order, so it keeps ``config.seed``.
    """
    if config.sampler == "grid":
        grid = make_sampler(config, space)
        return lambda number: grid

    def sampler_for(number: int) -> optuna.samplers.BaseSampler:
        return make_sampler(config, space, seed=(config.seed * 1_000_003 + number) % 2**32)

    return sampler_for


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The pruner ``config.pruner``; epochs (evaluation periods) are the pruning steps.

    ``median`` is :class:`study.pruning.FairMedianPruner`: a trial is compared only with
    completed trials of a batch size at least its own (no more updates per epoch; under a step
    budget, at most its own), after a third of the periods, never at the last one, and is
    stopped only when its best value is behind their lower quartile by more than
    ``--tolerance``. Optuna's median over all trials stopped large batches for learning more
    slowly per epoch: about half of the trials it stopped would have ended within 0.01 of the
    best cell; this rule stopped none of those (``benchmarks/bench_pruning.py``).
    ``hyperband`` is Optuna's.
    """
    periods = evaluation_periods(config)
    if config.pruner == "none" or config.multi_objective:  # Optuna cannot prune those
        return optuna.pruners.NopPruner()
    if config.pruner == "median":
        return FairMedianPruner(
            n_startup_trials=3,
            n_warmup_steps=max(1, periods // 3),
            reference="slower",
            margin=float(config.tolerance),
            budget=config.budget,
            percentile=25.0,
            n_steps=periods,
        )
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=periods)


def evaluation_periods(config: StudyConfig) -> int:
    """How often a trial reports: each epoch, or (step budget) at tenths of the budget."""
    if config.budget == "steps":
        return max(1, min(EVALUATION_PERIODS, config.steps or 1))
    return config.epochs


def _existing_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def create_or_resume(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    make_space: Callable[[], tuple[BatchSpace, dict]],
    lock: StorageLock | None = None,
    check_resume: Callable[[dict], None] | None = None,
) -> tuple[optuna.Study, BatchSpace, bool]:
    """Open study ``config.study_name``, creating it (and its space) if it does not exist.

    Args:
        config: The validated settings of this run.
        storage: An opened storage (see :func:`study.storage.open_storage`).
        make_space: Called only when the study is new: returns the space and extra study
            attributes to store with it (the task's sizes, the probe's table).
        lock: The storage's lock (:func:`study.locks.storage_lock`): with it, processes on
            several machines starting at once create the study once, and the others wait and
            resume it.
        check_resume: Called with the stored study's attributes when it is resumed, after its
            settings are found to match and before anything is written: it raises to refuse
            the resume (the data's fingerprint, see :mod:`study.datamatch`).

    Returns:
        ``(study, space, created)``.

    Raises:
        ConfigError: the stored study was created with settings that differ from ``config``.
    """
    with (lock or NoLock()).scope(SETUP_SCOPE):
        return _create_or_resume(config, storage, make_space, check_resume)


def _create_or_resume(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    make_space: Callable[[], tuple[BatchSpace, dict]],
    check_resume: Callable[[dict], None] | None = None,
) -> tuple[optuna.Study, BatchSpace, bool]:
    created = config.study_name not in _existing_names(storage)
    if not created:
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name(config.study_name))
        if "space" not in stored:
            raise ConfigError(
                f"study {config.study_name!r} exists in this storage but was not made by this "
                "tool: choose another --study-name"
            )
        changed = differences(stored.get("config", {}), config.identity())
        if changed:
            raise ConfigError(
                f"study {config.study_name!r} was created with other settings: "
                + "; ".join(changed)
                + ". Rerun with the stored settings, or choose another --study-name"
            )
        if check_resume is not None:
            check_resume(stored)
        space = BatchSpace.from_dict(stored["space"])
        metric = MetricInfo.from_dict(stored.get("metric"))
        stored_config = stored.get("config")
        if isinstance(stored_config, dict) and stored_config.get("trials") != config.trials:
            study_id = storage.get_study_id_from_name(config.study_name)
            # The trial budget may change on a resume: the stored one is the latest run's.
            storage.set_study_user_attr(
                study_id, "config", {**stored_config, "trials": config.trials}
            )
    else:
        space, extra_attrs = make_space()
        metric = MetricInfo.from_dict(extra_attrs.get("metric"))
    study = optuna.create_study(
        storage=storage,
        study_name=config.study_name,
        directions=config.directions(metric.direction),
        sampler=make_sampler(config, space),
        pruner=make_pruner(config),
        load_if_exists=True,
    )
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.metric_names(metric.name))
        for key, value in extra_attrs.items():
            study.set_user_attr(key, value)
        study.set_user_attr("config", config.to_dict())
        study.set_user_attr("plan", plan_settings())
        study.set_user_attr("space", space.to_dict())  # written last: marks a complete setup
    return study, space, created


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the budget: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def worker_name() -> str:
    """This process as the trials record it: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    *,
    lock: StorageLock | None = None,
    worker: str | None = None,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    poll_s: float = POLL_S,
    confirm: Plan | None | bool = True,
) -> int:
    """Claim and run trials until the study has ``total`` finished; return how many ran here.

    Any number of processes may run this on one study at once (pass the storage's ``lock``):
    each trial is claimed under the lock only while ``finished + running < total`` (see
    :mod:`study.budget`), so the study ends with exactly ``total`` finished trials. A worker
    whose claim finds the rest of the budget running elsewhere waits ``poll_s`` seconds and
    claims again, in case a running trial fails or its worker dies and it is retried.

    Each trial records the user attribute ``worker`` (default :func:`worker_name`). With
    heartbeats on, a thread records the running trial's heartbeat.

    KeyboardInterrupt (and any exception of the objective) marks the running trial FAIL and
    propagates; failed attempts do not count towards ``total``, and a rerun continues. An
    interrupted trial (or one stopped by a full disk) is also queued again (WAITING, as the
    storage's heartbeat retry policy would queue a dead worker's), so that the next run
    resumes it.

    ``confirm``: the confirmation phase (:mod:`study.confirm`). ``True`` (default) reads its
    plan from the study's stored config (``confirm_runs``, ``tolerance``; a study without
    them has none); ``False`` or ``None`` turns it off; a :class:`~study.decision.Plan` is used
    as is. With a plan the study may end before ``total``: once the answer is decided.
    """
    plan = Plan.of_study(study, total) if confirm is True else confirm or None
    collector.resume()  # start-up is over (when a command paused the collector for it)
    lock = lock or NoLock()
    worker = worker or worker_name()
    states: list[TrialState] = []
    # As inside Study.optimize: GridSampler stops "the optimize loop" when its grid is spent,
    # which outside the loop raises. The budget decides when this loop ends.
    with in_optimize_loop(study):
        while True:
            raise_if_interrupted()  # a worker's interrupt that a finalizer swallowed
            claim = claim_trial(study, total, lock, sampler_for, plan)
            if claim.done:
                break
            if claim.trial is None:
                time.sleep(poll_s)
                continue
            try:
                frozen = _run_claimed(study, claim.trial, objective, worker)
            except TrialRetry as fault:  # FAIL and queued again; the next claim resumes it
                print(f"trial {claim.trial.number} failed: {fault}", file=sys.stderr, flush=True)
                states.append(TrialState.FAIL)
                last = states[-MAX_CONSECUTIVE_FAILURES:]
                if last == [TrialState.FAIL] * MAX_CONSECUTIVE_FAILURES:
                    raise
                continue
            states.append(frozen.state)
            if on_trial is not None:
                on_trial(study, frozen)
            if states[-MAX_CONSECUTIVE_FAILURES:] == [TrialState.FAIL] * MAX_CONSECUTIVE_FAILURES:
                raise RuntimeError(
                    f"the last {MAX_CONSECUTIVE_FAILURES} trials failed without an exception "
                    "(the objective returned no number); see the warnings above"
                )
    return len(states)


def _queue_retry(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue an interrupted trial again, as a dead worker's would be (same retry policy).

    Ctrl-C, SIGTERM from a scheduler before a time limit or a preemption: the next run takes
    the WAITING copy first and, with checkpoints, resumes it from its last epoch.
    """
    storage = storage_of(study)
    if not heartbeat_enabled(storage):
        return
    retry = storage.get_heartbeat_stale_trial_callback()
    if retry is None:
        return
    for attempt in range(3):  # several workers stopping at once contend for an SQLite file
        try:
            retry(study, failed)
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))


def _run_claimed(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], float],
    worker: str,
) -> FrozenTrial:
    """Run ``objective`` on a claimed trial with heartbeats, then store its outcome."""
    value = None
    state: TrialState | None = None
    error: BaseException | None = None
    try:
        write_record(trial, TrialRecord(worker=worker))
        with heartbeat_thread(trial_id_of(trial), storage_of(study)):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except BaseException as exc:  # KeyboardInterrupt included: the trial is FAIL
                error = exc
    except BaseException as exc:  # interrupted outside the objective
        error = exc
    if error is not None:
        with contextlib.suppress(Exception):
            failed = study.tell(trial, state=TrialState.FAIL)
            if isinstance(error, KeyboardInterrupt | TrialRetry) or is_disk_full(error):
                _queue_retry(study, failed)
        raise error
    if state == TrialState.PRUNED:
        return study.tell(trial, state=TrialState.PRUNED)
    return study.tell(trial, value)  # a value that is not a number: FAIL, with a warning
