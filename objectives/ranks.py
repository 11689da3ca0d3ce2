"""A process's place in a trial on several devices, and the collectives the loop needs.

A trial on K devices runs K processes in one ``torch.distributed`` group (see
:mod:`objectives.distributed`, which starts them). Rank 0 holds the Optuna trial; the others
only train. After each epoch (or evaluation period) they meet three times:

* :meth:`Ranks.all_sum`: the epoch's summed loss, samples and units, added over the ranks,
  so every rank sees the same training loss and stops at the same epoch when it diverges;
* :meth:`Ranks.evaluate`: the validation metric, sharded over the ranks for a per-sample
  metric, on rank 0 alone for a metric of the whole split;
* :meth:`Ranks.lead` / :meth:`Ranks.follow`: rank 0 reports and decides
  (continue, pruned, diverged or collapsed, stopped) and broadcasts the decision; the other
  ranks raise :class:`Stopped` when told to stop, so every rank ends at the same epoch.

Example (one process is a group of one)::

    Ranks(rank=0, ranks=1, device="cpu").evaluate(evaluate, model, val, 256)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

#: The decision rank 0 broadcasts after an epoch that goes on.
GO = "go"


class Stopped(RuntimeError):
    """Rank 0 stopped the trial at this epoch (pruned, diverged, collapsed or interrupted)."""


@dataclass
class Ranks:
    """One rank of a trial's process group.

    Args:
        rank: This process's rank, 0 to ``ranks - 1`` (0 holds the trial).
        ranks: Processes (devices) in the trial.
        device: This rank's device.
    """

    rank: int
    ranks: int
    device: str = "cpu"
    stopped: bool = False  # rank 0 has broadcast a stop: the others end by themselves

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def evaluate(
        self,
        evaluate: Callable[..., float],
        model: torch.nn.Module,
        data: Any,
        batch_size: int,
        precision: str = "fp32",
        task: Any = None,
    ) -> float:
        """The task's metric over the whole split, the same on every rank.

        A per-sample metric (accuracy, a loss) is sharded: each rank evaluates its contiguous
        part of the split and the sums are added over the ranks (float64). A metric of the
        whole split (an F1 score, a ``torchmetrics`` object) needs every output in one place:
        rank 0 evaluates it alone and the others get NaN (they only follow its decision).
        The unwrapped ``model`` is evaluated (the wrapper's forward pass is collective),
        by ``evaluate`` (:func:`objectives.train.evaluate`, handed in by the loop).
        """
        from objectives.metrics import ACCURACY

        metric = task.metric if task is not None and task.metric is not None else ACCURACY
        if self.ranks == 1 or metric.per_split:
            if not self.leader:
                return math.nan
            return evaluate(model, data, batch_size, self.device, precision, task)
        part = shard(data, self.rank, self.ranks)
        return evaluate(model, part, batch_size, self.device, precision, task, _sum_over_ranks)

    def all_sum(
        self, loss: torch.Tensor, samples: int, units: Any
    ) -> tuple[torch.Tensor, int, Any]:
        """``(loss, samples, units)`` summed over the ranks (float64, exact for counts)."""
        if self.ranks == 1:
            return loss, samples, units
        values = torch.stack(
            [
                loss.detach().to(torch.float64).reshape(()),
                torch.tensor(float(samples), dtype=torch.float64, device=loss.device),
                torch.as_tensor(units, dtype=torch.float64, device=loss.device).reshape(()),
            ]
        )
        dist.all_reduce(values)
        return values[0].to(loss.dtype), int(values[1].item()), int(round(values[2].item()))

    def lead(self, on_epoch: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """Rank 0's ``on_epoch``: run the objective's, then broadcast its decision.

        ``on_epoch`` returning means go on; raising (pruned, collapsed, interrupted) sends
        stop with the reason, then raises on here.
        """

        def lead_epoch(epoch: Any) -> None:
            try:
                if on_epoch is not None:
                    on_epoch(epoch)
            except BaseException as stop:
                self._broadcast(f"{type(stop).__name__}: {stop}")
                self.stopped = True
                raise
            self._broadcast(GO)

        return lead_epoch

    def follow(self, _epoch: Any) -> None:
        """The other ranks' ``on_epoch``: wait for rank 0's decision; raise :class:`Stopped`."""
        decision = self._broadcast(None)
        if decision != GO:
            raise Stopped(str(decision))

    def _broadcast(self, decision: str | None) -> str | None:
        box = [decision]
        dist.broadcast_object_list(box, src=0, device=collective_device(self.device))
        return box[0]


def _sum_over_ranks(total: Any) -> None:
    """A per-sample metric's sum and count (a :class:`~objectives.metrics.SplitMetric`),
    added over the ranks in place."""
    sums = torch.stack(
        [total.total.to(torch.float64), torch.tensor(float(total.samples), device=total.device)]
    )
    dist.all_reduce(sums)
    total.total, total.samples = sums[0], int(sums[1].item())


def shard(data: Any, rank: int, ranks: int) -> Any:
    """Rank ``rank``'s contiguous part of a split (held tensors, or any dataset)."""
    from torch.utils.data import Subset

    from objectives.data import Tensors

    n = len(data)
    low, high = n * rank // ranks, n * (rank + 1) // ranks
    if isinstance(data, Tensors):
        return Tensors(data.x[low:high], data.y[low:high])
    return Subset(data, range(low, high))


def collective_device(device: str) -> torch.device | None:
    """Where object collectives stage their bytes: the GPU under NCCL, else the CPU."""
    return torch.device(device) if torch.device(device).type == "cuda" else None
