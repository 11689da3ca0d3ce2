"""The Optuna side: what to try, where it is stored, how trials run, and reports.

Nothing here imports torch, so reports and the dashboard open fast where no training happens.
"""

from study.config import ConfigError, StudyConfig
from study.runner import create_or_resume, finished_count, run_trials
from study.scaling import resolve_rule, scaled_lr
from study.space import BatchSpace, build_space
from study.storage import StorageError, open_storage, redact

__all__ = [
    "BatchSpace",
    "ConfigError",
    "StorageError",
    "StudyConfig",
    "build_space",
    "create_or_resume",
    "finished_count",
    "open_storage",
    "redact",
    "resolve_rule",
    "run_trials",
    "scaled_lr",
]
