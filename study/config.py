"""The study's configuration: every setting, validated once, with errors a user can act on.

Example:
    >>> config = StudyConfig(trials=10, epochs=3)
    >>> config.validate().storage
    'sqlite:///storage/batch-size.db'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace

from study.batch_schedule import ScheduleError, parse_schedule
from study.scaling import RULES, SCALING_CHOICES, resolve_rule, scaled_lr
from study.schedule import SCHEDULES
from study.space import is_power_of_two, largest_power_of_two
from study.units import MAX_BYTES

OPTIMIZERS = ("sgd", "adam", "adamw")
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random", "grid")
MODELS = ("mlp", "cnn", "resnet")
IMAGE_TASKS = ("mnist", "fashion-mnist", "cifar10")
BUILTIN_TASKS = ("digits", "synthetic", "regression", "charlm", *IMAGE_TASKS)
#: How a study stores a task given as a Python object (``objectives.run_study(task=...)``).
PYTHON_TASK_PREFIX = "python:"
PRECISIONS = ("fp32", "bf16", "fp16")
#: How many times a trial with a step budget (``--budget steps``) reports and may be pruned.
EVALUATION_PERIODS = 10

#: Settings that define what a study measures: a resume that changes one of them would mix
#: incomparable trials, so it is refused.
IDENTITY_FIELDS = (
    "task",
    "model",
    "hidden",
    "synthetic_samples",
    "synthetic_features",
    "synthetic_classes",
    "optimizer",
    "base_lr",
    "base_batch_size",
    "scaling",
    "epochs",
    "min_batch_size",
    "max_batch_size",
    "max_accumulation",
    "device",
    "memory_budget",
    "memory_margin",
    "precision",
    "compile",
    "objectives",
    "budget",
    "steps",
    "warmup_epochs",
    "warmup_steps",
    "weight_decay",
    "lr_schedule",
    "final_lr_fraction",
    "lr_search_width",
    "seed",  # chooses the built-in tasks' train/validation/test split
    "devices_per_trial",  # the batch sizes are global, the throughput the group's
    "data_dir",  # the image datasets' files
    "batch_schedule",  # a schedule cell is a choice of the space (absent in older studies)
)
#: ``--objectives`` values: the task's metric alone, or with training time (a Pareto front).
#: ``accuracy`` is the older spelling of ``metric`` (the default task's metric is accuracy).
OBJECTIVES = (("metric",), ("metric", "time"))
OBJECTIVE_ALIASES = {"accuracy": "metric"}
BUDGETS = ("epochs", "steps")
#: The study's name unless ``--study-name`` gives another.
DEFAULT_STUDY_NAME = "batch-size"


def default_storage(study_name: str = DEFAULT_STUDY_NAME) -> str:
    """The storage of a study without ``--storage``: an SQLite file named after it in storage/.

    Example:
        >>> default_storage("lm")
        'sqlite:///storage/lm.db'
    """
    return f"sqlite:///storage/{study_name}.db"


#: The default study's storage: what ``report`` and ``dashboard`` open without ``--storage``.
DEFAULT_STORAGE = default_storage()
#: The largest count a flag may give (trials, epochs, steps, batch sizes, workers, ...): what a
#: 32-bit signed integer holds, which every loop, tensor index and storage column can take.
MAX_COUNT = 2**31 - 1
#: The learning rates a study may train with, after the scaling rule and ``--lr-search-width``:
#: beyond them an optimizer's arithmetic overflows or does nothing (checked before storing).
LR_RANGE = (1e-30, 1e30)


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag, the bad value and the fix."""


@dataclass(frozen=True)
class StudyConfig:
    """Every setting of a study run (the flags of ``scripts/run_study.py``).

    Args:
        trials: The study's total number of finished trials (COMPLETE or PRUNED).
        task: ``digits``, ``synthetic``, or ``package.module:factory`` / ``file.py:factory``.
        model: ``mlp`` or ``cnn`` (built-in tasks).
        hidden: Hidden layer sizes of the model.
        epochs: Epochs per trial (the budget every batch size gets).
        optimizer: ``sgd`` (momentum 0.9), ``adam`` or ``adamw``.
        weight_decay: The optimizer's weight decay (``None``: torch's default, 0 for SGD and
            Adam, 0.01 for AdamW).
        lr_schedule: ``constant``, ``cosine`` or ``linear``: the learning rate over each
            trial's own updates, from the rule's peak (see :mod:`study.schedule`).
        final_lr_fraction: Where ``cosine`` and ``linear`` end, as a fraction of the peak.
        warmup_epochs: Epochs of linear warm-up to the peak (0: none).
        warmup_steps: Updates of linear warm-up to the peak (0: none; not with
            ``warmup_epochs``).
        base_lr: Learning rate at ``base_batch_size``.
        base_batch_size: Reference batch size of ``base_lr``.
        scaling: ``linear``, ``sqrt``, ``none``, ``auto`` or ``search`` (sample the rule).
        min_batch_size: Smallest batch, a power of two.
        max_batch_size: Largest micro-batch, a power of two; ``None`` asks the probe.
        max_accumulation: Most micro-batches accumulated into one update.
        pruner: ``median``, ``hyperband`` or ``none``.
        sampler: ``tpe``, ``random`` or ``grid``.
        seed: Seeds the sampler and (with the trial number) each trial's run.
        storage: SQLAlchemy URL of the study database.
        study_name: Name of the study in the storage.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        memory_budget: Bytes the probe may plan for (``None``: free memory less the margin).
        memory_margin: Fraction of free memory the probe leaves unused.
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a trial counts as dead
            (marked FAIL and retried).
        workers: Worker processes on this machine (with ``gpus``: their total, or 1).
        gpus: GPU ids; one worker per id (times ``workers_per_gpu``), each seeing only its
            GPU through ``CUDA_VISIBLE_DEVICES``.
        workers_per_gpu: Workers sharing each GPU of ``gpus``.
        devices_per_trial: Devices one trial trains on (data-parallel, one process each):
            K processes on the CPU, or K GPUs of ``gpus`` per trial. Batch sizes are global.
        collective_timeout: Seconds a rank of such a trial waits in a collective (and its
            helpers may take to start) before the trial fails and is retried.
        checkpoint_dir: Folder of per-epoch trial checkpoints (default: ``checkpoints``
            next to an SQLite or journal file, else ``storage/checkpoints``; ``none`` turns
            them off). Workers on several machines need a folder they all see.
        data_dir: Folder of the image datasets' files (``mnist``, ``fashion-mnist``,
            ``cifar10``).
        download: Fetch missing image-dataset files (needs torchvision and internet).
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast and a gradient
            scaler; CUDA only).
        compile: Train through ``torch.compile``.
        objectives: ``("metric",)`` (the task's metric on the validation split, in its own
            direction) or ``("metric", "time")`` (and training time, minimised).
        confirm_runs: Complete runs each cell of the answer gets before it is named: the
            confirmation phase trains the promising cells again with fresh seeds, unpruned.
        tolerance: How far (in the metric's units) the fastest cell of the answer may be from
            the most accurate one.
        confidence: The confidence of the answer's "within tolerance" claim (one minus the
            chance of naming a cell truly outside) and of its intervals.
        batch_schedule: A batch-size schedule (``32@0,128@0.2,512@0.5``, see
            :mod:`study.batch_schedule`) studied as one more cell beside the constant batches.
    """

    trials: int = 50
    task: str = "digits"
    model: str = "cnn"
    hidden: tuple[int, ...] = (128, 64)
    synthetic_samples: int = 4096
    synthetic_features: int = 32
    synthetic_classes: int = 4
    epochs: int = 20
    optimizer: str = "adam"
    base_lr: float = 1e-3
    base_batch_size: int = 32
    scaling: str = "search"
    min_batch_size: int = 8
    max_batch_size: int | None = None
    max_accumulation: int = 1
    pruner: str = "median"
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None
    study_name: str = DEFAULT_STUDY_NAME
    device: str = "auto"
    memory_budget: int | None = None
    memory_margin: float = 0.1
    heartbeat_interval: int = 10
    grace_period: int = 30
    workers: int = 1
    gpus: tuple[str, ...] | None = None
    workers_per_gpu: int = 1
    devices_per_trial: int = 1
    collective_timeout: float = 300.0
    checkpoint_dir: str | None = None
    data_dir: str = "storage/data"
    download: bool = False
    precision: str = "fp32"
    compile: bool = False
    objectives: tuple[str, ...] = ("metric",)
    budget: str = "epochs"
    steps: int | None = None
    warmup_epochs: int = 0
    warmup_steps: int = 0
    weight_decay: float | None = None
    lr_schedule: str = "constant"
    final_lr_fraction: float = 0.0
    lr_search_width: float = 1.0
    noise_scale: bool = False
    confirm_runs: int = 3
    tolerance: float = 0.01
    confidence: float = 0.95
    artifact_dir: str = "storage/artifacts"
    batch_schedule: str | None = None

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def directions(self, metric_direction: str = "maximize") -> list[str]:
        """The study's directions: the metric's, and ``minimize`` for time."""
        return [metric_direction if o == "metric" else "minimize" for o in self.objectives]

    def metric_names(self, metric_name: str = "accuracy") -> list[str]:
        """The study's objective names: ``val_<metric>``, and ``train_time_s`` for time."""
        return [f"val_{metric_name}" if o == "metric" else "train_time_s" for o in self.objectives]

    def validate(self) -> StudyConfig:
        """Check every setting and return the config to run, with the derived values filled in.

        The config itself is frozen and never changed: the result is a copy
        (``dataclasses.replace``) with the default storage, the worker count of ``--gpus`` and
        tuples where lists were given. Raise :class:`ConfigError` naming the flag and the fix.
        """
        _positive("--trials", self.trials)
        _positive("--epochs", self.epochs)
        for flag, value, least in (
            ("--confirm-runs", self.confirm_runs, 2),
            ("--warmup-epochs", self.warmup_epochs, 0),
            ("--min-batch-size", self.min_batch_size, 1),
            ("--base-batch-size", self.base_batch_size, 1),
            ("--max-batch-size", self.max_batch_size, 1),
            ("--heartbeat-interval", self.heartbeat_interval, 1),
            ("--grace-period", self.grace_period, 1),
        ):
            if value is not None and value >= least:
                _count(flag, value)
        for size in self.hidden:
            _count("--hidden", size)
        if type(self.seed) is not int or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed {self.seed}: use a whole number from 0 to {2**32 - 1}")
        objectives = tuple(OBJECTIVE_ALIASES.get(o, o) for o in self.objectives)
        if objectives not in OBJECTIVES:
            raise ConfigError(
                f"--objectives {','.join(self.objectives)}: use metric, or metric,time "
                "(the task's validation metric; with time, also minimise training time)"
            )
        if type(self.confirm_runs) is not int or self.confirm_runs < 2:
            raise ConfigError(
                f"--confirm-runs {self.confirm_runs}: use at least 2 (runs per confirmed cell; "
                "an interval needs two)"
            )
        if not (isinstance(self.tolerance, int | float) and 0 <= self.tolerance < math.inf):
            raise ConfigError(
                f"--tolerance {self.tolerance}: use a number of at least 0, in the metric's units"
            )
        if not (isinstance(self.confidence, int | float) and 0.5 <= self.confidence < 1):
            raise ConfigError(
                f"--confidence {self.confidence}: use a number in [0.5, 1), e.g. 0.95 (the "
                "chance that a cell named within tolerance truly is)"
            )
        _choice("--budget", self.budget, BUDGETS)
        if self.budget == "steps" and self.steps is None:
            raise ConfigError("--budget steps needs --steps S (optimizer updates per trial)")
        if self.budget == "epochs" and self.steps is not None:
            raise ConfigError(f"--steps {self.steps} needs --budget steps")
        if self.steps is not None:
            _positive("--steps", self.steps)
        if self.warmup_epochs < 0 or (
            self.budget == "epochs" and self.warmup_epochs >= self.epochs
        ):
            raise ConfigError(
                f"--warmup-epochs {self.warmup_epochs}: use 0 (off) up to fewer than --epochs"
            )
        self._validate_schedule()
        self._validate_batch_schedule()
        if not 1 <= self.lr_search_width <= LR_RANGE[1]:
            raise ConfigError(
                f"--lr-search-width {self.lr_search_width}: use 1 (off) or more, up to "
                f"{LR_RANGE[1]:g}, e.g. 4 samples a multiplier in [1/4, 4]"
            )
        _positive("--max-accumulation", self.max_accumulation)
        _positive("--synthetic-samples", self.synthetic_samples)
        _positive("--synthetic-features", self.synthetic_features)
        if self.synthetic_classes < 2:
            raise ConfigError(f"--synthetic-classes {self.synthetic_classes}: use at least 2")
        _count("--synthetic-classes", self.synthetic_classes)
        for flag, value in (
            ("--min-batch-size", self.min_batch_size),
            ("--base-batch-size", self.base_batch_size),
            ("--max-batch-size", self.max_batch_size),
        ):
            if value is not None and not is_power_of_two(value):
                raise ConfigError(f"{flag} {value} is not a power of two: use 8, 16, 32, ...")
        if self.max_batch_size is not None and self.min_batch_size > self.max_batch_size:
            raise ConfigError(
                f"--min-batch-size {self.min_batch_size} is above --max-batch-size "
                f"{self.max_batch_size}: lower the minimum or raise the maximum"
            )
        if not (self.base_lr > 0 and self.base_lr < float("inf")):
            raise ConfigError(f"--base-lr {self.base_lr} must be a positive number, e.g. 1e-3")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden {self.hidden}: give positive layer sizes, e.g. 128,64")
        if self.task not in BUILTIN_TASKS and ":" not in self.task:
            raise ConfigError(
                f"--task {self.task!r} is not a built-in task ({', '.join(BUILTIN_TASKS)}) "
                "nor 'package.module:factory' or 'path/to/file.py:factory'"
            )
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--scaling", self.scaling, SCALING_CHOICES)
        self._validate_lr_range()
        _choice("--pruner", self.pruner, PRUNERS)
        _choice("--sampler", self.sampler, SAMPLERS)
        _choice("--model", self.model, MODELS)
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device {self.device!r}: use cpu, cuda, cuda:N or auto")
        check_memory_margin(self.memory_margin)
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ConfigError(f"--memory-budget {self.memory_budget}: must be positive")
        if self.memory_budget is not None and self.memory_budget > MAX_BYTES:
            raise ConfigError(f"--memory-budget {self.memory_budget}: give at most 1024 TiB")
        if not 0 < self.heartbeat_interval < self.grace_period:
            raise ConfigError(
                f"--heartbeat-interval {self.heartbeat_interval} must be positive and below "
                f"--grace-period {self.grace_period}"
            )
        self._validate_workers()
        self._validate_data_and_precision()
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", self.study_name):
            raise ConfigError(
                f"--study-name {self.study_name!r}: use letters, digits, '.', '_' and '-'"
            )
        return replace(
            self,
            objectives=objectives,
            hidden=tuple(self.hidden),
            gpus=tuple(self.gpus) if self.gpus is not None else None,
            workers=self._gpu_workers() if self.gpus else self.workers,
            storage=self.storage or default_storage(self.study_name),
        )

    def _validate_lr_range(self) -> None:
        """The learning rates trials may train with stay within :data:`LR_RANGE`.

        Over every rule the study may use and every batch size it may sample: from
        ``--min-batch-size`` to ``--max-batch-size`` times ``--max-accumulation`` (without
        ``--max-batch-size``, the largest power of two a count may be), widened by
        ``--lr-search-width``.
        """
        rule = resolve_rule(self.scaling, self.optimizer)
        rules = RULES if rule == "search" else (rule,)
        top = self.max_batch_size or largest_power_of_two(MAX_COUNT)
        batches = (self.min_batch_size, top * self.max_accumulation)
        rates = [
            scaled_lr(r, float(self.base_lr), self.base_batch_size, b)
            for r in rules
            for b in batches
        ]
        low = min(rates) / self.lr_search_width
        high = max(rates) * self.lr_search_width
        if not LR_RANGE[0] <= low <= high <= LR_RANGE[1]:
            raise ConfigError(
                f"--base-lr {self.base_lr} at --base-batch-size {self.base_batch_size} gives "
                f"learning rates from {low:.3g} to {high:.3g} over batch sizes {batches[0]} to "
                f"{batches[1]} (--scaling {self.scaling}, --lr-search-width "
                f"{self.lr_search_width:g}): keep them within {LR_RANGE[0]:g} to "
                f"{LR_RANGE[1]:g}, e.g. --base-lr 1e-3"
            )

    def _validate_schedule(self) -> None:
        _choice("--lr-schedule", self.lr_schedule, SCHEDULES)
        fraction = self.final_lr_fraction
        if not (isinstance(fraction, int | float) and 0 <= fraction <= 1):
            raise ConfigError(
                f"--final-lr-fraction {fraction}: use a fraction of the peak from 0 to 1, e.g. 0.1"
            )
        if fraction and self.lr_schedule == "constant":
            raise ConfigError(
                f"--final-lr-fraction {fraction} needs a decaying schedule: add --lr-schedule "
                "cosine or linear"
            )
        decay = self.weight_decay
        if decay is not None and not (isinstance(decay, int | float) and 0 <= decay < math.inf):
            raise ConfigError(f"--weight-decay {decay}: use a number of at least 0, e.g. 0.01")
        if type(self.warmup_steps) is not int or self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps {self.warmup_steps}: use 0 (off) or more updates")
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError(
                f"--warmup-steps {self.warmup_steps} and --warmup-epochs {self.warmup_epochs}: "
                "give the warm-up in one unit, drop one of them"
            )
        if self.budget == "steps" and self.steps is not None and self.warmup_steps >= self.steps:
            raise ConfigError(
                f"--warmup-steps {self.warmup_steps}: use fewer than --steps {self.steps}"
            )

    def _gpu_workers(self) -> int:
        """Workers of ``--gpus``: one per group of ``devices_per_trial`` GPUs, times the
        workers sharing each group."""
        return len(self.gpus or ()) // self.devices_per_trial * self.workers_per_gpu

    def _validate_devices(self) -> None:
        k = self.devices_per_trial
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(
                f"--devices-per-trial {k}: use a whole number of at least 1 (1: one device "
                "per trial; 2: each trial trains on two processes or GPUs)"
            )
        _count("--devices-per-trial", k)
        timeout = self.collective_timeout
        if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
            raise ConfigError(
                f"--collective-timeout {timeout}: use a positive number of seconds, e.g. 300"
            )
        if k == 1:
            return
        if self.task.startswith(PYTHON_TASK_PREFIX):
            raise ConfigError(
                f"--devices-per-trial {k} needs a task the helper processes can build by name: "
                "give --task package.module:factory (or path/to/file.py:factory)"
            )
        if self.gpus is None and self.device.startswith("cuda"):
            raise ConfigError(
                f"--devices-per-trial {k} with --device {self.device}: list the GPUs, "
                f"{k} per trial, with --gpus (e.g. --gpus {','.join(map(str, range(k)))})"
            )
        if self.gpus is None:
            return
        gpus = ",".join(self.gpus)
        if k > len(self.gpus):
            raise ConfigError(
                f"--devices-per-trial {k} is more than the {len(self.gpus)} GPU(s) of --gpus "
                f"{gpus}: list at least {k} GPUs or lower --devices-per-trial"
            )
        if len(self.gpus) % k:
            raise ConfigError(
                f"--devices-per-trial {k} does not divide the {len(self.gpus)} GPUs of --gpus "
                f"{gpus}: list a multiple of {k} GPUs (each trial takes {k})"
            )

    def _validate_batch_schedule(self) -> None:
        if self.batch_schedule is None:
            return
        try:
            schedule = parse_schedule(self.batch_schedule)
        except ScheduleError as exc:
            raise ConfigError(str(exc)) from None
        if self.budget == "steps":
            raise ConfigError(
                f"--batch-schedule {schedule.label} needs an epoch budget (its phases start at "
                "epochs): drop --budget steps, or drop --batch-schedule"
            )
        if self.multi_objective:
            raise ConfigError(
                f"--batch-schedule {schedule.label} with --objectives metric,time: a schedule "
                "is compared in the answer's table, use --objectives metric"
            )
        k = self.devices_per_trial
        uneven = [b for b in schedule.batch_sizes if isinstance(k, int) and k > 1 and b % k]
        if uneven:
            raise ConfigError(
                f"--batch-schedule {schedule.label} with --devices-per-trial {k}: batch "
                f"{uneven[0]} does not split evenly over {k} devices; give global batches that "
                f"are multiples of {k}"
            )

    def _validate_workers(self) -> None:
        _positive("--workers", self.workers)
        _positive("--workers-per-gpu", self.workers_per_gpu)
        self._validate_devices()
        if self.gpus is None:
            if self.workers_per_gpu > 1:
                raise ConfigError("--workers-per-gpu needs --gpus, e.g. --gpus 0,1")
            return
        if not self.gpus or len(set(self.gpus)) != len(self.gpus):
            raise ConfigError(f"--gpus {','.join(self.gpus)}: list distinct GPU ids, e.g. 0,1")
        per_gpu = self._gpu_workers()
        if self.workers not in (1, per_gpu):
            across = f" / --devices-per-trial {self.devices_per_trial}"
            raise ConfigError(
                f"--workers {self.workers} contradicts --gpus {','.join(self.gpus)}"
                f"{across if self.devices_per_trial > 1 else ''} x --workers-per-gpu "
                f"{self.workers_per_gpu} = {per_gpu} workers: drop --workers"
            )
        if self.device not in ("auto", "cuda"):
            raise ConfigError(
                f"--device {self.device} with --gpus: use --device cuda or auto (each worker "
                "sees only its own GPU)"
            )

    def _validate_data_and_precision(self) -> None:
        check_precision(self.precision, self.device)
        if not str(self.data_dir).strip():
            raise ConfigError("--data-dir is empty: give a folder, e.g. storage/data")
        if self.download and self.task not in IMAGE_TASKS:
            raise ConfigError(
                f"--download fetches the image datasets ({', '.join(IMAGE_TASKS)}); task "
                f"{self.task!r} needs none: drop --download"
            )

    def to_dict(self) -> dict:
        """JSON-ready settings, as stored in the study's ``config`` attribute."""
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        data["gpus"] = list(self.gpus) if self.gpus is not None else None
        data["objectives"] = list(self.objectives)
        data.pop("storage")  # may hold a password; the study knows where it lives
        return data

    def identity(self) -> dict:
        """The settings a resumed study must not change."""
        data = self.to_dict()
        return {name: data[name] for name in IDENTITY_FIELDS}


def config_to_json(config: StudyConfig) -> str:
    """The settings a worker process (or a helper rank) receives, on stdin: the storage URL
    may hold a password."""
    data = asdict(config)
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()})


def config_from_json(text: str) -> StudyConfig:
    """The inverse of :func:`config_to_json` (validated)."""
    data = json.loads(text)
    known = {f.name for f in fields(StudyConfig)}
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return StudyConfig(**data).validate()


def differences(stored: dict, requested: dict) -> list[str]:
    """Human-readable ``--flag stored -> requested`` for identity settings that differ."""
    out = []
    stored = dict(stored)
    if isinstance(stored.get("objectives"), list):  # studies stored "accuracy" for "metric"
        stored["objectives"] = [OBJECTIVE_ALIASES.get(o, o) for o in stored["objectives"]]
    if stored and "batch_schedule" not in stored:  # made before schedules: made without one
        stored["batch_schedule"] = None
    for name in IDENTITY_FIELDS:
        if name in stored and stored[name] != requested.get(name):
            flag = "--" + name.replace("_", "-")
            out.append(f"{flag} {stored[name]!r} (stored) vs {requested.get(name)!r} (now)")
    return out


def check_memory_margin(margin: object) -> None:
    """``--memory-margin`` is a fraction in ``[0, 1)``; else a :class:`ConfigError`."""
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
        raise ConfigError(f"--memory-margin {margin}: use a fraction in [0, 1)")


def check_probe_settings(
    min_batch_size: object, max_batch_size: object, timed_steps: object, memory_margin: object
) -> None:
    """The probe's own settings, checked in one place for the probe command and its Python API.

    Example:
        >>> check_probe_settings(8, 4, 3, 0.1)
        Traceback (most recent call last):
        ...
        study.config.ConfigError: --max-batch-size 4 must be at least --min-batch-size 8

    Raises:
        ConfigError: the flag, its value and the allowed range.
    """
    counts = (
        ("--min-batch-size", min_batch_size),
        ("--max-batch-size", max_batch_size),
        ("--timed-steps", timed_steps),
    )
    for flag, value in counts:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{flag} {value!r} must be a whole number, e.g. 10")
    if min_batch_size < 1:  # type: ignore[operator]
        raise ConfigError(f"--min-batch-size {min_batch_size} must be at least 1")
    if max_batch_size is not None and max_batch_size < min_batch_size:  # type: ignore[operator]
        raise ConfigError(
            f"--max-batch-size {max_batch_size} must be at least --min-batch-size {min_batch_size}"
        )
    if timed_steps < 1:  # type: ignore[operator]
        raise ConfigError(f"--timed-steps {timed_steps} must be at least 1")
    for flag, value in counts:
        if value is not None:
            _count(flag, value)
    check_memory_margin(memory_margin)


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{flag} {value} must be at least 1")
    _count(flag, value)


def _count(flag: str, value: object) -> None:
    """A count is a whole number of at most :data:`MAX_COUNT`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag} {value!r} must be a whole number, e.g. 10")
    if value > MAX_COUNT:
        raise ConfigError(f"{flag} {value} is above {MAX_COUNT}, the largest count a run holds")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")


CONFIG_FIELDS = tuple(f.name for f in fields(StudyConfig))


def check_precision(precision: str, device: str) -> None:
    """Refuse a precision the device cannot run: one of :data:`PRECISIONS`; ``fp16`` on CUDA.

    Torch-free: ``device`` is the name (``cpu``, ``cuda``, ``cuda:N``); ``auto`` is not
    decided yet and passes. (Whether a GPU has bfloat16 needs torch: the trainer checks that.)

    Example:
        >>> check_precision("bf16", "cpu")
        >>> try:
        ...     check_precision("fp16", "cpu")
        ... except ConfigError as error:
        ...     print(str(error)[:33])
        --precision fp16 needs a CUDA GPU

    Raises:
        ConfigError: an unknown precision, or ``fp16`` on a device that is not CUDA.
    """
    _choice("--precision", precision, PRECISIONS)
    device = str(device)
    if precision == "fp16" and device != "auto" and not device.startswith("cuda"):
        raise ConfigError(
            "--precision fp16 needs a CUDA GPU (fp16 autocast with a gradient scaler), "
            f"this run trains on {device}: use --precision bf16 or fp32"
        )
