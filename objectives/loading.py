"""Loading a task by name: a built-in task, or a user's ``module:factory`` or
``path/to/file.py:factory``, checked against the contract and described in ``task.info``
(:func:`load_task`; :func:`build_task` loads the one a study's settings name).

Example:
    >>> task = load_task("digits", model="mlp")
    >>> task.info["train_size"], task.info["input_shape"]
    (1078, [1, 8, 8])
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from objectives.batch import describe
from objectives.builtin import digits_task, synthetic_task
from objectives.contract import Task, TaskError
from objectives.taskcheck import validate_task
from study.config import BUILTIN_TASKS, PYTHON_TASK_PREFIX


@contextlib.contextmanager
def folder_on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while a file task loads (as ``python file.py`` would
    have it), so that the file imports the modules beside it; removed afterwards."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _task_folder(spec: str) -> Path | None:
    """The folder of a ``path/to/file.py:factory`` task, ``None`` for other tasks."""
    target = spec.rpartition(":")[0]
    return Path(target).resolve().parent if target.endswith(".py") else None


def _import_factory(spec: str) -> Callable[[], object]:
    """Resolve ``package.module:factory`` or ``path/to/file.py:factory`` to the callable."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise TaskError(
            f"--task {spec!r} is not a built-in task ({', '.join(BUILTIN_TASKS)}) nor "
            "'package.module:factory' or 'path/to/file.py:factory'"
        )
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise TaskError(f"--task {spec!r}: file {target} not found; check the path")
            name = f"_user_task_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            with folder_on_path(path.resolve().parent):  # its helper modules import
                module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except TaskError:
        raise
    except SystemExit as exc:  # user code that exits while imported: a mistake, said so
        raise TaskError(
            f"--task {spec!r}: importing {target} called sys.exit({exc.code!r}); a task module "
            "must define its factory without exiting (guard scripts with "
            "if __name__ == '__main__')"
        ) from None
    except Exception as exc:  # any import-time failure of user code
        raise TaskError(
            f"--task {spec!r}: importing {target} failed ({type(exc).__name__}: {exc}); "
            "fix the module or the path"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"--task {spec!r}: {target} has no callable named {attr!r}")
    return factory


def load_task(
    name: str,
    model: str = "mlp",
    hidden: tuple[int, ...] = (128, 64),
    seed: int = 0,
    synthetic_samples: int = 4096,
    synthetic_features: int = 32,
    synthetic_classes: int = 4,
    data_dir: str = "storage/data",
    download: bool = False,
) -> Task:
    """Build the task called ``name`` (built-in or ``module:factory``).

    ``data_dir`` and ``download`` concern the image datasets only (``mnist``,
    ``fashion-mnist``, ``cifar10``): where their files are, and whether to fetch missing ones.

    Raises:
        TaskError: the name is unknown, dataset files are missing, the user's factory fails,
            or its task is malformed.
    """
    from objectives.vision import VISION_TASKS, vision_task

    if name == "digits":
        task = digits_task(model=model, hidden=hidden, seed=seed)
    elif name == "synthetic":
        task = synthetic_task(
            synthetic_samples, synthetic_features, synthetic_classes, model, hidden, seed
        )
    elif name == "charlm":
        from objectives.text import charlm_task

        task = charlm_task(model=model, seed=seed)
    elif name == "regression":
        from objectives.regression import regression_task

        task = regression_task(model=model, hidden=hidden, seed=seed)
    elif name in VISION_TASKS:
        task = vision_task(name, data_dir, download, model=model, hidden=hidden, seed=seed)
    else:
        factory = _import_factory(name)
        folder = _task_folder(name)
        try:
            with folder_on_path(folder) if folder else contextlib.nullcontext():
                task = factory()
        except TaskError:
            raise
        except SystemExit as exc:  # a factory that exits: a mistake in the task, said so
            raise TaskError(
                f"--task {name!r}: the factory called sys.exit({exc.code!r}) instead of "
                "returning an objectives.Task: return the task, or raise an exception that "
                "says what is wrong"
            ) from None
        except Exception as exc:
            raise TaskError(
                f"--task {name!r}: the factory raised {type(exc).__name__}: {exc}"
            ) from exc
    task = validate_task(task, name)
    task.info.update(
        train_size=len(task.train),
        val_size=len(task.val),
        test_size=len(task.test),
        num_classes=task.num_classes,
        input_shape=_input_shape(task.train[0][0]),
    )
    return task


def _input_shape(inputs: object) -> list[int] | str:
    """An item's input shape (a tensor's), or its description (other structures)."""
    return list(inputs.shape) if isinstance(inputs, torch.Tensor) else describe(inputs)


def build_task(config: Any) -> Task:
    """The task the config names, built with its model settings.

    Any object with the same field names works, such as the namespace of a script that
    declared its flags with :func:`study.cli.add_task_arguments`.
    """
    if config.task.startswith(PYTHON_TASK_PREFIX):
        raise TaskError(
            f"--task {config.task!r}: this study's task was a Task object given from Python "
            "(objectives.run_study(task=...)); resume it the same way, or use "
            "--task package.module:factory"
        )
    return load_task(
        config.task,
        model=config.model,
        hidden=tuple(config.hidden),
        seed=config.seed,
        synthetic_samples=config.synthetic_samples,
        synthetic_features=config.synthetic_features,
        synthetic_classes=config.synthetic_classes,
        data_dir=config.data_dir,
        download=getattr(config, "download", False),
    )
