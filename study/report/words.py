"""How the report writes things: the study's metric, sample counts and trial states.

:class:`MetricText` writes the study's metric the same way everywhere (names, direction,
values, differences, intervals, axis formats); :func:`round_samples` and
:func:`estimate_words` write batch sizes measured in samples; :data:`STATE_WORDS` names the
trial states. Nothing here reads a study.

Example:
    >>> MetricText(MetricInfo("mse", "minimize", "samples")).full
    'val mse (lower is better)'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from study.record import MetricInfo, number_or_none
from study.units import format_percent


@dataclass(frozen=True)
class MetricText:
    """How the report writes the study's metric: names, direction, values and differences.

    The default metric (accuracy, maximised) keeps the report's wording ("validation
    accuracy", percentages); any other metric is written by its name and direction,
    e.g. ``val mse (lower is better)``, its values as plain numbers.

    Example:
        >>> mse = MetricText(MetricInfo("mse", "minimize", "samples"))
        >>> mse.full, mse.value(0.01234), mse.best([0.3, 0.1])
        ('val mse (lower is better)', '0.01234', 0.1)
        >>> acc = MetricText(MetricInfo())
        >>> acc.full, acc.value(0.9), acc.difference(0.028)
        ('validation accuracy (higher is better)', '90.0%', '2.8 points')
    """

    info: MetricInfo

    @property
    def name(self) -> str:
        """The metric's own name (``accuracy``, ``mse``, ``bits_per_char``)."""
        return self.info.name

    @property
    def percent(self) -> bool:
        """Values are fractions written as percentages (the accuracy metric)."""
        return self.info.name == "accuracy"

    @property
    def sign(self) -> int:
        """``+1`` when higher is better, ``-1`` when lower is."""
        return 1 if self.info.direction == "maximize" else -1

    @property
    def direction_words(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return "higher is better" if self.sign > 0 else "lower is better"

    @property
    def val(self) -> str:
        """``validation accuracy`` or ``val mse``: the metric on the validation split."""
        return "validation accuracy" if self.percent else f"val {self.name}"

    @property
    def test(self) -> str:
        """``test accuracy`` or ``test mse``."""
        return f"test {self.name}"

    @property
    def full(self) -> str:
        """``val mse (lower is better)``: the label every heading and axis uses."""
        return f"{self.val} ({self.direction_words})"

    @property
    def stored(self) -> str:
        """The study's metric name, ``val_accuracy`` or ``val_mse``."""
        return f"val_{self.name}"

    @property
    def maximised(self) -> str:
        """``maximised`` or ``minimised``."""
        return "maximised" if self.sign > 0 else "minimised"

    @property
    def unit(self) -> str:
        """What throughput counts: ``samples``, ``tokens``, ``sequences``."""
        return self.info.unit or "samples"

    @property
    def rate(self) -> str:
        """``samples/s`` or ``tokens/s``."""
        return f"{self.unit}/s"

    @property
    def axis_unit(self) -> str:
        """The unit an axis of the metric shows: ``% of samples`` or the metric's name."""
        return "% of samples" if self.percent else self.name

    @property
    def tickformat(self) -> str | None:
        """Plotly's tick format for the metric's axis (percentages for accuracy)."""
        return ".0%" if self.percent else None

    @property
    def hover(self) -> str:
        """Plotly's number format in hover text."""
        return ".1%" if self.percent else ".4g"

    def value(self, value: float | None, missing: str = "-") -> str:
        """``89.8%`` for accuracy, ``0.01234`` for others; ``missing`` where there is none."""
        if value is None:
            return missing
        return format_percent(value) if self.percent else f"{value:.4g}"

    def difference(self, diff: float | None, missing: str = "-") -> str:
        """A difference of two values: ``2.8 points`` for accuracy, ``0.012`` for others."""
        if diff is None:
            return missing
        return f"{100 * diff:.1f} points" if self.percent else f"{diff:.3g}"

    def interval(self, ci: Sequence[float] | None, missing: str = "-") -> str:
        """``87.1%-91.2%``: a 95% interval; ``missing`` without one."""
        if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
            return missing
        return f"{self.value(ci[0])}-{self.value(ci[1])}"

    def key(self, value: float) -> float:
        """A sort key under which larger is better."""
        return self.sign * value

    def best(self, values: Iterable[float]) -> float | None:
        """The best of ``values`` (``None`` when there are none)."""
        finite = [v for v in values if v is not None]
        return max(finite, key=self.key) if finite else None

    def better_than(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b``."""
        return self.key(a) > self.key(b)


def round_samples(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def estimate_words(entry: dict[str, Any]) -> str:
    value = number_or_none(entry.get("b_simple")) or 0.0
    se = number_or_none(entry.get("b_simple_se"))
    return round_samples(value) + (f" \u00b1 {round_samples(se)}" if se is not None else "")


STATE_WORDS = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}
