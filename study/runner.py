"""Creating or resuming a study and running trials until its budget is spent.

The study's settings and its batch-size space are stored in the study when it is created, so
a resume (or another worker) samples exactly the same space; a resume whose settings differ
is refused rather than mixing incomparable trials. ``--trials N`` is the study's total: a run
continues until N trials are finished (COMPLETE or PRUNED), never redoing finished ones.

Example:
    >>> config = StudyConfig(trials=3).validate()                        # doctest: +SKIP
    >>> study, space, created = create_or_resume(config, storage, make_space)  # doctest: +SKIP
    >>> run_trials(study, objective, total=config.trials)               # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.config import ConfigError, StudyConfig, differences
from study.space import BatchSpace

METRIC_NAME = "val_accuracy"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 3


def make_sampler(config: StudyConfig, space: BatchSpace) -> optuna.samplers.BaseSampler:
    """The sampler ``config.sampler`` seeded with ``config.seed``."""
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.sampler == "grid":
        grid: dict[str, list] = {"batch_size": list(space.batch_sizes)}
        if len(space.scaling_rules) > 1:
            grid["scaling_rule"] = list(space.scaling_rules)
        return optuna.samplers.GridSampler(grid, seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=10)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The pruner ``config.pruner``; epochs are the pruning steps.

    The median pruner waits a quarter of the epochs: large batches take fewer steps per epoch
    and start slower, and pruning them at epoch 2 would judge the batch size by its start.
    """
    if config.pruner == "median":
        warmup = max(1, config.epochs // 4)
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.epochs)
    return optuna.pruners.NopPruner()


def _existing_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def create_or_resume(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    make_space: Callable[[], tuple[BatchSpace, dict]],
) -> tuple[optuna.Study, BatchSpace, bool]:
    """Open study ``config.study_name``, creating it (and its space) if it does not exist.

    Args:
        config: The validated settings of this run.
        storage: An opened storage (see :func:`study.storage.open_storage`).
        make_space: Called only when the study is new: returns the space and extra study
            attributes to store with it (the task's sizes, the probe's table).

    Returns:
        ``(study, space, created)``.

    Raises:
        ConfigError: the stored study was created with settings that differ from ``config``.
    """
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
        space = BatchSpace.from_dict(stored["space"])
    else:
        space, extra_attrs = make_space()
    study = optuna.create_study(
        storage=storage,
        study_name=config.study_name,
        direction="maximize",
        sampler=make_sampler(config, space),
        pruner=make_pruner(config),
        load_if_exists=True,
    )
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
        for key, value in extra_attrs.items():
            study.set_user_attr(key, value)
        study.set_user_attr("config", config.to_dict())
        study.set_user_attr("space", space.to_dict())  # written last: marks a complete setup
    return study, space, created


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the budget: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> int:
    """Run trials one at a time until ``total`` are finished; return how many this run did.

    KeyboardInterrupt propagates after Optuna has marked the interrupted trial FAIL (failed
    attempts do not count towards ``total``; a rerun continues).
    """
    states: list[TrialState] = []

    def record(study: optuna.Study, trial: FrozenTrial) -> None:
        states.append(trial.state)
        if on_trial is not None:
            on_trial(study, trial)

    while finished_count(study) < total:
        study.optimize(objective, n_trials=1, callbacks=[record])
        if states[-MAX_CONSECUTIVE_FAILURES:] == [TrialState.FAIL] * MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"the last {MAX_CONSECUTIVE_FAILURES} trials failed without an exception "
                "(the objective returned no number); see the warnings above"
            )
    return len(states)
