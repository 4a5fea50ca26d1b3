"""Training (seed) variance against test-sampling variance, and differences of seed means with training variance
added.

The value of seed m on the test set is mu + t_m + e_m: t_m its training effect (sd tau), e_m its test-sampling error.
All seeds share the test set, so the part of e_m common to all seeds cancels between them; the seed-specific rest
shows in the paired bootstrap as each seed's deviation from its own value within a resample. The observed variance
of the seeds' values is therefore tau^2 plus that seed-specific part (`interaction`).

The test of tau > 0 and the interval of tau come from one simulation, by test inversion: for a candidate tau, the
seeds' values are re-drawn as tau x (a standard normal per seed) + the seeds' deviations in one bootstrap resample,
and F(tau) is the share of resamples whose variance over seeds reaches the observed one. The interval is every tau
with (1 - level) / 2 <= F(tau) <= (1 + level) / 2, and p = 2 F(0) is the smallest 1 - level whose interval leaves 0
out. Because the deviations are the bootstrap's own, the within part's uncertainty is carried along, not treated as
known; with four seeds the interval is wide, as it must be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t

from cxrstudy.reporting.inference import Estimate, Stat, Tested, family
from cxrstudy.reporting.naming import Contrast


@dataclass(frozen=True)
class VarianceComponents:
    """Standard deviations of one statistic over seeds: `observed` (the seeds' values on this test set),
    `interaction` (its seed-specific test-sampling part), `seed` (training sd, sqrt(observed^2 - interaction^2),
    0 when negative) with its interval and the p-value of "no training variance", and `test` (one seed's sd under
    re-drawn test patients, the part shared by all seeds included)."""

    seeds: int
    df: int
    observed: float
    interaction: float
    seed: float
    seed_low: float
    seed_high: float
    p: float
    test: float
    level: float
    resamples: int

    @property
    def seed_beyond_noise(self) -> bool:
        """Training variance > 0 at 1 - level (exactly when the interval's lower end is above 0)."""
        return self.p < 1 - self.level


def _share_at_least(deviations: np.ndarray, normals: np.ndarray, tau: float, observed: float) -> float:
    """F(tau): the share of resamples whose variance over seeds of tau x normal + deviation reaches `observed`."""
    return float(np.mean(np.var(deviations + tau * normals, axis=0, ddof=1) >= observed))


def _crossing(f: float, deviations: np.ndarray, normals: np.ndarray, observed: float, top: float) -> float:
    """The smallest tau in [0, top] with F(tau) >= f (bisection; F grows with tau)."""
    low, high = 0.0, top
    for _ in range(60):
        middle = (low + high) / 2
        if _share_at_least(deviations, normals, middle, observed) >= f:
            high = middle
        else:
            low = middle
    return high


def variance_components(stats: Sequence[Stat], level: float, seed: int = 0) -> VarianceComponents | None:
    """The decomposition for the seeds' `stats` (paired: the same resamples); None with fewer than two seeds or two
    usable resamples. `seed` draws the simulated seed effects."""
    if len(stats) < 2:
        return None
    points = np.array([s.point for s in stats])
    draws = np.array([s.draws for s in stats])
    draws = draws[:, np.isfinite(draws).all(axis=0)]
    if draws.shape[1] < 2 or not np.isfinite(points).all():
        return None
    deviations = draws - points[:, None]
    observed = float(np.var(points, ddof=1))
    interaction = float(np.mean(np.var(deviations, axis=0, ddof=1)))
    test = float(np.mean(np.var(draws, axis=1, ddof=1)))
    normals = np.random.default_rng(seed).standard_normal(deviations.shape)
    tail = (1 - level) / 2
    share_zero = _share_at_least(deviations, normals, 0.0, observed)
    top = 10 * math.sqrt(observed + interaction) + 1e-12
    while _share_at_least(deviations, normals, top, observed) <= 1 - tail and top < 1e6:
        top *= 2
    low = 0.0 if share_zero >= tail else _crossing(tail, deviations, normals, observed, top)
    high = _crossing(np.nextafter(1 - tail, 1.0), deviations, normals, observed, top)
    return VarianceComponents(len(stats), len(stats) - 1, math.sqrt(observed), math.sqrt(interaction),
                              math.sqrt(max(0.0, observed - interaction)), low, high, min(1.0, 2 * share_zero),
                              math.sqrt(test), level, int(deviations.shape[1]))


@dataclass(frozen=True)
class SeedMean:
    """One configuration's mean over its seeds: the paired-bootstrap `stat` of that mean, its training variance
    (tau^2 from `variance_components`, 0 with one seed) and its number of seeds."""

    stat: Stat
    training_variance: float
    seeds: int

    @property
    def training_part(self) -> float:
        """tau^2 / S: what other seeds would move this mean by (its variance)."""
        return self.training_variance / self.seeds if self.seeds else 0.0


def welch_df(bootstrap_variance: float, a: SeedMean, b: SeedMean) -> float:
    """Welch-Satterthwaite degrees of freedom of bootstrap variance + tau_a^2 / S_a + tau_b^2 / S_b, the bootstrap
    part (hundreds of patients) taken as exact and each training part as estimated on S - 1 degrees of freedom;
    infinite when neither has a training part."""
    total = bootstrap_variance + a.training_part + b.training_part
    parts = sum(m.training_part ** 2 / (m.seeds - 1) for m in (a, b) if m.seeds > 1 and m.training_part > 0)
    return total ** 2 / parts if parts > 0 else math.inf


def with_training(items: Sequence[tuple[Contrast, SeedMean, SeedMean]], level: float) -> list[Tested]:
    """first - second of two seed means with training variance added: standard error sqrt(bootstrap variance of
    the paired difference + tau^2 / S of each), Student's t on the Welch-Satterthwaite degrees of freedom (interval
    and p from the same t, so p < 1 - level exactly when the interval excludes 0); Holm over all items."""
    estimates = []
    for _, a, b in items:
        diff = a.stat - b.stat
        finite = diff.draws[np.isfinite(diff.draws)]
        dropped = int(len(diff.draws) - finite.size)
        if finite.size < 2:
            estimates.append(Estimate(diff.point, math.nan, math.nan, "none", dropped, len(diff.draws)))
            continue
        boot = float(np.var(finite, ddof=1))
        se = math.sqrt(boot + a.training_part + b.training_part)
        df = welch_df(boot, a, b)
        half = float(t.ppf((1 + level) / 2, df)) * se
        p = float(2 * t.sf(abs(diff.point) / se, df)) if se > 0 else 1.0
        estimates.append(Estimate(diff.point, diff.point - half, diff.point + half, f"t ({df:.0f} df)"
                                  if math.isfinite(df) else "normal", dropped, len(diff.draws), p))
    return family([(c, e) for (c, _, _), e in zip(items, estimates, strict=True)], level)
