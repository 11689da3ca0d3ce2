"""``batchsize-study plan``: what a study with these flags will cost, before it runs.

:func:`make_plan` builds the task, finds the space as a new study would (the probe's cap, or
``--max-batch-size``), times every batch size of the space side by side (the answer's own
interleaved timing), and costs the study and cheaper variants of it with :mod:`study.cost`.
Nothing is trained, no study and no file is created: the storage is never opened. What trains
is handed in as a ``Backend`` (``study.orchestrate``), so this module imports no torch.

Example (not run as a doctest: it probes and times the hardware)::

    from objectives.backend import TorchBackend
    found = make_plan(StudyConfig(epochs=20).validate(), TorchBackend())
    print(found.text())
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from study.config import StudyConfig
from study.cost import (
    FIRST_TRIAL_S,
    FIXED_S,
    Estimate,
    Workload,
    duration,
    estimate,
    trial_seconds,
)
from study.orchestrate import Backend, plan_space
from study.scaling import resolve_rule
from study.space import BatchSpace, build_space


@dataclass
class Cheaper:
    """A cheaper variant: the flags that change, in words why, and its estimate."""

    flags: str
    why: str
    cost: Estimate


@dataclass
class Plan:
    """What ``plan`` found and estimated (seconds are estimates from measured throughput)."""

    config: StudyConfig
    space: BatchSpace
    work: Workload
    rates: dict[int, float]
    unit: str
    units_per_sample: float
    cost: Estimate
    probe_table: str | None = None
    cheaper: list[Cheaper] = field(default_factory=list)

    def trial_seconds(self) -> dict[int, float]:
        """Estimated seconds of one unpruned trial, by batch size."""
        return {b: trial_seconds(b, self.rates, self.work) for b in self.space.batch_sizes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: cap, space, rates (samples/s), per-trial seconds, the estimates."""
        return {
            "memory_cap": self.space.memory_cap,
            "cap_source": self.space.cap_source,
            "batch_sizes": list(self.space.batch_sizes),
            "scaling_rules": list(self.space.scaling_rules),
            "samples_per_s": {str(b): r for b, r in self.rates.items()},
            "trial_seconds": {str(b): s for b, s in self.trial_seconds().items()},
            "first_trial_extra_s": FIRST_TRIAL_S,
            "fixed_s": FIXED_S,
            "probe_s": self.work.probe_s,
            "estimate": dataclasses.asdict(self.cost),
            "cheaper": [
                {"flags": c.flags, "why": c.why, **dataclasses.asdict(c.cost)} for c in self.cheaper
            ],
        }

    def text(self) -> str:
        """The plan as the command prints it."""
        c, s, w = self.config, self.space, self.work
        budget = f"{c.steps:,} updates" if c.steps else f"{c.epochs} epochs"
        lines = [
            f"Plan for study {c.study_name!r}: task {c.task}, {w.train_size:,} training samples, "
            f"{budget} per trial. Nothing was trained or stored.",
            f"Memory cap: batch {s.memory_cap} (from {s.cap_source}).",
        ]
        if self.probe_table:
            lines += ["", self.probe_table, ""]
        lines.append(
            "Throughput, timed side by side (median of rounds), and one unpruned trial's "
            "estimated time:"
        )
        per_trial = self.trial_seconds()
        for b in s.batch_sizes:
            rate = self.rates[b] * self.units_per_sample
            lines.append(
                f"  batch {b:>6}: {rate:>12,.0f} {self.unit}/s   ~{duration(per_trial[b])} a trial"
            )
        cost = self.cost
        lines += [
            f"Space: {len(s.batch_sizes)} batch sizes x {len(s.scaling_rules)} rule(s) "
            f"({', '.join(s.scaling_rules)}) = {cost.cells} cells.",
            f"Expected: {cost.trainings} trainings ({cost.search} search runs, then "
            f"{c.confirm_runs} confirmation runs {_refs(cost)}), about "
            f"{duration(cost.seconds)}; at most {cost.cap} trainings "
            f"(--trials), about {duration(cost.cap_seconds)}. Pruned trials end early, so the "
            "search usually costs less.",
        ]
        if self.cheaper:
            lines.append("Cheaper (what each changes: docs/cost.md):")
            for option in self.cheaper:
                lines.append(
                    f"  {option.flags:<28} {option.cost.trainings:>3} trainings, about "
                    f"{duration(option.cost.seconds):>8}: {option.why}"
                )
        return "\n".join(lines)


def make_plan(config: StudyConfig, backend: Backend) -> Plan:
    """Measure and estimate the study of ``config`` without running it.

    Raises:
        ConfigError, TaskError, ProbeError (the backend's ``user_errors``): bad settings, a
        task that breaks the contract, a probe that finds no batch that fits.
    """
    device = backend.device(config)
    task = backend.build_task(config)
    started = time.perf_counter()
    space, extra = plan_space(config, task, device, backend)
    probe_s = time.perf_counter() - started if extra.get("probe") else 0.0
    timing = backend.measure_speed(config, task, device, space, list(space.batch_sizes))
    units = float(timing.get("units_per_sample") or 1.0)
    per_batch = timing.get("per_batch") or {}
    rates = {b: float(per_batch[b]["samples_per_s"]) / units for b in space.batch_sizes}
    work = Workload(
        len(task.train),
        len(task.val),
        len(task.test),
        epochs=config.epochs,
        steps=config.steps if config.budget == "steps" else None,
        probe_s=probe_s,
    )
    probe = extra.get("probe")
    found = Plan(
        config,
        space,
        work,
        rates,
        getattr(task, "unit", "samples") or "samples",
        units,
        _estimate(config, space, rates, work),
        probe_table=_probe_table(probe),
    )
    found.cheaper = _cheaper(config, space, rates, work, len(task.train))
    return found


def _estimate(
    config: StudyConfig, space: BatchSpace, rates: dict[int, float], work: Workload
) -> Estimate:
    return estimate(
        list(space.batch_sizes),
        len(space.scaling_rules),
        rates,
        work,
        config.trials,
        config.confirm_runs,
        every_cell=config.sampler == "grid",
    )


def _cheaper(
    config: StudyConfig,
    space: BatchSpace,
    rates: dict[int, float],
    work: Workload,
    train_size: int,
) -> list[Cheaper]:
    """The cheaper settings and their cost: one rule, a narrower range, fewer trials, fewer
    epochs (or updates)."""
    now = _estimate(config, space, rates, work)
    options: list[Cheaper] = []
    if len(space.scaling_rules) > 1:
        rule = resolve_rule("auto", config.optimizer)
        one = dataclasses.replace(space, scaling_rules=[rule])
        options.append(
            Cheaper(
                f"--scaling {rule}",
                f"one rule ({rule} suits {config.optimizer}) instead of searching "
                f"{len(space.scaling_rules)}",
                _estimate(config, one, rates, work),
            )
        )
    if len(space.batch_sizes) > 3:
        low = space.batch_sizes[2]
        narrower = build_space(
            low,
            space.memory_cap,
            config.max_accumulation,
            train_size,
            resolve_rule(config.scaling, config.optimizer),
            space.cap_source,
        )
        options.append(
            Cheaper(
                f"--min-batch-size {low}",
                "a narrower range: the two smallest (slowest) batch sizes left out",
                _estimate(config, narrower, rates, work),
            )
        )
    if config.trials > now.search + config.confirm_runs:
        trials = now.search + config.confirm_runs
        fewer = dataclasses.replace(config, trials=trials)
        options.append(
            Cheaper(
                f"--trials {trials}",
                "a lower cap: the exploration and the leader's confirmation, no room to test "
                "a faster candidate",
                _estimate(fewer, space, rates, work),
            )
        )
    unit = "epochs" if config.budget == "epochs" else "steps"
    length = getattr(config, unit) or 0
    if length >= 4:
        shorter = dataclasses.replace(work, **{unit: length // 4})
        options.append(
            Cheaper(
                f"--{unit} {length // 4}",
                "a quarter of the budget: its answer need not carry over to the full budget",
                _estimate(config, space, rates, shorter),
            )
        )
    return [o for o in options if o.cost.seconds < now.seconds]


def _refs(cost: Estimate) -> str:
    """Whose confirmation runs the expected count holds, in words."""
    if cost.references == 1:
        return "each of the leader and of one candidate"
    contenders = "contender" if cost.references == 2 else f"{cost.references - 1} contenders"
    return (
        f"each of the leader, its {contenders} and one candidate, and as many again of the "
        "most accurate of them"
    )


def _probe_table(probe: Any) -> str | None:
    """The probe's table, when the cap came from the probe (its stored form)."""
    if not isinstance(probe, dict):
        return None
    rows = probe.get("rows") or []
    if not rows:
        return None
    unit = probe.get("unit") or "samples"
    lines = [f"{'batch':>7}  {unit + '/s':>12}  (the probe's throughput table)"]
    for row in rows:
        rate = row.get("samples_per_s")
        lines.append(f"{row.get('batch_size'):>7}  {rate:>12,.0f}" if rate else "")
    return "\n".join(line for line in lines if line)
