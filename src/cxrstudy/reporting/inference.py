"""Inference on the patient bootstrap (`cxrstudy.reporting.stats`): one engine for every interval and p-value.

A statistic is carried as a `Stat`: its value on the test set, on every bootstrap resample, and with each patient
left out (the jackknife). Models scored on the same test patients share the resamples, so the `Stat` of a difference
(`a - b`) is the paired bootstrap of that difference.

One engine: an interval method (`METHODS`: percentile, BCa or normal; which one the report uses is chosen by the
coverage simulation, `cxrstudy.reporting.coverage`) maps a nominal tail probability to an end point. The p-value of
"the statistic equals v" is found by inverting that same map: the smallest 1 - level at which the interval excludes
v. So p < 1 - level exactly when the interval at that level excludes v, for every verdict in the report.

- Resamples where a statistic is undefined (no positive drawn for a finding it uses) are left out and counted.
- When every resample gives the same value no bootstrap interval has width. An AUROC of exactly 1 (or 0) then gets the
  exact bound for m independent positive-negative pairs all ranked correctly (`perfect_bound`), marked exact; a
  difference of two such AUROCs gets the interval those two bounds allow, exact too, with p = 1.
- Holm's step-down correction runs within one family; a difference is beyond test-sampling noise when its
  Holm-adjusted p is below 1 - level (its unadjusted interval then excludes 0 as well).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri  # the normal cdf and its inverse, as fast scalar ufuncs

from cxrstudy.reporting.naming import Contrast

METHODS = ("percentile", "bca", "normal")


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
    """A value with its interval and the p-value of "it is 0" from the same inversion.

    `method`: one of `METHODS`, `exact` (perfect separation) or `none` (no interval); `dropped`: resamples where the
    statistic was undefined, out of `resamples`."""

    value: float
    low: float
    high: float
    method: str
    dropped: int
    resamples: int
    p: float = math.nan

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    def excludes(self, value: float) -> bool:
        return self.has_interval and not self.low <= value <= self.high


def none(value: float, dropped: int = 0, resamples: int = 0) -> Estimate:
    """A value shown without an interval (too few patients, no resamples)."""
    return Estimate(value, math.nan, math.nan, "none", dropped, resamples)


def _quantile(ordered: np.ndarray, q: float) -> float:
    """numpy's default (linear) quantile of sorted values, for one q."""
    h = (ordered.size - 1) * min(1.0, max(0.0, q))
    j = min(int(h), ordered.size - 2)
    return float(ordered[j] + (h - j) * (ordered[j + 1] - ordered[j]))


def _quantile_range(ordered: np.ndarray, v: float) -> tuple[float, float]:
    """Where `v` sits in the interpolated quantile function of `ordered` (numpy's default, linear): the smallest
    q with quantile(q) >= v and the largest q with quantile(q) <= v (-inf / +inf beyond the draws)."""
    n = ordered.size
    below, at_most = int(np.searchsorted(ordered, v, "left")), int(np.searchsorted(ordered, v, "right"))

    def position(i: int) -> float:  # q at which the interpolation between draws i-1 and i reaches v
        if i <= 0:
            return -math.inf if v < ordered[0] else 0.0
        if i >= n:
            return math.inf if v > ordered[-1] else 1.0
        a, b = ordered[i - 1], ordered[i]
        return (i - 1 + (v - a) / (b - a)) / (n - 1)

    q_low = below / (n - 1) if below < n and ordered[below] == v else position(below)
    q_high = (at_most - 1) / (n - 1) if at_most > 0 and ordered[at_most - 1] == v else position(at_most)
    return q_low, q_high


@dataclass(frozen=True)
class Engine:
    """The bootstrap distribution of one statistic under one interval method: end points and p-values."""

    method: str
    point: float
    ordered: np.ndarray  # the finite draws, sorted
    z0: float = 0.0  # BCa bias correction
    accel: float = 0.0  # BCa acceleration

    @classmethod
    def of(cls, stat: Stat, method: str) -> Engine | None:
        """None when the resamples cannot carry an interval (fewer than 2, or all the same)."""
        if method not in METHODS:
            raise ValueError(f"unknown interval method {method!r}; one of {', '.join(METHODS)}")
        finite = np.sort(stat.draws[np.isfinite(stat.draws)])
        if finite.size < 2 or not math.isfinite(stat.point) or finite[0] == finite[-1]:
            return None
        if method != "bca":
            return cls(method, stat.point, finite)
        n = finite.size
        share = (np.count_nonzero(finite < stat.point) + 0.5 * np.count_nonzero(finite == stat.point)) / n
        z0 = float(ndtri(np.clip(share, 0.5 / n, 1 - 0.5 / n)))
        values = stat.jack[np.isfinite(stat.jack)]
        spread = values.mean() - values if values.size else np.zeros(1)
        scale = float(np.sum(spread ** 2))
        accel = float(np.sum(spread ** 3)) / (6 * scale ** 1.5) if scale > 0 else 0.0
        return cls(method, stat.point, finite, z0, accel)

    @property
    def sd(self) -> float:
        return float(np.std(self.ordered, ddof=1))

    def _adjusted(self, tail: float) -> float:
        """BCa: the quantile level of the draws that the nominal tail probability `tail` maps to."""
        s = self.z0 + float(ndtri(tail))
        denominator = 1 - self.accel * s
        if denominator <= 0:
            return 1.0 if s > 0 else 0.0
        return float(ndtr(self.z0 + s / denominator))

    def _nominal(self, q: float) -> float:
        """The inverse of `_adjusted`: the nominal tail probability whose end point is quantile `q` of the draws."""
        if self.method == "percentile" or math.isinf(q):
            return min(1.0, max(0.0, q))
        w = float(ndtri(min(1.0, max(0.0, q)))) - self.z0
        if math.isinf(w):  # the limit of w / (1 + a w): 1 / a where the denominator grows positive
            s = 1 / self.accel if self.accel * w > 0 else w
        else:
            denominator = 1 + self.accel * w
            s = w / denominator if denominator > 0 else (-math.inf if w < 0 else math.inf)
        return float(ndtr(s - self.z0))

    def end(self, tail: float) -> float:
        """The end point for nominal tail probability `tail` ((1 - level) / 2 low, (1 + level) / 2 high)."""
        if self.method == "normal":
            return self.point + float(ndtri(tail)) * self.sd
        return _quantile(self.ordered, tail if self.method == "percentile" else self._adjusted(tail))

    def p_value(self, v: float = 0.0) -> float:
        """The two-sided p-value of "the statistic is v": the smallest 1 - level whose interval excludes v."""
        if self.method == "normal":
            return float(2 * ndtr(-abs(self.point - v) / self.sd))
        q_low, q_high = _quantile_range(self.ordered, v)
        # The low end passes v once its nominal tail exceeds nominal(q_high); the high end once 1 - its tail does.
        return float(min(1.0, 2 * min(self._nominal(q_high), 1 - self._nominal(q_low))))


def perfect_bound(pairs: int, level: float) -> float:
    """The exact lower bound at `level` (two-sided Clopper-Pearson) on P(a positive outranks a negative) after
    `pairs` independent positive-negative pairs were all ranked correctly."""
    return ((1 - level) / 2) ** (1 / pairs) if pairs > 0 else 0.0


def _dropped(stat: Stat) -> int:
    return int(np.count_nonzero(~np.isfinite(stat.draws)))


def estimate(stat: Stat, level: float, method: str, pairs: int = 0) -> Estimate:
    """`stat` with its interval at `level` by `method`, and the p-value of 0 from the same inversion. An AUROC that
    is exactly 1 (or 0) in every resample gets the exact bound from `pairs` (see `perfect_bound`)."""
    resamples = len(stat.draws)
    if resamples == 0:
        return none(stat.point)
    engine = Engine.of(stat, method)
    if engine is not None:
        tail = (1 - level) / 2
        return Estimate(stat.point, engine.end(tail), engine.end(1 - tail), method, _dropped(stat), resamples,
                        engine.p_value(0.0))
    finite = stat.draws[np.isfinite(stat.draws)]
    if pairs and finite.size and stat.point in (0.0, 1.0) and np.all(finite == stat.point):
        bound = perfect_bound(pairs, level)
        low, high = (bound, 1.0) if stat.point == 1.0 else (0.0, 1.0 - bound)
        return Estimate(stat.point, low, high, "exact", _dropped(stat), resamples, 0.0)
    return none(stat.point, _dropped(stat), resamples)


def estimate_difference(a: Stat, b: Stat, level: float, method: str, pairs: int = 0) -> Estimate:
    """a - b, paired. When neither has any spread over the resamples and both are perfect (AUROC 1 or 0 everywhere),
    no bootstrap interval exists: the interval is the one their exact bounds allow (each at 1 - (1 - level) / 2,
    so that both hold together at `level`), and p = 1 when it holds 0."""
    diff = a - b
    if Engine.of(diff, method) is not None or not pairs:
        return estimate(diff, level, method)
    joint = 1 - (1 - level) / 2
    one, two = estimate(a, joint, method, pairs), estimate(b, joint, method, pairs)
    if one.method != "exact" or two.method != "exact":
        return estimate(diff, level, method)
    low, high = one.low - two.high, one.high - two.low
    return Estimate(diff.point, low, high, "exact", _dropped(diff), len(diff.draws), 1.0 if low <= 0 <= high else 0.0)


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
class Tested:
    """A contrast's paired difference with its interval, its p-value and its Holm-adjusted p within its family."""

    contrast: Contrast
    difference: Estimate
    p_holm: float
    level: float

    @property
    def p(self) -> float:
        return self.difference.p

    @property
    def beyond_noise(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < 1 - self.level


def family(items: Sequence[tuple[Contrast, Estimate]], level: float) -> list[Tested]:
    """One Holm family: each (contrast, its estimate), the p-values adjusted over all of them."""
    adjusted = holm([e.p for _, e in items])
    return [Tested(c, e, q, level) for (c, e), q in zip(items, adjusted, strict=True)]


def paired_contrasts(pairs: Sequence[tuple[Contrast, Stat, Stat]], level: float, method: str,
                   pairs_count: int = 0) -> list[Tested]:
    """Each (contrast, first, second): first - second with its interval and p; Holm over all of them."""
    return family([(c, estimate_difference(a, b, level, method, pairs_count)) for c, a, b in pairs], level)


def rank_first(stats: Sequence[Stat]) -> list[float]:
    """For each statistic, the share of resamples (where all are defined) in which it is the highest; ties share."""
    draws = np.array([s.draws for s in stats])
    draws = draws[:, np.isfinite(draws).all(axis=0)]
    if draws.size == 0:
        return [math.nan] * len(stats)
    top = draws == draws.max(axis=0)
    return [float(v) for v in (top / top.sum(axis=0)).mean(axis=1)]
