"""The Optuna objective: where the study's space meets the training loop.

One trial samples an effective batch size from the stored space (and the scaling rule when
the study searches it), derives the learning rate, trains with accumulation where the batch is
above the memory cap, reports validation accuracy each epoch so the pruner can stop it, and
records what it measured as user attributes (the study record in the README).

What a long study meets is handled inside the trial, never as a crash of the study:

* out of memory (CUDA or CPU): the attempt's memory is freed, the error recorded (``oom``:
  the micro-batch, accumulation and epoch of each failure), and the trial retried once with
  half the micro-batch and twice the accumulation (the same effective batch); a second
  failure prunes it;
* a NaN/infinite loss: recorded as ``diverged`` and pruned;
* a killed worker: with a :class:`~objectives.checkpoint.CheckpointStore`, epochs are
  checkpointed (paced by the writes' cost) and the retried trial resumes after the last one
  (``resumed_from_epoch``).

Example (not run as a doctest: it needs a study, files or a server)::

    objective = BatchSizeObjective(task, config, space)
    study.optimize(objective, n_trials=10)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch

from objectives.checkpoint import (
    Checkpoint,
    CheckpointStore,
    SavePace,
    first_attempt,
    run_id,
)
from objectives.data import Tensors, as_tensors
from objectives.distributed import Job
from objectives.groups import trial_group
from objectives.noise import estimate_noise_scale
from objectives.oom import is_out_of_memory, release_memory
from objectives.oom import summary as oom_summary
from objectives.tasks import Task, split_labels
from objectives.train import (
    Diverged,
    EpochResult,
    Step,
    TrainResult,
    TrainSettings,
    finish,
    make_step,
    place,
    samples_left_out,
    step_periods,
    steps_per_epoch,
    torch_flags,
    train_model,
    training_loss,
)
from study.attrs import report_values
from study.batch_schedule import is_schedule_label, parse_schedule
from study.collapse import chance_accuracy, collapse_reason
from study.config import StudyConfig
from study.record import ACCURACY as ACCURACY_INFO
from study.record import CONFIRM, SEARCH, MetricInfo, OutOfMemory, TrialRecord, write_record
from study.runner import TrialRetry
from study.scaling import scaled_lr
from study.space import BatchSpace
from study.workers import raise_if_interrupted

#: Out-of-memory retries of one trial (each halves the micro-batch) before it is pruned.
OOM_RETRIES = 1


def task_metric(task: Task) -> MetricInfo:
    """The study-side description of ``task``'s metric: name, direction, unit."""
    metric = getattr(task, "metric", None)
    unit = getattr(task, "unit", None) or "samples"
    if metric is None:
        return dataclasses.replace(ACCURACY_INFO, unit=unit)
    bounds = getattr(metric, "bounds", None)
    return MetricInfo(metric.name, metric.direction, unit, tuple(bounds) if bounds else None)


class Collapsed(RuntimeError):
    """The trial sits at chance, or its training loss rose above its start (a reason)."""


#: Training items whose loss at initialisation the collapse check starts from.
COLLAPSE_LOSS_ITEMS = 1024


def chance_level(task: Task, metric_name: str) -> float | None:
    """What the metric reads for a model that learned nothing, where that is known.

    Accuracy with the default loss: the share of the most frequent validation label (over
    all target tokens of a sequence model, padding left out). Mean
    squared error: the variance of the validation targets (predicting their mean). Other
    metrics: ``None`` (only the loss-above-its-start rule of the collapse check applies).
    """
    if metric_name == "accuracy" and task.classification:  # labels, or tokens' targets
        return chance_accuracy(split_labels(task.val, limit=None, split="val").tolist())
    if metric_name == "mse":
        data = as_tensors(task.val, split="val")
        if data is not None and data.y.is_floating_point() and data.y.numel() > 1:
            return float(data.y.float().var(unbiased=False))
    return None


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's run: distinct per trial, reproducible from the study's seed."""
    return (study_seed * 1_000_003 + trial_number * 7_919 + 1) % 2**31


@dataclass
class _Attempt:
    """One training attempt of a trial: how, from where, and how it ended."""

    micro_batch_size: int
    saved: Checkpoint | None = None  # the checkpoint it continues
    result: TrainResult = field(default_factory=TrainResult)
    outcome: str = ""  # "complete", "pruned", "diverged" or "oom"
    detail: str = ""
    noise: dict = field(default_factory=dict)  # b_simple of the final model, if measured

    @property
    def start_epoch(self) -> int:
        return self.saved.epoch if self.saved is not None else 0


class ProgressLog:
    """Progress lines at a modest rate: a line is passed on only once ``interval_s`` seconds
    have gone by since the log started (or last passed a line), so short epochs and short
    trials print nothing and a long trial prints about one line per ``interval_s``.

    Example:
        >>> ticks = iter([0.0, 4.0, 11.0, 12.0, 25.0])
        >>> progress = ProgressLog(print, interval_s=10, clock=lambda: next(ticks))
        >>> for epoch in (1, 2, 3, 4):
        ...     _ = progress(f"epoch {epoch}")
        epoch 2
        epoch 4
    """

    def __init__(
        self,
        log: Callable[[str], None],
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._interval, self._clock = log, interval_s, clock
        self._last = clock()

    def __call__(self, line: str) -> bool:
        """Pass ``line`` on if it is time to; return whether it was."""
        now = self._clock()
        if now - self._last < self._interval:
            return False
        self._last = now
        self._log(line)
        return True


class BatchSizeObjective:
    """Callable objective over one task; data is placed on the device once, not per trial.

    Args:
        task: The task to train.
        config: The study's settings (optimizer, base learning rate and batch, epochs, seed).
        space: The stored batch-size space.
        device: Where to train (``cpu``, ``cuda``, ``cuda:N``).
        checkpoints: Where each epoch is checkpointed so a retried trial resumes (``None``:
            no checkpoints).
        log: Called with a progress line after an epoch of a long trial (see
            :class:`ProgressLog`: at most one line per ``log_interval_s`` seconds, none for
            a trial shorter than that). ``None``: silent.
        log_interval_s: The fewest seconds between two progress lines.
    """

    def __init__(
        self,
        task: Task,
        config: StudyConfig,
        space: BatchSpace,
        device: str = "cpu",
        checkpoints: CheckpointStore | None = None,
        log: Callable[[str], None] | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        self.task = task
        self.config = config
        self.space = space
        self.device = torch.device(device)
        self.checkpoints = checkpoints
        self.log = log
        self.log_interval_s = log_interval_s
        self.metric = task_metric(task)
        self.chance = chance_level(task, self.metric.name)
        self.train, self.val, self.test = (
            place(getattr(task, name), self.device, task.collate, name)
            for name in ("train", "val", "test")
        )

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        space, config = self.space, self.config
        choice = trial.suggest_categorical("batch_size", space.choices)
        schedule = parse_schedule(choice) if is_schedule_label(choice) else None
        batch_size = schedule.largest if schedule is not None else int(choice)
        if len(space.scaling_rules) > 1:
            rule = trial.suggest_categorical("scaling_rule", space.scaling_rules)
        else:
            rule = space.scaling_rules[0]
        micro, accumulation = space.split(batch_size)
        lr = scaled_lr(rule, config.base_lr, config.base_batch_size, batch_size)
        multiplier = None
        if config.lr_search_width > 1:
            width = config.lr_search_width
            multiplier = trial.suggest_float("lr_multiplier", 1 / width, width, log=True)
            lr *= multiplier
        epoch_plan = None  # a schedule: each epoch's batch and its rule's learning rate
        if schedule is not None:
            factor = multiplier or 1.0
            epoch_plan = tuple(
                (b, scaled_lr(rule, config.base_lr, config.base_batch_size, b) * factor)
                for b in schedule.epoch_batches(config.epochs)
            )
        key = first_attempt(trial)  # a retry continues its first attempt's run and seed
        run = run_id(trial, key) if self.checkpoints is not None else ""
        seed = trial_seed(config.seed, key)
        phase = CONFIRM if trial.user_attrs.get("phase") == CONFIRM else SEARCH
        record = TrialRecord(
            phase=phase,
            batch_size=batch_size,
            micro_batch_size=micro,
            devices=space.devices,
            accumulation_steps=accumulation,
            lr=lr,
            scaling_rule=rule,
            seed=seed,
            lr_multiplier=multiplier,
            samples_left_out=samples_left_out(len(self.train), batch_size),
            batch_schedule=schedule.label if schedule is not None else None,
            **self._device_record(),
        )
        ooms: list[OutOfMemory] = []
        retries = OOM_RETRIES
        attempt = self._resume(key, run, micro, record)
        if attempt.micro_batch_size < micro:  # an earlier attempt already halved it
            retries = 0
        try:
            while True:
                self._attempt(trial, attempt, batch_size, lr, seed, key, run, epoch_plan)
                # The attempt's frames are gone by now; after an OOM, free everything.
                release_memory(self.device, full=attempt.outcome == "oom")
                if attempt.outcome != "oom":
                    break
                ooms.append(
                    OutOfMemory(
                        micro_batch_size=attempt.micro_batch_size,
                        accumulation_steps=space.accumulation(batch_size, attempt.micro_batch_size),
                        epoch=len(attempt.result.epochs) + 1,
                        error=attempt.detail,
                    )
                )
                if retries == 0 or attempt.micro_batch_size == 1:
                    break
                retries -= 1
                attempt = self._resume(key, run, attempt.micro_batch_size // 2, record)
        except (KeyboardInterrupt, TrialRetry):  # Ctrl-C, SIGTERM, a rank's fault: queued
            raise  # again, resumes from here
        except BaseException:  # broken: FAIL, not resumable
            self._forget(key)
            raise
        self._forget(key)
        record.micro_batch_size = attempt.micro_batch_size
        record.accumulation_steps = space.accumulation(batch_size, attempt.micro_batch_size)
        record.oom = tuple(ooms)
        record.diverged = attempt.outcome == "diverged"
        if attempt.outcome in ("diverged", "pruned", "oom"):
            record.stop_reason = attempt.detail
        if config.budget == "steps":  # passes over the data differ by batch size here
            passes = attempt.result.samples_seen / len(self.train)
            record.optimizer_steps = attempt.result.optimizer_steps
            record.epochs_completed = int(passes)  # whole passes; the fraction beside it
            record.passes_completed = round(passes, 2)
        if config.multi_objective:  # no intermediate values: keep the learning curve here
            record.val_metric_per_epoch = tuple(e.val_metric for e in attempt.result.epochs)
        record = dataclasses.replace(record, **attempt.noise)
        _write(trial, record, attempt.result, self.metric)
        if attempt.outcome == "oom":
            raise optuna.TrialPruned(
                f"out of memory at micro-batch {attempt.micro_batch_size} "
                f"({attempt.detail}); pruned after {len(ooms)} attempts"
            )
        if attempt.outcome in ("pruned", "diverged"):
            raise optuna.TrialPruned(attempt.detail)
        if config.multi_objective:
            return attempt.result.val_metric, round(attempt.result.train_time_s, 4)
        return attempt.result.val_metric

    def _plan(self, batch_size: int) -> tuple[int | None, ...]:
        """The evaluation periods of a trial: epochs, or shares of the step budget."""
        if self.config.budget == "steps":
            return step_periods(self.config.steps)
        return (None,) * self.config.epochs

    def _noise_scale(self, model: torch.nn.Module, seed: int) -> dict:
        """B_simple of the trained model (8 big batches of 128 split into 8s: cheap)."""
        if not isinstance(self.train, Tensors) or len(self.train) < 16:
            return {}
        b_big = min(128, len(self.train) - len(self.train) % 8)
        generator = torch.Generator().manual_seed(seed)
        estimate = estimate_noise_scale(
            model, self.train, 8, b_big, 8, generator, loss=self.task.loss
        )
        return {"b_simple": estimate.b_simple, "b_simple_se": estimate.b_simple_se}

    def _device_record(self) -> dict:
        record = {"device": str(self.device)}
        if self.device.type == "cuda":
            record["device_name"] = torch.cuda.get_device_name(self.device)
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible:
                record["gpu"] = visible
        return record

    def _resume(self, key: int, run: str, micro: int, record: TrialRecord) -> _Attempt:
        """A fresh attempt at ``micro``, continuing the checkpoint of ``key`` if there is one."""
        saved = self.checkpoints.load(key, run, self.device) if self.checkpoints else None
        if saved is None:
            return _Attempt(micro)
        if record.resumed_from_epoch is None:  # the first resume of this trial
            record.resumed_from_epoch = saved.epoch
        return _Attempt(min(micro, saved.micro_batch_size), saved, saved.result)

    def _forget(self, key: int) -> None:
        if self.checkpoints is not None:
            self.checkpoints.remove(key)

    def _attempt(
        self,
        trial: optuna.Trial,
        attempt: _Attempt,
        batch_size: int,
        lr: float,
        seed: int,
        key: int,
        run: str,
        epoch_plan: tuple[tuple[int, float], ...] | None = None,
    ) -> None:
        """Train (or continue) one attempt and set ``attempt.outcome``: build the settings,
        restore the model, train with the epoch's checks, measure the end.

        ``epoch_plan``: a batch-size schedule's batch and peak learning rate of each epoch.

        Pruning, divergence and out-of-memory end here, not as exceptions: their tracebacks
        (and the tensors those hold) are gone when this returns, so the memory can be freed.
        """
        start, saved = attempt.start_epoch, attempt.saved
        settings = self._settings(attempt, batch_size, lr, seed, epoch_plan)
        model, first_loss = self._restore(saved, seed)
        checks: EpochChecks | None = None
        try:
            with torch_flags(self.device), trial_group(self.config, str(self.device)) as group:
                step = make_step(model, settings, self.task)
                if saved is not None and saved.optimizer_state is not None:
                    step.optimizer.load_state_dict(saved.optimizer_state)
                on_epoch = checks = EpochChecks(
                    self, trial, attempt, batch_size, model, step, first_loss, key, run
                )
                if group is not None:  # several devices: every rank restores, trains a share
                    resumed = saved.optimizer_state if saved is not None else None
                    on_epoch = group.start(model, step, Job(settings, start, resumed), on_epoch)
                train_model(
                    model,
                    self.train,
                    self.val,
                    settings,
                    on_epoch,
                    attempt.result,
                    step=step,
                    start_epoch=start,
                    task=self.task,
                    parallel=group.ranks if group is not None else None,
                )
                finish(
                    attempt.result,
                    model,
                    self.train,
                    self.test,
                    settings.eval_batch,
                    self.device,
                    settings.precision,
                    self.task,
                )
                if self.config.noise_scale:
                    attempt.noise = self._noise_scale(model, seed)
            attempt.outcome = "complete"
        except (Diverged, Collapsed) as diverged:
            attempt.outcome, attempt.detail = "diverged", str(diverged)
        except optuna.TrialPruned as pruned:
            attempt.outcome, attempt.detail = "pruned", str(pruned)
        except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError: a RuntimeError
            if not is_out_of_memory(error):
                raise
            attempt.outcome, attempt.detail = "oom", oom_summary(error)
        if checks is not None:  # the epochs it trained, whatever ended it
            checks.flush()

    def _settings(
        self,
        attempt: _Attempt,
        batch_size: int,
        lr: float,
        seed: int,
        epoch_plan: tuple[tuple[int, float], ...] | None,
    ) -> TrainSettings:
        """How the attempt trains: its periods from where it resumes, the schedule over the
        whole trial, the micro-batch, and fresh shuffles after a resume."""
        start = attempt.start_epoch
        plan = self._plan(batch_size)
        n = len(self.train)
        per_epoch = [
            steps_per_epoch(n, b) for b, _ in epoch_plan or ((batch_size, lr),) * len(plan)
        ]
        phases = None
        if epoch_plan is not None:  # a schedule: the attempt's micro-batch caps every phase
            phases = tuple(
                (b, min(b // self.space.devices, attempt.micro_batch_size), peak)
                for b, peak in epoch_plan[start:]
            )
        steps = self.config.budget == "steps"
        return TrainSettings(
            epochs=len(plan) - start,
            period_steps=plan[start:] if steps else None,
            first_step=sum(plan[:start]) if steps else sum(per_epoch[:start]),
            total_steps=sum(plan) if steps else sum(per_epoch),
            warmup_steps=self.config.warmup_steps or sum(per_epoch[: self.config.warmup_epochs]),
            batch_phases=phases,
            warmup_start_lr=min(self.config.base_lr, lr),
            weight_decay=self.config.weight_decay,
            lr_schedule=self.config.lr_schedule,
            final_lr_fraction=self.config.final_lr_fraction,
            batch_size=batch_size,
            micro_batch_size=attempt.micro_batch_size,
            lr=lr,
            optimizer=self.config.optimizer,
            seed=seed if start == 0 else (seed + start) % 2**31,  # new shuffles after resuming
            device=str(self.device),
            eval_batch_size=self.space.memory_cap,
            precision=self.config.precision,
            compile=self.config.compile,
        )

    def _restore(self, saved: Checkpoint | None, seed: int) -> tuple[torch.nn.Module, float | None]:
        """The attempt's model, fresh from ``seed`` or restored from ``saved``, and, when
        fresh, its loss at initialisation (the collapse check's start)."""
        torch.manual_seed(seed)
        model = self.task.build_model().to(self.device)
        if saved is not None:
            model.load_state_dict(saved.model_state)
            return model, None
        task = self.task
        return model, training_loss(model, task.train, COLLAPSE_LOSS_ITEMS, task.loss, task.collate)


class EpochChecks:
    """What an attempt does after each epoch (or evaluation period): report it to Optuna,
    checkpoint it, print progress, stop a collapsed run as diverged, and prune.

    Called by :func:`objectives.train.train_model` with each :class:`EpochResult`; it raises
    :class:`Collapsed` or ``optuna.TrialPruned`` to stop the attempt. A trial the pruner may
    stop reports every epoch before the pruner is asked. Storage writes of the others (a
    confirmation run, ``--pruner none``) are paced with the checkpoints (:class:`SavePace`):
    the epochs since the last write are reported in one transaction together with the
    checkpoint, and at the last epoch, so that what is stored and what a retry resumes from
    always match; :meth:`flush` reports what is left when the attempt ends early.
    """

    def __init__(
        self,
        objective: BatchSizeObjective,
        trial: optuna.Trial,
        attempt: _Attempt,
        batch_size: int,
        model: torch.nn.Module,
        step: Step,
        first_loss: float | None,
        key: int,
        run: str,
    ) -> None:
        self.objective, self.trial, self.attempt = objective, trial, attempt
        self.batch_size, self.model, self.step = batch_size, model, step
        self.first_loss, self.key, self.run = first_loss, key, run
        config = objective.config
        self.periods = len(objective._plan(batch_size))
        self.multi = config.multi_objective
        self.prunable = (
            not self.multi and config.pruner != "none" and trial.user_attrs.get("phase") != CONFIRM
        )
        self.unit = "epoch" if config.budget == "epochs" else "evaluation"
        log = objective.log
        self.progress = ProgressLog(log, objective.log_interval_s) if log else None
        self.pace = SavePace()
        self.pending: dict[int, float] = {}  # epochs not yet reported: epoch -> value

    def __call__(self, epoch: EpochResult) -> None:  # epochs are numbered from start + 1
        raise_if_interrupted()  # a worker's interrupt that a finalizer swallowed
        objective, trial, result = self.objective, self.trial, self.attempt.result
        if not self.multi:  # Optuna reports and prunes single-objective trials only
            self.pending[epoch.epoch] = epoch.val_metric
        last = epoch.epoch >= self.periods  # a finished trial needs no checkpoint
        due = self.pace.due(epoch.train_time_s)
        started = time.perf_counter()
        if due or last or self.prunable:
            self.flush()
        if due and not last:
            if objective.checkpoints is not None:
                objective.checkpoints.save(
                    self.key,
                    self.run,
                    self.model,
                    self.step.optimizer,
                    result,
                    self.attempt.micro_batch_size,
                )
            self.pace.saved(time.perf_counter() - started)
        if self.progress is not None:
            self.progress(
                f"trial {trial.number}: {self.unit} {epoch.epoch}/{self.periods}, batch "
                f"{self.batch_size}, train loss {epoch.train_loss:.4f}, val "
                f"{objective.metric.name} {epoch.val_metric:.4f} ({epoch.train_time_s:.1f} s)"
            )
        reason = collapse_reason(
            [e.val_metric for e in result.epochs],
            [e.train_loss for e in result.epochs],
            self.first_loss,
            objective.chance,
            done=epoch.epoch,
            total=self.periods,
            direction=objective.metric.direction,
            metric=objective.metric.name,
            unit=self.unit,
            updates=result.optimizer_steps,
        )
        if reason is not None:  # at the last period too: a flat run is diverged anywhere
            raise Collapsed(reason)
        if self.prunable and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after evaluation {epoch.epoch}")

    def flush(self) -> None:
        """Report the epochs not yet reported, in one transaction where the storage allows (a
        step already reported, as by a retry's earlier attempt, keeps its first value)."""
        if self.pending:
            report_values(self.trial, self.pending)
            self.pending = {}


def _write(
    trial: optuna.Trial, record: TrialRecord, result: TrainResult, metric: MetricInfo
) -> None:
    """Fill in what the attempt measured and store the trial's record as user attributes."""
    if record.epochs_completed is None:
        record.epochs_completed = len(result.epochs)
    record.train_time_s = round(result.train_time_s, 4)
    if result.epochs:
        record.val_metric = result.val_metric
    record.train_metric = result.train_metric
    if result.samples_seen:
        record.samples_per_s = round(result.units_per_s, 1)  # units (task.unit) per second
        record.peak_memory_bytes = result.peak_memory_bytes
        record.memory_source = result.memory_source
    record.test_metric = result.test_metric
    write_record(trial, record, metric)  # one transaction on SQLite and PostgreSQL
