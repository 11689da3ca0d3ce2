"""One study run from a validated config: create or resume, probe once, run, publish.

This module owns a run's path and imports no torch. What trains is handed in as a
:class:`Backend` (the PyTorch one is :class:`objectives.backend.TorchBackend`): it builds the
task, measures the memory cap and makes the Optuna objective. With ``workers > 1`` or
``gpus``, the study is created here first and then worker processes (``python -m
study.worker_process``, handed the backend by its import name; see :func:`worker_main`) run its
trials (see :mod:`study.workers`).

Example (not run as a doctest: it needs a study, files or a server)::

    from objectives.backend import TorchBackend
    run_study(StudyConfig(trials=5, epochs=2, max_batch_size=64).validate(),
              TorchBackend())
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

import optuna

from study import collector, safety
from study.batch_schedule import parse_schedule, schedule_speeds, with_schedule
from study.budget import FINISHED, Tally, reap
from study.config import ConfigError, StudyConfig, config_from_json, config_to_json
from study.confirm import study_decision
from study.datamatch import FINGERPRINT_ATTR, data_changed_message, data_changes
from study.decision import Plan
from study.disk import DiskFullError, disk_full, is_disk_full
from study.locks import NoLock, storage_lock
from study.outputs import OutputError
from study.recommend import store_recommendation
from study.record import MetricInfo, study_metric
from study.report.summary import budget_text, summary, trial_line
from study.runner import create_or_resume, finished_count, run_trials, trial_sampler
from study.safety import JOURNAL_PREFIX
from study.scaling import resolve_rule
from study.space import BatchSpace, SpaceError, build_space
from study.storage import StorageError, open_storage, redact
from study.workers import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    WorkerPool,
    describe_exit,
    plan_workers,
    stop_on_signals,
)

#: Errors of the Optuna side that a user causes with flags or inputs: one line and exit 2.
STUDY_ERRORS: tuple[type[Exception], ...] = (ConfigError, StorageError, SpaceError, OutputError)


class Backend(Protocol):
    """What trains: the task, the hardware cap and the objective (see ``TorchBackend``)."""

    #: Errors the backend raises for a user's mistake (bad task, model, device).
    user_errors: tuple[type[Exception], ...]

    def device(self, config: StudyConfig) -> str:
        """Where this process trains or probes (``cpu``, ``cuda:N``), checked."""

    def worker_device(self, config: StudyConfig) -> str:
        """Where a worker process trains (with ``gpus``: its one visible GPU)."""

    def build_task(self, config: StudyConfig) -> Any:
        """The task the config names (with ``info`` and a sized ``train`` split)."""

    def metric(self, task: Any) -> MetricInfo:
        """The task's metric: its name, direction and unit (stored with the study)."""

    def fingerprint(self, task: Any) -> dict:
        """The fingerprint of the task's data (sizes, a hash of sampled items), JSON-ready."""

    def memory_cap(self, config: StudyConfig, task: Any, device: str) -> tuple[int, str, dict]:
        """The largest micro-batch that fits, where it came from, and attributes to store."""

    def objective(
        self,
        config: StudyConfig,
        task: Any,
        space: BatchSpace,
        device: str,
        log: Callable[[str], None],
    ) -> Callable[[optuna.Trial], Any]:
        """The Optuna objective of one process."""

    def measure_speed(
        self, config: StudyConfig, task: Any, device: str, space: BatchSpace, batch_sizes: list
    ) -> dict:
        """Throughput of ``batch_sizes`` timed side by side for the answer: ``{"per_batch":
        {b: {"samples_per_s", "spread", "micro_batch_size"}}, "timings": [...]}`` or ``{}``."""

    def tidy(self, config: StudyConfig, study: optuna.Study) -> None:
        """Drop what no unfinished trial needs any more (checkpoints)."""


class WorkersError(RuntimeError):
    """Every worker ended before the budget was spent; ``code`` is the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def plan_space(
    config: StudyConfig, task: Any, device: str, backend: Backend
) -> tuple[BatchSpace, dict]:
    """The batch-size space of a new study, and the attributes recorded with it.

    The memory cap is ``--max-batch-size`` when given, else the backend's hardware probe.
    """
    extra: dict = {
        "task_info": task.info,
        "metric": backend.metric(task).to_dict(),
        FINGERPRINT_ATTR: backend.fingerprint(task),
    }
    if config.max_batch_size is not None:
        cap, source = config.max_batch_size, "--max-batch-size"
    else:
        cap, source, probed = backend.memory_cap(config, task, device)
        extra.update(probed)
    space = build_space(
        config.min_batch_size,
        cap,
        config.max_accumulation,
        len(task.train),
        resolve_rule(config.scaling, config.optimizer),
        source,
        config.devices_per_trial,
    )
    if config.batch_schedule is not None:
        space = with_schedule(space, config.batch_schedule)
    return space, extra


def run_study(config: StudyConfig, backend: Backend, out: TextIO | None = None) -> optuna.Study:
    """Create or resume the study of ``config`` and run trials until its budget is spent.

    With ``config.workers > 1`` or ``config.gpus``, worker processes run the trials; this
    process creates the study before they start, fails the trials of workers that die, and
    prints the summary when they are done.

    Args:
        config: The validated settings (never changed here).
        backend: What trains (``objectives.backend.TorchBackend()``).
        out: Where progress and the summary go (default: standard output).

    Raises:
        KeyboardInterrupt: on Ctrl-C, after the running trials are marked FAIL.
        One of :data:`STUDY_ERRORS` or ``backend.user_errors`` for bad settings, storage or
        task.
        WorkersError: every worker ended before the budget was spent.
    """
    out = out or sys.stdout
    if config.multi_objective and config.pruner != "none":
        print(
            f"note: --objectives {','.join(config.objectives)} makes the study multi-objective, "
            "and Optuna cannot prune multi-objective trials: pruning is off (--pruner none)",
            file=out,
        )
        config = dataclasses.replace(config, pruner="none")
    device = backend.device(config)
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
    lock = storage_lock(config.storage)
    built: list[Any] = []

    def make_space() -> tuple[BatchSpace, dict]:
        built.append(backend.build_task(config))
        return plan_space(config, built[0], device, backend)

    def check_resume(stored: dict) -> None:  # before a resume writes anything
        study_id = storage.get_study_id_from_name(config.study_name)
        finished = storage.get_all_trials(study_id, deepcopy=False, states=FINISHED)
        if len(finished) < config.trials:  # trials will train: on the study's data only
            built.append(_checked_task(config, backend, stored.get(FINGERPRINT_ATTR)))

    study, space, created = create_or_resume(config, storage, make_space, lock, check_resume)
    where = redact(config.storage)
    verb = "created" if created else "resumed"
    print(
        f"study {config.study_name!r} {verb} in {where}: batch sizes {space.batch_sizes} "
        f"(memory cap {space.memory_cap} from {space.cap_source}), "
        f"rules {space.scaling_rules}"
        + (f", schedules {space.schedules}" if space.schedules else "")
        + f", {budget_text(config.to_dict())} per trial",
        file=out,
        flush=True,
    )
    done = finished_count(study)
    if done < config.trials and (config.workers > 1 or config.gpus):
        built.clear()  # the workers load the task themselves
        collector.resume()  # this process only watches the workers, for as long as they run
        _run_workers(config, study, lock, out, backend)
    elif done < config.trials:
        task = built[0] if built else resumed_task(config, backend, study)

        def log(line: str) -> None:
            print(line, file=out, flush=True)

        objective = backend.objective(config, task, space, device, log)
        with _Progress(config.trials, done, out, study_metric(study)) as progress:
            run_trials(
                study,
                objective,
                config.trials,
                on_trial=progress.on_trial,
                lock=lock,
                sampler_for=trial_sampler(config, space),
            )
    backend.tidy(config, study)
    lock.close()
    # A rerun of a finished study changes nothing, unless the steps after the trials (the
    # answer's timing, the answer, the note and report) were cut short: then it redoes them.
    if created or done < config.trials or answer_due(study):
        if not created and finished_count(study) == done and answer_due(study):
            print("the study's answer is missing or out of date: computing it now", file=out)
        _answer(study, config, backend, built[0] if built else None, device, space, out)
        _publish(study, config, out)
    elif publish_due(study):  # stopped after storing the answer, before the note and report
        _publish(study, config, out)
    print("\n" + summary(study), file=out)
    browse = where[len(JOURNAL_PREFIX) :] if where.startswith(JOURNAL_PREFIX) else where
    print(
        f"\nbrowse it: optuna-dashboard {browse}   (or: python scripts/report.py "
        f"--storage {where} --study-name {config.study_name})",
        file=out,
    )
    return study


def resumed_task(config: StudyConfig, backend: Backend, study: optuna.Study) -> Any:
    """The task of a study that exists, built, and checked to be on the study's data.

    Raises:
        ConfigError: the data's fingerprint differs from the one stored at creation (the
            splits and what changed are named).
    """
    return _checked_task(config, backend, study.user_attrs.get(FINGERPRINT_ATTR))


def _checked_task(config: StudyConfig, backend: Backend, stored: dict | None) -> Any:
    """The task, built; :class:`ConfigError` when its data differs from ``stored``."""
    task = backend.build_task(config)
    changes = data_changes(stored, backend.fingerprint(task))
    if changes:
        raise ConfigError(data_changed_message(config.study_name, changes))
    return task


class _Progress:
    """A trial's line as it finishes; a progress bar too, but only on a terminal.

    Redirected output (a log file, CI) gets plain lines with the count instead of a bar's
    carriage-return frames.
    """

    def __init__(self, total: int, done: int, out: TextIO, metric: MetricInfo) -> None:
        self.total, self.done, self.out, self.metric = total, done, out, metric
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="trial", file=sys.stderr)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_trial(self, _study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = trial.state in (
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
        )
        self.done += int(finished)
        if self.bar is not None:
            self.bar.write(trial_line(trial, self.metric), file=self.out)
            self.bar.update(int(finished))
        else:
            print(
                f"[{self.done}/{self.total}] {trial_line(trial, self.metric)}",
                file=self.out,
                flush=True,
            )


def answer_due(study: optuna.Study) -> bool:
    """Whether the study's answer (``recommendation``) is missing or older than its trials
    (a run stopped after its trials, e.g. by Ctrl-C while the answer's batch sizes were
    timed): the same command then computes it, without new trials."""
    stored = study.user_attrs.get("recommendation")
    if not isinstance(stored, dict):
        return True
    return stored.get("trials_used") != finished_count(study)


def publish_due(study: optuna.Study) -> bool:
    """Whether the note and report of the stored answer are missing (``published`` counts
    the finished trials they were written for)."""
    return study.user_attrs.get("published") != finished_count(study)


def _answer(
    study: optuna.Study,
    config: StudyConfig,
    backend: Backend,
    task: Any,
    device: str,
    space: BatchSpace,
    out: TextIO,
) -> None:
    """Store the study's answer (``recommendation``), its speeds timed for it.

    The batch sizes the answer may name (the most accurate cell's and those of the faster
    cells shown within tolerance) are timed side by side in one interleaved measurement
    (``backend.measure_speed``; stored as the study attribute ``speed``): the answer's
    speed-ups are per-round ratios of it, and a speed-up whose rounds disagree is not claimed.
    """
    speeds: dict[int, dict] = {}
    plan = Plan.of_study(study, config.trials)
    decision = study_decision(study, plan) if plan is not None else None
    named = decision.most_accurate or decision.leader if decision else None
    keys = ([named] if named else []) + list(decision.passed if decision else [])
    schedules = sorted({k.schedule for k in keys if k.schedule is not None})
    candidates = sorted(
        {k.batch_size for k in keys}
        | {b for label in schedules for b in parse_schedule(label).batch_sizes}
    )
    if len(candidates) > 1:
        try:
            if task is None:
                task = resumed_task(config, backend, study)
            print(f"timing the answer's candidate batch sizes {candidates} ...", file=out)
            measured = backend.measure_speed(config, task, device, space, candidates)
            if measured:
                study.set_user_attr("speed", measured["timings"])
                speeds = {int(b): row for b, row in measured["per_batch"].items()}
                if schedules:  # a schedule's rate per round, from its phases' rates
                    speeds = schedule_speeds(speeds, schedules, config.epochs)
        except Exception as exc:  # the trials' own timings stand; say so
            print(f"warning: timing the answer's batch sizes failed ({exc})", file=sys.stderr)
    store_recommendation(study, speeds or None)


def _publish(study: optuna.Study, config: StudyConfig, out: TextIO) -> None:
    """Update the study's dashboard note and attach the HTML report as study artifacts."""
    from study.report.note import write_study_note

    try:
        write_study_note(study)
        if config.artifact_dir.lower() != "none":
            from study.report.dashboard import attach_report  # Plotly: only when attaching

            ids = attach_report(study, config.artifact_dir)
            print(
                f"report attached to the study ({len(ids)} artifacts in {config.artifact_dir})",
                file=out,
            )
        study.set_user_attr("published", finished_count(study))
    except Exception as exc:  # the trials are stored; a report failure must not hide that
        if is_disk_full(exc):
            where = getattr(exc, "filename", None) or safety.storage_file(config.storage)
            exc = disk_full(where, "the note or the report") if where else exc
        print(
            f"warning: writing the note or the report failed ({exc}); the same command writes "
            "them once that is fixed",
            file=sys.stderr,
        )


def _decision_done(study: optuna.Study, config: StudyConfig) -> bool:
    """Whether the study ended before its budget because its decision is done (decided, or
    stopped undecided): the workers then ended on purpose."""
    plan = Plan.of_study(study, config.trials)
    return plan is not None and study_decision(study, plan).stage == "done"


def worker_command(backend: Backend) -> list[str]:
    """The command that starts one worker process: :mod:`study.worker_process`, handed the
    backend's class by its import name (the worker builds its own, with no arguments, and
    reads its settings on stdin)."""
    kind = type(backend)
    name = f"{kind.__module__}:{kind.__qualname__}"
    return [sys.executable, "-m", "study.worker_process", "--backend", name]


def _run_workers(
    config: StudyConfig, study: optuna.Study, lock, out: TextIO, backend: Backend
) -> None:
    """Run the study's trials in worker processes; return when they are all done."""
    specs = plan_workers(
        config.workers, config.gpus, config.workers_per_gpu, config.devices_per_trial
    )
    if isinstance(lock, NoLock):
        print(
            "warning: this storage has no lock for claiming trials (the budget is exact on "
            "SQLite, journal files and PostgreSQL); workers may run a few trials too many",
            file=sys.stderr,
        )
    print(
        f"starting {len(specs)} workers: {', '.join(s.name for s in specs)} "
        f"(each trial records its worker and device)",
        file=out,
        flush=True,
    )
    pool = WorkerPool(
        worker_command(backend),
        specs,
        config_to_json(config),
        dict(os.environ),
        processes_per_worker=config.devices_per_trial,
    )
    pool.start()

    def tick() -> None:  # fail the trials of dead workers so that the others retry them
        try:
            reap(study, lock)
        except Exception as exc:  # a storage hiccup here must not stop the run
            print(f"warning: checking for dead workers failed ({exc})", file=sys.stderr)

    codes = pool.wait(tick, tick_s=max(1.0, config.heartbeat_interval / 2))
    count = Tally.of(study.get_trials(deepcopy=False))
    if count.finished >= config.trials or _decision_done(study, config):
        return
    ended = "; ".join(
        f"{spec.name} {describe_exit(codes[spec.index])}" for spec in specs if codes[spec.index]
    )
    code = EXIT_USAGE if all(c == EXIT_USAGE for c in codes.values()) else 1
    raise WorkersError(
        f"{count.finished} of {config.trials} trials finished: every worker ended early "
        f"({ended or 'without an error'}); see their messages above, then run the same "
        "command again to continue",
        code,
    )


def worker_main(backend: Backend, argv: list[str] | None = None) -> int:
    """A worker process: claim and run the study's trials until its budget is spent.

    Reads its settings from stdin (:func:`config_to_json`); the study must exist. Prints
    one line per trial. Exit codes: 0 done, 2 bad settings/storage/task or a full disk, 130
    interrupted (SIGINT or SIGTERM: the running trial is marked FAIL first).
    """
    parser = argparse.ArgumentParser(prog="python -m study.worker_process")
    parser.add_argument("--worker-index", type=int, required=True)
    args = parser.parse_args(argv)
    name = os.environ.get("BATCHSIZE_WORKER", f"w{args.worker_index}")
    stop_on_signals()  # SIGTERM stops like Ctrl-C
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config: StudyConfig | None = None
    try:
        config = config_from_json(sys.stdin.read())
        storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
        lock = storage_lock(config.storage)

        def no_new_study() -> tuple[BatchSpace, dict]:
            raise StorageError(f"study {config.study_name!r} does not exist; workers only join")

        study, space, _ = create_or_resume(config, storage, no_new_study, lock)
        device = backend.worker_device(config)

        def log(line: str) -> None:
            print(f"{line}  [{name}]", flush=True)

        task = resumed_task(config, backend, study)
        objective = backend.objective(config, task, space, device, log)

        def on_trial(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            log(trial_line(trial, study_metric(_study)))

        run_trials(
            study,
            objective,
            config.trials,
            on_trial=on_trial,
            lock=lock,
            sampler_for=trial_sampler(config, space),
        )
    except STUDY_ERRORS + backend.user_errors as exc:
        print(f"error: [{name}] {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        storage_url = config.storage if config is not None else ""
        full = exc if isinstance(exc, DiskFullError) else storage_disk_full(storage_url)
        print(f"error: [{name}] {full}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def storage_disk_full(storage: str) -> DiskFullError:
    """The one-line error of a storage write that failed for space."""
    path = safety.storage_file(storage)
    if path is not None:
        return disk_full(path, "the study storage")
    return DiskFullError(
        f"the disk of the storage {redact(storage)} is full (its server could not write); "
        "nothing already stored is lost: free some space there, then run the same command again"
    )
