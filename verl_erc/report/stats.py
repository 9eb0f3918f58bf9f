"""Seed statistics for comparing RL runs: means over seeds with 95 % Student-t intervals, and paired tests.

No scipy: Student's t distribution comes from the regularized incomplete beta function
(:func:`betainc`, its continued fraction by the modified Lentz method), quantiles by bisection.

- :func:`seed_mean`: mean over seeds and its half-width ``t_{0.975, n-1} * s / sqrt(n)``.
- :func:`difference`: ERC minus baseline: a paired t interval and test on the seeds both ran (the
  same seed is the same data order), else Welch's unpaired one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev, variance

CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, by the modified Lentz method (Numerical Recipes 6.4)."""

    def nonzero(value: float) -> float:
        return value if abs(value) > 1e-300 else 1e-300

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 / nonzero(1.0 + numerator * d)
            c = nonzero(1.0 + numerator / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), from its continued fraction."""
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_pvalue(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|) of Student's t with ``df`` (any real > 0) degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (1/2 <= q < 1) of Student's t with ``df`` degrees of freedom, by bisection."""
    target = 2.0 * (1.0 - q)
    lo, hi = 0.0, 1.0
    while t_pvalue(hi, df) > target:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_pvalue(mid, df) > target else (lo, mid)
    return (lo + hi) / 2.0


def _half_width(se: float, df: float) -> float:
    return t_quantile(1.0 - (1.0 - CONFIDENCE) / 2.0, df) * se


@dataclass(frozen=True)
class Estimate:
    """A value over seeds: ``half`` is its 95% interval's half-width, ``p`` a difference's two-sided
    t-test p-value (NaN where there is none), ``n`` the seeds it is computed from, ``kind`` the test."""

    mean: float
    half: float = math.nan
    p: float = math.nan
    n: int = 1
    kind: str = ""


def _finite(values: dict[int | str, float]) -> dict[int | str, float]:
    """``values`` without NaN (a seed that did not log the metric); an infinite value raises ``ValueError``."""
    infinite = {seed: value for seed, value in values.items() if math.isinf(value)}
    if infinite:
        listing = ", ".join(f"seed {seed}: {value}" for seed, value in infinite.items())
        raise ValueError(f"non-finite value(s) among the seeds ({listing}): a mean or test over seeds needs finite "
                         "values; look at those runs (a diverged loss, an overflow) before comparing them")
    return {seed: value for seed, value in values.items() if not math.isnan(value)}


def seed_mean(values: dict[int | str, float]) -> Estimate:
    """Mean over seeds (NaN dropped) and, from 2 seeds, its Student-t half-width t_{0.975,n-1} s/sqrt(n)."""
    xs = list(_finite(values).values())
    if len(xs) < 2:
        return Estimate(xs[0] if xs else math.nan, n=len(xs))
    return Estimate(mean(xs), _half_width(stdev(xs) / math.sqrt(len(xs)), len(xs) - 1), n=len(xs))


def _t_test(diff: float, se: float, df: float, n: int, kind: str) -> Estimate:
    if se == 0:  # every seed gives the same difference: nothing to test it against
        return Estimate(diff, 0.0, n=n, kind=kind)
    return Estimate(diff, _half_width(se, df), t_pvalue(diff / se, df), n, kind)


def difference(erc: dict[int | str, float], base: dict[int | str, float]) -> Estimate:
    """ERC minus baseline over seeds: a paired t interval and test on the seeds both have (at least 2),
    else Welch's unpaired ones (at least 2 seeds each), else the difference of the means alone."""
    erc, base = _finite(erc), _finite(base)
    common = sorted(seed for seed in erc if seed in base)  # seed numbers: a label is in one group only
    if len(common) >= 2:
        diffs = [erc[seed] - base[seed] for seed in common]
        kind = "paired on seeds " + ", ".join(map(str, common))
        return _t_test(mean(diffs), stdev(diffs) / math.sqrt(len(diffs)), len(diffs) - 1, len(diffs), kind)
    if len(erc) >= 2 and len(base) >= 2:
        var_erc, var_base = variance(erc.values()) / len(erc), variance(base.values()) / len(base)
        se = math.sqrt(var_erc + var_base)
        # Welch-Satterthwaite degrees of freedom (unused when se is 0)
        df = se**4 / (var_erc**2 / (len(erc) - 1) + var_base**2 / (len(base) - 1)) if se else math.nan
        diff = mean(erc.values()) - mean(base.values())
        return _t_test(diff, se, df, len(erc) + len(base), "unpaired, Welch")
    return Estimate(mean(erc.values()) - mean(base.values()) if erc and base else math.nan)
