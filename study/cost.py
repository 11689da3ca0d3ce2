"""What a study will cost, before it runs: trainings, and seconds from measured throughput.

Torch-free arithmetic over what ``batchsize-study plan`` measures (each batch size's training
throughput, timed side by side) and the settings of the run:

* **Trainings.** The decision (``study.decision``) explores with search runs on three
  quarters of the space's cells (batch sizes x rules, rounded up; every cell with the grid
  sampler; at most ``--trials``: ``study.decision.exploration_trials``), then confirms:
  ``--confirm-runs`` fresh runs of the references (the leader and the next cells by the
  search runs, as many as the budget pays: ``Plan.reference_count``) and of each faster
  candidate it tests, twice that when a look is undecided, and ``--confirm-runs`` more of the
  most accurate reference (its estimate comes from runs after those that chose it). The
  expected count is the exploration plus the references', one candidate's and those runs,
  each only when the budget left pays it; ``--trials`` is the cap.
* **Seconds per trial** at batch ``B``: the samples it trains over its throughput, its
  evaluations (the validation split each epoch or period, then the training and test splits;
  a forward pass costed at :data:`FORWARD_SHARE` of a training step, at the largest batch),
  and the study's own cost per trial and per evaluation (storage, checkpoints, sampling:
  :data:`TRIAL_OVERHEAD_S`, :data:`EVALUATION_OVERHEAD_S`, measured on CPU by
  ``benchmarks/bench_overhead.py``). Pruned trials end early: the estimate counts every
  trial in full, an upper side.
* **Once per run**: the first trial's one-time cost (lazy imports of its first optimizer
  step and evaluation, :data:`FIRST_TRIAL_S`), start-up, the answer's timing and the report
  (:data:`FIXED_S`), and the probe (its seconds measured, :attr:`Workload.probe_s`).

Example:
    >>> work = Workload(train_size=1000, val_size=200, test_size=200, epochs=10)
    >>> rates = {32: 20_000.0, 64: 40_000.0}
    >>> round(trial_seconds(32, rates, work), 3)
    0.831
    >>> expected_trainings(trials=50, cells=6, confirm_runs=3)
    20
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from study.config import EVALUATION_PERIODS
from study.decision import Plan, exploration_trials

#: A forward pass (evaluation) per sample, as a share of a training step's time per sample.
FORWARD_SHARE = 1 / 3
#: The study's own seconds per trial beside training (sampling, the record, the heartbeat).
TRIAL_OVERHEAD_S = 0.1
#: The study's own seconds per evaluation (a storage write per report, a checkpoint).
EVALUATION_OVERHEAD_S = 0.02
#: Items of the training split the collapse check evaluates once per trial.
COLLAPSE_CHECK_ITEMS = 1024
#: Seconds a run's first trial takes beyond the others (measured on digits on CPU: about 1.9 s
#: more than the same batch size's later trials; torch imports ``torch._dynamo`` on the first
#: optimizer step, about 0.9 s of it).
FIRST_TRIAL_S = 1.5
#: Seconds a run spends outside its trials and its probe: start-up, the answer's timing, the
#: note and the report (measured on digits on this project's 2-core CPU: 2.4-2.5 s).
FIXED_S = 2.5


@dataclass(frozen=True)
class Workload:
    """What every trial trains and evaluates, and what the run does once beside them.

    Args:
        train_size, val_size, test_size: The splits' samples.
        epochs: Passes over the training set per trial (``--budget epochs``).
        steps: Optimizer updates per trial (``--budget steps``); ``None`` for epochs.
        probe_s: Seconds of the run's memory probe (0 when ``--max-batch-size`` sets the
            cap): measured by ``plan``, which probes as the run will.
    """

    train_size: int
    val_size: int
    test_size: int
    epochs: int = 20
    steps: int | None = None
    probe_s: float = 0.0

    def updates(self, batch_size: int) -> int:
        """Optimizer updates of one trial at ``batch_size``."""
        if self.steps is not None:
            return self.steps
        return self.epochs * (self.train_size // batch_size)

    @property
    def evaluations(self) -> int:
        """Validation passes of one trial: one per epoch, or per tenth of a step budget."""
        if self.steps is not None:
            return min(EVALUATION_PERIODS, self.steps)
        return self.epochs


def trial_seconds(batch_size: int, rates: Mapping[int, float], work: Workload) -> float:
    """Estimated seconds of one unpruned trial at ``batch_size``.

    Args:
        batch_size: The trial's batch (samples per update).
        rates: Training throughput in samples per second, by batch size (the largest is the
            evaluation's batch).
        work: What a trial trains and evaluates.
    """
    train = work.updates(batch_size) * batch_size / rates[batch_size]
    evaluated = work.evaluations * work.val_size + work.train_size + work.test_size
    evaluated += min(COLLAPSE_CHECK_ITEMS, work.train_size)
    evaluation = FORWARD_SHARE * evaluated / rates[max(rates)]
    return train + evaluation + TRIAL_OVERHEAD_S + work.evaluations * EVALUATION_OVERHEAD_S


def references(trials: int, cells: int, confirm_runs: int, every_cell: bool = False) -> int:
    """The cells confirmed as references (the leader and its contenders) in such a study."""
    explore = exploration_trials(trials, cells, every_cell)
    return Plan(total=trials, confirm_runs=confirm_runs, exploration=explore).reference_count


def expected_trainings(trials: int, cells: int, confirm_runs: int, every_cell: bool = False) -> int:
    """Trainings a study is expected to run: the exploration's search runs, then the
    references' and one candidate's confirmation runs, and the most accurate reference's runs
    after those that chose it, each only when the budget left pays it (as the decision asks)."""
    refs = references(trials, cells, confirm_runs, every_cell)
    estimate = 1 if refs > 1 else 0  # the most accurate's runs after those that chose it
    spent = exploration_trials(trials, cells, every_cell)
    # the decision asks for a look only when the budget left pays all of it
    for runs in [confirm_runs] * refs + [confirm_runs, estimate * confirm_runs]:
        if spent + runs > trials:
            break
        spent += runs
    return spent


@dataclass(frozen=True)
class Estimate:
    """A study's expected cost (seconds are estimates from measured throughput).

    Attributes:
        cells: Batch sizes x rules of the space.
        search: The exploration's search runs (:func:`study.decision.exploration_trials`).
        trainings: Expected trainings (:func:`expected_trainings`).
        cap: The most trainings the study may run (``--trials``).
        references: Cells confirmed as references (the leader and its contenders).
        seconds: Expected seconds of the trials and the fixed part.
        cap_seconds: Seconds if all ``cap`` trainings run (the study did not stop early),
            those after the exploration at the median batch size's time.
    """

    cells: int
    search: int
    trainings: int
    cap: int
    references: int
    seconds: float
    cap_seconds: float


def estimate(
    batch_sizes: list[int],
    rules: int,
    rates: Mapping[int, float],
    work: Workload,
    trials: int,
    confirm_runs: int,
    every_cell: bool = False,
) -> Estimate:
    """The cost of a study over ``batch_sizes`` x ``rules`` cells.

    ``every_cell``: the exploration runs every cell (the grid sampler). The exploration's
    search runs are costed at the mean of the cells' times (the sampler picks the cells); the
    confirmation runs at the median batch size's time (the leader and
    its candidate may sit anywhere in the space).
    """
    per_batch = {b: trial_seconds(b, rates, work) for b in batch_sizes}
    cells = len(batch_sizes) * rules
    explore = exploration_trials(trials, cells, every_cell)
    explore_s = sum(per_batch.values()) * rules * explore / cells
    trainings = expected_trainings(trials, cells, confirm_runs, every_cell)
    typical = statistics.median(per_batch.values())
    once = FIXED_S + FIRST_TRIAL_S + work.probe_s
    seconds = once + explore_s + (trainings - explore) * typical
    cap_seconds = once + explore_s + (trials - explore) * typical
    refs = references(trials, cells, confirm_runs, every_cell)
    return Estimate(cells, explore, trainings, trials, refs, seconds, cap_seconds)


def duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``7.5 min`` or ``3.2 h``.

    Example:
        >>> duration(0.42), duration(42), duration(450), duration(11520)
        ('0.4 s', '42 s', '7.5 min', '3.2 h')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
