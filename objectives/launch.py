"""One study run from a validated config: the edge where ``study`` and ``objectives`` meet.

``scripts/run_study.py`` parses flags and calls :func:`run_study`; Python users can call it
with the same :class:`~study.config.StudyConfig`.

Example:
    >>> from study.config import StudyConfig
    >>> run_study(StudyConfig(trials=5, epochs=2, max_batch_size=64).validate())  # doctest: +SKIP
"""

from __future__ import annotations

import sys

import optuna
import torch
from tqdm import tqdm

from objectives.models import ModelError
from objectives.objective import BatchSizeObjective
from objectives.tasks import Task, TaskError, load_task
from study.config import ConfigError, StudyConfig
from study.runner import create_or_resume, finished_count, run_trials
from study.scaling import resolve_rule
from study.space import BatchSpace, SpaceError, build_space
from study.storage import StorageError, open_storage, redact
from study.summary import summary, trial_line

#: Errors a user causes with flags or inputs: one line and exit code 2.
USER_ERRORS = (ConfigError, StorageError, TaskError, ModelError, SpaceError)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is there, else ``cpu``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return device


def build_task(config: StudyConfig) -> Task:
    """The task the config names, built with its model settings."""
    return load_task(
        config.task,
        model=config.model,
        hidden=tuple(config.hidden),
        seed=config.seed,
        synthetic_samples=config.synthetic_samples,
        synthetic_features=config.synthetic_features,
        synthetic_classes=config.synthetic_classes,
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


def run_study(config: StudyConfig, out=sys.stdout) -> optuna.Study:
    """Create or resume the study of ``config`` and run trials until its budget is spent.

    Raises:
        KeyboardInterrupt: on Ctrl-C, after the running trial is marked FAIL.
        One of :data:`USER_ERRORS` for bad settings, storage or task.
    """
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
    device = resolve_device(config.device)
    built: list[Task] = []

    def make_space() -> tuple[BatchSpace, dict]:
        built.append(build_task(config))
        return plan_space(config, built[0], device)

    study, space, created = create_or_resume(config, storage, make_space)
    where = redact(config.storage)
    verb = "created" if created else "resumed"
    print(
        f"study {config.study_name!r} {verb} in {where}: batch sizes {space.batch_sizes} "
        f"(memory cap {space.memory_cap} from {space.cap_source}), "
        f"rules {space.scaling_rules}, {config.epochs} epochs per trial",
        file=out,
    )
    done = finished_count(study)
    if done < config.trials:
        task = built[0] if built else build_task(config)
        objective = BatchSizeObjective(task, config, space, device)
        with tqdm(total=config.trials, initial=done, unit="trial", file=sys.stderr) as bar:

            def on_trial(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.write(trial_line(trial), file=out)
                if trial.state in (
                    optuna.trial.TrialState.COMPLETE,
                    optuna.trial.TrialState.PRUNED,
                ):
                    bar.update(1)

            run_trials(study, objective, config.trials, on_trial=on_trial)
    print("\n" + summary(study), file=out)
    print(
        f"\nbrowse it: optuna-dashboard {where}   (or: python scripts/report.py "
        f"--storage {where} --study-name {config.study_name})",
        file=out,
    )
    return study
