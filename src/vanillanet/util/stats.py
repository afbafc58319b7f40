"""Summary statistics of repeated runs: mean and sample standard deviation, Student's t quantile, and the Welch
t-interval for a difference of means (unequal variances, Welch-Satterthwaite degrees of freedom).

Pure functions on plain floats. The t quantile comes from scipy when it is installed and otherwise from our own
implementation (regularised incomplete beta function by a continued fraction, inverted by bisection), which agrees
with scipy to about 1e-10; ``T_QUANTILE_SOURCE`` says which one is in use.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["T_QUANTILE_SOURCE", "Interval", "mean_std", "t_quantile", "t_quantile_own", "welch_interval"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1); the deviation is NaN for fewer than two values."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        # even step, then odd step of the fraction
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return result


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; otherwise use the symmetry
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile_own(p: float, df: float) -> float:
    """Student's t quantile by bisection on our own CDF (df may be fractional; df = inf gives the normal's)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile_own(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * hi:
            break
    return 0.5 * (lo + hi)


try:
    from scipy.stats import t as _scipy_t

    T_QUANTILE_SOURCE = "scipy.stats.t"

    def t_quantile(p: float, df: float) -> float:
        """Student's t quantile (scipy)."""
        if not 0.0 < p < 1.0 or not df > 0:
            return t_quantile_own(p, df)  # raises the one-line ValueError
        return float(_scipy_t.ppf(p, df))
except ImportError:  # pragma: no cover - depends on the environment
    T_QUANTILE_SOURCE = "own implementation (scipy not installed)"
    t_quantile = t_quantile_own


@dataclass(frozen=True)
class Interval:
    """A difference of means with its confidence interval and the Welch-Satterthwaite degrees of freedom."""

    diff: float
    low: float
    high: float
    df: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b) with its Welch t-interval: se = sqrt(va/na + vb/nb), df = se^4 / ((va/na)^2/(na-1) +
    (vb/nb)^2/(nb-1)), half width t_{(1+confidence)/2, df} * se. NaN bounds with fewer than two values on a side;
    a zero-width interval when both samples have no spread."""
    diff = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan, math.nan)
    qa, qb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = qa + qb
    if se2 == 0:
        return Interval(diff, diff, diff, math.inf)
    df = se2 * se2 / (qa * qa / (len(a) - 1) + qb * qb / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half, df)
