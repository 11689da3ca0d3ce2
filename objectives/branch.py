"""The critical batch by branching (Merrill et al. 2025): one reference run, short branches.

A reference run trains at a small batch over the study's budget (counted in samples). At
``points`` places along it (fractions ``0, 1/points, ...`` of the budget) its whole state is
taken (:class:`Snapshot`: the model's weights, the optimizer's state, torch's random state and
the position in the data order) and the run *branches*: from that state, a branch trains at
a larger batch ``B`` (a power of two up to the space's cap, by accumulation above the memory
cap) at the scaling rule's learning rate for ``B``, for a window of samples, and its loss on
held-out batches (the validation split, the task's own loss; the task's metric beside it) is
compared with the reference's after the same samples. Each comparison is repeated with
``repeats`` data orders: repeat 0 continues the reference's own order, repeat ``k`` a fresh
one, the same for the branch and the reference's continuation (paired), so that each carries
a standard error; a third (up to ``repeats``) only where two leave the test undecided.
:mod:`study.branch_report` decides from them (the stated test, the critical batch at each
point, the recommendation and the schedule).

What keeps the cost down: the first point tests its batches in increasing order and stops
at the first where no rule keeps up; a later point starts at the previous point's critical
batch (the critical batch grows along training) and walks up from there, or down to the
first batch that keeps up when that one falls behind. At a batch the rules are tried one at
a time (the reference's rule first at each point, then the one that kept up last) and the
first that keeps up ends the batch; a rule that fell behind is not tried at the larger
batches of the point, nor one whose learning rate equals one that fell behind at that
batch (the same run). Repeat 0 of the reference's continuation is the reference itself.

Every update is the project's one update (:meth:`objectives.train.Step.update`): exact
accumulation, the task's loss and step hook, its optimizer, autocast.

Example (not run as a doctest: it trains)::

    result = branch_run(load_task("digits", model="mlp"), BranchSettings(...))
    print(format_answer(result.answer()))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from objectives.batch import call_model, micro_batches, stack_items, to_device
from objectives.data import Tensors, make_loader, place
from objectives.metrics import ACCURACY, SplitMetric
from objectives.tasks import Task
from objectives.train import TrainSettings, Update, autocast, make_step, torch_flags
from study.branch_report import BranchPoint, BranchResult, Comparison, Tolerances
from study.scaling import scaled_lr
from study.schedule import LRSchedule


@dataclass(frozen=True)
class BranchSettings:
    """How the reference run and its branches train.

    Args:
        reference_batch: The reference run's batch size.
        reference_rule: The rule of the reference's learning rate.
        rules: The rules each branch batch is tried with (``search``: all of them).
        batch_sizes: The batch sizes to branch into, above the reference's (powers of two up
            to the cap).
        memory_cap: The largest micro-batch; larger batches accumulate.
        budget_samples: Samples of one training (epochs x training set, or steps x the
            reference batch).
        base_lr: Learning rate at ``base_batch_size`` (the rules scale from it).
        base_batch_size: Its batch size.
        points: Branch points, at fractions ``i / points`` of the budget.
        window: The branch window, a fraction of the budget (at least ``min_updates`` updates
            of the branch's batch).
        repeats: Most data orders per comparison (at least 2: a standard error needs two);
            a comparison that two repeats decide (it keeps up, or is clearly behind) stops
            there.
        min_updates: Fewest updates a branch makes in its window.
        eval_items: Held-out items the losses and metrics are measured on.
        optimizer, weight_decay, lr_schedule, final_lr_fraction: The study's recipe.
        seed, device, precision: As in a trial.
    """

    reference_batch: int
    reference_rule: str
    rules: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    memory_cap: int
    budget_samples: int
    base_lr: float = 1e-3
    base_batch_size: int = 32
    points: int = 5
    window: float = 0.02
    repeats: int = 3
    min_updates: int = 1
    eval_items: int = 2048
    optimizer: str = "adam"
    weight_decay: float | None = None
    lr_schedule: str = "constant"
    final_lr_fraction: float = 0.0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def lr(self, rule: str, batch_size: int) -> float:
        """The peak learning rate of ``batch_size`` under ``rule``."""
        return scaled_lr(rule, self.base_lr, self.base_batch_size, batch_size)

    def window_for(self, batch_size: int) -> int:
        """The window of a branch at ``batch_size``: the share of the budget rounded up to
        whole updates, at least :attr:`min_updates` of them."""
        share = self.window * self.budget_samples
        return batch_size * max(self.min_updates, math.ceil(share / batch_size))


class SampleStream:
    """The data order: shuffles of ``0..n-1`` one after the other, read ``count`` at a time
    (groups may span two shuffles, so every sample of the budget is used and every update
    holds exactly its batch)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def take(self, count: int) -> torch.Tensor:
        parts = []
        while count > 0:
            if self.position >= len(self.order):
                self.order = torch.randperm(self.n, generator=self.generator)
                self.position = 0
            k = min(count, len(self.order) - self.position)
            parts.append(self.order[self.position : self.position + k])
            self.position += k
            count -= k
        return torch.cat(parts)

    def state(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.generator.get_state(), self.order.clone(), self.position

    @classmethod
    def restored(cls, n: int, state: tuple[torch.Tensor, torch.Tensor, int]) -> SampleStream:
        generator = torch.Generator()
        generator.set_state(state[0])
        stream = cls(n, generator)
        stream.order, stream.position = state[1].clone(), state[2]
        return stream


@dataclass
class Snapshot:
    """A run's whole state at one point: what a branch starts from."""

    model: dict
    optimizer: dict
    stream: tuple[torch.Tensor, torch.Tensor, int]
    rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    samples: int


@dataclass
class Run:
    """One run (the reference, its continuation or a branch) at one batch size and rule."""

    task: Task
    settings: BranchSettings
    train: Tensors | Dataset
    batch_size: int
    rule: str
    model: torch.nn.Module
    step: Any
    stream: SampleStream
    samples: int = 0
    trained: int = 0  # samples trained by this object (not counting what it started from)
    rng: torch.Tensor | None = None  # this run's own CPU random state, swapped in to train

    @classmethod
    def fresh(
        cls, task: Task, settings: BranchSettings, train: Tensors | Dataset, seed: int
    ) -> Run:
        """The reference run from initialisation (model seeded with ``seed``)."""
        torch.manual_seed(seed)
        model = task.build_model().to(settings.device)
        batch, rule = settings.reference_batch, settings.reference_rule
        step = make_step(model, _train_settings(settings, batch, rule), task)
        stream = SampleStream(len(train), torch.Generator().manual_seed(seed))
        run = cls(task, settings, train, batch, rule, model, step, stream)
        run.rng = torch.get_rng_state()
        return run

    @classmethod
    def branch(
        cls,
        snapshot: Snapshot,
        task: Task,
        settings: BranchSettings,
        train: Tensors | Dataset,
        batch_size: int,
        rule: str,
        stream_seed: int | None = None,
    ) -> Run:
        """A run from ``snapshot`` at ``batch_size`` and ``rule``: the same weights, optimizer
        state and random state; the snapshot's data order (``stream_seed`` ``None``) or a
        fresh one."""
        model = task.build_model().to(settings.device)
        model.load_state_dict(snapshot.model)
        step = make_step(model, _train_settings(settings, batch_size, rule), task)
        step.optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))
        if stream_seed is None:
            stream = SampleStream.restored(len(train), snapshot.stream)
        else:
            stream = SampleStream(len(train), torch.Generator().manual_seed(stream_seed))
        if snapshot.cuda_rng is not None:
            torch.cuda.set_rng_state_all(snapshot.cuda_rng)
        return cls(
            task,
            settings,
            train,
            batch_size,
            rule,
            model,
            step,
            stream,
            snapshot.samples,
            rng=snapshot.rng.clone(),
        )

    def snapshot(self) -> Snapshot:
        """This run's whole state, copied."""
        return Snapshot(
            model=copy.deepcopy(self.model.state_dict()),
            optimizer=copy.deepcopy(self.step.optimizer.state_dict()),
            stream=self.stream.state(),
            rng=(self.rng if self.rng is not None else torch.get_rng_state()).clone(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            samples=self.samples,
        )

    def lr_at(self, samples: int) -> float:
        """The learning rate of the update starting after ``samples`` samples: the rule's
        peak for this batch times the schedule's factor at that share of the budget."""
        s = self.settings
        peak = s.lr(self.rule, self.batch_size)
        index, total = samples // self.batch_size, max(1, s.budget_samples // self.batch_size)
        own = getattr(self.task, "lr_schedule", None)
        if own is not None:
            return peak * float(own(index, total))
        return peak * LRSchedule(s.lr_schedule, s.final_lr_fraction).factor(index, total)

    def advance(self, samples: int) -> None:
        """Train ``samples`` more samples (rounded down to whole updates)."""
        micro = min(self.batch_size, self.settings.memory_cap)
        total = max(1, self.settings.budget_samples // self.batch_size)
        device = torch.device(self.settings.device)
        if self.rng is not None:  # dropout and the like draw from this run's own state
            torch.set_rng_state(self.rng)
        for _ in range(samples // self.batch_size):
            lr = self.lr_at(self.samples)
            for group in self.step.optimizer.param_groups:
                group["lr"] = lr
            batch = _fetch(self.train, self.stream.take(self.batch_size), self.task, device)
            where = Update(self.samples // self.batch_size, total, lr)
            self.step.update(micro_batches(batch, micro), self.batch_size, where)
            self.samples += self.batch_size
            self.trained += self.batch_size
        self.rng = torch.get_rng_state()

    def advance_to(self, samples: int) -> None:
        """Train until ``samples`` samples are done (nothing when already there)."""
        if samples > self.samples:
            self.advance(samples - self.samples)


def _train_settings(settings: BranchSettings, batch_size: int, rule: str) -> TrainSettings:
    return TrainSettings(
        epochs=1,
        batch_size=batch_size,
        micro_batch_size=min(batch_size, settings.memory_cap),
        lr=settings.lr(rule, batch_size),
        optimizer=settings.optimizer,
        seed=settings.seed,
        device=settings.device,
        precision=settings.precision,
        weight_decay=settings.weight_decay,
    )


def _fetch(data: Tensors | Dataset, index: torch.Tensor, task: Task, device: torch.device):
    """The batch of the samples at ``index``: sliced from tensors, or collated items."""
    if isinstance(data, Tensors):
        index = index.to(data.y.device)
        return data.x[index], data.y[index]
    items = [data[int(i)] for i in index]
    inputs, targets = (task.collate or stack_items)(items)
    return to_device(inputs, device), to_device(targets, device)


@torch.no_grad()
def held_out(
    model: torch.nn.Module, data: Tensors | Dataset, task: Task, settings: BranchSettings
) -> tuple[float, float]:
    """``(mean loss, metric)`` of ``model`` on the held-out ``data``: the task's per-sample
    loss averaged over the items, and the task's metric (one pass)."""
    device = torch.device(settings.device)
    metric = SplitMetric(task.metric if task.metric is not None else ACCURACY, device)
    batch = min(settings.memory_cap, 512)
    was_training = model.training
    model.eval()
    if isinstance(data, Tensors):
        batches: Any = zip(data.x.split(batch), data.y.split(batch), strict=True)
    else:
        batches = make_loader(data, batch, device, shuffle=False, collate=task.collate)
    total, count = 0.0, 0
    with autocast(device, settings.precision):
        for x, y in batches:
            x, y = to_device(x, device), to_device(y, device)
            outputs = call_model(model, x)
            losses = task.loss(outputs, y).float()
            total += float(losses.sum())
            count += losses.numel()
            metric.add(outputs, y)
    model.train(was_training)
    loss = total / count if count else math.nan
    return loss, metric.value()


def _held_out_split(val: Tensors | Dataset, items: int) -> Tensors | Dataset:
    if isinstance(val, Tensors):
        return Tensors(val.x[:items], val.y[:items])
    return Subset(val, range(min(items, len(val))))


def _tolerances(tolerance: float, loss_tolerance: float, confidence: float, task: Task):
    direction = task.metric.direction if task.metric is not None else "maximize"
    sign = 1.0 if direction == "maximize" else -1.0
    return Tolerances(loss_tolerance, tolerance, confidence, sign)


@dataclass
class _Continuations:
    """The reference's continuations from one snapshot, one per repeat, extended as longer
    windows are asked for; repeat 0 is the reference run itself.

    A continuation measures itself at each of ``windows`` it passes on its way to a longer
    one, so that a shorter window asked for later (a point's ladder walking down) is read
    from the same samples without training anything again.
    """

    reference: Run
    snapshot: Snapshot
    make: Callable[[int], Run]
    windows: tuple[int, ...] = ()
    runs: dict[int, Run] = field(default_factory=dict)
    measured: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)

    def at(self, repeat: int, window: int, measure: Callable[[Run], tuple[float, float]]):
        key = (repeat, window)
        if key not in self.measured:
            run = self.runs.get(repeat)
            if run is None:
                run = self.reference if repeat == 0 else self.make(repeat)
                self.runs[repeat] = run
            start = self.snapshot.samples
            for stop in sorted({w for w in self.windows if w < window} | {window}):
                if run.samples > start + stop or (repeat, stop) in self.measured:
                    continue
                run.advance_to(start + stop)
                if run.samples != start + stop:
                    raise RuntimeError("the reference's continuation went past a branch window")
                self.measured[(repeat, stop)] = measure(run)
            if key not in self.measured:
                raise RuntimeError("the reference's continuation went past a branch window")
        return self.measured[key]


@dataclass
class _PointSearch:
    """The branches of one point: the ladder walk and the rules tried at each batch
    (:func:`branch_run`); ``trained`` counts every sample its branches and the repeats'
    own continuations of the reference trained."""

    task: Task
    settings: BranchSettings
    train: Tensors | Dataset
    tol: Tolerances
    measure: Callable[[Run], tuple[float, float]]
    snapshot: Snapshot
    index: int
    refs: _Continuations
    point: BranchPoint
    trained: int = 0

    def compare(self, size: int, rule: str) -> Comparison:
        """Branch ``size`` with ``rule``, repeated until the test is decided (two repeats
        that keep up or are clearly behind, else up to ``repeats``)."""
        s = self.settings
        window = s.window_for(size)
        comparison = Comparison(size, rule, s.lr(rule, size), window)
        for repeat in range(s.repeats):
            ref_loss, ref_metric = self.refs.at(repeat, window, self.measure)
            seed = None if repeat == 0 else _stream_seed(s.seed, self.index, repeat)
            run = Run.branch(self.snapshot, self.task, s, self.train, size, rule, seed)
            run.advance(window)
            self.trained += run.trained
            loss, metric = self.measure(run)
            comparison.branch_loss.append(loss)
            comparison.reference_loss.append(ref_loss)
            comparison.branch_metric.append(metric)
            comparison.reference_metric.append(ref_metric)
            if repeat >= 1 and (
                self.tol.keeps_up(comparison) or self.tol.clearly_behind(comparison)
            ):
                break
        self.point.comparisons.append(comparison)
        return comparison

    def first_to_keep_up(self, size: int, rules: list[str]) -> tuple[str | None, list[str]]:
        """Try ``rules`` in order at ``size``: the first that keeps up (or ``None``) and the
        rules that fell behind before it (a rule whose learning rate here is one that fell
        behind already is the same run: it is counted behind without training)."""
        behind: list[str] = []
        failed: set[float] = set()
        for rule in rules:
            lr = self.settings.lr(rule, size)
            if lr not in failed:
                if self.tol.keeps_up(self.compare(size, rule)):
                    return rule, behind
                failed.add(lr)
            behind.append(rule)
        return None, behind

    def walk(self, sizes: list[int], previous: int, order: list[str]) -> None:
        """Walk the ladder ``sizes`` from ``previous`` (the previous point's critical batch;
        from the bottom when it is not on the ladder): up while a batch keeps up, or, when
        the first batch falls behind, down to the first that keeps up. Rules are tried in
        ``order`` at the first batch, then with the one that kept up first."""
        start = sizes.index(previous) if previous in sizes else 0
        alive = list(order)
        for k, size in enumerate(sizes[start:]):
            kept, behind = self.first_to_keep_up(size, alive)
            if kept is None:
                if k == 0:  # the previous point's critical batch fell behind: walk down
                    for lower in reversed(sizes[:start]):
                        if self.first_to_keep_up(lower, order)[0] is not None:
                            break
                break
            alive = [kept] + [r for r in alive if r != kept and r not in behind]
        self.trained += sum(run.trained for k, run in self.refs.runs.items() if k != 0)


def rule_order(reference_rule: str, rules: tuple[str, ...]) -> list[str]:
    """The order rules are first tried in: the reference's rule, then the others as given.

    Example:
        >>> rule_order("sqrt", ("linear", "sqrt", "none"))
        ['sqrt', 'linear', 'none']
    """
    return [r for r in rules if r == reference_rule] + [r for r in rules if r != reference_rule]


def branch_run(
    task: Task,
    settings: BranchSettings,
    tolerance: float = 0.01,
    loss_tolerance: float = 0.2,
    confidence: float = 0.95,
    log: Callable[[str], None] | None = None,
) -> BranchResult:
    """Train the reference, branch at each point, and return what was measured.

    The search at a point (the module docstring's costs): the ladder of batches starts at
    the previous point's critical batch (the smallest batch above the reference's at the
    first point, or where the previous point found none) and walks up while a batch keeps
    up; when its first batch falls behind it walks down instead, to the first batch that
    keeps up. At each batch the rules are tried one at a time, the one that kept up last
    first (at the start, the reference's rule), and the first that keeps up ends the batch;
    a rule that fell behind is not tried at the larger batches of the point, nor a rule
    whose learning rate at this batch is one that already fell behind here (the same run).

    Args:
        task: The task (any loss, metric, inputs, collate, step hook, unit).
        settings: How to train (:class:`BranchSettings`).
        tolerance: The metric shortfall a branch may show and keep up (metric's units).
        loss_tolerance: The relative held-out loss excess a branch may show and keep up.
        confidence: Of the one-sided bounds of the stated test.
        log: Called with a progress line per point.

    Raises:
        ValueError: fewer than 2 repeats, no point, or a batch above the training set.
    """
    if settings.repeats < 2:
        raise ValueError(f"--branch-repeats {settings.repeats}: use at least 2 (an error needs 2)")
    if settings.points < 1:
        raise ValueError(f"--branch-points {settings.points}: use at least 1")
    started = time.perf_counter()
    device = torch.device(settings.device)
    train = place(task.train, device, task.collate, "train")
    val = _held_out_split(place(task.val, device, task.collate, "val"), settings.eval_items)
    if settings.reference_batch > len(train):
        raise ValueError(
            f"reference batch {settings.reference_batch} is above the training set "
            f"({len(train)}): use a smaller --reference-batch-size"
        )
    tol = _tolerances(tolerance, loss_tolerance, confidence, task)

    def measure(run: Run) -> tuple[float, float]:
        return held_out(run.model, val, task, settings)

    budget, ref_batch = settings.budget_samples, settings.reference_batch
    sizes = sorted(b for b in settings.batch_sizes if ref_batch < b <= len(train))
    windows = tuple(sorted({settings.window_for(b) for b in sizes}))
    points: list[BranchPoint] = []
    order = rule_order(settings.reference_rule, settings.rules)
    previous = ref_batch  # the critical batch of the previous point
    extra = 0  # samples of the repeats' own continuations and of the branches
    with torch_flags(device):
        reference = Run.fresh(task, settings, train, settings.seed)
        for i in range(settings.points):
            target = (budget * i // settings.points) // ref_batch * ref_batch
            reference.advance_to(target)
            snapshot = reference.snapshot()
            point = BranchPoint(round(snapshot.samples / budget, 4), snapshot.samples, ref_batch)

            def make(repeat: int, snapshot: Snapshot = snapshot, i: int = i) -> Run:
                return Run.branch(
                    snapshot, task, settings, train, ref_batch, settings.reference_rule,
                    _stream_seed(settings.seed, i, repeat),
                )  # fmt: skip

            search = _PointSearch(
                task, settings, train, tol, measure, snapshot, i,
                _Continuations(reference, snapshot, make, windows), point,
            )  # fmt: skip
            search.walk(sizes, previous, order)
            extra += search.trained
            points.append(point)
            previous, high = point.critical(tol)
            if log is not None:
                log(
                    f"point {i + 1}/{settings.points} at {point.fraction:.2f} of the budget: "
                    f"critical batch {previous} [{previous}-{high}] "
                    f"({time.perf_counter() - started:.0f} s)"
                )
        reference.advance_to(budget // ref_batch * ref_batch)
        _, final_metric = measure(reference)
    return BranchResult(
        task=task.name,
        metric=(task.metric or ACCURACY).name,
        direction=(task.metric or ACCURACY).direction,
        reference_batch=ref_batch,
        reference_rule=settings.reference_rule,
        cap=max([ref_batch, *sizes]),
        budget_samples=budget,
        samples_trained=reference.trained + extra,
        points=points,
        tolerances=tol,
        base_lr=settings.base_lr,
        base_batch_size=settings.base_batch_size,
        unit=task.unit or "samples",
        seconds=time.perf_counter() - started,
        reference_metric=final_metric,
    )


def _stream_seed(seed: int, point: int, repeat: int) -> int:
    """The data order of ``repeat`` (>= 1) at ``point``: distinct, reproducible."""
    return (seed * 1_000_003 + point * 7_919 + repeat * 104_729 + 17) % 2**31
