"""Which process group an attempt trains in: none (one device), its own, or torchrun's.

Example:
    >>> from study.config import StudyConfig
    >>> with trial_group(StudyConfig(), "cpu") as group:
    ...     group is None
    True
"""

from __future__ import annotations

import contextlib

from objectives.distributed import TrialGroup
from objectives.torchrun import LaunchedGroup, launched
from study.config import StudyConfig


def trial_group(
    config: StudyConfig, device: str
) -> TrialGroup | LaunchedGroup | contextlib.nullcontext[None]:
    """The attempt's group on ``config.devices_per_trial`` devices (one device: nothing).

    On one machine the attempt starts its own helper ranks (:class:`TrialGroup`); under
    ``torchrun`` the group torchrun formed serves every trial (:class:`LaunchedGroup`).
    """
    if config.devices_per_trial == 1:
        return contextlib.nullcontext()
    if launched() is not None:
        return LaunchedGroup(device)
    return TrialGroup(config, device, config.devices_per_trial, config.collective_timeout)
