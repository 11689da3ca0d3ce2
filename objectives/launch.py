"""One study run from a validated config: the edge where ``study`` and ``objectives`` meet.

``scripts/run_study.py`` parses flags and calls :func:`run_study`; Python users can call it
with the same :class:`~study.config.StudyConfig`. With ``workers > 1`` or ``gpus``, the study
is created here first and then worker processes (``python -m objectives.launch``, see
:func:`worker_main`) run its trials (see :mod:`study.workers`).

Example:
    >>> from study.config import StudyConfig
    >>> run_study(StudyConfig(trials=5, epochs=2, max_batch_size=64).validate())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import optuna
import torch
from sqlalchemy.engine import make_url
from tqdm import tqdm

from objectives.checkpoint import CheckpointStore, first_attempt
from objectives.models import ModelError
from objectives.objective import BatchSizeObjective
from objectives.tasks import Task, TaskError, load_task
from study.budget import Tally, reap
from study.config import ConfigError, StudyConfig
from study.locks import NoLock, storage_lock
from study.runner import create_or_resume, finished_count, run_trials, trial_sampler
from study.scaling import resolve_rule
from study.space import BatchSpace, SpaceError, build_space
from study.storage import JOURNAL_PREFIX, StorageError, open_storage, redact
from study.report.summary import budget_text, summary, trial_line
from study.workers import EXIT_INTERRUPTED, EXIT_USAGE, WorkerPool, describe_exit, plan_workers

#: Errors a user causes with flags or inputs: one line and exit code 2.
USER_ERRORS = (ConfigError, StorageError, TaskError, ModelError, SpaceError)
REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkersError(RuntimeError):
    """Every worker ended before the budget was spent; ``code`` is the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is there, else ``cpu``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return device


def build_task(config: StudyConfig) -> Task:
    """The task the config names, built with its model settings.

    Any object with the same field names works, such as the namespace of a script that
    declared its flags with :func:`study.cli.add_task_arguments`.
    """
    return load_task(
        config.task,
        model=config.model,
        hidden=tuple(config.hidden),
        seed=config.seed,
        synthetic_samples=config.synthetic_samples,
        synthetic_features=config.synthetic_features,
        synthetic_classes=config.synthetic_classes,
        data_dir=config.data_dir,
        download=getattr(config, "download", False),
    )


def plan_space(config: StudyConfig, task: Task, device: str) -> tuple[BatchSpace, dict]:
    """The batch-size space of a new study, and the attributes recorded with it.

    The memory cap is ``--max-batch-size`` when given, else the hardware probe's cap.
    """
    extra: dict = {"task_info": task.info}
    if config.max_batch_size is not None:
        cap, source = config.max_batch_size, "--max-batch-size"
    else:
        from objectives.probe import probe_batch_size

        result = probe_batch_size(
            task,
            optimizer=config.optimizer,
            device=device,
            memory_budget=config.memory_budget,
            memory_margin=config.memory_margin,
            min_batch_size=config.min_batch_size,
            precision=config.precision,  # the trials' settings, so the cap holds for them
            compile=config.compile,
        )
        extra["probe"] = result.to_dict()
        cap, source = result.max_batch_size, f"probe ({device})"
    space = build_space(
        config.min_batch_size,
        cap,
        config.max_accumulation,
        len(task.train),
        resolve_rule(config.scaling, config.optimizer),
        source,
    )
    return space, extra


def parent_device(config: StudyConfig) -> str:
    """Where this process trains or probes: with ``--gpus``, the first listed GPU."""
    if not config.gpus:
        return resolve_device(config.device)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--gpus {','.join(config.gpus)}: no CUDA GPU is visible; use --workers N on the CPU"
        )
    first = config.gpus[0]
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if first in visible:
        return resolve_device(f"cuda:{visible.index(first)}")
    count = torch.cuda.device_count()
    missing = [g for g in config.gpus if g.isdigit() and int(g) >= count]
    if missing and "CUDA_VISIBLE_DEVICES" not in os.environ:
        raise ConfigError(
            f"--gpus {','.join(config.gpus)}: this machine has {count} GPU(s), "
            f"ids 0-{count - 1}; drop {','.join(missing)}"
        )
    return resolve_device(f"cuda:{first}" if first.isdigit() else "cuda")


def checkpoint_store(config: StudyConfig) -> CheckpointStore | None:
    """Where the study's trials checkpoint each epoch (``None`` with ``--checkpoint-dir none``).

    Default: ``checkpoints/<study>`` next to an SQLite or journal file, else
    ``storage/checkpoints/<study>`` (workers on several machines need ``--checkpoint-dir``
    on a filesystem they share).
    """
    if config.checkpoint_dir is not None:
        if config.checkpoint_dir.lower() == "none":
            return None
        return CheckpointStore(Path(config.checkpoint_dir) / config.study_name)
    url = config.storage or ""
    base = Path("storage")
    if url.startswith(JOURNAL_PREFIX):
        base = Path(url[len(JOURNAL_PREFIX) :]).parent
    elif url.startswith("sqlite"):
        base = Path(make_url(url).database or "storage/x.db").parent
    return CheckpointStore(base / "checkpoints" / config.study_name)


def run_study(config: StudyConfig, out=sys.stdout) -> optuna.Study:
    """Create or resume the study of ``config`` and run trials until its budget is spent.

    With ``config.workers > 1`` or ``config.gpus``, worker processes run the trials; this
    process creates the study before they start, fails the trials of workers that die, and
    prints the summary when they are done.

    Raises:
        KeyboardInterrupt: on Ctrl-C, after the running trials are marked FAIL.
        One of :data:`USER_ERRORS` for bad settings, storage or task.
        WorkersError: every worker ended before the budget was spent.
    """
    if config.multi_objective and config.pruner != "none":
        print(
            f"note: --objectives {','.join(config.objectives)} makes the study multi-objective, "
            "and Optuna cannot prune multi-objective trials: pruning is off (--pruner none)",
            file=out,
        )
        config.pruner = "none"
    device = parent_device(config)
    if config.precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError(
            f"--precision fp16 needs a CUDA GPU and this run trains on {device}: "
            "use --precision bf16 or fp32"
        )
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
    lock = storage_lock(config.storage)
    built: list[Task] = []

    def make_space() -> tuple[BatchSpace, dict]:
        built.append(build_task(config))
        return plan_space(config, built[0], device)

    study, space, created = create_or_resume(config, storage, make_space, lock)
    where = redact(config.storage)
    verb = "created" if created else "resumed"
    print(
        f"study {config.study_name!r} {verb} in {where}: batch sizes {space.batch_sizes} "
        f"(memory cap {space.memory_cap} from {space.cap_source}), "
        f"rules {space.scaling_rules}, {budget_text(config.to_dict())} per trial",
        file=out,
    )
    done = finished_count(study)
    checkpoints = checkpoint_store(config)
    if done < config.trials and (config.workers > 1 or config.gpus):
        built.clear()  # the workers load the task themselves
        _run_workers(config, study, lock, out)
    elif done < config.trials:
        task = built[0] if built else build_task(config)
        objective = BatchSizeObjective(task, config, space, device, checkpoints)
        with tqdm(total=config.trials, initial=done, unit="trial", file=sys.stderr) as bar:

            def on_trial(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.write(trial_line(trial), file=out)
                if trial.state in (
                    optuna.trial.TrialState.COMPLETE,
                    optuna.trial.TrialState.PRUNED,
                ):
                    bar.update(1)

            run_trials(
                study,
                objective,
                config.trials,
                on_trial=on_trial,
                lock=lock,
                sampler_for=trial_sampler(config, space),
            )
    if checkpoints is not None:  # keep only what a RUNNING or WAITING retry may resume
        unfinished = study.get_trials(
            deepcopy=False,
            states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING),
        )
        checkpoints.keep_only({first_attempt(t) for t in unfinished})
    lock.close()
    if created or done < config.trials:  # a rerun of a finished study changes nothing
        _publish(study, config, out)
    print("\n" + summary(study), file=out)
    browse = where[len(JOURNAL_PREFIX) :] if where.startswith(JOURNAL_PREFIX) else where
    print(
        f"\nbrowse it: optuna-dashboard {browse}   (or: python scripts/report.py "
        f"--storage {where} --study-name {config.study_name})",
        file=out,
    )
    return study


def _publish(study: optuna.Study, config: StudyConfig, out) -> None:
    """Update the study's dashboard note and attach the HTML report as study artifacts."""
    from study.report.dashboard import attach_report
    from study.report.note import write_study_note

    try:
        write_study_note(study)
        if config.artifact_dir.lower() != "none":
            ids = attach_report(study, config.artifact_dir)
            print(
                f"report attached to the study ({len(ids)} artifacts in {config.artifact_dir})",
                file=out,
            )
    except Exception as exc:  # the trials are stored; a report failure must not hide that
        print(f"warning: writing the note or the report failed ({exc})", file=sys.stderr)


def _run_workers(config: StudyConfig, study: optuna.Study, lock, out) -> None:
    """Run the study's trials in worker processes; return when they are all done."""
    specs = plan_workers(config.workers, config.gpus, config.workers_per_gpu)
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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    pool = WorkerPool(
        [sys.executable, "-m", "objectives.launch"], specs, config_to_json(config), env
    )
    pool.start()

    def tick() -> None:  # fail the trials of dead workers so that the others retry them
        try:
            reap(study, lock)
        except Exception as exc:  # a storage hiccup here must not stop the run
            print(f"warning: checking for dead workers failed ({exc})", file=sys.stderr)

    codes = pool.wait(tick, tick_s=max(1.0, config.heartbeat_interval / 2))
    count = Tally.of(study.get_trials(deepcopy=False))
    if count.finished >= config.trials:
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


def config_to_json(config: StudyConfig) -> str:
    """The settings a worker process receives (on stdin: the storage URL may hold a password)."""
    data = dataclasses.asdict(config)
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()})


def config_from_json(text: str) -> StudyConfig:
    """The inverse of :func:`config_to_json` (validated)."""
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return StudyConfig(**data).validate()


def worker_main(argv: list[str] | None = None) -> int:
    """A worker process: claim and run the study's trials until its budget is spent.

    Reads its settings from stdin (:func:`config_to_json`); the study must exist. Prints
    one line per trial. Exit codes: 0 done, 2 bad settings/storage/task, 130 interrupted
    (SIGINT or SIGTERM: the running trial is marked FAIL first).
    """
    parser = argparse.ArgumentParser(prog="python -m objectives.launch")
    parser.add_argument("--worker-index", type=int, required=True)
    args = parser.parse_args(argv)
    name = os.environ.get("BATCHSIZE_WORKER", f"w{args.worker_index}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = config_from_json(sys.stdin.read())
        storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
        lock = storage_lock(config.storage)

        def no_new_study() -> tuple[BatchSpace, dict]:
            raise StorageError(f"study {config.study_name!r} does not exist; workers only join")

        study, space, _ = create_or_resume(config, storage, no_new_study, lock)
        device = resolve_device("cuda" if config.gpus else config.device)  # no silent CPU
        objective = BatchSizeObjective(
            build_task(config), config, space, device, checkpoint_store(config)
        )

        def on_trial(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            print(f"{trial_line(trial)}  [{name}]", flush=True)

        run_trials(
            study,
            objective,
            config.trials,
            on_trial=on_trial,
            lock=lock,
            sampler_for=trial_sampler(config, space),
        )
    except USER_ERRORS as exc:
        print(f"error: [{name}] {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
