"""Fair pruning and collapse detection.

The pruner must not stop a trial because its batch size makes fewer updates per epoch: a large
batch that is behind the small ones at epoch 3, but level with the other large batches, runs
on. Optuna's median pruner, which the study used before, stops it; these tests show both.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from study.collapse import chance_accuracy, collapse_reason
from study.pruning import FairMedianPruner
from study.stats import median

SPACE = {
    "batch_size": CategoricalDistribution([8, 64, 512]),
    "scaling_rule": CategoricalDistribution(["linear", "none"]),
}
#: Per-epoch validation accuracy: small batches learn fast per epoch, large ones slowly, and
#: both end level (what digits shows with linear scaling).
FAST = [0.80, 0.90, 0.94, 0.95, 0.96, 0.96, 0.96, 0.96]
SLOW = [0.20, 0.45, 0.62, 0.75, 0.85, 0.91, 0.94, 0.955]
STUCK = [0.10, 0.11, 0.10, 0.11, 0.10, 0.10, 0.11, 0.10]


def _study(direction: str, pruner: optuna.pruners.BasePruner, done: list) -> optuna.Study:
    """A study holding completed trials ``(batch, rule, curve)``."""
    study = optuna.create_study(direction=direction, pruner=pruner)
    for batch, rule, curve in done:
        curve = _oriented(curve, direction)
        study.add_trial(
            optuna.trial.create_trial(
                params={"batch_size": batch, "scaling_rule": rule},
                distributions=SPACE,
                value=curve[-1],
                intermediate_values=dict(enumerate(curve, start=1)),
            )
        )
    return study


def _oriented(curve: list[float], direction: str) -> list[float]:
    """Accuracy as is; for a minimised metric, the error rate (lower is better)."""
    return list(curve) if direction == "maximize" else [1 - v for v in curve]


def _pruned_at(
    study: optuna.Study, batch: int, rule: str, curve: list[float], phase: str | None = None
) -> int | None:
    """Run a trial of ``curve`` in ``study``; the epoch it is pruned at, or ``None``."""
    study.enqueue_trial({"batch_size": batch, "scaling_rule": rule})
    trial = study.ask(SPACE)
    if phase is not None:
        trial.set_user_attr("phase", phase)
    curve = _oriented(curve, study.direction.name.lower())
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return epoch
    study.tell(trial, curve[-1])
    return None


#: Completed trials of a study where small batches dominate the early epochs.
HISTORY = [(8, "linear", FAST)] * 4 + [(64, "linear", FAST)] * 2 + [(512, "linear", SLOW)] * 2


def _median_pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def _fair_pruner(n_startup_trials: int = 2) -> FairMedianPruner:
    return FairMedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=2, margin=0.01)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_old_median_prunes_a_slow_large_batch_and_the_fair_one_does_not(direction):
    old = _pruned_at(_study(direction, _median_pruner(), HISTORY), 512, "linear", SLOW)
    fair = _pruned_at(_study(direction, _fair_pruner(), HISTORY), 512, "linear", SLOW)
    assert old == 2  # the first epoch after warm-up (steps from 1): behind the small ones
    assert fair is None  # level with the other large batches: it runs on
    assert SLOW[-1] >= max(FAST) - 0.01  # and it ends within tolerance of the best


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_stuck_trial_is_still_pruned(direction):
    for batch in (8, 512):
        study = _study(direction, _fair_pruner(), HISTORY)
        assert _pruned_at(study, batch, "linear", STUCK) == 2


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_small_batch_behind_the_large_ones_is_pruned(direction):
    # Batch 8 made 64 times the updates of batch 512 and is still behind it: a fair signal.
    behind = [0.15, 0.30, 0.40, 0.45, 0.50, 0.55, 0.60, 0.62]
    study = _study(direction, _fair_pruner(), HISTORY)
    assert _pruned_at(study, 8, "none", behind) == 2


def test_a_trial_within_the_margin_of_the_median_runs_on():
    slightly_behind = [v - 0.005 for v in SLOW]
    study = _study("maximize", _fair_pruner(), HISTORY)
    assert _pruned_at(study, 512, "linear", slightly_behind) is None
    no_margin = FairMedianPruner(n_startup_trials=2, n_warmup_steps=2)
    study = _study("maximize", no_margin, HISTORY)
    assert _pruned_at(study, 512, "linear", slightly_behind) == 2


def test_no_trial_is_pruned_before_enough_comparable_trials_completed():
    # Only two batch-512 trials completed: with 3 needed, nothing judges a batch-512 trial.
    study = _study("maximize", _fair_pruner(n_startup_trials=3), HISTORY)
    assert _pruned_at(study, 512, "linear", STUCK) is None
    study = _study("maximize", _fair_pruner(n_startup_trials=3), HISTORY)
    assert _pruned_at(study, 64, "linear", STUCK) == 2  # batches 64 and 512: four trials


def test_under_a_step_budget_the_fair_references_are_the_smaller_batches():
    # Equal updates per period: batch 512 saw 64 times the samples of batch 8 and leads.
    history = [(512, "linear", FAST)] * 4 + [(8, "linear", SLOW)] * 2
    steps = FairMedianPruner(n_startup_trials=2, n_warmup_steps=2, margin=0.01, budget="steps")
    assert _pruned_at(_study("maximize", steps, history), 8, "linear", SLOW) is None
    assert _pruned_at(_study("maximize", steps, history), 512, "linear", SLOW) == 2
    epochs = FairMedianPruner(n_startup_trials=2, n_warmup_steps=2, margin=0.01)
    assert _pruned_at(_study("maximize", epochs, history), 8, "linear", SLOW) == 2


def test_no_trial_is_pruned_at_its_last_step():
    study = _study("maximize", FairMedianPruner(2, 2, margin=0.01, n_steps=2), HISTORY)
    assert _pruned_at(study, 8, "linear", STUCK[:2]) is None  # done training: keep it
    study = _study("maximize", FairMedianPruner(2, 2, margin=0.01, n_steps=8), HISTORY)
    assert _pruned_at(study, 8, "linear", STUCK[:2]) == 2


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_lower_percentile_is_more_lenient(direction):
    # At epoch 2 the batch >= 64 trials stand at 0.90, 0.90, 0.45, 0.45: this trial (0.6) is
    # behind their median (0.675) and ahead of their 25th percentile (0.45).
    between = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.96, 0.96]
    median_rule = FairMedianPruner(2, 2, margin=0.01)
    lenient = FairMedianPruner(2, 2, margin=0.01, percentile=25)
    assert _pruned_at(_study(direction, median_rule, HISTORY), 64, "none", between) == 2
    assert _pruned_at(_study(direction, lenient, HISTORY), 64, "none", between) is None


def test_no_trial_is_pruned_during_warm_up():
    study = _study("maximize", FairMedianPruner(n_startup_trials=1, n_warmup_steps=5), HISTORY)
    assert _pruned_at(study, 8, "linear", STUCK) == 5


@pytest.mark.parametrize("pruner", [_fair_pruner(), FairMedianPruner(1, 0, "all", 0.0)])
def test_confirmation_trials_are_never_pruned(pruner):
    study = _study("maximize", pruner, HISTORY)
    assert _pruned_at(study, 8, "linear", STUCK, phase="confirm") is None
    assert _pruned_at(study, 8, "linear", STUCK, phase="search") is not None


def test_the_cell_reference_compares_only_the_same_batch_and_rule():
    history = HISTORY + [(512, "none", STUCK)] * 2
    pruner = FairMedianPruner(n_startup_trials=2, n_warmup_steps=2, reference="cell")
    # Batch 512 with rule "none" is level with its own cell (stuck too): not pruned.
    assert _pruned_at(_study("maximize", pruner, history), 512, "none", STUCK) is None
    assert _pruned_at(_study("maximize", pruner, history), 512, "linear", STUCK) == 2


def test_a_study_with_a_fixed_rule_and_nan_reports():
    space = {"batch_size": CategoricalDistribution([8, 512])}
    study = optuna.create_study(direction="maximize", pruner=_fair_pruner())
    for curve in (SLOW, SLOW):
        study.add_trial(
            optuna.trial.create_trial(
                params={"batch_size": 512},
                distributions=space,
                value=curve[-1],
                intermediate_values=dict(enumerate(curve, start=1)),
            )
        )
    study.enqueue_trial({"batch_size": 512})
    trial = study.ask(space)
    for epoch in (1, 2, 3):
        trial.report(SLOW[epoch - 1], epoch)
    assert not trial.should_prune()
    study.enqueue_trial({"batch_size": 512})
    broken = study.ask(space)
    for epoch in (1, 2, 3):
        broken.report(math.nan, epoch)
    assert broken.should_prune()  # nothing but NaN: nothing will come of it


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="reference"):
        FairMedianPruner(reference="fastest")
    with pytest.raises(ValueError):
        FairMedianPruner(margin=-1)
    with pytest.raises(ValueError, match="budget"):
        FairMedianPruner(budget="time")
    with pytest.raises(ValueError, match="percentile"):
        FairMedianPruner(percentile=120)
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_the_study_median_flag_builds_the_fair_pruner():
    from study.config import StudyConfig
    from study.runner import make_pruner

    pruner = make_pruner(StudyConfig(epochs=12, pruner="median"))
    assert isinstance(pruner, FairMedianPruner)
    assert pruner.n_warmup_steps == 4 and pruner.reference == "slower"
    assert pruner.percentile == 25 and pruner.n_steps == 12
    assert pruner.margin == 0.01 and pruner.budget == "epochs"
    steps = make_pruner(StudyConfig(pruner="median", budget="steps", steps=100))
    assert isinstance(steps, FairMedianPruner) and steps.budget == "steps"
    assert isinstance(make_pruner(StudyConfig(pruner="none")), optuna.pruners.NopPruner)
    hyperband = make_pruner(StudyConfig(pruner="hyperband"))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)


@pytest.fixture
def one_thread():
    """Train on one thread (a shared machine's cores fight over two threads), then restore."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_real_study_where_large_batches_learn_slowly_per_epoch(one_thread):
    """Digits: batch 512 makes 3 updates an epoch, batch 8 makes 135."""
    from objectives.tasks import load_task
    from objectives.train import TrainSettings, train_task

    task = load_task("digits", model="mlp")

    def curve(batch: int, seed: int, lr: float) -> list[float]:
        settings = TrainSettings(
            epochs=4, batch_size=batch, micro_batch_size=batch, lr=lr, seed=seed
        )
        values: list[float] = []
        train_task(task, settings, on_epoch=lambda e: values.append(_metric(e)))
        return values

    small = [(8, "none", curve(8, seed, 1e-3)) for seed in (1, 2, 3)]
    large = [(512, "none", curve(512, seed, 1e-2)) for seed in (4, 5, 6)]
    probe = curve(512, 7, 1e-2)
    assert probe[1] < min(c[1] for _, _, c in small)  # behind every small batch at epoch 2
    history = small + large

    def pruned(pruner: optuna.pruners.BasePruner) -> int | None:
        return _pruned_at(_study("maximize", pruner, history), 512, "none", probe)

    assert pruned(optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)) == 1
    fair = FairMedianPruner(n_startup_trials=3, n_warmup_steps=1, margin=0.01, n_steps=4)
    assert pruned(fair) is None


def _metric(epoch: object) -> float:
    value = getattr(epoch, "val_metric", getattr(epoch, "val_accuracy", None))
    assert value is not None
    return float(value)


# Collapse ---------------------------------------------------------------------------------


def test_a_trial_at_chance_after_a_quarter_of_its_budget_has_collapsed():
    reason = collapse_reason([0.5, 0.10, 0.10], [2.0, 2.31, 2.30], 2.30, 0.1, done=3, total=12)
    assert reason == "validation accuracy 0.10 at chance (0.10) after 3 of 12 epochs"


def test_nothing_is_said_before_a_quarter_of_the_budget():
    assert collapse_reason([0.1, 0.1], [2.5, 2.6], 2.3, 0.1, done=2, total=12) is None
    assert collapse_reason([0.1, 0.1, 0.1], [2.5, 2.6, 2.6], 2.3, 0.1, done=3, total=12)


def test_a_slow_large_batch_has_not_collapsed():
    # Near chance, but the metric moves off it and the training loss falls.
    slow = [0.10, 0.11, 0.16, 0.24]
    assert collapse_reason(slow, [2.30, 2.28, 2.2, 2.1], 2.31, 0.1, done=4, total=16) is None
    # At chance at the last evaluation only: one evaluation is not enough.
    assert collapse_reason([0.3, 0.1], [1.9, 2.0], 2.3, 0.1, done=2, total=8) is None


def test_a_model_that_fits_its_training_data_is_not_called_collapsed():
    fits = [0.10, 0.10, 0.10]
    assert collapse_reason(fits, [1.5, 0.9, 0.6], 2.3, 0.1, done=3, total=12) is None


def test_a_training_loss_above_its_start_is_collapse_even_without_a_chance_level():
    reason = collapse_reason([0.4, 0.3, 0.3], [2.2, 2.5, 2.61], 2.3, None, done=3, total=12)
    assert reason == "training loss 2.61 above its start 2.30 after 3 of 12 epochs"
    # Without the loss at initialisation, the first period's loss is the start.
    assert collapse_reason([0.4, 0.3, 0.3], [2.2, 2.5, 2.61], None, None, 3, 12, unit="evaluation")
    assert collapse_reason([0.4, 0.5, 0.6], [2.2, 2.0, 1.9], None, None, 3, 12) is None
    # Within 10% of the start is noise (a period's batches against the loss at initialisation),
    # and a trial with few updates is not judged: batch 1024 makes one update per epoch.
    assert collapse_reason([0.4, 0.3, 0.3], [2.2, 2.5, 2.41], 2.3, None, 3, 12) is None
    assert collapse_reason([0.1], [2.9], 2.3, None, 1, 2, updates=1) is None


def test_collapse_of_a_minimised_metric():
    # MSE of a constant predictor is the targets' variance, 1.0 here.
    reason = collapse_reason(
        [0.8, 1.0, 1.01], [0.9, 1.0, 0.99], 1.2, 1.0, 3, 10, "minimize", metric="mse"
    )
    assert reason == "validation mse 1.01 at chance (1.00) after 3 of 10 epochs"
    learning = collapse_reason([0.8, 0.6, 0.5], [0.9, 0.7, 0.6], 1.2, 1.0, 3, 10, "minimize")
    assert learning is None


def test_chance_accuracy_and_bad_arguments():
    assert chance_accuracy([3, 3, 1, 0]) == 0.5
    assert chance_accuracy([], num_classes=4) == 0.25
    with pytest.raises(ValueError):
        chance_accuracy([])
    with pytest.raises(ValueError):
        collapse_reason([], [], None, None, 1, 4, direction="up")
    assert collapse_reason([], [], None, None, 0, 4) is None


@pytest.mark.slow
def test_a_real_collapse_to_chance_and_a_real_blow_up(one_thread):
    """Digits with Adam at 300 times its usual learning rate: finite losses, no learning."""
    import torch

    from objectives.backend import training_loss
    from objectives.tasks import load_task
    from objectives.train import TrainSettings, train_task

    task = load_task("digits", model="mlp")
    torch.manual_seed(1)
    first = training_loss(task.build_model(), task.train)  # the loss at initialisation

    def run(batch: int) -> str | None:
        settings = TrainSettings(epochs=4, batch_size=batch, micro_batch_size=batch, lr=0.3, seed=1)
        result = train_task(task, settings)
        val = [_metric(e) for e in result.epochs]
        losses = [e.train_loss for e in result.epochs]
        chance = chance_accuracy([int(label) for _, label in task.val])
        return collapse_reason(val, losses, first, chance, done=4, total=16)

    assert run(64).startswith("validation accuracy 0.10 at chance")
    assert run(1024).startswith("training loss ")


def test_a_trial_with_few_updates_is_not_judged_at_chance_and_a_falling_loss_is_learning():
    flat = dict(first_loss=2.3, chance=0.1, done=3, total=12)
    at_chance = ([0.1, 0.1, 0.1], [2.3, 2.3, 2.3])
    assert collapse_reason(*at_chance, **flat, updates=3) is None  # one update per epoch
    assert collapse_reason(*at_chance, **flat, updates=30) is not None
    falling = ([0.1, 0.1, 0.1], [2.3, 2.2, 2.1])  # at chance yet, but its loss falls
    assert collapse_reason(*falling, **flat, updates=30) is None
