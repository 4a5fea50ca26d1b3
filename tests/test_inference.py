"""The inferential engine: intervals by each method, p-values by inverting the same interval (so a verdict and its
interval never disagree), exact bounds at perfect separation, Holm within a family, the probability of ranking first,
training variance against test-sampling variance, and differences of seed means with training variance added."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2, norm, t

from cxrstudy.reporting import naming
from cxrstudy.reporting.inference import (
    METHODS,
    Engine,
    Stat,
    column_mean,
    estimate,
    estimate_difference,
    family,
    holm,
    mean_of,
    paired_contrasts,
    perfect_bound,
    rank_first,
)
from cxrstudy.reporting.variance import SeedMean, variance_components, welch_df, with_training

PAIR = naming.Contrast(naming.SEED_PAIR, naming.seed(1), naming.seed(2))


def _stat(point: float, draws: np.ndarray, jack: np.ndarray | None = None) -> Stat:
    return Stat(point, np.asarray(draws, dtype=float), np.zeros(5) if jack is None else np.asarray(jack, float))


def test_bca_is_the_percentile_interval_without_bias_or_skew() -> None:
    draws = norm.ppf((np.arange(1, 2000) - 0.5) / 1999)  # symmetric around 0, the point estimate
    stat = _stat(0.0, draws, np.linspace(-1, 1, 11))  # symmetric jackknife: no acceleration
    bca, percentile = estimate(stat, 0.95, "bca"), estimate(stat, 0.95, "percentile")
    assert (bca.low, bca.high) == pytest.approx((percentile.low, percentile.high), abs=1e-12)
    assert (percentile.low, percentile.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=1e-12)


def test_bca_shifts_the_interval_towards_the_point_when_the_resamples_are_biased() -> None:
    draws = norm.ppf((np.arange(1, 2000) - 0.5) / 1999)
    percentile = estimate(_stat(0.5, draws), 0.95, "percentile")
    bca = estimate(_stat(0.5, draws, np.linspace(-1, 1, 11)), 0.95, "bca")  # the point sits above most resamples
    assert bca.low > percentile.low and bca.high > percentile.high


def test_the_normal_interval_is_the_point_plus_minus_z_bootstrap_sds() -> None:
    draws = np.random.default_rng(0).normal(0.3, 0.1, 5000)
    e = estimate(_stat(0.25, draws), 0.9, "normal")
    sd = float(np.std(draws, ddof=1))
    assert (e.low, e.high) == pytest.approx((0.25 - norm.ppf(0.95) * sd, 0.25 + norm.ppf(0.95) * sd))
    assert e.p == pytest.approx(2 * norm.sf(0.25 / sd))


@pytest.mark.parametrize("method", METHODS)
def test_a_p_value_is_below_alpha_exactly_when_the_interval_excludes_zero(method: str) -> None:
    """The p-value inverts the interval: at every level, p < 1 - level if and only if 0 is outside it."""
    rng = np.random.default_rng(1)
    disagreements = 0
    for _ in range(300):
        centre, spread = rng.normal(0, 0.02), rng.uniform(0.005, 0.03)
        draws = centre + spread * rng.standard_t(4, 400)
        draws[rng.random(400) < rng.uniform(0, 0.1)] = 0.0  # atoms at 0, as two AUROCs near 1 make
        stat = _stat(centre, draws, rng.normal(0, spread, 30))
        for level in (0.8, 0.9, 0.95, 0.99):
            e = estimate(stat, level, method)
            disagreements += (e.p < 1 - level) != e.excludes(0.0)
    assert disagreements == 0


def test_p_is_zero_when_no_resample_comes_near_zero_and_one_at_the_centre() -> None:
    draws = np.linspace(0.01, 0.03, 1000)
    assert Engine.of(_stat(0.02, draws), "percentile").p_value(0.0) == 0.0  # type: ignore[union-attr]
    assert Engine.of(_stat(0.02, draws), "percentile").p_value(0.02) == pytest.approx(1.0, abs=2e-3)  # type: ignore[union-attr]


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown interval method 'studentised'"):
        estimate(_stat(0.5, np.linspace(0, 1, 10)), 0.95, "studentised")


def test_an_auroc_of_one_gets_the_exact_bound() -> None:
    e = estimate(_stat(1.0, np.ones(100)), 0.95, "bca", pairs=10)
    assert e.method == "exact" and e.high == 1.0
    assert e.low == pytest.approx(0.025 ** (1 / 10)) and 0.69 < e.low < 0.70
    assert perfect_bound(100, 0.95) > perfect_bound(10, 0.95)


def test_two_perfect_aurocs_differ_by_an_exact_interval_not_a_collapsed_one() -> None:
    """Perfect separation is treated one way: the difference of two AUROCs of 1 gets the interval their exact
    bounds allow (each at 97.5 %, so both hold together at 95 %), never [0, 0]."""
    one = _stat(1.0, np.ones(200))
    e = estimate_difference(one, one, 0.95, "normal", pairs=12)
    bound = perfect_bound(12, 0.975)
    assert e.method == "exact" and e.value == 0 and (e.low, e.high) == pytest.approx((bound - 1, 1 - bound))
    assert e.p == 1.0 and not family([(PAIR, e)], 0.95)[0].beyond_noise


def test_undefined_resamples_are_left_out_and_counted() -> None:
    draws = np.r_[np.linspace(0.7, 0.9, 90), [np.nan] * 10]
    e = estimate(_stat(0.8, draws, np.linspace(0.79, 0.81, 7)), 0.95, "bca")
    assert e.dropped == 10 and e.resamples == 100 and e.method == "bca"
    assert 0.7 <= e.low < 0.8 < e.high <= 0.9


def test_a_mean_over_findings_is_undefined_where_any_finding_is() -> None:
    point = np.array([0.8, 0.6])
    draws = np.array([[0.8, 0.6], [0.7, np.nan]])
    stat = column_mean(point, draws, np.array([[0.8, 0.6]]), [0, 1])
    assert stat.point == pytest.approx(0.7) and stat.draws[0] == pytest.approx(0.7) and math.isnan(stat.draws[1])
    assert column_mean(point, draws, np.array([[0.8, 0.6]]), [0]).draws.tolist() == [0.8, 0.7]


def test_a_paired_difference_cancels_what_the_models_share() -> None:
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 0.05, 1000)
    a = _stat(0.81, 0.81 + shared + rng.normal(0, 0.002, 1000))
    b = _stat(0.80, 0.80 + shared + rng.normal(0, 0.002, 1000))
    paired = estimate(a - b, 0.95, "percentile")
    apart = np.quantile(a.draws, [0.025, 0.975]) - np.quantile(b.draws, [0.975, 0.025])
    assert paired.low > 0 and apart[0] < 0
    assert paired.high - paired.low < (apart[1] - apart[0]) / 5


def test_holm_adjusts_step_down() -> None:
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    adjusted = holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_a_difference_is_beyond_noise_only_after_the_correction() -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.01, 1000)
    first = _stat(0.022, 0.022 + noise)
    (alone,) = paired_contrasts([(PAIR, first, _stat(0.0, np.zeros(1000)))], 0.95, "normal")
    assert alone.p < 0.05 and alone.beyond_noise and alone.contrast == PAIR
    crowd = paired_contrasts([(PAIR, first, _stat(0.0, np.zeros(1000)))]
                             + [(PAIR.reversed(), _stat(0.0, noise), _stat(0.0, np.zeros(1000)))] * 9, 0.95, "normal")
    assert crowd[0].p == alone.p and crowd[0].p_holm == pytest.approx(min(1, 10 * alone.p))
    assert not crowd[0].beyond_noise


def test_rank_first_shares_ties_and_sums_to_one() -> None:
    a = _stat(0.8, np.array([0.9, 0.5, 0.7, np.nan]))
    b = _stat(0.7, np.array([0.8, 0.6, 0.7, 0.9]))
    assert rank_first([a, b]) == pytest.approx([1.5 / 3, 1.5 / 3])
    assert sum(rank_first([a, b, mean_of([a, b])])) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ training variance


def _seeds(points: list[float], deviations: np.ndarray) -> list[Stat]:
    shared = np.linspace(-0.02, 0.02, deviations.shape[1])  # cancels between seeds
    return [_stat(p, p + shared + d) for p, d in zip(points, deviations, strict=True)]


def test_without_test_noise_the_seed_sd_interval_is_the_chi_square_one() -> None:
    """Four values give an sd known to within 0.57x-3.7x of itself at 95 %: the simulation finds that interval."""
    v = variance_components(_seeds([0.80, 0.81, 0.82, 0.83], np.zeros((4, 20000))), 0.95)
    assert v is not None and v.interaction == pytest.approx(0, abs=1e-12) and v.df == 3
    sd = float(np.std([0.80, 0.81, 0.82, 0.83], ddof=1))
    assert v.seed == pytest.approx(sd)
    exact = (math.sqrt(3 / chi2.ppf(0.975, 3)), math.sqrt(3 / chi2.ppf(0.025, 3)))  # 0.567, 3.73
    assert (v.seed_low / sd, v.seed_high / sd) == pytest.approx(exact, rel=0.03)
    assert v.p < 1e-3 and v.seed_beyond_noise


def test_test_noise_between_seeds_is_subtracted_from_their_spread() -> None:
    rng = np.random.default_rng(3)
    deviations = rng.normal(0, 0.01, (4, 4000))
    points = [0.80, 0.81, 0.79, 0.80]
    v = variance_components(_seeds(points, deviations), 0.95)
    assert v is not None
    assert v.interaction == pytest.approx(0.01, rel=0.03)
    observed = float(np.var(points, ddof=1))
    assert v.seed == pytest.approx(math.sqrt(max(0.0, observed - v.interaction ** 2)))
    assert v.test == pytest.approx(math.sqrt(0.01 ** 2 + np.var(np.linspace(-0.02, 0.02, 4000), ddof=1)), rel=0.03)


@pytest.mark.parametrize(("points", "beyond"), [([0.80, 0.801, 0.799, 0.80], False), ([0.74, 0.80, 0.86, 0.80], True)])
def test_the_test_of_training_variance_accounts_for_the_test_noise_in_both_directions(points: list[float],
                                                                                      beyond: bool) -> None:
    """Seeds within their own test noise: p large, the interval reaches 0. Seeds far apart: p small, the interval
    stays above 0; the verdict and the interval always agree."""
    deviations = np.random.default_rng(4).normal(0, 0.01, (4, 2000))
    v = variance_components(_seeds(points, deviations), 0.95)
    assert v is not None and v.seed_beyond_noise == beyond
    assert (v.p < 0.05) == beyond and (v.seed_low > 0) == beyond and v.seed_low <= v.seed <= v.seed_high


def test_one_seed_has_no_variance_components() -> None:
    assert variance_components([_stat(0.8, np.full(10, 0.8))], 0.95) is None


def test_welch_satterthwaite_degrees_of_freedom() -> None:
    draws = _stat(0.0, np.zeros(10))
    a, b = SeedMean(draws, 0.0004, 4), SeedMean(draws, 0.0001, 4)
    parts = [0.0004 / 4, 0.0001 / 4]
    expected = (0.0002 + sum(parts)) ** 2 / sum(p ** 2 / 3 for p in parts)
    assert welch_df(0.0002, a, b) == pytest.approx(expected) and 6 < expected < 40
    assert welch_df(0.0002, SeedMean(draws, 0.0, 4), SeedMean(draws, 0.0, 4)) == math.inf


def test_training_variance_widens_a_difference_of_seed_means() -> None:
    rng = np.random.default_rng(4)
    diff = _stat(0.02, 0.02 + rng.normal(0, 0.005, 2000))
    zero = _stat(0.0, np.zeros(2000))
    (plain,) = with_training([(PAIR, SeedMean(diff, 0.0, 4), SeedMean(zero, 0.0, 4))], 0.95)
    (wide,) = with_training([(PAIR, SeedMean(diff, 0.0004, 4), SeedMean(zero, 0.0, 4))], 0.95)
    assert plain.beyond_noise and not wide.beyond_noise
    boot = float(np.var(diff.draws, ddof=1))
    df = (boot + 0.0001) ** 2 / (0.0001 ** 2 / 3)
    half = wide.difference.high - wide.difference.value
    assert half == pytest.approx(t.ppf(0.975, df) * math.sqrt(boot + 0.0004 / 4))
    assert wide.difference.method == f"t ({df:.0f} df)" and (wide.p < 0.05) == wide.difference.excludes(0)
