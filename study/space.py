"""The batch-size search space: powers of two up to a cap, fixed when the study is created.

The memory cap is the largest micro-batch a step may use: the smallest of ``--max-batch-size``
and the hardware probe's cap. With accumulation the effective batch continues above it, up to
``memory_cap * max_accumulation``, trained as micro-batches of the memory cap. No effective
batch exceeds the largest power of two not above the training-set size.

Example:
    >>> space = build_space(min_batch_size=8, memory_cap=64, max_accumulation=4,
    ...                     train_size=1078, scaling="search", cap_source="--max-batch-size")
    >>> space.batch_sizes
    [8, 16, 32, 64, 128, 256]
    >>> space.split(256)
    (64, 4)

On several devices per trial the batch sizes are global: ``devices`` times each per-device
batch, a device's share trained as micro-batches of at most the memory cap (the probe's cap
is per device):

    >>> space = build_space(8, 64, 4, 1078, "linear", "--max-batch-size", devices=2)
    >>> space.batch_sizes, space.split(256), space.accumulation(256, 64)
    ([16, 32, 64, 128, 256, 512], (64, 2), 2)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from study.scaling import RULES


class SpaceError(ValueError):
    """The space is empty or malformed; the message names the bound to change."""


def largest_power_of_two(n: int) -> int:
    """The largest power of two not above ``n`` (``n >= 1``)."""
    return 1 << (int(n).bit_length() - 1)


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class BatchSpace:
    """What a trial may sample; stored in the study so every worker sees the same space.

    Attributes:
        batch_sizes: The effective batch sizes, powers of two in ascending order.
        memory_cap: Largest micro-batch (what one step holds in memory).
        max_accumulation: Most micro-batches accumulated into one update.
        cap_source: Where the memory cap came from (``--max-batch-size``, ``probe``, ...).
        scaling_rules: Rules the study samples from (one entry when the rule is fixed).
        devices: Devices (processes) each trial trains on; batch sizes are global.
        schedules: Batch-size schedules studied as cells beside the constant batches, by
            their labels (``32@0,128@0.5``; :mod:`study.batch_schedule`); none in most studies.
    """

    batch_sizes: list[int]
    memory_cap: int
    max_accumulation: int
    cap_source: str
    scaling_rules: list[str] = field(default_factory=lambda: list(RULES))
    devices: int = 1
    schedules: list[str] = field(default_factory=list)

    @property
    def choices(self) -> list[int | str]:
        """The ``batch_size`` parameter's choices: the batch sizes, then the schedules."""
        return [*self.batch_sizes, *self.schedules]

    def split(self, batch_size: int) -> tuple[int, int]:
        """``(micro_batch_size, accumulation_steps)`` that train effective ``batch_size``
        (per device: ``batch_size = micro x devices x accumulation``)."""
        micro = min(batch_size // self.devices, self.memory_cap)
        return micro, self.accumulation(batch_size, micro)

    def accumulation(self, batch_size: int, micro_batch_size: int) -> int:
        """Micro-batches per update on each device at ``micro_batch_size``."""
        return batch_size // (micro_batch_size * self.devices)

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.schedules:  # stored as before when there is none
            data.pop("schedules")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BatchSpace:
        return cls(
            batch_sizes=[int(b) for b in data["batch_sizes"]],
            memory_cap=int(data["memory_cap"]),
            max_accumulation=int(data["max_accumulation"]),
            cap_source=str(data["cap_source"]),
            scaling_rules=list(data["scaling_rules"]),
            devices=int(data.get("devices", 1)),
            schedules=[str(s) for s in data.get("schedules") or ()],
        )


def build_space(
    min_batch_size: int,
    memory_cap: int,
    max_accumulation: int,
    train_size: int,
    scaling: str,
    cap_source: str,
    devices: int = 1,
) -> BatchSpace:
    """Build the space, or raise :class:`SpaceError` when it would be empty.

    Args:
        min_batch_size: Smallest batch, a power of two.
        memory_cap: Largest micro-batch that fits (rounded down to a power of two).
        max_accumulation: Most micro-batches per update (1 = no accumulation).
        train_size: Training-set size; no batch exceeds the largest power of two below it.
        scaling: A concrete rule, or ``search`` to sample among all rules.
        cap_source: Where ``memory_cap`` came from, kept for the record.
        devices: Devices per trial: the batch sizes are ``devices`` times the per-device
            ones (each no larger than the training set allows).
    """
    data_cap = largest_power_of_two(max(1, train_size // devices))
    memory_cap = min(largest_power_of_two(memory_cap), data_cap)
    top = min(memory_cap * max_accumulation, data_cap)
    if min_batch_size > memory_cap:
        raise SpaceError(
            f"--min-batch-size {min_batch_size} is above the batch cap {memory_cap} "
            f"(from {cap_source}; training set {train_size}): lower --min-batch-size"
        )
    sizes = []
    size = min_batch_size
    while size <= top:
        sizes.append(size)
        size *= 2
    rules = list(RULES) if scaling == "search" else [scaling]
    sizes = [size * devices for size in sizes]
    return BatchSpace(sizes, memory_cap, max_accumulation, cap_source, rules, devices)
