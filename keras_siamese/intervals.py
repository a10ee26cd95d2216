"""How far a figure measured over a few seeds can be trusted: the mean and its 95 %
confidence interval (Student's t), and whether two such intervals overlap.

A grid run with several seeds (``reproduce --seeds 0,1,2``) trains every cell once per
seed; each metric is then reported as ``mean ± half-width``. The t quantile comes from a
table (degrees of freedom 1-30) and, beyond it, from a short series, so this needs NumPy
only (SciPy is no dependency of the package).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

METHOD = "student-t 95%"  # how results.json names the interval

# t_{0.975, df}, the two-sided 95 % quantile of Student's t, for df = 1..30 (6 decimals,
# as scipy.stats.t.ppf(0.975, df) gives them).
T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z_975 = 1.959964  # the normal quantile that t_{0.975, df} approaches as df grows


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30; beyond, the Cornish-Fisher series in 1/df
    around the normal quantile z = 1.959964 (Abramowitz & Stegun 26.7.5, three terms),
    within 2e-6 of the exact value for every df > 30.

    >>> t_quantile_975(2), t_quantile_975(30)
    (4.302653, 2.042272)
    >>> round(t_quantile_975(60), 4)  # scipy.stats.t.ppf(0.975, 60) = 2.000298
    2.0003
    """
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclasses.dataclass(frozen=True)
class Interval:
    """A metric over seeds: the per-seed ``values``, their ``mean`` and the 95 % interval
    ``[low, high]`` (None with a single value: one seed says nothing about the spread)."""

    mean: float
    low: float | None
    high: float | None
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def overlaps(self, other: "Interval") -> bool:
        """Whether the two intervals share a point (False when either has none). Overlap
        means the seeds cannot tell the two apart; no overlap is a conservative sign that
        they differ."""
        if self.low is None or other.low is None:
            return False
        return self.low <= other.high and other.low <= self.high

    def text(self, decimals: int = 3) -> str:
        """``0.981 ± 0.004`` (mean ± half-width); the mean alone when there is no interval."""
        if self.low is None:
            return f"{self.mean:.{decimals}f}"
        return f"{self.mean:.{decimals}f} ± {self.half_width:.{decimals}f}"

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high,
                "values": list(self.values), "n": self.n, "method": METHOD}


def student_t_interval(values) -> Interval:
    """The mean of ``values`` (one per seed) and its 95 % confidence interval:

        mean ± t_{0.975, n-1} · s / √n

    with ``s`` the sample standard deviation (n - 1 in its denominator) and ``t`` Student's
    quantile (:func:`t_quantile_975`). It assumes the seeds' values scatter normally around
    the true mean; it is not clipped to a metric's range. One value gives no interval.

    >>> i = student_t_interval([0.98, 0.99, 0.985])
    >>> round(i.mean, 6), round(i.half_width, 6)  # 4.302653 * 0.005 / sqrt(3)
    (0.985, 0.012421)
    >>> student_t_interval([0.97]).low is None
    True
    """
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError("no values: a confidence interval needs at least one seed")
    mean = float(np.mean(values))
    if len(values) == 1:
        return Interval(mean, None, None, values)
    half = t_quantile_975(len(values) - 1) * float(np.std(values, ddof=1)) / \
        math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, values)
