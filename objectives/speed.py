"""Speed you can trust: batch sizes timed in interleaved, repeated rounds, medians with spreads.

A single timing on a shared machine can move several-fold (another process, a frequency change,
the allocator); timing batch size 8 for a second and then batch size 512 for a second compares
two different machines. Here every candidate is timed once per *round*, and the rounds repeat:

- round 0 (untimed) runs each batch size once, so one-off costs (cuDNN autotuning, compilation,
  the allocator growing) fall outside the timings, and calibrates how many updates one
  measurement runs (at least ``updates``, more for steps too short to time, see ``min_seconds``);
- rounds 1..R time each batch size in turn (round ``r`` starts ``r`` places further along the
  list, so no batch size always runs first or after the same neighbour); each measurement is one
  untimed warm-up update and then the calibrated number of timed updates, synchronised with the
  device before and after;
- each batch size gets the median over the rounds of units per second, with its min-max and
  interquartile spread; two batch sizes are compared round by round (both were timed within the
  same round, so a load that slows the machine for a while slows both), and the comparison is
  *distinguishable* only when every round agrees on which is faster: when the spread of the
  per-round ratios is wider than the difference the median claims, it is flagged, not used.

The timing loop (:func:`time_interleaved`) takes the work as a callable, so tests drive it with
a fake clock; :func:`measure_speed` builds that callable from a model and in-memory tensors,
running every update through :meth:`objectives.train.Step.update` (the project's one update,
built by :func:`objectives.train.make_step` from :class:`~objectives.train.TrainSettings`).
:func:`knee_from_timings` is the probe's knee computed from the same medians.

Example:
    >>> clock = [0.0]
    >>> def run(batch_size, updates):  # a fake workload: 1 ms + 0.1 ms per sample per update
    ...     clock[0] += updates * (1e-3 + 1e-4 * batch_size)
    ...     return updates * batch_size
    >>> result = time_interleaved(run, [8, 64], rounds=3, clock=lambda: clock[0])
    >>> round(result.row(64).units_per_s)
    8649
    >>> result.distinguishable(8, 64)  # identical rounds: no spread, a clear difference
    True
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from objectives.data import Tensors
from objectives.train import Batch, Step, TrainSettings, make_step, torch_flags
from study.stats import percentile

#: Timed rounds by default (each batch size is timed once per round).
DEFAULT_ROUNDS = 5
#: Timed optimizer updates per measurement by default (after one untimed warm-up update).
DEFAULT_UPDATES = 3
#: A measurement runs more updates until it lasts about this long (timer resolution, jitter) ...
MIN_MEASUREMENT_SECONDS = 0.02
#: ... but never more than this many.
MAX_UPDATES = 50
#: The knee (:func:`knee_from_timings`, the probe's too) is the smallest batch size from which up
#: to the fastest every batch is within this fraction of the fastest's throughput.
KNEE_TOLERANCE = 0.1

#: ``run(batch_size, updates) -> units`` does ``updates`` optimizer updates at ``batch_size``
#: and returns the units they processed (samples, tokens, ...), or ``None`` when that batch size
#: cannot run (e.g. out of memory: it is then left out of the later rounds).
Run = Callable[[int, int], "float | None"]
#: ``make_batch(batch_size) -> (micro_batches, units)``: one update's micro-batches on the device.
MakeBatch = Callable[[int], tuple[list[Batch], float]]


def interleaved_order(batch_sizes: Sequence[int], rounds: int, rotate: bool = True) -> list[list]:
    """The order batch sizes are timed in: one list per round, each batch size once per round.

    Round ``r`` (0-based) is the list rotated left by ``r`` places when ``rotate`` (so each
    batch size takes each position in turn), else the list as given.

    Example:
        >>> interleaved_order([8, 16, 32], 4)
        [[8, 16, 32], [16, 32, 8], [32, 8, 16], [8, 16, 32]]
    """
    sizes = list(batch_sizes)
    if not sizes:
        return [[] for _ in range(rounds)]
    return [
        sizes[r % len(sizes) :] + sizes[: r % len(sizes)] if rotate else list(sizes)
        for r in range(rounds)
    ]


@dataclass
class SpeedRow:
    """One batch size's timings (per-round values are in round order; ``None``: not timed).

    Attributes:
        batch_size: Samples per optimizer update.
        updates: Timed updates per measurement (after one untimed warm-up update).
        rates: Units per second of each round's measurement.
        seconds_per_update: Seconds per update of each round's measurement.
        units_per_update: Units one update processed (the batch size when the unit is samples).
        units_per_s: Median of ``rates``.
        units_per_s_min, units_per_s_max: Range of ``rates``.
        units_per_s_q1, units_per_s_q3: Interquartile range of ``rates``.
        seconds_per_update_median: Median seconds per update.
        seconds_per_unit: Median seconds per unit (per sample when the unit is samples).
        failed: Why the batch size stopped being timed (e.g. out of memory), else ``None``.
    """

    batch_size: int
    updates: int = 0
    rates: list[float | None] = field(default_factory=list)
    seconds_per_update: list[float | None] = field(default_factory=list)
    units_per_update: float = 0.0
    units_per_s: float | None = None
    units_per_s_min: float | None = None
    units_per_s_max: float | None = None
    units_per_s_q1: float | None = None
    units_per_s_q3: float | None = None
    seconds_per_update_median: float | None = None
    seconds_per_unit: float | None = None
    failed: str | None = None

    @property
    def relative_spread(self) -> float | None:
        """``(max - min) / median`` of the rates (``None`` when not timed)."""
        if not self.units_per_s:
            return None
        return (self.units_per_s_max - self.units_per_s_min) / self.units_per_s

    def summarise(self) -> None:
        """Fill the medians and spreads from ``rates`` and ``seconds_per_update``."""
        rates = [r for r in self.rates if r is not None]
        if not rates:
            return
        self.units_per_s = statistics.median(rates)
        self.units_per_s_min, self.units_per_s_max = min(rates), max(rates)
        self.units_per_s_q1, self.units_per_s_q3 = percentile(rates, 25), percentile(rates, 75)
        seconds = [s for s in self.seconds_per_update if s is not None]
        self.seconds_per_update_median = statistics.median(seconds) if seconds else None
        self.seconds_per_unit = statistics.median(1 / r for r in rates)


@dataclass
class Comparison:
    """Batch size ``a`` against ``b``, round by round: ``ratio`` = rate of ``a`` / rate of ``b``.

    Attributes:
        a, b: The batch sizes compared.
        ratio: Median over the rounds of the per-round ratio (> 1: ``a`` is faster).
        ratio_min, ratio_max: The spread of the per-round ratios.
        rounds: Rounds in which both were timed.
        distinguishable: Whether the spread stays on one side of ``1 + margin`` (or of
            ``1 / (1 + margin)``): every round agrees on which is faster.
    """

    a: int
    b: int
    ratio: float | None
    ratio_min: float | None
    ratio_max: float | None
    rounds: int
    distinguishable: bool


@dataclass
class SpeedResult:
    """Interleaved, repeated timings of several batch sizes; :meth:`to_dict` is JSON-ready.

    Attributes:
        rows: One :class:`SpeedRow` per batch size, in the order given.
        rounds: Timed rounds.
        order: The batch sizes of each timed round, in the order they ran.
        unit: What ``units_per_s`` counts (``samples`` unless the caller says otherwise).
        warmup_updates: Untimed updates before each measurement.
        seconds: Wall-clock seconds of the whole measurement, round 0 included.
        device: Where it ran (informational).
    """

    rows: list[SpeedRow]
    rounds: int
    order: list[list[int]]
    unit: str = "samples"
    warmup_updates: int = 1
    seconds: float = 0.0
    device: str = ""

    def row(self, batch_size: int) -> SpeedRow:
        """The row of ``batch_size`` (``KeyError`` when it was not a candidate)."""
        for row in self.rows:
            if row.batch_size == batch_size:
                return row
        raise KeyError(f"batch size {batch_size} was not timed")

    def compare(self, a: int, b: int, margin: float = 0.0) -> Comparison:
        """Compare ``a`` with ``b`` from the rounds in which both were timed.

        Args:
            a, b: Batch sizes of this result.
            margin: Relative difference the comparison must clear in every round (0: any
                difference; 0.05: every round has one at least 5% faster than the other).
        """
        rates_a, rates_b = self.row(a).rates, self.row(b).rates
        ratios = [
            ra / rb for ra, rb in zip(rates_a, rates_b, strict=False) if ra and rb
        ]  # rounds where both ran
        if not ratios:
            return Comparison(a, b, None, None, None, 0, False)
        low, high = min(ratios), max(ratios)
        clear = len(ratios) >= 2 and (low > 1 + margin or high < 1 / (1 + margin))
        return Comparison(a, b, statistics.median(ratios), low, high, len(ratios), clear)

    def distinguishable(self, a: int, b: int, margin: float = 0.0) -> bool:
        """Whether the speeds of ``a`` and ``b`` differ by more than their spread.

        ``False`` (flag it, do not use it) when in some round the slower of the two by median
        was as fast or faster, i.e. the spread of the per-round ratios is wider than the
        difference the medians claim; also ``False`` with fewer than two shared rounds.
        """
        return self.compare(a, b, margin).distinguishable

    def speedup(self, fast: int, slow: int) -> dict:
        """``fast``'s throughput over ``slow``'s, with its spread and whether it can be used.

        Returns ``{"speedup", "speedup_min", "speedup_max", "distinguishable"}`` (JSON-ready;
        ``None`` figures when the two never ran in the same round).
        """
        c = self.compare(fast, slow)
        return {
            "speedup": c.ratio,
            "speedup_min": c.ratio_min,
            "speedup_max": c.ratio_max,
            "distinguishable": c.distinguishable,
        }

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (inverse: :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpeedResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. read back from a study)."""
        data = dict(data)
        data["rows"] = [SpeedRow(**row) for row in data.get("rows", [])]
        return cls(**data)

    def format_table(self) -> str:
        """A plain-text table: median units/s with the min-max range, seconds per update.

        A ``~`` after a row marks a batch size not distinguishable from the row above.
        """
        lines = [
            f"{'batch':>7}  {self.unit + '/s (median)':>20}  {'min-max':>19}  {'s/update':>9}",
        ]
        previous: SpeedRow | None = None
        for row in self.rows:
            if row.units_per_s is None:
                lines.append(f"{row.batch_size:>7}  {'-':>20}  {'-':>19}  {'-':>9}  {row.failed}")
                continue
            spread = f"{row.units_per_s_min:,.0f}-{row.units_per_s_max:,.0f}"
            mark = ""
            if previous is not None and not self.distinguishable(
                row.batch_size, previous.batch_size
            ):
                mark = "  ~"
            lines.append(
                f"{row.batch_size:>7}  {row.units_per_s:>20,.0f}  {spread:>19}  "
                f"{row.seconds_per_update_median:>9.2e}{mark}"
            )
            previous = row
        lines.append(
            f"{self.rounds} interleaved rounds, median over rounds; '~': not distinguishable "
            "from the row above (the rounds disagree on which is faster)"
        )
        return "\n".join(lines)


def _timed(run: Run, b: int, updates: int, clock, sync) -> tuple[float, float] | None:
    """``(units, seconds)`` of ``updates`` updates at ``b``, or ``None`` when it cannot run."""
    sync()
    started = clock()
    units = run(b, updates)
    sync()
    elapsed = clock() - started
    if units is None:
        return None
    return float(units), max(elapsed, 1e-12)


def time_interleaved(
    run: Run,
    batch_sizes: Sequence[int],
    rounds: int = DEFAULT_ROUNDS,
    updates: int = DEFAULT_UPDATES,
    warmup: int = 1,
    min_seconds: float = 0.0,
    max_updates: int = MAX_UPDATES,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
    rotate: bool = True,
    unit: str = "samples",
) -> SpeedResult:
    """Time ``run`` at each batch size in ``rounds`` interleaved rounds (see the module doc).

    Args:
        run: ``run(batch_size, updates) -> units`` (``None``: this batch size cannot run).
        batch_sizes: The candidates, each timed once per round.
        rounds: Timed rounds (at least 1; 3 or more for a spread worth the name).
        updates: Timed updates per measurement, at least.
        warmup: Untimed updates before each measurement.
        min_seconds: Round 0 raises the updates per measurement of a batch size until one
            measurement is expected to last this long (at most ``max_updates``).
        max_updates: Most timed updates per measurement.
        clock: Seconds, monotonic (tests pass a fake).
        sync: Waits for the device (``torch.cuda.synchronize`` on CUDA); called before the
            clock is read on either side of a measurement.
        rotate: Rotate the order from round to round (else every round runs the same order).
        unit: What ``run`` counts.
    """
    if rounds < 1 or updates < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, updates >= 1, warmup >= 0: {rounds, updates, warmup}")
    sizes = [int(b) for b in batch_sizes]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"batch sizes repeat: {sizes}")
    started = clock()
    rows = {b: SpeedRow(b, updates=updates) for b in sizes}
    for b in sizes:  # round 0: one-off costs and calibration, untimed
        first = _timed(run, b, 1, clock, sync)
        if first is None:
            rows[b].failed = "could not run (round 0)"
            continue
        if min_seconds > 0:
            wanted = math.ceil(min_seconds / first[1])
            rows[b].updates = max(updates, min(max_updates, wanted))
    order = interleaved_order([b for b in sizes if rows[b].failed is None], rounds, rotate)
    for round_order in order:
        done = set()
        for b in round_order:
            row = rows[b]
            timing = None
            if row.failed is None and (warmup == 0 or run(b, warmup) is not None):
                timing = _timed(run, b, row.updates, clock, sync)
            if timing is None:
                row.failed = row.failed or f"could not run (round {len(row.rates) + 1})"
                row.rates.append(None)
                row.seconds_per_update.append(None)
            else:
                units, seconds = timing
                row.rates.append(units / seconds)
                row.seconds_per_update.append(seconds / row.updates)
                row.units_per_update = units / row.updates
            done.add(b)
        for b in sizes:  # keep rounds aligned for a batch size that failed earlier
            if b not in done and rows[b].rates:
                rows[b].rates.append(None)
                rows[b].seconds_per_update.append(None)
    for row in rows.values():
        row.summarise()
    return SpeedResult(
        rows=[rows[b] for b in sizes],
        rounds=rounds,
        order=order,
        unit=unit,
        warmup_updates=warmup,
        seconds=clock() - started,
    )


def tensor_batches(
    data: Tensors,
    micro_batch_size: int | Mapping[int, int] | None,
    generator: torch.Generator,
    device: torch.device | str,
) -> MakeBatch:
    """``make_batch`` over in-memory :class:`~objectives.data.Tensors`: random samples.

    Each call draws ``batch_size`` indices with replacement and slices micro-batches of at most
    ``micro_batch_size`` (``None``: the whole batch; a mapping: each batch size's own
    micro-batch, the whole batch for one it does not list); units are samples. The only place that
    knows the data's layout: swap it for inputs/targets of another shape (dicts, tuples).
    """
    device = torch.device(device)

    def make_batch(batch_size: int) -> tuple[list[Batch], float]:
        index = torch.randint(len(data), (batch_size,), generator=generator).to(device)
        x, y = data.x[index], data.y[index]
        if isinstance(micro_batch_size, Mapping):
            micro = micro_batch_size.get(batch_size) or batch_size
        else:
            micro = micro_batch_size or batch_size
        return list(zip(x.split(micro), y.split(micro), strict=True)), float(batch_size)

    return make_batch


def dataset_batches(
    dataset,
    micro_batch_sizes: Mapping[int, int],
    generator: torch.Generator,
    device: torch.device | str,
    collate=None,
    count=None,
) -> MakeBatch:
    """``make_batch`` over any map-style dataset (the data a study streams): random items,
    collated as training collates them (``collate``, else stacked), moved to the device and
    split into each batch size's micro-batches; units are ``count(inputs, targets)`` (tokens,
    ...) or samples. Fetching and collating happen inside the timed window, as in training.
    """
    from objectives.batch import micro_batches, stack_items, to_device

    def make_batch(batch_size: int) -> tuple[list[Batch], float]:
        index = torch.randint(len(dataset), (batch_size,), generator=generator).tolist()
        items = [dataset[i] for i in index]
        inputs, targets = collate(items) if collate is not None else stack_items(items)
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        units = float(count(inputs, targets)) if count is not None else float(batch_size)
        micro = micro_batch_sizes.get(batch_size) or batch_size
        return list(micro_batches((inputs, targets), micro)), units

    return make_batch


def step_runner(step: Step, make_batch: MakeBatch, is_oom=None) -> Run:
    """A :data:`Run` that does its updates with :meth:`Step.update` on batches of ``make_batch``.

    Batches are built before the updates they feed, inside the timed window (training builds
    its batches in the step loop too). ``is_oom(exc)`` says which exceptions mean "this batch
    does not fit" (then the run returns ``None``); others propagate.
    """

    def run(batch_size: int, updates: int) -> float | None:
        units = 0.0
        try:
            for _ in range(updates):
                micro_batches, n = make_batch(batch_size)
                step.update(micro_batches, batch_size)
                units += n
        except Exception as exc:
            if is_oom is None or not is_oom(exc):
                raise
            step.optimizer.zero_grad(set_to_none=True)
            return None
        return units

    return run


def measure_speed(
    build_model: Callable[[], torch.nn.Module],
    data: Tensors,
    batch_sizes: Sequence[int],
    settings: TrainSettings,
    rounds: int = DEFAULT_ROUNDS,
    updates: int = DEFAULT_UPDATES,
    min_seconds: float = MIN_MEASUREMENT_SECONDS,
    make_batch: MakeBatch | None = None,
    seed: int = 0,
    task=None,
    micro_batch_sizes: Mapping[int, int] | None = None,
) -> SpeedResult:
    """Training throughput of each batch size, timed in interleaved rounds on a fresh model.

    Args:
        build_model: Builds the model (e.g. ``task.build_model``); moved to the device here.
        data: Training data (any device; moved to ``settings.device``).
        batch_sizes: Candidates (samples per update). An update larger than
            ``settings.micro_batch_size`` is accumulated over micro-batches of that size, as a
            trial with that micro-batch would.
        settings: The trial's settings (optimizer, lr, device, precision, compile).
        rounds, updates, min_seconds: See :func:`time_interleaved`.
        make_batch: Overrides :func:`tensor_batches` (for data that is not ``Tensors``).
        seed: Seeds the model and the batch draws.
        task: The task whose loss and step hook the updates use (``None``: cross-entropy).
        micro_batch_sizes: Each batch size's own micro-batch (a study trains each batch at
            the micro-batch its space splits it into), so all of them are timed in one
            interleaved measurement; ``None``: ``settings.micro_batch_size`` for all.

    Returns:
        A :class:`SpeedResult` in samples per second.

    Example:
        >>> from objectives.tasks import load_task
        >>> task = load_task("digits", model="mlp", hidden=(16,))
        >>> from objectives.data import as_tensors
        >>> result = measure_speed(task.build_model, as_tensors(task.train), [8, 32],
        ...                        TrainSettings(1, 32, 32, 1e-3), rounds=2, min_seconds=0)
        >>> [row.batch_size for row in result.rows], len(result.row(8).rates)
        ([8, 32], 2)
    """
    from objectives.oom import is_out_of_memory

    device = torch.device(settings.device)
    torch.manual_seed(seed)
    model = build_model().to(device)
    model.train()
    step = make_step(model, settings) if task is None else make_step(model, settings, task)
    if make_batch is None:
        generator = torch.Generator().manual_seed(seed)
        micro = micro_batch_sizes or settings.micro_batch_size
        make_batch = tensor_batches(data.to(device), micro, generator, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch_flags(device):
        result = time_interleaved(
            step_runner(step, make_batch, is_out_of_memory),
            batch_sizes,
            rounds=rounds,
            updates=updates,
            min_seconds=min_seconds,
            sync=sync,
        )
    result.device = str(device)
    return result


def _within(result: SpeedResult, b: int, best: int, tolerance: float) -> bool:
    if b == best:
        return True
    ratio = result.compare(b, best).ratio
    return ratio is not None and ratio >= 1 - tolerance


def knee_from_timings(result: SpeedResult, tolerance: float = KNEE_TOLERANCE) -> int:
    """The smallest batch size from which up to the fastest every batch is within ``tolerance``.

    The fastest is the batch size of highest median throughput; "within" is the median of the
    per-round ratios to it being at least ``1 - tolerance`` (both timed in the same rounds, so a
    slow round hurts both sides alike). Requiring every batch between the knee and the fastest
    to be within as well keeps a lucky small batch below a slower stretch from being the knee.

    Example:
        >>> rows = [SpeedRow(b, rates=[r, r]) for b, r in ((8, 100.0), (16, 950.0), (32, 1e3))]
        >>> knee_from_timings(SpeedResult(rows, rounds=2, order=[]))
        16

    Raises:
        ValueError: ``tolerance`` out of range, or no batch size was timed.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"knee tolerance {tolerance} must be in [0, 1)")
    for row in result.rows:
        if row.units_per_s is None:
            row.summarise()
    timed = sorted((r for r in result.rows if r.units_per_s), key=lambda r: r.batch_size)
    if not timed:
        raise ValueError("no batch size has a measured throughput, so there is no knee")
    best = max(timed, key=lambda r: r.units_per_s).batch_size
    knee = best
    for row in reversed([r for r in timed if r.batch_size < best]):  # down from the best
        if not _within(result, row.batch_size, best, tolerance):
            break
        knee = row.batch_size
    return knee
