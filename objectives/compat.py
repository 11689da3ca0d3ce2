"""Every use of torch's private internals, each behind one small named function.

torch's public API has no list of the CPU allocator's allocation and free events, which the
CPU memory measurement (:mod:`objectives.memory`) needs; it lives here and nowhere else, so a
torch that changes it breaks this module only, and ``tests/test_compat.py`` says which
function, on a real profile. Optuna's private internals have their own module on the Optuna
side, :mod:`study.compat`.

Example:
    >>> profile = torch.profiler.profile(
    ...     activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    >>> with profile:
    ...     block = torch.ones(1024, 256)
    >>> max(size for _, size in allocation_events(profile)) >= 1024 * 256 * 4
    True
"""

from __future__ import annotations

import torch

__all__ = ["allocation_events"]


def allocation_events(profile: torch.profiler.profile) -> list[tuple[int, int]]:
    """The CPU allocator's allocation and free events of a finished ``profile``
    (``profile_memory=True``): ``(time in ns, bytes)``, positive for an allocation and
    negative for a free, in no particular order.

    Reads torch's private Kineto event tree (``experimental_event_tree`` and the
    ``_ExtraFields_Allocation`` nodes).

    Raises:
        RuntimeError: this torch's profiler does not expose the event tree.
    """
    try:
        roots = profile.profiler.kineto_results.experimental_event_tree()
    except AttributeError as exc:  # a torch whose profiler lacks the event tree
        raise RuntimeError(
            f"torch {torch.__version__}: the profiler does not expose allocation events, so CPU "
            "step memory cannot be measured; use a torch between 2.1 and 2.x"
        ) from exc
    events: list[tuple[int, int]] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            events.append((node.start_time_ns, int(fields.alloc_size)))
        stack.extend(node.children)
    return events
