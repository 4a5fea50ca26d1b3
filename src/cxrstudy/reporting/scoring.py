"""Per-finding scores on predictions whose label cells may be masked (NaN: an uncertain label left out under
`ignore`): each finding is scored on its own valid cells, by the core's functions (`cxrstudy.metrics`,
`cxrstudy.calibration`) applied column by column. Also the counts every per-finding table shows: positive images
and positive patients, and the patients with a negative image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrstudy.calibration import Calibration, brier, ece
from cxrstudy.metrics import best_f1_threshold, per_class_auroc, per_class_f1


def _valid(labels: np.ndarray, k: int) -> np.ndarray:
    return np.isfinite(labels[:, k])


def auroc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """AUROC per finding over its valid cells; NaN where they hold one class only."""
    out = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        keep = _valid(labels, k)
        out[k] = per_class_auroc(labels[keep, k:k + 1], probs[keep, k:k + 1])[0]
    return out


def thresholds(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """The F1-maximising threshold per finding, chosen on its valid cells."""
    return [best_f1_threshold(labels[_valid(labels, k), k], probs[_valid(labels, k), k])
            for k in range(labels.shape[1])]


def f1(labels: np.ndarray, probs: np.ndarray, chosen: list[float]) -> np.ndarray:
    """F1 per finding at the `chosen` thresholds, over its valid cells; NaN without a positive."""
    out = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        keep = _valid(labels, k)
        out[k] = per_class_f1(labels[keep, k:k + 1], probs[keep, k:k + 1], [chosen[k]])[0]
    return out


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int) -> Calibration:
    """Brier and ECE per finding over its valid cells; the mean probability and prevalence over all valid cells."""
    n = labels.shape[1]
    per_brier, per_ece = np.full(n, np.nan), np.full(n, np.nan)
    for k in range(n):
        keep = _valid(labels, k)
        if keep.any():
            per_brier[k] = brier(labels[keep, k:k + 1], probs[keep, k:k + 1])[0]
            per_ece[k] = ece(labels[keep, k:k + 1], probs[keep, k:k + 1], bins)[0]
    valid = np.isfinite(labels)
    return Calibration(per_brier, per_ece, float(np.mean(probs[valid])), float(np.mean(labels[valid])))


def reference_brier(labels: np.ndarray) -> np.ndarray:
    """Per finding, the Brier score of predicting its test prevalence p for every image: p (1 - p)."""
    out = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        y = labels[_valid(labels, k), k]
        if y.size:
            out[k] = float(np.mean(y) * (1 - np.mean(y)))
    return out


def brier_skill(model_brier: np.ndarray, reference: np.ndarray) -> float:
    """1 - (mean Brier over findings) / (mean Brier of the prevalence predictor): above 0 the model beats
    predicting each finding's prevalence for everyone, below 0 it does worse."""
    keep = np.isfinite(model_brier) & np.isfinite(reference)
    total = float(np.sum(reference[keep]))
    return 1 - float(np.sum(model_brier[keep])) / total if total > 0 else math.nan


@dataclass(frozen=True)
class Counts:
    """Per finding, on one set of images: positive images, positive patients (a patient with at least one positive
    image), patients with a negative image, and masked cells."""

    images: dict[str, int]
    patients: dict[str, int]
    negative_patients: dict[str, int]
    masked: dict[str, int]


def counts(findings: tuple[str, ...], labels: np.ndarray, patients: np.ndarray) -> Counts:
    images, holders, negatives, masked = {}, {}, {}, {}
    for k, name in enumerate(findings):
        column = labels[:, k]
        images[name] = int(np.sum(column == 1))
        holders[name] = len(set(patients[column == 1].tolist()))
        negatives[name] = len(set(patients[column == 0].tolist()))
        masked[name] = int(np.sum(~np.isfinite(column)))
    return Counts(images, holders, negatives, masked)
