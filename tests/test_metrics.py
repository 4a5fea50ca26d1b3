"""Metrics: scikit-learn's AUROC, F1 at thresholds chosen on one set and applied to another."""

from __future__ import annotations

import math

import numpy as np

from cxrstudy.evaluate import compute_metrics
from cxrstudy.labels import FINDINGS
from cxrstudy.metrics import best_f1_threshold, nanmean, per_class_auroc, per_class_f1


def test_auroc_is_undefined_for_a_class_without_positives() -> None:
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]])
    auroc = per_class_auroc(labels, probs)
    assert auroc[0] == 1.0 and math.isnan(auroc[1])
    assert nanmean(auroc) == 1.0


def test_best_threshold_separates_perfectly_separable_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.3, 0.6, 0.8])
    t = best_f1_threshold(labels, probs)
    assert 0.3 < t <= 0.6
    assert per_class_f1(labels[:, None], probs[:, None], [t]) == [1.0]


def test_thresholds_come_from_validation_not_test() -> None:
    rng = np.random.default_rng(0)
    val_labels = rng.random((200, 14)) < 0.2
    val_probs = np.clip(val_labels * 0.3 + rng.random((200, 14)) * 0.7, 0, 1)
    test_labels = rng.random((100, 14)) < 0.2
    test_probs = rng.random((100, 14))
    m = compute_metrics(1, 0.1, (val_labels, val_probs), (test_labels, test_probs))
    assert set(m["auroc"]) == set(FINDINGS)  # type: ignore[arg-type]
    # Tuning on the test set can only look better on the test set: it is the optimistic protocol.
    assert m["f1_test_tuned_mean"] >= m["f1_mean"]  # type: ignore[operator]
    assert "validation" in str(m["f1_protocol"])


def test_undefined_metrics_are_written_as_null() -> None:
    labels = np.zeros((10, 14))
    labels[:5, 0] = 1
    probs = np.random.default_rng(1).random((10, 14))
    m = compute_metrics(1, 0.1, (labels, probs), (labels, probs))
    assert m["auroc"]["Cardiomegaly"] is None  # type: ignore[index]
    assert m["auroc"]["Atelectasis"] is not None  # type: ignore[index]
