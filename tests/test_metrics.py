"""Metrics: scikit-learn's AUROC, F1 at thresholds chosen on one set and applied to another, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrstudy.calibration import brier, ece
from cxrstudy.labels import FINDINGS
from cxrstudy.learning.evaluate import compute_metrics
from cxrstudy.metrics import best_f1_threshold, per_class_auroc, per_class_f1


def test_auroc_is_undefined_for_a_class_without_positives() -> None:
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]])
    auroc = per_class_auroc(labels, probs)
    assert auroc[0] == 1.0 and math.isnan(auroc[1])
    assert np.nanmean(auroc) == 1.0


def test_best_threshold_separates_perfectly_separable_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.3, 0.6, 0.8])
    t = best_f1_threshold(labels, probs)
    assert 0.3 < t <= 0.6
    assert per_class_f1(labels[:, None], probs[:, None], [t]) == [1.0]


def test_thresholds_come_from_validation_not_test() -> None:
    """Validation is separated best at 0.3, the test set at 0.25: at 0.3 one of the two test positives is missed
    (F1 2/3), at 0.25 none is (F1 1). The reported F1 must be the one at the validation threshold."""
    labels = np.tile(np.array([[0.0], [0.0], [1.0], [1.0]]), (1, 14))
    val_probs = np.tile(np.array([[0.1], [0.2], [0.3], [0.4]]), (1, 14))
    test_probs = np.tile(np.array([[0.1], [0.2], [0.25], [0.35]]), (1, 14))
    m = compute_metrics(1, 0.1, (labels, val_probs), (labels, test_probs))
    assert m["threshold"] == {name: pytest.approx(0.3) for name in FINDINGS}
    assert m["f1"] == {name: pytest.approx(2 / 3) for name in FINDINGS}
    assert m["f1_mean"] == pytest.approx(2 / 3)
    assert m["f1_test_tuned_mean"] == pytest.approx(1.0)  # the optimistic protocol, under its own key
    assert "validation" in str(m["f1_protocol"])


def test_undefined_metrics_are_written_as_null() -> None:
    labels = np.zeros((10, 14))
    labels[:5, 0] = 1
    probs = np.random.default_rng(1).random((10, 14))
    m = compute_metrics(1, 0.1, (labels, probs), (labels, probs))
    assert m["auroc"]["Cardiomegaly"] is None  # type: ignore[index]
    assert m["auroc"]["Atelectasis"] is not None  # type: ignore[index]


def test_brier_and_ece_by_hand() -> None:
    labels = np.array([[1.0], [0.0], [1.0], [0.0]])
    probs = np.array([[0.9], [0.15], [0.55], [0.5]])
    assert brier(labels, probs)[0] == pytest.approx((0.01 + 0.0225 + 0.2025 + 0.25) / 4)
    # Bins of width 0.1: {0.9}: |1 - 0.9|; {0.15}: |0 - 0.15|; {0.55, 0.5}: |1 - 1.05| -> (0.1 + 0.15 + 0.05) / 4
    assert ece(labels, probs, 10)[0] == pytest.approx(0.3 / 4)
    assert ece(labels, probs, 2)[0] == pytest.approx((abs(0 - 0.15) + abs(2 - 1.95)) / 4)


def test_a_calibrated_model_has_near_zero_ece_and_an_overconfident_one_does_not() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((20000, 1))
    labels = (rng.random((20000, 1)) < probs).astype(float)
    assert ece(labels, probs, 10)[0] < 0.01
    assert ece(labels, np.clip(probs * 1.6, 0, 1), 10)[0] > 0.1


def test_a_probability_of_one_falls_in_the_last_bin() -> None:
    assert ece(np.array([[1.0]]), np.array([[1.0]]), 10)[0] == 0.0


def test_metrics_carry_calibration_and_both_positive_counts() -> None:
    rng = np.random.default_rng(2)
    val_labels, test_labels = (rng.random((80, 14)) < 0.2).astype(float), (rng.random((60, 14)) < 0.3).astype(float)
    test_probs = rng.random((60, 14))
    m = compute_metrics(1, 0.1, (val_labels, rng.random((80, 14))), (test_labels, test_probs), calibration_bins=5)
    assert m["val_positives"] == {n: int(v) for n, v in zip(FINDINGS, val_labels.sum(axis=0), strict=True)}
    assert m["test_positives"] == {n: int(v) for n, v in zip(FINDINGS, test_labels.sum(axis=0), strict=True)}
    assert m["brier_mean"] == pytest.approx(np.mean((test_probs - test_labels) ** 2), abs=1e-6)
    assert m["ece"]["Mass"] == pytest.approx(ece(test_labels, test_probs, 5)[FINDINGS.index("Mass")], abs=1e-6)
    assert m["calibration_bins"] == 5
    assert m["mean_prob"] == pytest.approx(test_probs.mean(), abs=1e-6)
    assert m["prevalence"] == pytest.approx(test_labels.mean(), abs=1e-6)
