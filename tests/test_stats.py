"""The patient-level bootstrap and jackknife: a fast weighted AUROC equal to scikit-learn's, resampling patients,
deterministic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrstudy.reporting import stats
from cxrstudy.reporting.stats import (
    Bootstrap,
    bootstrap_auroc,
    mean_sd,
    min_max,
    patient_counts,
    patient_jackknife_auroc,
    patient_weighted_auroc,
)


def _data(seed: int, n: int = 300, patients: int = 120, columns: int = 5) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, columns)) < rng.uniform(0.05, 0.5, columns)).astype(np.float32)
    # Rounded scores: many ties, between positives and negatives too.
    scores = np.round(0.3 * labels + rng.random((n, columns)), 2)
    return labels, scores, rng.integers(0, patients, n)


def test_unit_counts_give_scikit_learns_auroc() -> None:
    labels, scores, patient = _data(0)
    got = patient_weighted_auroc(labels, scores, patient, np.ones((1, 120)))[0]
    expected = [roc_auc_score(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_counts_equal_scikit_learn_on_the_images_repeated() -> None:
    labels, scores, patient = _data(1)
    counts = np.random.default_rng(2).integers(0, 4, (6, 120)).astype(float)
    got = patient_weighted_auroc(labels[:, 0], scores[:, 0], patient, counts)
    for b in range(len(counts)):
        repeat = counts[b, patient].astype(int)
        expected = roc_auc_score(np.repeat(labels[:, 0], repeat), np.repeat(scores[:, 0], repeat))
        assert got[b] == pytest.approx(expected, abs=1e-12)


def test_a_column_with_one_class_is_nan() -> None:
    labels, scores, patient = _data(3)
    labels[:, 1] = 0
    labels[:, 2] = 1
    got = patient_weighted_auroc(labels, scores, patient, np.ones((2, 120)))
    assert np.isnan(got[:, 1]).all() and np.isnan(got[:, 2]).all()
    assert np.isfinite(got[:, 0]).all()


def test_a_resample_without_positives_is_nan() -> None:
    labels = np.array([1, 0, 0, 1], dtype=np.float32)
    scores = np.array([0.9, 0.1, 0.4, 0.3])
    counts = np.array([[0.0, 2.0], [1.0, 1.0]])  # patient 0 holds both positives
    got = patient_weighted_auroc(labels, scores, np.array([0, 1, 1, 0]), counts)
    assert math.isnan(got[0]) and got[1] == pytest.approx(roc_auc_score(labels, scores))


def test_findings_stacked_in_small_groups_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    labels, scores, patient = _data(4)
    counts = patient_counts(120, 50, 0)
    together = patient_weighted_auroc(labels, scores, patient, counts)
    monkeypatch.setattr(stats, "_GROUP_CELLS", 1)
    apart = patient_weighted_auroc(labels, scores, patient, counts)
    np.testing.assert_array_equal(together, apart)


def test_patient_counts_draw_every_patient_count_with_replacement() -> None:
    counts = patient_counts(40, 200, 7)
    assert counts.shape == (200, 40)
    assert (counts.sum(axis=1) == 40).all()
    assert counts.mean() == pytest.approx(1.0, abs=1e-12)
    assert (counts == 0).any(), "with replacement, some patients are left out of a resample"
    np.testing.assert_array_equal(counts, patient_counts(40, 200, 7))


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    labels, scores, patient = _data(5)
    a = bootstrap_auroc(labels, scores, patient, 100, seed=3)
    b = bootstrap_auroc(labels, scores, patient, 100, seed=3)
    c = bootstrap_auroc(labels, scores, patient, 100, seed=4)
    np.testing.assert_array_equal(a.per_class, b.per_class)
    assert not np.array_equal(a.per_class, c.per_class)


def test_bootstrap_resamples_patients_not_images() -> None:
    """Each patient's images repeated three times: a patient bootstrap is unchanged (an image one would narrow)."""
    labels, scores, patient = _data(6)
    once = bootstrap_auroc(labels, scores, patient, 200, seed=0)
    thrice = bootstrap_auroc(np.repeat(labels, 3, axis=0), np.repeat(scores, 3, axis=0), np.repeat(patient, 3), 200,
                             seed=0)
    np.testing.assert_allclose(once.per_class, thrice.per_class, rtol=0, atol=1e-12)


def test_bootstrap_does_not_depend_on_row_order() -> None:
    labels, scores, patient = _data(7)
    order = np.random.default_rng(0).permutation(len(labels))
    a = bootstrap_auroc(labels, scores, patient, 100, seed=1)
    b = bootstrap_auroc(labels[order], scores[order], patient[order], 100, seed=1)
    np.testing.assert_allclose(a.per_class, b.per_class, rtol=0, atol=1e-12)


def test_the_bootstrap_spread_narrows_with_more_patients() -> None:
    small = _data(8, n=200, patients=100, columns=3)
    large = _data(8, n=2000, patients=1000, columns=3)
    spreads = [np.std(bootstrap_auroc(*data, 300, seed=0).per_class.mean(axis=1)) for data in (small, large)]
    assert spreads[1] < spreads[0] / 2


def test_no_resamples_gives_no_draws() -> None:
    labels, scores, patient = _data(9)
    boot = bootstrap_auroc(labels, scores, patient, 0, seed=0)
    assert boot.resamples == 0 and boot.per_class.shape == (0, labels.shape[1])


def test_lacking_counts_the_resamples_without_a_positive() -> None:
    boot = Bootstrap(np.array([[0.6, np.nan], [0.8, 0.7], [np.nan, np.nan]]), np.empty((0, 2)))
    assert boot.lacking().tolist() == [1, 2]


def test_the_jackknife_equals_the_auroc_with_each_patient_left_out() -> None:
    labels, scores, patient = _data(10, n=240, patients=60)
    leave_one_out = np.ones((60, 60)) - np.eye(60)
    expected = patient_weighted_auroc(labels, scores, patient, leave_one_out)
    np.testing.assert_allclose(patient_jackknife_auroc(labels, scores, patient, 60), expected, rtol=0, atol=1e-12)


def test_the_jackknife_is_nan_where_the_only_positive_patient_is_left_out() -> None:
    labels = np.array([1, 1, 0, 0, 0], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    got = patient_jackknife_auroc(labels, scores, np.array([0, 0, 1, 2, 2]), 3)[:, 0]
    assert math.isnan(got[0])
    assert got[1] == pytest.approx(roc_auc_score([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.2]))


def test_bootstrap_carries_the_jackknife_in_sorted_patient_order() -> None:
    labels, scores, patient = _data(11, n=200, patients=50)
    boot = bootstrap_auroc(labels, scores, patient + 500, 20, seed=0)
    np.testing.assert_array_equal(boot.jackknife, patient_jackknife_auroc(labels, scores, patient, 50))


def test_mean_sd_and_min_max_skip_undefined_values() -> None:
    assert mean_sd([0.8, math.nan, 0.9]) == pytest.approx((0.85, np.std([0.8, 0.9], ddof=1)))
    mean, sd = mean_sd([0.8])
    assert mean == 0.8 and math.isnan(sd)
    assert all(math.isnan(v) for v in mean_sd([math.nan]))
    assert min_max([0.7, math.nan, 0.6]) == (0.6, 0.7)


def test_a_masked_label_cell_takes_no_part_in_its_finding() -> None:
    """An uncertain label left out under `ignore` is NaN: the bootstrap, the jackknife and the point AUROC of that
    finding are those of the data without the masked images, and the other findings keep every image."""
    labels, scores, patient = _data(5)
    labels = labels.astype(np.float64)
    masked = np.random.default_rng(6).random(labels.shape[0]) < 0.3
    labels[masked, 1] = np.nan
    counts = patient_counts(120, 20, 0)
    got = patient_weighted_auroc(labels, scores, patient, counts)
    kept = ~masked
    alone = patient_weighted_auroc(labels[kept, 1], scores[kept, 1], patient[kept], counts)
    np.testing.assert_allclose(got[:, 1], alone, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[:, 0], patient_weighted_auroc(labels[:, 0], scores[:, 0], patient, counts))
    jack = patient_jackknife_auroc(labels, scores, patient, 120)
    np.testing.assert_allclose(jack[:, 1], patient_jackknife_auroc(labels[kept, 1:2], scores[kept, 1:2], patient[kept],
                                                                    120)[:, 0], equal_nan=True)
    point = patient_weighted_auroc(labels, scores, patient, np.ones((1, 120)))[0, 1]
    assert point == pytest.approx(roc_auc_score(labels[kept, 1], scores[kept, 1]), abs=1e-12)


def test_string_patient_ids_resample_like_numbers() -> None:
    labels, scores, patient = _data(7)
    named = np.array([f"p{p:05d}" for p in patient])
    by_number = bootstrap_auroc(labels, scores, patient, 50, 3)
    by_name = bootstrap_auroc(labels, scores, named, 50, 3)
    np.testing.assert_array_equal(by_number.per_class, by_name.per_class)
