"""Inference on the patient bootstrap (`cxrstudy.reporting.stats`): intervals, paired differences, Holm, variance
components.

A statistic is carried as a `Stat`: its value on the test set, its value on every bootstrap resample, and its value
with each patient left out (the jackknife). Models scored on the same test patients share the resamples, so the
`Stat` of a difference (`a - b`) is the paired bootstrap of that difference: each resample's difference is taken
within the resample.

- Intervals are BCa (bias-corrected and accelerated; Efron 1987), with the acceleration from the patient jackknife.
  Near AUROC 1 the bootstrap distribution is skewed and piles up against the bound, where percentile intervals sit
  too high; BCa corrects for that skew and for the bias of the median. When every resample gives the same value
  (a finding whose AUROC is exactly 1 on the test set: every resample of a perfectly separated set is perfectly
  separated) no bootstrap interval has any width, so the lower bound is the exact Clopper-Pearson bound for m
  independent positive-negative pairs all ranked correctly, with m the smaller of the numbers of patients with a
  positive and with a negative image (`perfect_bound`).
- Resamples where a statistic is undefined (no positive drawn for a finding it uses) are left out of its interval
  and counted (`Estimate.dropped`).
- A difference is tested with z = difference / its bootstrap sd (two-sided normal p-value); Holm's step-down
  correction runs over each family of differences, and a difference is called beyond test-sampling noise when its
  Holm-adjusted p is below 1 - level and its interval excludes 0.
- Training (seed) variance is separated from test-sampling variance by a one-way random-effects decomposition
  (`variance_components`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, norm, t


@dataclass(frozen=True)
class Stat:
    """One statistic: on the test set (`point`), on each bootstrap resample (`draws`), each patient left out
    (`jack`). NaN where it is undefined."""

    point: float
    draws: np.ndarray
    jack: np.ndarray

    def __sub__(self, other: Stat) -> Stat:
        return Stat(self.point - other.point, self.draws - other.draws, self.jack - other.jack)


def column_mean(point: np.ndarray, draws: np.ndarray, jack: np.ndarray, columns: Sequence[int]) -> Stat:
    """The mean over `columns` of per-class values; a resample missing any of them has no mean (NaN)."""
    cols = list(columns)
    if not cols:
        return Stat(math.nan, np.full(len(draws), np.nan), np.full(len(jack), np.nan))
    return Stat(float(np.mean(point[cols])), draws[:, cols].mean(axis=1), jack[:, cols].mean(axis=1))


def column(point: np.ndarray, draws: np.ndarray, jack: np.ndarray, k: int) -> Stat:
    return Stat(float(point[k]), draws[:, k], jack[:, k])


def mean_of(stats: Sequence[Stat]) -> Stat:
    """The mean of several statistics, resample by resample (e.g. the mean of the seeds' mean AUROC)."""
    return Stat(float(np.mean([s.point for s in stats])), np.mean([s.draws for s in stats], axis=0),
                np.mean([s.jack for s in stats], axis=0))


@dataclass(frozen=True)
class Estimate:
    """A value with its interval. `method`: bca, exact (AUROC 1 or 0 on the test set) or none (no interval);
    `dropped`: resamples where the statistic was undefined, out of `resamples`."""

    value: float
    low: float
    high: float
    method: str
    dropped: int
    resamples: int

    def excludes(self, value: float) -> bool:
        return not math.isnan(self.low) and not self.low <= value <= self.high


def bca(point: float, draws: np.ndarray, jack: np.ndarray, level: float) -> tuple[float, float] | None:
    """The BCa interval at `level` from the finite draws; None when they have no spread; NaNs with fewer than 2."""
    finite = draws[np.isfinite(draws)]
    n = finite.size
    if n < 2 or not math.isfinite(point):
        return math.nan, math.nan
    if np.ptp(finite) == 0:
        return None
    # Bias correction: where the value sits among the resamples (ties count one half).
    share = (np.count_nonzero(finite < point) + 0.5 * np.count_nonzero(finite == point)) / n
    z0 = float(norm.ppf(np.clip(share, 0.5 / n, 1 - 0.5 / n)))
    # Acceleration: the skewness of the jackknife influence values.
    values = jack[np.isfinite(jack)]
    spread = values.mean() - values if values.size else np.zeros(1)
    scale = float(np.sum(spread ** 2))
    accel = float(np.sum(spread ** 3)) / (6 * scale ** 1.5) if scale > 0 else 0.0
    z = norm.ppf([(1 - level) / 2, (1 + level) / 2]) + z0
    shifted = z0 + z / np.maximum(1 - accel * z, 1e-12)
    low, high = np.quantile(finite, norm.cdf(shifted))
    return float(low), float(high)


def perfect_bound(pairs: int, level: float) -> float:
    """The exact lower bound at `level` (two-sided Clopper-Pearson) on P(a positive outranks a negative) after
    `pairs` independent positive-negative pairs were all ranked correctly."""
    return ((1 - level) / 2) ** (1 / pairs) if pairs > 0 else 0.0


def estimate(stat: Stat, level: float, pairs: int = 0) -> Estimate:
    """`stat` with its BCa interval; an AUROC that is exactly 1 (or 0) in every resample gets the exact bound from
    `pairs` (see `perfect_bound`); a constant other value gets a zero-width interval."""
    dropped = int(np.count_nonzero(~np.isfinite(stat.draws)))
    resamples = len(stat.draws)
    if resamples == 0:
        return Estimate(stat.point, math.nan, math.nan, "none", 0, 0)
    found = bca(stat.point, stat.draws, stat.jack, level)
    if found is not None:
        method = "none" if math.isnan(found[0]) else "bca"
        return Estimate(stat.point, found[0], found[1], method, dropped, resamples)
    if pairs and stat.point in (0.0, 1.0):
        bound = perfect_bound(pairs, level)
        low, high = (bound, 1.0) if stat.point == 1.0 else (0.0, 1.0 - bound)
        return Estimate(stat.point, low, high, "exact", dropped, resamples)
    return Estimate(stat.point, stat.point, stat.point, "bca", dropped, resamples)


def p_value(stat: Stat) -> float:
    """Two-sided p-value of "no difference" from z = value / bootstrap sd; 1 when the resamples have no spread."""
    finite = stat.draws[np.isfinite(stat.draws)]
    if finite.size < 2 or not math.isfinite(stat.point):
        return math.nan
    sd = float(np.std(finite, ddof=1))
    if sd == 0:
        return 1.0
    return float(2 * norm.sf(abs(stat.point) / sd))


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted among the hypotheses)."""
    order = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    out = [math.nan] * len(p)
    running = 0.0
    for rank, (value, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * value))
        out[i] = running
    return out


@dataclass(frozen=True)
class Contrast:
    """A paired difference (first - second) with its interval, its p-value and Holm-adjusted p in its family."""

    first: str
    second: str
    difference: Estimate
    p: float
    p_holm: float
    level: float

    @property
    def beyond_noise(self) -> bool:
        return (not math.isnan(self.p_holm) and self.p_holm < 1 - self.level
                and self.difference.excludes(0.0))


def contrasts(pairs: Sequence[tuple[str, str, Stat]], level: float) -> list[Contrast]:
    """Each (first, second, first - second) with its BCa interval; Holm over all of them as one family."""
    raw = [p_value(diff) for _, _, diff in pairs]
    adjusted = holm(raw)
    return [Contrast(a, b, estimate(diff, level), p, q, level)
            for (a, b, diff), p, q in zip(pairs, raw, adjusted, strict=True)]


def with_training(pairs: Sequence[tuple[str, str, Stat, float, int]], level: float) -> list[Contrast]:
    """Differences between two configurations' means over seeds, with training variance added.

    Each item is (first, second, difference, training variance of the difference, degrees of freedom). A paired
    bootstrap of the seed means holds test-sampling noise only; other seeds would give other means, so the variance
    of the difference is bootstrap variance + s2_seed(first) / S(first) + s2_seed(second) / S(second), and the
    interval and p-value use Student's t with the seeds' degrees of freedom. Holm over all items.
    """
    raw, estimates = [], []
    for _, _, diff, extra, df in pairs:
        finite = diff.draws[np.isfinite(diff.draws)]
        dropped = int(len(diff.draws) - finite.size)
        if finite.size < 2 or df < 1:
            raw.append(math.nan)
            estimates.append(Estimate(diff.point, math.nan, math.nan, "none", dropped, len(diff.draws)))
            continue
        se = math.sqrt(float(np.var(finite, ddof=1)) + extra)
        half = float(t.ppf((1 + level) / 2, df)) * se
        raw.append(float(2 * t.sf(abs(diff.point) / se, df)) if se > 0 else 1.0)
        estimates.append(Estimate(diff.point, diff.point - half, diff.point + half, "t", dropped, len(diff.draws)))
    adjusted = holm(raw)
    return [Contrast(a, b, e, p, q, level)
            for (a, b, *_), e, p, q in zip(pairs, estimates, raw, adjusted, strict=True)]


def rank_first(stats: Sequence[Stat]) -> list[float]:
    """For each statistic, the share of resamples (where all are defined) in which it is the highest; ties share."""
    draws = np.array([s.draws for s in stats])
    draws = draws[:, np.isfinite(draws).all(axis=0)]
    if draws.size == 0:
        return [math.nan] * len(stats)
    top = draws == draws.max(axis=0)
    return [float(v) for v in (top / top.sum(axis=0)).mean(axis=1)]


@dataclass(frozen=True)
class VarianceComponents:
    """Training (seed) variance separated from test-sampling variance, as standard deviations.

    `observed`: the sd of the seeds' values on this test set. `interaction`: the part of it that re-drawing the test
    patients produces (each seed errs on different patients). `seed`: the training sd, sqrt(observed^2 -
    interaction^2) (0 when negative), with its interval over `df` degrees of freedom. `test`: one seed's sd under
    re-drawn test patients, the shared part included.
    """

    seeds: int
    df: int
    observed: float
    interaction: float
    seed: float
    seed_low: float
    seed_high: float
    test: float
    level: float

    @property
    def seed_beyond_noise(self) -> bool:
        return self.seed_low > 0


def variance_components(stats: Sequence[Stat], level: float) -> VarianceComponents | None:
    """One-way random-effects decomposition of the seeds' statistics, with the within-seed (test-sampling) variance
    measured on the paired bootstrap.

    The value of seed m on this test set is mu + t_m + e_m: t_m its training effect (variance s2_seed), e_m its
    test-sampling error. All seeds share the test set, so the part of e_m common to all seeds cancels between seeds
    and only the seed-specific part (variance v) remains: E[sample variance over seeds] = s2_seed + v. Within one
    resample the seeds' deviations from their own values show that seed-specific part, so v is their variance over
    seeds, averaged over resamples. With v taken as known (it rests on hundreds of patients; s2_seed on a handful of
    seeds), (S - 1) x sample variance / (s2_seed + v) is chi-square with S - 1 degrees of freedom, which gives the
    interval of s2_seed.
    """
    if len(stats) < 2:
        return None
    points = np.array([s.point for s in stats])
    draws = np.array([s.draws for s in stats])
    draws = draws[:, np.isfinite(draws).all(axis=0)]
    if draws.shape[1] < 2 or not np.isfinite(points).all():
        return None
    df = len(stats) - 1
    observed = float(np.var(points, ddof=1))
    interaction = float(np.mean(np.var(draws - points[:, None], axis=0, ddof=1)))
    test = float(np.mean(np.var(draws, axis=1, ddof=1)))
    tail = (1 - level) / 2
    low = df * observed / chi2.ppf(1 - tail, df) - interaction
    high = df * observed / chi2.ppf(tail, df) - interaction
    return VarianceComponents(len(stats), df, math.sqrt(observed), math.sqrt(interaction),
                              math.sqrt(max(0.0, observed - interaction)), math.sqrt(max(0.0, low)),
                              math.sqrt(max(0.0, high)), math.sqrt(test), level)
