"""The gradient noise scale: where larger batches stop buying speed (McCandlish et al. 2018).

With ``G`` the true gradient and ``Sigma`` the per-sample gradient covariance, a batch of ``B``
samples drawn with replacement has ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``. Measuring ``|G_B|^2``
at two batch sizes ``b_small < b_big`` gives unbiased estimates of both terms:

- ``|G|^2 ~ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)``
- ``tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)``

and the simple noise scale ``B_simple = tr(Sigma) / |G|^2`` is the ratio of their averages
over repeats (each estimate is averaged separately; the ratio of averages is far less biased
than the average of ratios). Each repeat draws one batch of ``b_big`` samples and splits it
into ``b_big / b_small`` small batches, so the big gradient is the mean of the small ones and
one repeat costs one forward/backward pass over ``b_big`` samples.

Every ``B_simple`` carries its standard error (a jackknife over the repeats).
:func:`estimate_until_precise` adds repeats until that error is at most 20% of the estimate or
a time limit is reached, and says which; :func:`choose_estimate` picks the estimate of a training
run worth reporting (not the one at initialisation, where ``|G|^2`` can be tiny). The loss is a
parameter (``loss(outputs, targets) -> [n]``, a task's ``loss``; default cross-entropy).

Example (not run as a doctest: it needs a study, files or a server)::

    estimate = estimate_noise_scale(model, data, b_small=8, b_big=128)
    estimate.b_simple
    41.7
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from objectives.data import Tensors

#: ``loss(outputs, targets) -> [n]``: one loss per sample (a task's ``loss``).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``draw(repeats) -> (grad_norm_sq, trace_sigma)``: one unbiased estimate of each per repeat.
Draw = Callable[[int], tuple[Sequence[float], Sequence[float]]]

#: An estimate is precise enough when its standard error is at most this fraction of it.
TARGET_RELATIVE_SE = 0.2
#: How an estimate ended: precise enough, out of time, at the most repeats, or fixed repeats.
STOP_PRECISE, STOP_TIME, STOP_MAX_REPEATS, STOP_FIXED = (
    "precise",
    "time limit",
    "max repeats",
    "fixed repeats",
)


def cross_entropy_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default per-sample loss: cross-entropy, one value per sample."""
    return F.cross_entropy(outputs, targets, reduction="none")


@dataclass
class NoiseEstimate:
    """A noise-scale estimate at one point of training.

    Attributes:
        b_simple: ``tr(Sigma) / |G|^2`` (samples); ``inf`` when ``|G|^2`` is not positive.
        b_simple_se: Jackknife standard error of ``b_simple`` over the repeats (0 for the
            exact value; ``inf`` when a leave-one-out ratio is not finite).
        trace_sigma: Estimated trace of the per-sample gradient covariance.
        grad_norm_sq: Estimated squared norm of the true gradient.
        b_small, b_big, repeats: How it was measured.
        stop: Why the repeats stopped: :data:`STOP_PRECISE` (relative standard error at
            most the target), :data:`STOP_TIME`, :data:`STOP_MAX_REPEATS`, :data:`STOP_FIXED`
            (a fixed number of repeats) or ``"exact"``.
        seconds: Time spent on the repeats.
    """

    b_simple: float
    b_simple_se: float
    trace_sigma: float
    grad_norm_sq: float
    b_small: int
    b_big: int
    repeats: int
    stop: str = STOP_FIXED
    seconds: float = 0.0

    @property
    def relative_se(self) -> float:
        """``b_simple_se / |b_simple|`` (``inf`` when either is not finite or B is 0)."""
        if not (math.isfinite(self.b_simple) and math.isfinite(self.b_simple_se)):
            return math.inf
        return self.b_simple_se / abs(self.b_simple) if self.b_simple else math.inf

    def to_dict(self) -> dict:
        """JSON-ready fields, plus ``relative_se`` (``inf`` is written as ``None``)."""
        out = asdict(self)
        rel = self.relative_se
        out["relative_se"] = rel if math.isfinite(rel) else None
        return out


def _flat_grad(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossFn
) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(model(x), y).mean(), params)
    return torch.cat([g.reshape(-1) for g in grads])


def _chunk_grads(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, size: int, loss: LossFn
) -> torch.Tensor:
    """Flat gradients of the mean loss of each consecutive chunk of ``size`` samples.

    Vectorised over chunks with torch.func where the model and the loss allow it, else one by
    one.
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    chunks = len(y) // size

    def chunk_loss(p, xc, yc):
        return loss(functional_call(model, p, (xc,)), yc).mean()

    try:
        grads = vmap(grad(chunk_loss), in_dims=(None, 0, 0))(
            params, x.reshape(chunks, size, *x.shape[1:]), y.reshape(chunks, size)
        )
        return torch.cat([g.reshape(chunks, -1) for g in grads.values()], dim=1)
    except RuntimeError:  # an operation torch.func cannot batch: fall back to a loop
        return torch.stack(
            [
                _flat_grad(model, xc, yc, loss)
                for xc, yc in zip(x.split(size), y.split(size), strict=True)
            ]
        )


def _ratio(trace: float, norm: float) -> float:
    return trace / norm if norm > 0 else math.inf


def combine_repeats(
    norms_sq: Sequence[float],
    traces: Sequence[float],
    b_small: int,
    b_big: int,
    stop: str = STOP_FIXED,
    seconds: float = 0.0,
) -> NoiseEstimate:
    """``B_simple`` from per-repeat estimates of ``|G|^2`` and ``tr(Sigma)``, with its error.

    ``B_simple`` is the ratio of the two means; its standard error is the jackknife over the
    repeats (leave one repeat out, recompute the ratio); ``inf`` when some leave-one-out
    ``|G|^2`` is not positive.
    """
    n = len(norms_sq)
    if n != len(traces) or n < 2:
        raise ValueError(f"need at least 2 repeats for an uncertainty, got {n}")
    total_n, total_t = math.fsum(norms_sq), math.fsum(traces)
    b_simple = _ratio(total_t / n, total_n / n)
    leave_one_out = [
        _ratio((total_t - traces[i]) / (n - 1), (total_n - norms_sq[i]) / (n - 1)) for i in range(n)
    ]
    if all(math.isfinite(v) for v in leave_one_out):
        mean = math.fsum(leave_one_out) / n
        se = math.sqrt((n - 1) / n * math.fsum((v - mean) ** 2 for v in leave_one_out))
    else:
        se = math.inf
    return NoiseEstimate(
        b_simple=b_simple,
        b_simple_se=se,
        trace_sigma=total_t / n,
        grad_norm_sq=total_n / n,
        b_small=b_small,
        b_big=b_big,
        repeats=n,
        stop=stop,
        seconds=seconds,
    )


def _check_pair(b_small: int, b_big: int) -> None:
    if not 0 < b_small < b_big or b_big % b_small:
        raise ValueError(
            f"need 0 < b_small < b_big with b_big a multiple of b_small, got {b_small}, {b_big}"
        )


def gradient_draws(
    model: torch.nn.Module,
    data: Tensors,
    b_small: int = 8,
    b_big: int = 128,
    generator: torch.Generator | None = None,
    loss: LossFn | None = None,
) -> Draw:
    """A :data:`Draw` over ``model`` and ``data``: per repeat, one big batch split in small ones.

    Each repeat draws ``b_big`` samples with replacement, takes the gradient of the mean loss
    of each of its ``b_big / b_small`` small batches (vectorised with ``torch.func``), and
    returns the unbiased estimates of ``|G|^2`` and ``tr(Sigma)`` from the module docstring.

    Args:
        model: Left unchanged; its ``.grad`` fields are not touched.
        data: Training data as tensors on the model's device.
        b_small, b_big: The two batch sizes (``b_big`` a multiple of ``b_small``).
        generator: Random generator for the draws (CPU).
        loss: Per-sample loss ``loss(outputs, targets) -> [n]`` (the task's ``loss``);
            default :func:`cross_entropy_losses`.
    """
    _check_pair(b_small, b_big)
    loss = loss or cross_entropy_losses
    device = data.x.device

    def draw(repeats: int) -> tuple[list[float], list[float]]:
        norms_sq, traces = [], []
        for _ in range(repeats):
            idx = torch.randint(len(data), (b_big,), generator=generator).to(device)
            small = _chunk_grads(model, data.x[idx], data.y[idx], b_small, loss)
            small_sq = small.pow(2).sum(dim=1).mean()
            big_sq = small.mean(dim=0).pow(2).sum()
            norms_sq.append(((b_big * big_sq - b_small * small_sq) / (b_big - b_small)).item())
            traces.append(((small_sq - big_sq) / (1 / b_small - 1 / b_big)).item())
        return norms_sq, traces

    return draw


def estimate_noise_scale(
    model: torch.nn.Module,
    data: Tensors,
    b_small: int = 8,
    b_big: int = 128,
    repeats: int = 16,
    generator: torch.Generator | None = None,
    loss: LossFn | None = None,
) -> NoiseEstimate:
    """Estimate ``B_simple`` of ``model`` on ``data`` from a fixed number of repeats.

    Args:
        model: The model at the point of training to measure (left unchanged; its ``.grad``
            fields are not touched).
        data: Training data as tensors on the model's device.
        b_small: Small batch size.
        b_big: Big batch size, a multiple of ``b_small`` and larger.
        repeats: Big batches drawn (with replacement); more repeats, smaller error.
        generator: Random generator for the draws (CPU).
        loss: Per-sample loss (the task's ``loss``); default cross-entropy.
    """
    _check_pair(b_small, b_big)
    if repeats < 2:
        raise ValueError(f"repeats {repeats}: need at least 2 for an uncertainty")
    started = time.monotonic()
    norms_sq, traces = gradient_draws(model, data, b_small, b_big, generator, loss)(repeats)
    return combine_repeats(norms_sq, traces, b_small, b_big, STOP_FIXED, time.monotonic() - started)


def estimate_until_precise(
    draw: Draw,
    b_small: int,
    b_big: int,
    min_repeats: int = 16,
    target_relative_se: float = TARGET_RELATIVE_SE,
    max_seconds: float = 30.0,
    max_repeats: int = 100_000,
    clock: Callable[[], float] = time.monotonic,
) -> NoiseEstimate:
    """Add repeats until the relative standard error is at most the target, or time runs out.

    Starts with ``min_repeats``; then, while ``b_simple_se / b_simple > target_relative_se``,
    adds the repeats the ``1 / sqrt(repeats)`` law says are missing (at most as many again as
    there are, at least 2, no more than the time left allows at the speed so far). ``stop``
    says which condition ended it: :data:`STOP_PRECISE`, :data:`STOP_TIME` (``max_seconds``
    reached; the estimate is then less precise than asked) or :data:`STOP_MAX_REPEATS`.

    Args:
        draw: Gives per-repeat estimates (:func:`gradient_draws`, or a fake in tests).
        b_small, b_big: Recorded in the estimate.
        min_repeats: Repeats before the first check (at least 2).
        target_relative_se: The precision asked for (0.2: the error is at most 20%).
        max_seconds: Time limit for all the repeats of this estimate.
        max_repeats: Most repeats in all.
        clock: Seconds, monotonic (tests pass a fake).
    """
    if min_repeats < 2:
        raise ValueError(f"min_repeats {min_repeats}: need at least 2 for an uncertainty")
    if not target_relative_se > 0:
        raise ValueError(f"target relative error {target_relative_se} must be positive")
    started = clock()
    norms_sq, traces = (list(v) for v in draw(min_repeats))
    while True:
        elapsed = clock() - started
        estimate = combine_repeats(norms_sq, traces, b_small, b_big, STOP_PRECISE, elapsed)
        rel = estimate.relative_se
        if rel <= target_relative_se:
            return estimate
        n = len(norms_sq)
        if elapsed >= max_seconds:
            estimate.stop = STOP_TIME
            return estimate
        if n >= max_repeats:
            estimate.stop = STOP_MAX_REPEATS
            return estimate
        wanted = n * (rel / target_relative_se) ** 2 if math.isfinite(rel) else 2 * n
        more = max(2, min(n, math.ceil(wanted) - n))
        per_repeat = elapsed / n if elapsed > 0 else 0.0
        if per_repeat > 0:
            more = min(more, max(1, int((max_seconds - elapsed) / per_repeat)))
        more = min(more, max_repeats - n)
        new_norms, new_traces = draw(more)
        norms_sq += new_norms
        traces += new_traces


def exact_noise_scale(
    model: torch.nn.Module, data: Tensors, loss: LossFn | None = None
) -> NoiseEstimate:
    """``B_simple`` from every per-sample gradient (``torch.func``); its error is 0.

    Exact for the dataset as the population (``stop`` is ``"exact"``, ``repeats`` the number
    of samples); memory grows as samples x parameters, so this is for small problems and for
    checking :func:`estimate_noise_scale`.
    """
    from torch.func import functional_call, grad, vmap

    loss = loss or cross_entropy_losses
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def sample_loss(p, x, y):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return loss(out, y.unsqueeze(0)).mean()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, data.x, data.y)
    flat = torch.cat([g.reshape(len(data), -1) for g in per_sample.values()], dim=1)
    mean = flat.mean(dim=0)
    trace = (flat - mean).pow(2).sum(dim=1).mean().item()
    norm_sq = mean.pow(2).sum().item()
    return NoiseEstimate(
        b_simple=_ratio(trace, norm_sq),
        b_simple_se=0.0,
        trace_sigma=trace,
        grad_norm_sq=norm_sq,
        b_small=1,
        b_big=len(data),
        repeats=len(data),
        stop="exact",
    )


def nearest_power_of_two(value: float, low: int = 1, high: int = 2**20) -> int:
    """The power of two nearest to ``value`` on a log scale, clamped to ``[low, high]``."""
    if not math.isfinite(value) or value <= 0:
        return high if value == math.inf else low
    power = 2 ** round(math.log2(value))
    return int(min(max(power, low), high))


def choose_estimate(
    per_epoch: Sequence[dict], target_relative_se: float = TARGET_RELATIVE_SE
) -> tuple[int, bool, str]:
    """Which estimate of a training run to report: ``(index, trusted, why)``.

    The first estimate after training started (epoch >= 1) whose relative standard error is at
    most the target; else the estimate at initialisation if it is that precise (at
    initialisation ``|G|^2`` can be tiny and the ratio unstable, and B_simple grows as training
    goes on, so it describes only the start); else the most precise estimate, not trusted.
    See docs/noise-scale.md for the measurements behind this choice.
    """
    if not per_epoch:
        raise ValueError("no estimates to choose from")
    target = f"{target_relative_se:.0%}"

    def rel(e: dict) -> float:
        value = e.get("relative_se")
        return math.inf if value is None else value

    for i, e in enumerate(per_epoch):
        if e["epoch"] >= 1 and rel(e) <= target_relative_se:
            why = (
                f"the first estimate after training started (epoch {e['epoch']}) with a "
                f"relative error at most {target}"
            )
            return i, True, why
    if per_epoch[0]["epoch"] == 0 and rel(per_epoch[0]) <= target_relative_se:
        fix = (
            "no later estimate reached that error in its time (allow more --max-seconds)"
            if len(per_epoch) > 1
            else "train an epoch (--epochs 1 or more) for a better one"
        )
        why = (
            f"the estimate at initialisation (relative error at most {target}); it describes "
            f"the start of training only: {fix}"
        )
        return 0, True, why
    best = min(range(len(per_epoch)), key=lambda i: rel(per_epoch[i]))
    why = (
        f"no estimate reached a relative error of {target} in its time: the most precise one "
        f"(epoch {per_epoch[best]['epoch']}) is shown and is not trustworthy; allow more "
        "--max-seconds"
    )
    return best, False, why


def noise_scale_over_training(
    task,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str = "adam",
    b_small: int = 8,
    b_big: int = 128,
    repeats: int = 16,
    seed: int = 0,
    device: str = "cpu",
    target_relative_se: float = TARGET_RELATIVE_SE,
    max_seconds: float = 60.0,
    loss: LossFn | None = None,
) -> dict:
    """``B_simple`` at initialisation and after each of ``epochs`` epochs of training.

    Each estimate starts with ``repeats`` repeats and adds more until its relative standard
    error is at most ``target_relative_se`` or its share of ``max_seconds`` (split equally
    between the ``epochs + 1`` estimates) is spent (:func:`estimate_until_precise`); each
    says which in ``stop``. Training between estimates uses ``batch_size`` and ``lr`` (the
    study's base values are a natural choice).

    Returns:
        The JSON of ``scripts/noise_scale.py``: ``per_epoch`` (one estimate per epoch, epoch
        0 = initialisation, each with ``b_simple_se``, ``relative_se``, ``repeats``, ``stop``
        and ``seconds``); at the top level the chosen estimate (:func:`choose_estimate`):
        ``b_simple``, ``b_simple_se``, ``relative_se``, ``trace_sigma``, ``grad_norm_sq``,
        ``stop``, ``epoch``, ``trusted`` and ``chosen_because``; ``recommended_batch_size``
        (the power of two nearest the chosen estimate) and ``recommended_range`` (powers of
        two spanning the precise estimates, or all when none is precise).
    """
    from objectives.train import TrainSettings, place, train_model, training_loss

    if loss is None:
        loss = getattr(task, "loss", None)
    collate = getattr(task, "collate", None)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = task.build_model().to(dev)
    start_loss = training_loss(model, task.train, loss=loss, collate=collate)
    train = place(task.train, dev, split="train")
    if not isinstance(train, Tensors):
        raise ValueError("the noise scale needs a training set that fits in memory")
    b_big = min(b_big, len(train) - len(train) % b_small)
    generator = torch.Generator().manual_seed(seed + 1)
    draw = gradient_draws(model, train, b_small, b_big, generator, loss)
    share = max_seconds / (epochs + 1)
    per_epoch = []
    settings = TrainSettings(1, batch_size, batch_size, lr, optimizer, seed, device)
    for epoch in range(epochs + 1):
        if epoch:
            settings.seed = seed + epoch
            train_model(model, train, train, settings, task=task)
        estimate = estimate_until_precise(draw, b_small, b_big, repeats, target_relative_se, share)
        per_epoch.append({"epoch": epoch, **estimate.to_dict()})
    diverged = diverged_reason(
        start_loss, training_loss(model, task.train, loss=loss, collate=collate)
    )
    index, trusted, why = choose_estimate(per_epoch, target_relative_se)
    chosen = per_epoch[index]
    precise = [
        e["b_simple"]
        for e in per_epoch
        if e["relative_se"] is not None and e["relative_se"] <= target_relative_se
    ]
    values = precise or [e["b_simple"] for e in per_epoch]
    cap = 1 << (len(train).bit_length() - 1)
    return {
        **{k: chosen[k] for k in ("b_simple", "b_simple_se", "relative_se", "trace_sigma")},
        **{k: chosen[k] for k in ("grad_norm_sq", "stop", "epoch", "repeats")},
        "trusted": trusted,
        "chosen_because": why,
        "per_epoch": per_epoch,
        "recommended_batch_size": nearest_power_of_two(chosen["b_simple"], 1, cap),
        "recommended_range": [
            nearest_power_of_two(min(values), 1, cap),
            nearest_power_of_two(max(values), 1, cap),
        ],
        "measured_with": {
            "b_small": b_small,
            "b_big": b_big,
            "min_repeats": repeats,
            "target_relative_se": target_relative_se,
            "max_seconds": max_seconds,
            "train_batch_size": batch_size,
            "lr": lr,
            "optimizer": optimizer,
            "train_size": len(train),
        },
        **({"diverged": diverged} if diverged else {}),
    }


def diverged_reason(start_loss: float, end_loss: float) -> str | None:
    """Why a model trained for the noise scale counts as diverged (its estimates are then
    meaningless): its training loss is not finite, or ends far above where it started (more
    than twice the start plus one); ``None`` when it trained.

    Example:
        >>> diverged_reason(2.3, 0.4) is None, diverged_reason(2.3, float("nan"))
        (True, 'the training loss went from 2.3 to nan')
    """
    if math.isfinite(end_loss) and (
        not math.isfinite(start_loss) or end_loss <= 2 * start_loss + 1
    ):
        return None
    return f"the training loss went from {start_loss:.3g} to {end_loss:.3g}"
