"""The probe's table: what it found (:class:`ProbeResult`, one :class:`ProbeRow` a batch) and
how its throughput column is timed (the constants below), as stored and as printed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from objectives.speed import KNEE_TOLERANCE
from study.units import format_bytes

#: Throughput timing goes on past ``timed_steps`` until this many seconds have passed ...
MIN_TIMED_SECONDS = 0.05
#: ... but never past this many steps per batch size and measurement.
MAX_TIMED_STEPS = 50
#: Interleaved timing rounds of the throughput table; its figures are the medians.
SPEED_ROUNDS = 5


@dataclass
class ProbeRow:
    """One batch size of the probe's table (bytes; ``None`` where not measured)."""

    batch_size: int
    predicted_bytes: int
    measured_bytes: int | None
    samples_per_s: float | None  # units (ProbeResult.unit) per second


@dataclass
class ProbeResult:
    """What the probe found. ``to_dict()`` is JSON-ready and the same as ``--json`` prints.

    Args:
        max_batch_size: The cap: the largest batch whose measured step fitted the budget.
        knee_batch_size: Smallest batch from which up to the fastest every batch is within
            :data:`~objectives.speed.KNEE_TOLERANCE` of the fastest's throughput
            (:func:`~objectives.speed.knee_from_timings`; ``None`` when throughput was not
            measured).
        fixed_bytes: The fit's intercept: parameters, optimizer state, data the device
            holds, and what of the gradients is alive at the step's peak.
        bytes_per_sample: The fit's bytes per sample of batch.
        budget_bytes: The memory budget a step had to fit.
        rows: One :class:`ProbeRow` per batch of the ladder up to the cap.
        rejected: Batches that ran out of memory (``measured_bytes`` ``None``) or measured
            over the budget.
        steps_run: Training steps the search ran (each with one evaluation batch).
        throughput_steps: Training steps run for the throughput table (warm-up and timed).
        speed: The interleaved timings behind the table
            (:meth:`objectives.speed.SpeedResult.to_dict`; ``None`` when not measured).
    """

    max_batch_size: int
    knee_batch_size: int | None
    fixed_bytes: int
    bytes_per_sample: int
    budget_bytes: int
    rows: list[ProbeRow]
    task: str = ""
    device: str = "cpu"
    optimizer: str = "adam"
    precision: str = "fp32"
    compiled: bool = False
    budget_source: str = ""
    memory_source: str = ""
    min_batch_size: int = 1
    search_limit: int = 0
    stop_reason: str = ""
    unit: str = "samples"
    longest_items: bool = False
    steps_run: int = 0
    throughput_steps: int = 0
    timed_steps: int = 0
    seconds: float = 0.0
    rejected: list[dict] = field(default_factory=list)
    speed: dict | None = None

    def predicted_bytes(self, batch_size: int) -> int:
        """Bytes the fit predicts for one step at ``batch_size``."""
        return self.fixed_bytes + self.bytes_per_sample * batch_size

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the study stores it in its user attributes as ``probe``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProbeResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. read back from a study)."""
        data = dict(data)
        data["rows"] = [ProbeRow(**row) for row in data.get("rows", [])]
        return cls(**data)

    def format_table(self) -> str:
        """The probe's findings as a plain-text table with units and budgets stated."""
        lines = [
            f"Batch-size probe: task {self.task or '?'}, device {self.device}, "
            f"optimizer {self.optimizer}, precision {self.precision}"
            + (", torch.compile" if self.compiled else ""),
            f"Memory budget: {format_bytes(self.budget_bytes)} ({self.budget_source})",
            f"Memory model: {format_bytes(self.fixed_bytes)} fixed + "
            f"{format_bytes(self.bytes_per_sample)} per sample "
            f"(measured: {self.memory_source})",
            f"Search: {self.steps_run} training steps (each with one evaluation batch) over "
            f"batches {self.min_batch_size}..{self.search_limit}; throughput table: "
            f"{self.throughput_steps} steps; {self.seconds:.1f} s in all",
            "",
            f"{'batch':>7}  {'predicted':>11}  {'measured':>11}  {self.unit + '/s':>11}"
            + (f"  {'min-max':>19}" if self.speed else ""),
        ]
        spread = {
            r["batch_size"]: (r.get("units_per_s_min"), r.get("units_per_s_max"))
            for r in (self.speed or {}).get("rows", [])
        }
        for row in self.rows:
            marks = []
            if row.batch_size == self.max_batch_size:
                marks.append("cap")
            if row.batch_size == self.knee_batch_size:
                marks.append("knee")
            speed = f"{row.samples_per_s:,.0f}" if row.samples_per_s is not None else "-"
            low, high = spread.get(row.batch_size, (None, None))
            span = f"{low:,.0f}-{high:,.0f}" if low is not None and high is not None else "-"
            lines.append(
                f"{row.batch_size:>7}  {format_bytes(row.predicted_bytes):>11}  "
                f"{format_bytes(row.measured_bytes):>11}  {speed:>11}"
                + (f"  {span:>19}" if self.speed else "")
                + (f"  <- {', '.join(marks)}" if marks else "")
            )
        for rej in self.rejected:
            measured = rej["measured_bytes"]
            lines.append(
                f"{rej['batch_size']:>7}  {format_bytes(rej['predicted_bytes']):>11}  "
                f"{format_bytes(measured) if measured is not None else 'OOM':>11}  "
                f"{'-':>11}  (does not fit)"
            )
        lines += [
            "",
            f"Cap: {self.max_batch_size} ({self.stop_reason})",
            f"Knee: {self.knee_batch_size} (smallest batch from which every batch up to the "
            f"fastest is within {KNEE_TOLERANCE:.0%} of its {self.unit}/s, round by round)"
            if self.knee_batch_size is not None
            else "Knee: - (throughput not measured)",
            "predicted: the memory model, fitted through the largest measured step; at small "
            "batches the optimizer step's temporaries can set the peak (measured > predicted)",
        ]
        if self.throughput_steps:
            lines += [
                "measured: one training step with its evaluation batch (the warm-up step)",
                f"{self.unit}/s: training steps only, the median of "
                f"{(self.speed or {}).get('rounds', SPEED_ROUNDS)} interleaved rounds "
                f"(min-max beside it), each >= {self.timed_steps} steps and "
                f">= {MIN_TIMED_SECONDS * 1000:.0f} ms after a warm-up step",
            ]
        else:
            lines.append("measured: the search's steps, each with its evaluation batch")
        if self.longest_items:
            lines.append(
                "batches: the longest training items (padded by the task's collate), so the "
                "cap holds for the longest batch the data can produce"
            )
        return "\n".join(lines)
