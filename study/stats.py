"""The statistics behind every stated confidence: t quantiles, intervals, Welch's test, looks.

One home for the numbers the answer states: Student's t quantile (any degrees of freedom,
Welch's included), the t-interval of a mean at a chosen confidence, Welch's standard error of
a difference with its Welch-Satterthwaite degrees of freedom, and the per-look level of a
sequential test of several looks (Pocock's boundary) so that a comparison looked at twice still errs
at the stated rate. Nothing here imports torch; the quantiles come from ``scipy.special``.

Example:
    >>> round(t_quantile(0.95, 4), 4)
    2.1318
    >>> mean, sd, (lo, hi) = mean_interval([0.90, 0.92, 0.94], 0.95)
    >>> round(mean, 2), round(lo, 4), round(hi, 4)
    (0.92, 0.8703, 0.9697)
    >>> w = welch([0.95, 0.96, 0.97], [0.93, 0.94, 0.95])
    >>> round(w.d, 3), round(w.se, 4), round(w.df, 1)
    (0.02, 0.0082, 4.0)
    >>> round(pocock_level(0.05, 2), 4)
    0.0304
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri, stdtrit


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile ``t(p, df)``; ``df`` may be fractional (Welch), at least 1e-9.

    Raises:
        ValueError: ``p`` outside (0, 1) or ``df`` not positive.
    """
    if not 0 < p < 1:
        raise ValueError(f"probability {p} must be in (0, 1)")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(stdtrit(df, p))


def mean_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, tuple[float, float] | None]:
    """``(mean, sample SD, two-sided t-interval at confidence)``; no interval for one value."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, None
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean, sd, (mean - half, mean + half)


@dataclass(frozen=True)
class Welch:
    """A difference of two means: ``d`` (first minus second), its standard error ``se`` and
    Welch-Satterthwaite degrees of freedom ``df`` (``inf`` when both samples have no spread)."""

    d: float
    se: float
    df: float

    def upper(self, confidence: float) -> float:
        """The one-sided upper bound ``d + t(confidence, df) * se``."""
        return self.d + self._t(confidence) * self.se

    def lower(self, confidence: float) -> float:
        """The one-sided lower bound ``d - t(confidence, df) * se``."""
        return self.d - self._t(confidence) * self.se

    def _t(self, confidence: float) -> float:
        if math.isinf(self.df):
            return float(ndtri(confidence))
        return t_quantile(confidence, self.df)


def welch(first: Sequence[float], second: Sequence[float]) -> Welch:
    """Welch's comparison of ``mean(first) - mean(second)`` (each sample at least 2 values).

    Raises:
        ValueError: a sample with fewer than two values.
    """
    if len(first) < 2 or len(second) < 2:
        raise ValueError("Welch's test needs at least two values in each sample")
    v1 = statistics.variance(first) / len(first)
    v2 = statistics.variance(second) / len(second)
    d = statistics.fmean(first) - statistics.fmean(second)
    var = v1 + v2
    if var == 0:
        return Welch(d, 0.0, math.inf)
    df = var**2 / (v1**2 / (len(first) - 1) + v2**2 / (len(second) - 1))
    return Welch(d, math.sqrt(var), df)


@functools.lru_cache(maxsize=32)
def pocock_level(alpha: float, looks: int) -> float:
    """The one-sided level each of ``looks`` equally spaced looks tests at so that the chance
    of passing at any of them is ``alpha`` (Pocock's constant boundary, normal theory).

    One look is ``alpha`` itself. With ``K`` looks at ``1/K, 2/K, ..., 1`` of the data, the
    boundary ``c`` solves ``P(Z_k > c for some k) = alpha``, where ``Z_k`` is the standardised
    sum of the first ``k`` of ``K`` independent normal increments; the chance is integrated
    numerically look by look (the density of the sum that has not crossed, convolved with the
    next increment) and ``c`` found by bisection. For ``alpha = 0.05``: 0.0304 at two looks
    (``c = 1.875``), 0.0232 at three (1.992), 0.0194 at four (2.067).

    Raises:
        ValueError: ``alpha`` outside (0, 0.5) or fewer than one look.
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha {alpha} must be in (0, 0.5)")
    if looks < 1:
        raise ValueError(f"{looks} looks: at least one is needed")
    if looks == 1:
        return alpha
    low, high = float(ndtri(1 - alpha)), float(ndtri(1 - alpha / looks))
    for _ in range(50):
        mid = (low + high) / 2
        if _crossing(mid, looks) > alpha:
            low = mid
        else:
            high = mid
    return float(1 - ndtr((low + high) / 2))


def _crossing(c: float, looks: int, step: float = 0.01) -> float:
    """``P(S_k > c * sqrt(k) for some k <= looks)`` for a sum ``S_k`` of standard normals."""
    reach = 9.0 * math.sqrt(looks)
    x = np.arange(-reach, c * math.sqrt(looks) + step, step)
    half = round(9.0 / step)
    kernel_x = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * kernel_x**2) / math.sqrt(2 * math.pi) * step
    density = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    density[x > c] = 0.0
    for k in range(2, looks + 1):
        density = np.convolve(density, kernel)[half : half + len(x)]
        density[x > c * math.sqrt(k)] = 0.0
    return float(1.0 - density.sum() * step)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile, interpolated linearly between ranks (as ``numpy.percentile``).

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 25), percentile([2.0, 1.0], 100)
        (2.0, 2.0)
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    """Median of the finite values, ``None`` when there are none.

    Example:
        >>> median([3.0, None, 1.0, float("nan"), 2.0, 4.0]), median([None])
        (2.5, None)
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None
