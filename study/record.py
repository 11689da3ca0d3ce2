"""The trial record: what one trial measured, stored as the Optuna trial's user attributes.

:class:`TrialRecord` is the one schema. The objective fills one and stores it with
:func:`write_record` (one transaction on SQLite and PostgreSQL, see :mod:`study.attrs`); the
runner writes the ``worker`` part when a trial starts and the budget the ``dropped`` part of
a closed retry. Every reader (the run's summary lines, the report, the dashboard note, the
figures) gets one from :func:`read_record`, the only place that knows how older or partial
records fall back: a trial killed before it wrote its record, a two-objective study's values,
parameters that stand in for attributes, and ``epochs_completed`` stored as a float.

Each stored field is a user attribute of the same name, stored only when it has a value (not
``None``, ``False`` or empty), except the metric's fields: ``val_metric``, ``test_metric``,
``train_metric`` and ``val_metric_per_epoch`` are stored under the study metric's name
(``val_accuracy``, ``val_mse``, ``val_bits_per_char``, ...; see :class:`MetricInfo`);
``docs/record.md`` (or the README) lists them in a table that
``tests/test_record.py`` checks against :meth:`TrialRecord.attribute_names`. ``number``,
``state`` and ``curve`` are read from the trial itself and never stored.

Nothing here imports torch.

Example:
    >>> import optuna
    >>> study = optuna.create_study(direction="maximize")
    >>> trial = study.ask()
    >>> write_record(trial, TrialRecord(batch_size=64, lr=0.01, epochs_completed=3))
    >>> frozen = study.tell(trial, 0.9)
    >>> record = read_record(frozen)
    >>> record.batch_size, record.val_metric, record.epochs_completed, record.state
    (64, 0.9, 3, 'COMPLETE')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.attrs import set_user_attrs

#: Metadata of the fields read from the trial itself (never stored as user attributes).
_FROM_TRIAL = {"stored": False}
#: Metadata of the metric's fields: stored under the metric's name (``val_metric`` as
#: ``val_<name>``).
_METRIC = {"metric": True}
#: Metric directions Optuna knows.
DIRECTIONS = ("maximize", "minimize")
#: The user attribute ``phase`` of the two kinds of trial: the search, then the confirmation
#: runs of the best cells (never pruned).
SEARCH, CONFIRM = "search", "confirm"
#: The phases of a study, in order.
PHASES = (SEARCH, CONFIRM)


@dataclass(frozen=True)
class MetricInfo:
    """The study's metric: its name, its direction and what a "sample" counts.

    Stored as the study user attribute ``metric`` (``{"name", "direction", "unit"}``); a study
    written before it existed reads as accuracy, maximised, counted in samples.

    Example:
        >>> mse = MetricInfo("mse", "minimize")
        >>> mse.val_name, mse.better(0.2, 0.3), mse.sign
        ('val_mse', True, -1)
    """

    name: str = "accuracy"
    direction: str = "maximize"
    unit: str = "samples"
    #: ``(lower, upper)`` the metric cannot leave (``None``: an open side), or ``None``.
    bounds: tuple[float | None, float | None] | None = None

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is."""
        return 1 if self.direction == "maximize" else -1

    @property
    def val_name(self) -> str:
        return f"val_{self.name}"

    @property
    def test_name(self) -> str:
        return f"test_{self.name}"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a * self.sign > b * self.sign

    def label(self) -> str:
        """``accuracy (higher is better)``."""
        return f"{self.name} ({'higher' if self.sign > 0 else 'lower'} is better)"

    def stored_name(self, field_name: str) -> str:
        """The user attribute a metric field is stored as: ``val_metric`` -> ``val_<name>``."""
        return field_name.replace("metric", self.name, 1)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "direction": self.direction, "unit": self.unit}
        if self.bounds is not None:
            data["bounds"] = list(self.bounds)
        return data

    def clip(self, lo: float, hi: float) -> tuple[float, float]:
        """``[lo, hi]`` within :attr:`bounds` (an interval of a mean cannot leave them)."""
        lower, upper = self.bounds or (None, None)
        if lower is not None:
            lo, hi = max(lo, lower), max(hi, lower)
        if upper is not None:
            lo, hi = min(lo, upper), min(hi, upper)
        return lo, hi

    @classmethod
    def from_dict(cls, data: Any) -> MetricInfo:
        """Read the stored form; anything missing or malformed is the default."""
        if not isinstance(data, dict):
            return ACCURACY
        direction = data.get("direction")
        name = str(data.get("name") or "accuracy")
        bounds = data.get("bounds")
        if "bounds" not in data and name == "accuracy":
            bounds = ACCURACY.bounds  # stored before metrics had bounds
        return cls(
            name=name,
            direction=direction if direction in DIRECTIONS else "maximize",
            unit=str(data.get("unit") or "samples"),
            bounds=_bounds(bounds),
        )


def _bounds(value: Any) -> tuple[float | None, float | None] | None:
    """Stored bounds read back: two numbers or nulls, else ``None``."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    if not all(v is None or isinstance(v, int | float) for v in value):
        return None
    return (value[0], value[1])


#: The default metric (classification accuracy, a fraction).
ACCURACY = MetricInfo(bounds=(0.0, 1.0))


def study_metric(study: optuna.Study) -> MetricInfo:
    """The metric of ``study`` (its ``metric`` attribute; accuracy for older studies)."""
    stored = study.user_attrs.get("metric")
    return MetricInfo.from_dict(stored) if stored is not None else ACCURACY


@dataclass(frozen=True)
class OutOfMemory:
    """One out-of-memory failure of a trial's attempt (an item of ``TrialRecord.oom``).

    Args:
        micro_batch_size: Samples per forward/backward pass of the attempt that failed.
        accumulation_steps: Micro-batches per update of that attempt.
        epoch: The epoch (1-based) in which it failed.
        error: The first line of the error.
    """

    micro_batch_size: int
    accumulation_steps: int
    epoch: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        """The stored form: a JSON object with the same keys."""
        return dataclasses.asdict(self)


@dataclass
class TrialRecord:
    """One trial's record; ``None`` (or ``False``, empty) where the trial did not record it.

    Stored fields (user attributes of the same name):

    Args:
        batch_size: Effective (global) batch size: samples per update, over all devices.
        micro_batch_size: Samples per forward/backward pass on one device (what finally
            trained).
        devices: Devices (processes) the trial trained on; absent: 1.
        accumulation_steps: Micro-batches per update on each device
            (``batch_size = micro x devices x steps``).
        lr: Learning rate the trial used (the searched multiplier included).
        scaling_rule: Learning-rate scaling rule that gave ``lr``.
        phase: ``search`` or ``confirm`` (a confirmation run of a promising cell, never
            pruned); read back, a trial without it is ``search``.
        val_metric: The study metric on the validation split after the last epoch run
            (stored as ``val_<metric>``, e.g. ``val_accuracy``). Read back, a complete
            trial's objective value wins, and a trial without the attribute takes the last
            point of its curve.
        test_metric: The metric on the test split, final model (complete trials; stored as
            ``test_<metric>``).
        train_metric: The metric on the training split, final model (``train_<metric>``).
        epochs_completed: Whole passes over the training data: the epochs run under an
            epoch budget (fewer when pruned); under a step budget, the whole passes its
            updates made. Always an ``int``.
        passes_completed: Step budget only: training samples seen / training-set size, to
            two decimals (studies written before this field stored that fraction as
            ``epochs_completed``; :func:`read_record` reads it here).
        train_time_s: Seconds in training steps (evaluation excluded). Read back, a
            two-objective trial's second value stands in when the attribute is missing.
        samples_per_s: Training units per second over those seconds (samples, or what the
            task counts: tokens, sequences; the study's ``metric`` attribute names it).
        samples_left_out: Training samples each epoch leaves out so that every update is
            exactly ``batch_size`` samples (the next epoch's shuffle covers them).
        peak_memory_bytes: Peak memory of a training step, in bytes.
        memory_source: How it was measured (``cuda_max_memory_allocated``,
            ``cpu_allocator_profile``, ...).
        seed: The trial's own seed (a retry keeps its first attempt's).
        diverged: The loss became NaN or infinite, or the trial collapsed (the trial was
            pruned; ``stop_reason`` says which).
        stop_reason: Why a trial stopped early, in words (pruned, diverged, collapsed).
        lr_multiplier: The sampled factor on the rule's learning rate (``--lr-search-width``).
        optimizer_steps: Updates the trial made (``--budget steps``).
        val_metric_per_epoch: The learning curve of a two-objective trial (Optuna refuses
            intermediate values there), epoch 1 first (``val_<metric>_per_epoch``).
        b_simple: Gradient noise scale of the final model, in samples (``--noise-scale``).
        b_simple_se: Standard error of ``b_simple``.
        worker: The process that ran the trial, ``hostname:pid`` (written when it starts).
        device: Where it trained: ``cpu``, ``cuda``, ``cuda:N``.
        device_name: CUDA only: the GPU's name.
        gpu: CUDA only: the GPU's id as the worker saw it in ``CUDA_VISIBLE_DEVICES``.
        oom: Its out-of-memory failures, first first.
        resumed_from_epoch: The epoch a retried trial resumed after.
        dropped: ``budget spent``: a queued retry closed as FAIL with no budget left.
        batch_schedule: The batch-size schedule the trial trained (its label, e.g.
            ``32@0,128@0.5``); ``batch_size`` is then its largest batch.

    Read from the trial, not stored:

    Args:
        number: Optuna's trial number.
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``.
        curve: ``(epoch, validation accuracy)`` pairs, epoch 1-based: the intermediate values,
            else ``val_accuracy_per_epoch``.
    """

    batch_size: int | None = None
    micro_batch_size: int | None = None
    devices: int | None = None
    accumulation_steps: int | None = None
    lr: float | None = None
    scaling_rule: str | None = None
    phase: str | None = None
    val_metric: float | None = field(default=None, metadata=_METRIC)
    test_metric: float | None = field(default=None, metadata=_METRIC)
    train_metric: float | None = field(default=None, metadata=_METRIC)
    epochs_completed: int | None = None
    passes_completed: float | None = None
    train_time_s: float | None = None
    samples_per_s: float | None = None
    samples_left_out: int | None = None
    peak_memory_bytes: int | None = None
    memory_source: str | None = None
    seed: int | None = None
    diverged: bool = False
    stop_reason: str | None = None
    lr_multiplier: float | None = None
    optimizer_steps: int | None = None
    val_metric_per_epoch: tuple[float, ...] = field(default=(), metadata=_METRIC)
    b_simple: float | None = None
    b_simple_se: float | None = None
    worker: str | None = None
    device: str | None = None
    device_name: str | None = None
    gpu: str | None = None
    oom: tuple[OutOfMemory, ...] = ()
    resumed_from_epoch: int | None = None
    dropped: str | None = None
    batch_schedule: str | None = None
    number: int = field(default=-1, metadata=_FROM_TRIAL)
    state: str = field(default="RUNNING", metadata=_FROM_TRIAL)
    curve: tuple[tuple[int, float], ...] = field(default=(), metadata=_FROM_TRIAL)

    @classmethod
    def attribute_names(cls, metric: MetricInfo = ACCURACY) -> tuple[str, ...]:
        """The user attributes a record may store, in the order of the fields (the metric's
        fields under ``metric``'s name)."""
        return tuple(
            metric.stored_name(f.name) if f.metadata.get("metric") else f.name
            for f in dataclasses.fields(cls)
            if f.metadata.get("stored", True)
        )

    def to_user_attrs(self, metric: MetricInfo = ACCURACY) -> dict[str, Any]:
        """The stored form: every stored field that has a value, as JSON-ready values, the
        metric's fields named after ``metric`` (``val_metric`` as ``val_accuracy``)."""
        attrs: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("stored", True):
                continue
            name = f.name
            value = getattr(self, name)
            if value is None or value is False or (isinstance(value, tuple) and not value):
                continue
            if name == "oom":
                value = [o.to_dict() for o in value]
            elif isinstance(value, tuple):
                value = list(value)
            attrs[metric.stored_name(name) if f.metadata.get("metric") else name] = value
        return attrs

    @property
    def rule_lr(self) -> float | None:
        """The learning rate the scaling rule gave, before the searched multiplier."""
        if self.lr is None or not self.lr_multiplier:
            return self.lr
        return self.lr / self.lr_multiplier


def write_record(trial: optuna.Trial, record: TrialRecord, metric: MetricInfo = ACCURACY) -> None:
    """Store ``record``'s attributes on the running ``trial`` (one transaction where the
    storage is relational); attributes already stored and not in ``record`` are kept."""
    set_user_attrs(trial, record.to_user_attrs(metric))


def read_record(
    trial: FrozenTrial,
    default_rule: str | None = None,
    metric_names: Sequence[str] | None = None,
    metric: MetricInfo = ACCURACY,
) -> TrialRecord:
    """Read one trial's record: its user attributes, and where they are missing, what stands
    in for them (parameters, objective values, the reported curve).

    Args:
        trial: The trial.
        default_rule: The scaling rule when the trial records none (the study's fixed rule).
        metric_names: The study's objective names; a complete trial's values are read by
            name (``val_<metric>``, and ``train_time_s`` in a two-objective study).
        metric: The study's metric (:func:`study_metric`): the metric's attributes are read
            under its name.
    """
    attrs = trial.user_attrs
    params = trial.params
    val_name = metric.val_name
    steps = sorted(trial.intermediate_values.items())
    listed = attrs.get(metric.stored_name("val_metric_per_epoch"))
    per_epoch = tuple(float(v) for v in listed if _finite(v)) if _listy(listed) else ()
    if not steps and per_epoch:  # two objectives: Optuna refuses report()
        steps = list(enumerate(per_epoch, start=1))
    curve = tuple((int(step), float(value)) for step, value in steps if _finite(value))
    names = list(metric_names or [val_name])
    values = dict(zip(names, trial.values or [], strict=False))
    complete = trial.state == TrialState.COMPLETE
    val = number_or_none(attrs.get(val_name))
    if complete and val_name in values:
        val = number_or_none(values[val_name])
    elif complete and trial.values and len(trial.values) == 1:
        val = number_or_none(trial.values[0])
    if val is None and curve and not complete:
        val = curve[-1][1]
    train_time = number_or_none(attrs.get("train_time_s"))
    if train_time is None and complete:
        train_time = number_or_none(values.get("train_time_s"))
    rule = attrs.get("scaling_rule", params.get("scaling_rule", default_rule))
    multiplier = number_or_none(attrs.get("lr_multiplier", params.get("lr_multiplier")))
    epochs, passes = _epochs_and_passes(attrs)
    phase = attrs.get("phase")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        curve=curve,
        batch_size=int_or_none(attrs.get("batch_size", params.get("batch_size"))),
        micro_batch_size=int_or_none(attrs.get("micro_batch_size")),
        devices=int_or_none(attrs.get("devices")),
        accumulation_steps=int_or_none(attrs.get("accumulation_steps")),
        lr=number_or_none(attrs.get("lr")),
        scaling_rule=str(rule) if rule is not None else None,
        phase=phase if phase in PHASES else SEARCH,
        val_metric=val,
        test_metric=number_or_none(attrs.get(metric.test_name)),
        train_metric=number_or_none(attrs.get(metric.stored_name("train_metric"))),
        epochs_completed=epochs,
        passes_completed=passes,
        train_time_s=train_time,
        samples_per_s=number_or_none(attrs.get("samples_per_s")),
        samples_left_out=int_or_none(attrs.get("samples_left_out")),
        peak_memory_bytes=int_or_none(attrs.get("peak_memory_bytes")),
        memory_source=_text(attrs.get("memory_source")),
        seed=int_or_none(attrs.get("seed")),
        diverged=bool(attrs.get("diverged", False)),
        stop_reason=_text(attrs.get("stop_reason")),
        lr_multiplier=multiplier if multiplier and multiplier > 0 else None,
        optimizer_steps=int_or_none(attrs.get("optimizer_steps")),
        val_metric_per_epoch=per_epoch,
        b_simple=number_or_none(attrs.get("b_simple")),
        b_simple_se=number_or_none(attrs.get("b_simple_se")),
        worker=_text(attrs.get("worker")),
        device=_text(attrs.get("device")),
        device_name=_text(attrs.get("device_name")),
        gpu=_text(attrs.get("gpu")),
        oom=_ooms(attrs.get("oom")),
        resumed_from_epoch=int_or_none(attrs.get("resumed_from_epoch")),
        dropped=_text(attrs.get("dropped")),
        batch_schedule=_text(attrs.get("batch_schedule")),
    )


def _epochs_and_passes(attrs: dict[str, Any]) -> tuple[int | None, float | None]:
    """``epochs_completed`` as an int and ``passes_completed``; a float ``epochs_completed``
    is a study written before ``passes_completed`` existed (a step budget's passes)."""
    stored = attrs.get("epochs_completed")
    passes = number_or_none(attrs.get("passes_completed"))
    if isinstance(stored, float) and number_or_none(stored) is not None:
        return math.floor(stored), passes if passes is not None else stored
    return int_or_none(stored), passes


def _ooms(value: Any) -> tuple[OutOfMemory, ...]:
    if not _listy(value):
        return ()
    return tuple(
        OutOfMemory(
            micro_batch_size=int_or_none(o.get("micro_batch_size")) or 0,
            accumulation_steps=int_or_none(o.get("accumulation_steps")) or 0,
            epoch=int_or_none(o.get("epoch")) or 0,
            error=str(o.get("error", "")),
        )
        for o in value
        if isinstance(o, dict)
    )


def _finite(value: Any) -> bool:
    return number_or_none(value) is not None


def _listy(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def number_or_none(value: Any) -> float | None:
    """``value`` as a finite float; ``None`` for anything else (bools, text, NaN, missing).

    Example:
        >>> number_or_none(3), number_or_none(True), number_or_none(float("nan"))
        (3.0, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def int_or_none(value: Any) -> int | None:
    """``value`` as an int (a finite number truncated); ``None`` for anything else."""
    number = number_or_none(value)
    return int(number) if number is not None else None
