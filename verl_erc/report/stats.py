"""Seed statistics for comparing RL runs: means over seeds with 95 % Student-t intervals, and paired tests.

- :func:`seed_mean`: mean over seeds and its half-width ``t_{0.975, n-1} * s / sqrt(n)`` (``scipy.stats.t``).
- :func:`difference`: ERC minus baseline: a paired t interval and test on the seeds both ran (the
  same seed is the same data order, ``scipy.stats.ttest_rel``), else Welch's unpaired one
  (``scipy.stats.ttest_ind(equal_var=False)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev

from scipy import stats

CONFIDENCE = 0.95


def _half_width(se: float, df: float) -> float:
    return float(stats.t.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0, df)) * se


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


def _tested(result, diff: float, n: int, kind: str) -> Estimate:
    """An Estimate from a scipy t-test result (its 95 % confidence interval and two-sided p-value)."""
    low, high = result.confidence_interval(CONFIDENCE)
    return Estimate(diff, (float(high) - float(low)) / 2.0, float(result.pvalue), n, kind)


def difference(erc: dict[int | str, float], base: dict[int | str, float]) -> Estimate:
    """ERC minus baseline over seeds: a paired t interval and test on the seeds both have (at least 2),
    else Welch's unpaired ones (at least 2 seeds each), else the difference of the means alone. Differences
    that do not vary have nothing to test against: their half-width is 0 and they carry no p-value."""
    erc, base = _finite(erc), _finite(base)
    common = sorted(seed for seed in erc if seed in base)  # seed numbers: a label is in one group only
    if len(common) >= 2:
        diffs = [erc[seed] - base[seed] for seed in common]
        kind = "paired on seeds " + ", ".join(map(str, common))
        if len(set(diffs)) == 1:
            return Estimate(diffs[0], 0.0, n=len(diffs), kind=kind)
        return _tested(stats.ttest_rel([erc[s] for s in common], [base[s] for s in common]), mean(diffs), len(diffs),
                       kind)
    if len(erc) >= 2 and len(base) >= 2:
        diff = mean(erc.values()) - mean(base.values())
        if len(set(erc.values())) == 1 and len(set(base.values())) == 1:
            return Estimate(diff, 0.0, n=len(erc) + len(base), kind="unpaired, Welch")
        return _tested(stats.ttest_ind(list(erc.values()), list(base.values()), equal_var=False), diff,
                       len(erc) + len(base), "unpaired, Welch")
    return Estimate(mean(erc.values()) - mean(base.values()) if erc and base else math.nan)
