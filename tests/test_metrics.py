"""Metrics: scikit-learn's AUROC, F1 at thresholds chosen on one set and applied to another, calibration; the label
names from the data; a masked label (an uncertain one under `uncertain: ignore`, NaN) left out of its finding's
metrics; and the predictions file, with a masked label as an empty cell."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrstudy.calibration import brier, ece
from cxrstudy.data.nihtable import FINDINGS
from cxrstudy.learning.evaluate import compute_metrics, write_predictions
from cxrstudy.metrics import best_f1_threshold, per_class_auroc, per_class_f1, per_class_thresholds

CHEXPERT_FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


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
    m = compute_metrics(1, 0.1, (labels, val_probs), (labels, test_probs), names=FINDINGS)
    assert m["threshold"] == {name: pytest.approx(0.3) for name in FINDINGS}
    assert m["f1"] == {name: pytest.approx(2 / 3) for name in FINDINGS}
    assert m["f1_mean"] == pytest.approx(2 / 3)
    assert m["f1_test_tuned_mean"] == pytest.approx(1.0)  # the optimistic protocol, under its own key
    assert "validation" in str(m["f1_protocol"])


def test_undefined_metrics_are_written_as_null() -> None:
    labels = np.zeros((10, 14))
    labels[:5, 0] = 1
    probs = np.random.default_rng(1).random((10, 14))
    m = compute_metrics(1, 0.1, (labels, probs), (labels, probs), names=FINDINGS)
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
    m = compute_metrics(1, 0.1, (val_labels, rng.random((80, 14))), (test_labels, test_probs), calibration_bins=5,
                        names=FINDINGS)
    assert m["val_positives"] == {n: int(v) for n, v in zip(FINDINGS, val_labels.sum(axis=0), strict=True)}
    assert m["test_positives"] == {n: int(v) for n, v in zip(FINDINGS, test_labels.sum(axis=0), strict=True)}
    assert m["brier_mean"] == pytest.approx(np.mean((test_probs - test_labels) ** 2), abs=1e-6)
    assert m["ece"]["Mass"] == pytest.approx(ece(test_labels, test_probs, 5)[FINDINGS.index("Mass")], abs=1e-6)
    assert m["calibration_bins"] == 5
    assert m["mean_prob"] == pytest.approx(test_probs.mean(), abs=1e-6)
    assert m["prevalence"] == pytest.approx(test_labels.mean(), abs=1e-6)


def test_the_label_names_come_from_the_caller() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random((40, 5)) < 0.4).astype(np.float32)
    m = compute_metrics(1, 0.1, (labels, rng.random((40, 5))), (labels, rng.random((40, 5))), names=CHEXPERT_FIVE)
    for key in ("auroc", "f1", "threshold", "test_positives", "brier", "ece"):
        assert list(m[key]) == list(CHEXPERT_FIVE), key  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="needs the label names"):
        compute_metrics(1, 0.1, (labels, labels), (labels, labels))


def masked_sample(seed: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (60 x 2) with a third of column 1 masked (NaN), probabilities, and the mask."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((60, 2)) < 0.4).astype(np.float32)
    labels[:3, 1], labels[3:6, 1] = 1, 0  # both classes among the known
    mask = np.zeros((60, 2), bool)
    mask[rng.choice(np.arange(6, 60), 20, replace=False), 1] = True
    labels[mask] = np.nan
    probs = np.clip(0.3 * np.nan_to_num(labels) + 0.7 * rng.random((60, 2)), 0, 1)
    return labels, probs, mask


def test_a_masked_label_is_left_out_of_its_findings_metrics_only() -> None:
    labels, probs, mask = masked_sample()
    known = ~mask[:, 1]
    auroc = per_class_auroc(labels, probs)
    assert auroc[0] == pytest.approx(roc_auc_score(labels[:, 0], probs[:, 0]))  # column 0: every image
    assert auroc[1] == pytest.approx(roc_auc_score(labels[known, 1], probs[known, 1]))
    thresholds = per_class_thresholds(labels, probs)
    assert thresholds[1] == best_f1_threshold(labels[known, 1], probs[known, 1])
    f1 = per_class_f1(labels, probs, thresholds)
    assert f1[1] == per_class_f1(labels[known][:, 1:], probs[known][:, 1:], thresholds[1:])[0]
    names = ("Edema", "Pleural Effusion")
    patients = (np.arange(60) // 2).astype(str)
    m = compute_metrics(1, 0.1, (labels, probs), (labels, probs), names=names, patients=(patients, patients))
    assert m["auroc"]["Pleural Effusion"] == pytest.approx(auroc[1], abs=1e-6)  # type: ignore[index]
    assert m["test_positives"]["Pleural Effusion"] == int(np.nansum(labels[:, 1]))  # type: ignore[index]
    assert m["masked"] == {"Edema": 0, "Pleural Effusion": 20}
    assert m["n_test"] == 60


def test_metrics_count_positive_patients_beside_positive_images() -> None:
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], np.float32)  # patient a twice positive for column 0
    patients = np.array(["a", "a", "b", "c"])
    probs = np.full((4, 2), 0.5, np.float32)
    m = compute_metrics(1, 0.1, (labels, probs), (labels, probs), names=("Mass", "Nodule"),
                        patients=(patients, patients))
    assert m["test_positives"] == {"Mass": 3, "Nodule": 1}
    assert m["test_positive_patients"] == {"Mass": 2, "Nodule": 1}
    assert m["val_positive_patients"] == {"Mass": 2, "Nodule": 1}
    assert m["test_patients"] == 3 and m["val_patients"] == 3
    assert "masked" not in m  # nothing masked: no such key


def test_predictions_carry_the_names_and_a_masked_label_as_an_empty_cell() -> None:
    labels, probs, mask = masked_sample()
    probs = probs.astype(np.float32)
    images = [f"view{i}_frontal.jpg" for i in range(60)]
    patients = np.array([f"patient{i // 3:05d}" for i in range(60)])
    out = io.StringIO()
    write_predictions(out, images, patients, labels, probs, ("Edema", "Pleural Effusion"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "image,patient,label_Edema,label_Pleural Effusion,prob_Edema,prob_Pleural Effusion"
    back = pd.read_csv(io.StringIO(out.getvalue()), dtype={"patient": str})
    assert back["patient"].tolist() == patients.tolist()
    assert back["label_Pleural Effusion"].isna().tolist() == mask[:, 1].tolist()  # empty exactly where masked
    assert back["label_Edema"].tolist() == labels[:, 0].astype(int).tolist()
    known = ~mask[:, 1]
    assert back["label_Pleural Effusion"][known].astype(int).tolist() == labels[known, 1].astype(int).tolist()
    row = lines[1 + int(np.flatnonzero(mask[:, 1])[0])].split(",")
    assert row[3] == ""  # written as nothing at all, not "nan"
    assert back[["prob_Edema", "prob_Pleural Effusion"]].to_numpy(np.float32).tolist() == probs.tolist()  # exact
