"""Per-class metrics on predicted probabilities: AUROC (scikit-learn), F1 at chosen thresholds."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score


def per_class_auroc(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """AUROC per column; NaN where a column has only one class in `labels` (AUROC undefined)."""
    out = []
    for k in range(labels.shape[1]):
        y = labels[:, k]
        out.append(float(roc_auc_score(y, probs[:, k])) if 0 < y.sum() < len(y) else math.nan)
    return out


def best_f1_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The probability threshold that maximises F1 on (`labels`, `probs`); 0.5 if there is no positive."""
    if labels.sum() == 0:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # the last point has no threshold
    return float(thresholds[best])


def per_class_thresholds(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    return [best_f1_threshold(labels[:, k], probs[:, k]) for k in range(labels.shape[1])]


def per_class_f1(labels: np.ndarray, probs: np.ndarray, thresholds: list[float]) -> list[float]:
    """F1 per column at the given thresholds (prediction = prob >= threshold); NaN with no positive in `labels`."""
    out = []
    for k, t in enumerate(thresholds):
        y = labels[:, k]
        if y.sum() == 0:
            out.append(math.nan)
        else:
            out.append(float(f1_score(y, probs[:, k] >= t, zero_division=0)))
    return out
