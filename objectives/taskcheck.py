"""Checking a task against the contract before anything is stored.

:func:`validate_task` checks the task's callables and names, items spread over every split
(structure, shapes, integer labels for the default loss), the data (NaN, infinite or
unreadable items) and then :func:`check_task_runs`: a few items of each split through a fresh
model, the loss, the step hook, the backward pass and the metric. Every violation is one line,
a :class:`~objectives.contract.TaskError`.

Example:
    >>> check_indices(100, 5)
    [0, 25, 50, 74, 99]
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, TensorDataset

from objectives.batch import (
    batch_len,
    call_model,
    describe,
    layout,
    leaves,
    stack_items,
)
from objectives.contract import (
    IGNORE_INDEX,
    Task,
    TaskError,
    Update,
    is_accumulating,
    logits_of,
    metric_problem,
    takes_update,
)
from objectives.datacheck import DataItemError, data_problem, read_item
from objectives.metrics import SplitMetric
from study.config import BUILTIN_TASKS

#: Items of each split checked, and sent through a fresh model by :func:`check_task_runs`:
#: spread over the split (the first, the last and evenly between).
CHECK_ITEMS = 8
#: Labels read per split by the range check when a split is not held as tensors.
CHECK_LABELS = 4096


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_indices(size: int, count: int = CHECK_ITEMS) -> list[int]:
    """Up to ``count`` item indices spread over a split of ``size`` items, first and last in.

    Example:
        >>> check_indices(100, 5), check_indices(3)
        ([0, 25, 50, 74, 99], [0, 1, 2])
    """
    if size <= count:
        return list(range(size))
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)})


def _is_structure(obj: object, numbers: bool = False) -> bool:
    """A tensor, or a non-empty tuple/list/dict of them (``numbers``: ints and floats too)."""
    if isinstance(obj, torch.Tensor):
        return True
    if numbers and isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return True
    if isinstance(obj, dict):
        return bool(obj) and all(
            isinstance(k, str) and _is_structure(v, numbers) for k, v in obj.items()
        )
    if isinstance(obj, (tuple, list)):
        return bool(obj) and all(_is_structure(v, numbers) for v in obj)
    return False


def _integer_labels(targets: object) -> bool:
    """Whether ``targets`` are class indices: an int or an integer tensor."""
    if isinstance(targets, bool):
        return False
    if isinstance(targets, int):
        return True
    return isinstance(targets, torch.Tensor) and not (
        targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool
    )


def _check_contract(task: Task, spec: str) -> None:
    """The task's callables and names, before any data is read."""
    if not callable(task.build_model):
        raise TaskError(f"task {spec!r}: build_model is not callable")
    if not callable(task.loss):
        raise TaskError(
            f"task {spec!r}: loss must be callable as loss(outputs, targets) -> per-sample "
            "losses of shape [n]"
        )
    problem = metric_problem(task.metric)
    if problem:
        raise TaskError(f"task {spec!r}: {problem}")
    if task.collate is not None and not callable(task.collate):
        raise TaskError(
            f"task {spec!r}: collate must be callable as collate(list_of_items) -> "
            "(inputs, targets)"
        )
    if task.optimizer is not None and not callable(task.optimizer):
        raise TaskError(
            f"task {spec!r}: optimizer must be callable as optimizer(params, lr) -> a "
            "torch.optim.Optimizer"
        )
    if task.lr_schedule is not None:
        _check_schedule(task.lr_schedule, spec)
    if task.step is not None and not all(
        hasattr(task.step, name)
        and (getattr(task.step, name) is None or callable(getattr(task.step, name)))
        for name in ("loss", "before_update")
    ):
        raise TaskError(
            f"task {spec!r}: step must be an objectives.StepHook(loss=..., before_update=...) "
            f"of callables, got {type(task.step).__name__}"
        )
    if not isinstance(task.unit, str) or not task.unit.strip():
        raise TaskError(
            f"task {spec!r}: unit {task.unit!r} must name what a batch counts, e.g. 'samples' "
            "or 'tokens'"
        )
    if task.count is not None and not callable(task.count):
        raise TaskError(
            f"task {spec!r}: count must be callable as count(inputs, targets) -> the "
            f"{task.unit} in a batch"
        )


def _check_schedule(schedule: object, spec: str) -> None:
    """A task's ``lr_schedule(index, total)`` must give a finite factor of at least 0."""
    fix = "lr_schedule must be callable as lr_schedule(index, total) -> a factor >= 0 of the peak"
    if not callable(schedule):
        raise TaskError(f"task {spec!r}: {fix}")
    for index, total in ((0, 10), (9, 10)):
        try:
            factor = float(schedule(index, total))
        except Exception as exc:
            raise TaskError(
                f"task {spec!r}: lr_schedule({index}, {total}) raised {_first_line(exc)}: {fix}"
            ) from exc
        if not (0 <= factor < float("inf")):
            raise TaskError(f"task {spec!r}: lr_schedule({index}, {total}) gave {factor}: {fix}")


def _check_split(task: Task, spec: str, split_name: str, dataset: object) -> list:
    """Check a split's items against the contract; return the items checked.

    :data:`CHECK_ITEMS` items spread over the split must be ``(inputs, targets)`` pairs of
    tensors (tuples, lists or dicts of them), all of one structure, of one shape each when
    the task has no ``collate``, with integer labels when the task uses the default loss.
    """
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TaskError(f"task {spec!r}: split {split_name} is not a Dataset (needs __len__)")
    if len(dataset) == 0:
        raise TaskError(f"task {spec!r}: split {split_name} is empty; give it samples")
    where = f"task {spec!r}: {split_name} item"
    items, first = [], None
    for i in check_indices(len(dataset)):
        try:
            item = dataset[i]
        except Exception as exc:
            raise TaskError(f"{where} {i} could not be read: {_first_line(exc)}") from exc
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TaskError(
                f"{where} {i} is {describe(item)}: items must be (inputs, targets) pairs"
            )
        inputs, targets = item
        if not _is_structure(inputs):
            raise TaskError(
                f"{where} {i} has inputs {describe(inputs)}: inputs must be a tensor, a "
                "tuple/list of tensors or a dict of tensors"
            )
        if not _is_structure(targets, numbers=True):
            raise TaskError(
                f"{where} {i} has targets {describe(targets)}: targets must be a tensor, a "
                "number, or a tuple/list/dict of tensors"
            )
        if task.classification and not _integer_labels(targets):
            raise TaskError(
                f"task {spec!r}: {split_name} labels must be integers, got {describe(targets)}"
                ": the default loss is cross-entropy over class indices; for other targets "
                "give the task a loss and a metric (e.g. objectives.metrics.mse and MSE)"
            )
        if first is None:
            first = (i, item)
        elif layout(item) != layout(first[1]):
            raise TaskError(
                f"{where} {i} is {describe(item)} but item {first[0]} is "
                f"{describe(first[1])}: all items need one structure (kinds, keys, dtypes)"
            )
        elif task.collate is None and [t.shape for t in leaves(item)] != [
            t.shape for t in leaves(first[1])
        ]:
            raise TaskError(
                f"{where} {i} is {describe(item)} but item {first[0]} is "
                f"{describe(first[1])}: items of different shapes need a collate(items) -> "
                "(inputs, targets) that pads them: Task(..., collate=...)"
            )
        items.append(item)
    return items


def validate_task(task: object, spec: str) -> Task:
    """Check a user's task against the contract and fill in ``num_classes`` (default loss).

    Every violation found is one line: a :class:`TaskError` raised before anything is
    stored. See :func:`check_task_runs` for the run through a fresh model.
    """
    if not isinstance(task, Task):
        raise TaskError(
            f"task {spec!r}: the factory returned {type(task).__name__}, not objectives.Task"
        )
    _check_contract(task, spec)
    first = {}
    for split_name in ("train", "val", "test"):
        first[split_name] = _check_split(task, spec, split_name, getattr(task, split_name))[0]
        if layout(first[split_name]) != layout(first["train"]):
            raise TaskError(
                f"task {spec!r}: {split_name} item 0 is {describe(first[split_name])} but train "
                f"item 0 is {describe(first['train'])}: all splits need one structure (kinds, "
                "keys, dtypes)"
            )
    splits = {name: getattr(task, name) for name in ("train", "val", "test")}
    try:
        problem = data_problem(splits)
    except DataItemError as exc:
        raise TaskError(f"task {spec!r}: {exc}") from exc
    if problem:
        raise TaskError(f"task {spec!r}: {problem}")
    try:
        if task.classification and task.num_classes is None:
            labels = split_labels(task.train, limit=None, split="train")
            task.num_classes = int(labels.max().item()) + 1 if labels.numel() else 1
        model_class = check_task_runs(task, spec)
    except DataItemError as exc:
        raise TaskError(f"task {spec!r}: {exc}") from exc
    if spec not in BUILTIN_TASKS and not isinstance(task.info.get("model"), str):
        task.info["model"] = model_class  # the report names the user's model by its class
    return task


def split_labels(
    dataset: Dataset, limit: int | None = CHECK_LABELS, split: str = "data"
) -> torch.Tensor:
    """The split's class labels, flattened, :data:`~objectives.metrics.IGNORE_INDEX` left out:
    all of a ``TensorDataset``, else those of the first ``limit`` items (``None``: all)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        labels = dataset.tensors[1].reshape(-1)
    else:
        n = len(dataset) if limit is None else min(len(dataset), limit)
        parts = [torch.as_tensor(read_item(dataset, split, i)[1]).reshape(-1) for i in range(n)]
        labels = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    labels = labels.long()
    return labels[labels != IGNORE_INDEX]


def _check_labels(task: Task, spec: str) -> dict[str, torch.Tensor]:
    """The default loss's labels are class indices: none negative. Returns them per split."""
    labels_of_split = {
        name: split_labels(getattr(task, name), split=name) for name in ("train", "val", "test")
    }
    for split_name, labels in labels_of_split.items():
        if labels.numel() and int(labels.min()) < 0:
            where = int((labels < 0).nonzero()[0])
            raise TaskError(
                f"task {spec!r}: {split_name} item {where} has label {int(labels[where])}: "
                f"labels must be class indices 0..{task.num_classes - 1}"
            )
    return labels_of_split


def _check_class_scores(
    task: Task, spec: str, split_name: str, out: object, targets: torch.Tensor, high: int | None
) -> None:
    """The default loss's outputs: class scores ``[n, classes]`` (or ``[*targets, classes]``)
    with a score for every label: a tensor, a dict's ``logits`` or an object's ``.logits``."""
    n = batch_len(targets)
    out = logits_of(out)
    if not isinstance(out, torch.Tensor):
        raise TaskError(
            f"task {spec!r}: the model's forward pass gives {type(out).__name__}, not class "
            "scores: return a tensor, a dict with 'logits' or an object with .logits, or give "
            "the task a loss(outputs, targets) -> [n] and a metric that read your outputs"
        )
    if targets.dim() <= 1:
        if out.dim() != 2 or out.shape[0] != n:
            raise TaskError(
                f"task {spec!r}: the model's forward pass gives {list(out.shape)} for {n} "
                "items: it must return class scores of shape [items, classes]"
            )
    elif not isinstance(out, torch.Tensor) or out.shape[:-1] != targets.shape:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TaskError(
            f"task {spec!r}: the model's forward pass gives {shape} for targets "
            f"{list(targets.shape)}: the default loss needs class scores of shape "
            "[*targets, classes]"
        )
    classes = out.shape[-1]
    if task.num_classes is not None and classes < task.num_classes:
        raise TaskError(
            f"task {spec!r}: the model gives {classes} outputs per item but the "
            f"labels go up to {task.num_classes - 1}: it needs at least "
            f"{task.num_classes} outputs (one per class)"
        )
    if high is not None and high >= classes:
        raise TaskError(
            f"task {spec!r}: {split_name} has label {high} but the model gives "
            f"{classes} outputs: labels must be class indices below it"
        )


def _per_sample(spec: str, what: str, values: object, n: int, split_name: str) -> None:
    """``values`` (from the loss, the hook or a per-sample metric) must be a tensor of shape
    ``[n]``; the hint fits a loss or a metric."""
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (n,):
        got = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        if "metric" in what:
            fix = (
                "a per-sample metric's mean is the split's value; for a metric of the whole "
                "split (micro-F1, AUC) use Metric(..., per='split') or a torchmetrics object"
            )
        elif isinstance(values, torch.Tensor) and values.dim() == 0:
            fix = (
                "a batch mean, such as a Hugging Face model's own .loss, cannot keep "
                "accumulation exact: reduction='none', or drop the loss and let the default "
                "cross-entropy read the outputs' logits"
            )
        else:
            fix = "e.g. reduction='none', then the mean over the other dimensions"
        raise TaskError(
            f"task {spec!r}: {what} gives {got} for {n} {split_name} items: it must return "
            f"one value per sample, shape [{n}] ({fix})"
        )


def check_task_runs(task: Task, spec: str) -> str:
    """A batch of a few items of each split, through a fresh model, the loss and the metric.

    Run when a task is loaded, before anything is stored, so that a model that does not fit
    its data, a loss or metric that does not return one value per sample, a label outside
    the model's outputs (default loss), a failing ``collate``, ``count`` or step hook, or a
    ``build_model`` that returns no module is one line (:class:`TaskError`) instead of a
    crash inside the first trial. The batch is built from items spread over the split
    (:func:`check_indices`), with the task's ``collate`` when it has one. The global random
    state is left as it was. Returns the class name of the model ``build_model`` built.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(16, 4), torch.arange(16) % 3)
        >>> task = Task("t", lambda: torch.nn.Linear(4, 2), data, data, data, num_classes=3)
        >>> check_task_runs(task, "t")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        objectives.contract.TaskError: task 't': the model gives 2 outputs per item but ...
    """
    labels_of_split = _check_labels(task, spec) if task.classification else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = task.build_model()
        except Exception as exc:
            raise TaskError(f"task {spec!r}: build_model() raised {_first_line(exc)}") from exc
        if not isinstance(model, torch.nn.Module):
            raise TaskError(
                f"task {spec!r}: build_model() returned {type(model).__name__}, not a "
                "torch.nn.Module: return a fresh model on each call"
            )
        if task.optimizer is not None:
            _check_optimizer(task, spec, model)
        model.train()
        for split_name in ("train", "val", "test"):
            dataset = getattr(task, split_name)
            items = [dataset[i] for i in check_indices(len(dataset))]
            _check_batch_runs(task, spec, split_name, model, items, labels_of_split)
    return type(model).__name__


def _check_optimizer(task: Task, spec: str, model: torch.nn.Module) -> None:
    """The task's ``optimizer(params, lr)`` builds a ``torch.optim.Optimizer``."""
    try:
        optimizer = task.optimizer(model.parameters(), 1e-3)
    except Exception as exc:
        raise TaskError(f"task {spec!r}: optimizer(params, lr) raised {_first_line(exc)}") from exc
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TaskError(
            f"task {spec!r}: optimizer(params, lr) returned {type(optimizer).__name__}: it "
            "must return a torch.optim.Optimizer over params at learning rate lr"
        )


def _check_batch_runs(
    task: Task,
    spec: str,
    split_name: str,
    model: torch.nn.Module,
    items: list,
    labels_of_split: dict[str, torch.Tensor],
) -> None:
    """One split's part of :func:`check_task_runs`."""
    what = "collate" if task.collate is not None else "stacking"
    try:
        batch = (task.collate or stack_items)(items)
    except Exception as exc:
        raise TaskError(
            f"task {spec!r}: {what} {len(items)} {split_name} items raised {_first_line(exc)}"
            + ("" if task.collate else ": give the task a collate(items) -> (inputs, targets)")
        ) from exc
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TaskError(
            f"task {spec!r}: {what} of {split_name} items gives {describe(batch)}: a batch "
            "must be (inputs, targets)"
        )
    inputs, targets = batch
    try:
        n = batch_len(targets)
    except ValueError:
        n = -1
    if n != len(items):
        raise TaskError(
            f"task {spec!r}: {what} of {len(items)} {split_name} items gives targets "
            f"{describe(targets)}: their first dimension must be the {len(items)} items"
        )
    try:
        out = call_model(model, inputs)
    except Exception as exc:
        raise TaskError(
            f"task {spec!r}: the model does not fit its data: the forward pass on "
            f"{len(items)} {split_name} items, inputs {describe(inputs)}, raised "
            f"{_first_line(exc)}"
        ) from exc
    if task.classification and isinstance(targets, torch.Tensor):
        labels = labels_of_split.get(split_name)
        high = int(labels.max()) if labels is not None and labels.numel() else None
        _check_class_scores(task, spec, split_name, out, targets, high)
    try:
        losses = task.loss(out, targets)
    except Exception as exc:
        raise TaskError(
            f"task {spec!r}: the loss raised {_first_line(exc)} on {split_name} items "
            f"(outputs {describe(out)}, targets {describe(targets)})"
        ) from exc
    _per_sample(spec, "the loss", losses, n, split_name)
    hook_loss = getattr(task.step, "loss", None)
    if hook_loss is not None:
        try:
            losses = hook_loss(losses, out, targets, model)
        except Exception as exc:
            raise TaskError(
                f"task {spec!r}: the step hook's loss raised {_first_line(exc)}"
            ) from exc
        _per_sample(spec, "the step hook's loss", losses, n, split_name)
    try:
        losses.float().sum().backward()
    except Exception as exc:
        raise TaskError(
            f"task {spec!r}: the backward pass through the model on {split_name} "
            f"items raised {_first_line(exc)}"
        ) from exc
    before_update = getattr(task.step, "before_update", None)
    if before_update is not None and split_name == "train":
        try:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            if takes_update(before_update):
                before_update(model, optimizer, Update(0, 0, 0.0))
            else:
                before_update(model, optimizer)
        except Exception as exc:
            raise TaskError(
                f"task {spec!r}: the step hook's before_update raised {_first_line(exc)}"
            ) from exc
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        _check_metric_runs(task, spec, split_name, out, targets, n)
    if task.count is not None:
        try:
            units = task.count(inputs, targets)
            ok = (isinstance(units, int) and not isinstance(units, bool) and units >= 0) or (
                isinstance(units, torch.Tensor) and units.numel() == 1 and int(units) >= 0
            )
        except Exception as exc:
            raise TaskError(f"task {spec!r}: count raised {_first_line(exc)}") from exc
        if not ok:
            raise TaskError(
                f"task {spec!r}: count(inputs, targets) gives {describe(units)}: it must "
                f"return the {task.unit} in the batch, an int or a one-element tensor >= 0"
            )


def _check_metric_runs(
    task: Task, spec: str, split_name: str, out: object, targets: object, n: int
) -> None:
    """The metric on one batch: ``[n]`` values (per sample) or one finite number (per split)."""
    metric = task.metric
    detached = out.detach() if isinstance(out, torch.Tensor) else out
    if not metric.per_split:
        try:
            values = metric.fn(detached, targets)
        except Exception as exc:
            raise TaskError(
                f"task {spec!r}: the metric {metric.name!r} raised {_first_line(exc)} on "
                f"{split_name} items"
            ) from exc
        _per_sample(spec, f"the metric {metric.name!r}", values, n, split_name)
        return
    total = SplitMetric(metric, "cpu" if not isinstance(out, torch.Tensor) else out.device)
    try:
        total.add(detached, targets)
        value = total.value()
    except Exception as exc:
        raise TaskError(
            f"task {spec!r}: the split metric {metric.name!r} raised {_first_line(exc)} on "
            f"{split_name} items: fn(outputs, targets) gets the split's outputs and targets "
            "concatenated and must return one number (a torchmetrics object gets update/compute)"
        ) from exc
    if not math.isfinite(value) and not math.isnan(value):
        raise TaskError(
            f"task {spec!r}: the split metric {metric.name!r} gives {value} on {split_name} "
            "items: it must return one finite number"
        )
    if is_accumulating(metric.fn):
        metric.fn.reset()
