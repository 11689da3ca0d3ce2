"""A median pruner that is fair to large batches: a trial is judged only against trials that
learn no faster per epoch than it does.

Optuna's :class:`~optuna.pruners.MedianPruner` compares a trial's validation metric at epoch
``e`` with the median of every completed trial at epoch ``e``. Across batch sizes that is not
a fair race: at epoch 3 on 1,078 samples, batch 8 has made ~400 updates and batch 1024 six,
so large batches sit below the median early and are stopped, although trained out they end
level with the small ones.

:class:`FairMedianPruner` keeps the percentile rule but changes who a trial is compared with.
By default (``reference="slower"``) a trial of batch size ``B`` is compared at step ``e`` only
with completed trials whose batch size is at least ``B``: those made no more updates per
epoch, so at equal epochs they had no head start, and being behind most of them is a signal
about the trial's own learning rate and batch, not about the clock. The largest batches are
thus compared only among themselves, and a small batch is stopped only when it is behind the
larger ones. The trial must also be worse than that reference by more than ``margin`` (the
study's tolerance: a trial only a seed's noise behind is not stopped), and is never stopped
at its last step (``n_steps``), where stopping saves nothing. ``reference="cell"`` compares
only within the same cell (batch size and scaling rule), ``reference="all"`` is Optuna's rule
(every completed trial), kept for the pruning benchmark.

The study's ``--pruner median`` (:func:`study.runner.make_pruner`) is this pruner with
``reference="slower"``, the lower quartile (``percentile=25``), ``margin`` = ``--tolerance``,
3 comparable trials, and no pruning in the first third of the periods. Measured by
``benchmarks/bench_pruning.py`` (160 trials each, 20 epochs, on digits, the synthetic task and
digits through the CNN; every pruned trial trained out): Optuna's median stopped 109, 4 and 87
trials, of which 57, 4 and 50 would have ended within 0.01 of the best cell (52-100%); this
rule stopped 9, 0 and 3, none of them within 0.01, and saves only 0-1% of the training time:
on these tasks nearly every trial ends within a point of the best, so a fair pruner finds
little to stop (the old one's 34-35% saving was mostly trials it should not have stopped).
Comparing within a cell, at equal updates, or with the median (rather than the lower
quartile) of the larger batches stopped 44-69% wrongly on digits.

Under a step budget (``budget="steps"``) every batch size makes the same updates per period
and a larger batch sees more samples, so the fair references are the batches at most the
trial's.

Trials of the confirmation phase (user attribute ``phase == "confirm"``) are never pruned.
Both directions are handled (``minimize`` for a loss-like metric such as MSE).

Nothing here imports torch.

Example (a batch-1024 trial behind two batch-8 trials at epoch 2, level with batch 1024):
    >>> import optuna
    >>> from optuna.distributions import CategoricalDistribution
    >>> space = {"batch_size": CategoricalDistribution([8, 1024])}
    >>> def finished(batch, curve):
    ...     return optuna.trial.create_trial(
    ...         params={"batch_size": batch}, distributions=space, value=curve[-1],
    ...         intermediate_values=dict(enumerate(curve, start=1)))
    >>> def stops(pruner):
    ...     study = optuna.create_study(direction="maximize", pruner=pruner)
    ...     for batch, curve in [(8, [0.9, 0.95, 0.96]), (8, [0.9, 0.96, 0.96]),
    ...                          (1024, [0.3, 0.6, 0.95])]:
    ...         study.add_trial(finished(batch, curve))
    ...     study.enqueue_trial({"batch_size": 1024})
    ...     trial = study.ask(space)
    ...     trial.report(0.3, 1)
    ...     trial.report(0.62, 2)
    ...     return bool(trial.should_prune())
    >>> stops(optuna.pruners.MedianPruner(n_startup_trials=1))
    True
    >>> stops(FairMedianPruner(n_startup_trials=1))
    False
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from study.batch_schedule import is_schedule_label, parse_schedule
from study.record import CONFIRM, number_or_none
from study.stats import percentile

#: Who a trial is compared with (see the module docstring).
REFERENCES = ("slower", "cell", "all")


class FairMedianPruner(BasePruner):
    """Prune a trial worse than the median of comparable trials at the same step.

    Args:
        n_startup_trials: Completed comparable trials (with a value at the step) needed
            before a trial can be pruned at that step.
        n_warmup_steps: Steps (epochs) before which no trial is pruned.
        reference: ``slower`` (completed trials with a batch size at least the trial's),
            ``cell`` (the same batch size and scaling rule) or ``all`` (Optuna's median rule).
        margin: How far (in the metric's units) the trial's best value so far must be behind
            the median to be pruned; 0 is Optuna's rule.
        percentile: The reference's percentile the trial must fall behind (50: the median;
            lower is more lenient). For a minimised metric, ``100 - percentile`` of the values.
        n_steps: The steps a trial plans; it is never pruned at its last one (the training is
            done: stopping it then only throws the result away). ``None``: unknown.
        budget: What a step is: ``epochs`` (a pass over the data: a larger batch makes fewer
            updates, so ``slower`` means a batch at least the trial's) or ``steps`` (a share of
            a step budget: every batch makes the same updates and a larger batch sees more
            samples, so ``slower`` means a batch at most the trial's).

    Raises:
        ValueError: an unknown ``reference`` or a negative number.
    """

    def __init__(
        self,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 0,
        reference: str = "slower",
        margin: float = 0.0,
        budget: str = "epochs",
        percentile: float = 50.0,
        n_steps: int | None = None,
    ) -> None:
        if budget not in ("epochs", "steps"):
            raise ValueError(f"budget {budget!r}: use epochs or steps")
        if reference not in REFERENCES:
            raise ValueError(f"reference {reference!r}: use one of {', '.join(REFERENCES)}")
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile {percentile}: use 0 to 100")
        if n_startup_trials < 1 or n_warmup_steps < 0 or not margin >= 0:
            raise ValueError(
                "n_startup_trials must be at least 1, n_warmup_steps and margin at least 0"
            )
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.reference = reference
        self.margin = float(margin)
        self.budget = budget
        self.percentile = float(percentile)
        self.n_steps = n_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` (running, just reported) should stop now."""
        if trial.user_attrs.get("phase") == CONFIRM:
            return False
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if self.n_steps is not None and step >= self.n_steps:
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        own = best_so_far(trial.intermediate_values.values(), maximize)
        if own is None:  # only NaN reported: nothing will come of it
            return True
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [
            value
            for other in completed
            if self.comparable(trial, other)
            and (value := number_or_none(other.intermediate_values.get(step))) is not None
        ]
        if len(values) < self.n_startup_trials:
            return False
        if maximize:
            return own < percentile(values, self.percentile) - self.margin
        return own > percentile(values, 100 - self.percentile) + self.margin

    def comparable(self, trial: FrozenTrial, other: FrozenTrial) -> bool:
        """Whether ``other`` (completed) is a fair reference for ``trial``."""
        if other.number == trial.number:
            return False
        if self.reference == "all":
            return True
        batch, other_batch = _batch(trial), _batch(other)
        if batch is None or other_batch is None:  # not a batch-size study: plain median
            return True
        if self.reference == "cell":
            return other_batch == batch and _rule(other) == _rule(trial)
        if self.budget == "steps":  # equal updates: a smaller batch saw fewer samples
            return other_batch <= batch
        return other_batch >= batch


def best_so_far(values: Sequence[float] | object, maximize: bool) -> float | None:
    """The best finite value of a trial's reports so far (``None`` if there is none).

    Example:
        >>> best_so_far([0.2, 0.5, 0.4], maximize=True), best_so_far([3.0, 2.0], False)
        (0.5, 2.0)
    """
    finite = [v for v in (number_or_none(x) for x in values) if v is not None]  # type: ignore[union-attr]
    if not finite:
        return None
    return max(finite) if maximize else min(finite)


def _batch(trial: FrozenTrial) -> int | None:
    """The trial's batch size; for a batch-size schedule its smallest (it made the most
    updates of its phases early on, so it is compared as that batch would be)."""
    value = trial.params.get("batch_size", trial.user_attrs.get("batch_size"))
    if is_schedule_label(value):
        return parse_schedule(value).smallest
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rule(trial: FrozenTrial) -> str | None:
    """The trial's scaling rule; ``None`` when the study fixes it (then all trials share it)."""
    rule = trial.params.get("scaling_rule")
    return str(rule) if rule is not None else None
