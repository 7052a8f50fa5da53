"""Statistics of small samples (a group's seeds), in plain Python: the service loads no numpy.

`welch_p_value` gives the numbers of `scipy.stats.ttest_ind(a, b, equal_var=False)` (the tests
compare them) through the Student t distribution's regularized incomplete beta function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """Mean ± sample standard deviation (ddof=1; None for a single value) of n finite values."""

    mean: float
    std: float | None
    n: int


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers: non-finite ones are stored as None and never counted."""
    return [value for value in values if value is not None and math.isfinite(value)]


def sample_variance(values: Sequence[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1)


def estimate(values: Iterable[float | None]) -> Estimate | None:
    """Mean and sample std of the finite values; None when there are none."""
    kept = finite(values)
    if not kept:
        return None
    std = math.sqrt(sample_variance(kept)) if len(kept) >= 2 else None
    return Estimate(math.fsum(kept) / len(kept), std, len(kept))


def welch_p_value(a: Iterable[float | None], b: Iterable[float | None]) -> float | None:
    """Two-sided p-value of Welch's t-test of mean(a) = mean(b) on the finite values.

    None when it is undefined: fewer than two values on a side, or no variance on either side
    (scipy answers nan there, or 0.0 for two different constants, which claims too much)."""
    x, y = finite(a), finite(b)
    if len(x) < 2 or len(y) < 2:
        return None
    se_x, se_y = sample_variance(x) / len(x), sample_variance(y) / len(y)
    if se_x + se_y == 0:
        return None
    t = (math.fsum(x) / len(x) - math.fsum(y) / len(y)) / math.sqrt(se_x + se_y)
    df = (se_x + se_y) ** 2 / (se_x**2 / (len(x) - 1) + se_y**2 / (len(y) - 1))
    return min(1.0, regularized_beta(df / (df + t * t), df / 2, 0.5))


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by its continued fraction on whichever side converges fast (Numerical Recipes 6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * beta_fraction(1 - x, b, a) / b


def beta_fraction(x: float, a: float, b: float, max_terms: int = 10_000, eps: float = 1e-16) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, max_terms + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d = 1.0 + term * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + term / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def strided(count: int, points: int) -> list[int]:
    """At most `points` of the indexes 0 .. count-1, evenly spread, the first and the last kept."""
    if count <= 0 or points <= 0:
        return []
    if count <= points:
        return list(range(count))
    if points == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (points - 1)) for i in range(points)})
