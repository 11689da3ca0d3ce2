"""What one training step holds in memory, measured rather than guessed.

On CUDA the allocator's own peak counter is the truth. On CPU there is no such counter, so a
step's footprint is counted from the tensors that really exist: parameters, gradients, the
optimizer's state, and every tensor autograd saves for the backward pass (caught with
saved-tensor hooks, each storage counted once), plus the step's inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        if t is not None and t.device.type != "meta":
            key = _storage_key(t)
            seen[key] = key[1]
    return sum(seen.values())


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of parameters, buffers, gradients and optimizer state, each storage once."""
    tensors: list[torch.Tensor] = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


class SavedTensorCounter:
    """Counts the bytes autograd saves for backward while the context is open.

    Parameters saved by reference are not counted again (they are in :func:`state_bytes`).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> with SavedTensorCounter(model) as counter:
        ...     loss = model(torch.ones(3, 4)).sum()
        >>> counter.bytes > 0
        True
    """

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self._exclude = {_storage_key(p) for p in model.parameters()} if model else set()
        self._seen: dict[tuple[int, int], int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._exclude:
            self._seen[key] = key[1]
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
