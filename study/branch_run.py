"""The branch command's work, torch-free: the space, the reference, the budget, the answer.

Builds the task and the batch-size space as a study would (``--max-batch-size`` or the
hardware probe; with ``store`` the study is created or resumed in its storage, exactly as
``run`` would, and the answer is stored as its ``branch`` user attribute), picks the
reference batch and rule, and hands the training to the backend
(:meth:`objectives.backend.TorchBackend.branch`). The statistics are
:mod:`study.branch_report`'s.

Example (not run as a doctest: it trains)::

    answer, text = run_branch(StudyConfig(task="digits").validate(), TorchBackend())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.branch_report import BRANCH_ATTR, format_answer
from study.config import StudyConfig
from study.scaling import RULES, resolve_rule
from study.space import BatchSpace


class BranchError(ValueError):
    """Settings the branch command cannot run with; the message names the fix."""


def reference_rule(config: StudyConfig) -> tuple[str, tuple[str, ...]]:
    """The reference's rule and the rules branches are tried with: the study's rule, or with
    ``search`` every rule and, for the reference, ``auto``'s (linear for SGD, sqrt else).

    Example:
        >>> from study.config import StudyConfig
        >>> reference_rule(StudyConfig(scaling="search", optimizer="sgd"))
        ('linear', ('linear', 'sqrt', 'none'))
    """
    rule = resolve_rule(config.scaling, config.optimizer)
    if rule == "search":
        return resolve_rule("auto", config.optimizer), tuple(RULES)
    return rule, (rule,)


def budget_samples(config: StudyConfig, train_size: int, reference_batch: int) -> int:
    """Samples of one training: ``--epochs`` passes, or ``--steps`` updates of the
    reference's batch."""
    if config.budget == "steps":
        return int(config.steps or 0) * reference_batch
    return config.epochs * train_size


def run_branch(
    config: StudyConfig,
    backend: Any,
    *,
    store: bool = False,
    reference_batch_size: int | None = None,
    points: int = 5,
    window: float = 0.02,
    repeats: int = 3,
    loss_tolerance: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> tuple[dict, str]:
    """Branch as ``config`` says; return the answer's JSON and its printed text.

    Raises:
        BranchError: a reference batch outside the space, or a window too short.
    """
    device = backend.device(config)
    task = backend.build_task(config)
    space, study = _space(config, backend, task, device, store)
    reference = reference_batch_size or space.batch_sizes[0]
    top = max(space.batch_sizes)
    if reference > top:
        raise BranchError(
            f"--reference-batch-size {reference} is above the space's largest batch {top}: "
            "use a smaller one"
        )
    ref_rule, rules = reference_rule(config)
    budget = budget_samples(config, len(task.train), reference)
    if budget < reference * points:
        raise BranchError(
            f"the budget ({budget} samples) holds fewer than one update of batch {reference} "
            "per branch point: raise --epochs or --steps, or lower --branch-points"
        )
    settings = {
        "reference_batch": reference,
        "reference_rule": ref_rule,
        "rules": rules,
        "batch_sizes": tuple(b for b in space.batch_sizes if b > reference),
        "memory_cap": space.memory_cap,
        "budget_samples": budget,
        "base_lr": config.base_lr,
        "base_batch_size": config.base_batch_size,
        "points": points,
        "window": window,
        "repeats": repeats,
        "optimizer": config.optimizer,
        "weight_decay": config.weight_decay,
        "lr_schedule": config.lr_schedule,
        "final_lr_fraction": config.final_lr_fraction,
        "seed": config.seed,
        "device": device,
        "precision": config.precision,
    }
    result = backend.branch(
        task, settings, config.tolerance, loss_tolerance, config.confidence, log
    )
    result.settings = {
        "points": points,
        "window": window,
        "repeats": repeats,
        "budget": config.budget,
        "epochs": config.epochs if config.budget == "epochs" else None,
        "steps": config.steps,
        "optimizer": config.optimizer,
        "base_lr": config.base_lr,
        "base_batch_size": config.base_batch_size,
        "space": space.batch_sizes,
        "memory_cap": space.memory_cap,
    }
    answer = result.answer()
    if study is not None:
        study.set_user_attr(BRANCH_ATTR, answer)
    return answer, format_answer(answer)


def _space(
    config: StudyConfig, backend: Any, task: Any, device: str, store: bool
) -> tuple[BatchSpace, Any]:
    """The space of the study ``config`` names: created or resumed in its storage (``store``),
    or planned without storing anything."""
    from study.orchestrate import plan_space

    if not store:
        return plan_space(config, task, device, backend)[0], None
    from study.locks import storage_lock
    from study.runner import create_or_resume
    from study.storage import open_storage

    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
    lock = storage_lock(config.storage)
    try:
        study, space, _ = create_or_resume(
            config, storage, lambda: plan_space(config, task, device, backend), lock
        )
    finally:
        lock.close()
    return space, study
