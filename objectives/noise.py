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

Example (not run as a doctest: it needs a study, files or a server)::

    estimate = estimate_noise_scale(model, data, b_small=8, b_big=128)
    estimate.b_simple
    41.7
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from objectives.data import Tensors


@dataclass
class NoiseEstimate:
    """A noise-scale estimate at one point of training.

    Attributes:
        b_simple: ``tr(Sigma) / |G|^2`` (samples); ``inf`` when ``|G|^2`` is not positive.
        b_simple_se: Jackknife standard error of ``b_simple`` over the repeats.
        trace_sigma: Estimated trace of the per-sample gradient covariance.
        grad_norm_sq: Estimated squared norm of the true gradient.
        b_small, b_big, repeats: How it was measured.
    """

    b_simple: float
    b_simple_se: float
    trace_sigma: float
    grad_norm_sq: float
    b_small: int
    b_big: int
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def _flat_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def _chunk_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, size: int):
    """Flat gradients of the mean loss of each consecutive chunk of ``size`` samples.

    Vectorised over chunks with torch.func where the model allows it, else one by one.
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    chunks = len(y) // size

    def chunk_loss(p, xc, yc):
        return F.cross_entropy(functional_call(model, p, (xc,)), yc)

    try:
        grads = vmap(grad(chunk_loss), in_dims=(None, 0, 0))(
            params, x.reshape(chunks, size, *x.shape[1:]), y.reshape(chunks, size)
        )
        return torch.cat([g.reshape(chunks, -1) for g in grads.values()], dim=1)
    except RuntimeError:  # an operation torch.func cannot batch: fall back to a loop
        return torch.stack(
            [_flat_grad(model, xc, yc) for xc, yc in zip(x.split(size), y.split(size), strict=True)]
        )


def _ratio(trace: torch.Tensor, norm: torch.Tensor) -> float:
    return trace.item() / norm.item() if norm.item() > 0 else math.inf


def estimate_noise_scale(
    model: torch.nn.Module,
    data: Tensors,
    b_small: int = 8,
    b_big: int = 128,
    repeats: int = 16,
    generator: torch.Generator | None = None,
) -> NoiseEstimate:
    """Estimate ``B_simple`` of ``model`` on ``data`` from gradient norms at two batch sizes.

    Args:
        model: The model at the point of training to measure (left unchanged; its ``.grad``
            fields are not touched).
        data: Training data as tensors on the model's device.
        b_small: Small batch size.
        b_big: Big batch size, a multiple of ``b_small`` and larger.
        repeats: Big batches drawn (with replacement); more repeats, smaller error.
        generator: Random generator for the draws (CPU).
    """
    if not 0 < b_small < b_big or b_big % b_small:
        raise ValueError(
            f"need 0 < b_small < b_big with b_big a multiple of b_small, got {b_small}, {b_big}"
        )
    if repeats < 2:
        raise ValueError(f"repeats {repeats}: need at least 2 for an uncertainty")
    device = data.x.device
    norms_sq = []
    traces = []
    for _ in range(repeats):
        idx = torch.randint(len(data), (b_big,), generator=generator).to(device)
        small = _chunk_grads(model, data.x[idx], data.y[idx], b_small)
        small_sq = small.pow(2).sum(dim=1).mean()
        big_sq = small.mean(dim=0).pow(2).sum()
        norms_sq.append((b_big * big_sq - b_small * small_sq) / (b_big - b_small))
        traces.append((small_sq - big_sq) / (1 / b_small - 1 / b_big))
    norm_sq = torch.stack(norms_sq)
    trace = torch.stack(traces)
    b_simple = _ratio(trace.mean(), norm_sq.mean())
    total_n, total_t = norm_sq.sum(), trace.sum()
    leave_one_out = [
        _ratio((total_t - trace[i]) / (repeats - 1), (total_n - norm_sq[i]) / (repeats - 1))
        for i in range(repeats)
    ]
    finite = [v for v in leave_one_out if math.isfinite(v)]
    if len(finite) == repeats:
        mean = sum(finite) / repeats
        se = math.sqrt((repeats - 1) / repeats * sum((v - mean) ** 2 for v in finite))
    else:
        se = math.inf
    return NoiseEstimate(
        b_simple=b_simple,
        b_simple_se=se,
        trace_sigma=trace.mean().item(),
        grad_norm_sq=norm_sq.mean().item(),
        b_small=b_small,
        b_big=b_big,
        repeats=repeats,
    )


def exact_noise_scale(model: torch.nn.Module, data: Tensors) -> tuple[float, float, float]:
    """``(b_simple, trace_sigma, grad_norm_sq)`` from every per-sample gradient (torch.func).

    Exact for the dataset as the population; memory grows as samples x parameters, so this
    is for small problems and for checking :func:`estimate_noise_scale`.
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def sample_loss(p, x, y):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, data.x, data.y)
    flat = torch.cat([g.reshape(len(data), -1) for g in per_sample.values()], dim=1)
    mean = flat.mean(dim=0)
    trace = (flat - mean).pow(2).sum(dim=1).mean().item()
    norm_sq = mean.pow(2).sum().item()
    return trace / norm_sq, trace, norm_sq


def nearest_power_of_two(value: float, low: int = 1, high: int = 2**20) -> int:
    """The power of two nearest to ``value`` on a log scale, clamped to ``[low, high]``."""
    if not math.isfinite(value) or value <= 0:
        return high if value == math.inf else low
    power = 2 ** round(math.log2(value))
    return int(min(max(power, low), high))


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
) -> dict:
    """``B_simple`` at initialisation and after each of ``epochs`` epochs of training.

    Training uses ``batch_size`` and ``lr`` (the study's base values are a natural choice).
    Returns the JSON of ``scripts/noise_scale.py``: ``b_simple``, ``b_simple_se``,
    ``trace_sigma``, ``grad_norm_sq`` (all at initialisation), ``per_epoch`` (one estimate
    per epoch, epoch 0 = initialisation), ``recommended_batch_size`` (the power of two nearest
    the last estimate: the critical batch grows as training goes on, and the later value
    describes most of a run) and ``recommended_range`` (powers of two spanning the estimates).
    """
    from objectives.train import TrainSettings, place, train_model

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = task.build_model().to(dev)
    train = place(task.train, dev)
    if not isinstance(train, Tensors):
        raise ValueError("the noise scale needs a training set that fits in memory")
    b_big = min(b_big, len(train) - len(train) % b_small)
    generator = torch.Generator().manual_seed(seed + 1)
    per_epoch = []
    settings = TrainSettings(1, batch_size, batch_size, lr, optimizer, seed, device)
    for epoch in range(epochs + 1):
        if epoch:
            settings.seed = seed + epoch
            train_model(model, train, train, settings)
        estimate = estimate_noise_scale(model, train, b_small, b_big, repeats, generator)
        per_epoch.append({"epoch": epoch, **estimate.to_dict()})
    first, last = per_epoch[0], per_epoch[-1]
    values = [e["b_simple"] for e in per_epoch]
    cap = 1 << (len(train).bit_length() - 1)
    return {
        "b_simple": first["b_simple"],
        "b_simple_se": first["b_simple_se"],
        "trace_sigma": first["trace_sigma"],
        "grad_norm_sq": first["grad_norm_sq"],
        "per_epoch": per_epoch,
        "recommended_batch_size": nearest_power_of_two(last["b_simple"], 1, cap),
        "recommended_range": [
            nearest_power_of_two(min(values), 1, cap),
            nearest_power_of_two(max(values), 1, cap),
        ],
        "measured_with": {
            "b_small": b_small,
            "b_big": b_big,
            "repeats": repeats,
            "train_batch_size": batch_size,
            "lr": lr,
            "optimizer": optimizer,
            "train_size": len(train),
        },
    }
