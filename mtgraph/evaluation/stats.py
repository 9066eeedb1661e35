"""Small-sample statistics of the evaluation protocol: Student-t quantiles, 95 % intervals, paired differences.

A protocol run has a handful of seeds (3 by default), so every mean is
reported with its two-sided t-interval, ``mean ± t_{0.975, n-1} · s / √n``
(s: the sample standard deviation). scipy is not a dependency: the t
distribution's CDF is computed here from the regularised incomplete beta
function (Lentz's continued fraction, as in Numerical Recipes §6.4) and
inverted by bisection, to about 1e-12.

A *paired* difference compares two architectures seed by seed (the same seed
means the same data order and initial weights), which removes the variation
both share; only seeds where both have a value count.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mtgraph.errors import ConfigError

__all__ = ["Interval", "t_cdf", "t_quantile", "t_interval", "paired_difference"]

# Continued-fraction settings: at most this many terms, stop when a term changes the value by < _EPS.
_MAX_TERMS = 400
_EPS = 1e-15
_TINY = 1e-300


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function I_x(a, b) (modified Lentz, NR eq. 6.4.5)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
    if isinstance(df, bool) or not isinstance(df, (int, float)) or not math.isfinite(df) or df <= 0:
        raise ConfigError(f"degrees of freedom must be a finite number > 0, got {df!r}")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with ``df`` degrees of freedom.

    Raises:
        ConfigError: ``df`` is not a finite number > 0.

    Examples:
        >>> from mtgraph.evaluation.stats import t_cdf
        >>> round(t_cdf(0.0, 3), 12), round(t_cdf(1.0, 1), 12)  # Cauchy for df = 1: 1/2 + atan(1)/pi
        (0.5, 0.75)
    """
    _check_df(df)
    if math.isnan(t):
        return math.nan
    # P(|T| > |t|) = I_{df / (df + t²)}(df / 2, 1 / 2)
    tail = _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail / 2.0 if t >= 0 else tail / 2.0


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Found by bisection on :func:`t_cdf` to an absolute accuracy of about 1e-12.

    Raises:
        ConfigError: ``p`` outside (0, 1) or ``df`` not a finite number > 0.

    Examples:
        >>> from mtgraph.evaluation.stats import t_quantile
        >>> round(t_quantile(0.975, 2), 9)   # (2p - 1) / sqrt(2p(1 - p)) for df = 2
        4.30265273
        >>> round(t_quantile(0.975, 1e9), 6)   # the normal quantile in the limit
        1.959964
    """
    _check_df(df)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ConfigError(f"a quantile's probability must be in (0, 1), got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its two-sided 95 % t-interval (``low``/``high`` None when n < 2).

    Examples:
        >>> from mtgraph.evaluation.stats import Interval
        >>> Interval(n=3, mean=1.0, low=0.5, high=1.5).describe()
        '+1.00 [+0.50, +1.50]'
        >>> Interval(n=1, mean=2.0, low=None, high=None).describe()
        '+2.00 (n = 1, no interval)'
    """

    n: int
    mean: float
    low: float | None
    high: float | None

    def describe(self, digits: int = 2) -> str:
        """``mean [low, high]`` with signs, or the mean alone when there is no interval."""
        if self.n == 0:
            return "—"
        if self.low is None or self.high is None:
            return f"{self.mean:+.{digits}f} (n = {self.n}, no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (False without an interval)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` and its two-sided t-interval at ``confidence``.

    ``mean ± t_{(1 + confidence) / 2, n - 1} · s / √n`` with ``s`` the sample
    standard deviation; with one value the interval is None (nothing to
    estimate a spread from), with none the mean is NaN.

    Raises:
        ConfigError: ``confidence`` outside (0, 1) or a value that is not a finite number.

    Examples:
        >>> from mtgraph.evaluation.stats import t_interval
        >>> interval = t_interval([1.0, 2.0, 3.0])   # s = 1, t_{0.975, 2} = 4.3027
        >>> round(interval.mean, 6), round(interval.low, 6), round(interval.high, 6)
        (2.0, -0.484138, 4.484138)
        >>> t_interval([5.0]).low is None
        True
    """
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    data = [float(v) for v in values]
    bad = [v for v in data if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"t_interval needs finite numbers, got {bad}")
    n = len(data)
    if n == 0:
        return Interval(0, math.nan, None, None)
    mean = math.fsum(data) / n
    if n == 1:
        return Interval(1, mean, None, None)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * statistics.stdev(data) / math.sqrt(n)
    return Interval(n, mean, mean - half, mean + half)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float]) -> Interval:
    """The mean of ``values[s] - baseline[s]`` over the seeds ``s`` both have, with its t-interval.

    Args:
        values: seed -> value of the architecture compared.
        baseline: seed -> value of the baseline.

    Returns:
        The :class:`Interval` of the per-seed differences (``n``: the seeds in common).

    Examples:
        >>> from mtgraph.evaluation.stats import paired_difference
        >>> diff = paired_difference({0: 5.0, 1: 6.0, 2: 9.0}, {0: 4.0, 1: 4.0, 2: 6.0, 3: 0.0})  # seed 3: unpaired
        >>> diff.n, diff.mean
        (3, 2.0)
    """
    common = sorted(set(values) & set(baseline))
    return t_interval([values[s] - baseline[s] for s in common])
