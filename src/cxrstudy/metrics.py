"""Per-class metrics on predicted probabilities: AUROC (scikit-learn), F1 at chosen thresholds.

A NaN label is a masked one (an uncertain label under `uncertain: ignore`): each finding's metric is computed over
the images whose label for it is known.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score


def known(labels: np.ndarray, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column `k`'s labels and probabilities where its label is known (not NaN)."""
    y, p = labels[:, k], probs[:, k]
    keep = ~np.isnan(y)
    return (y, p) if keep.all() else (y[keep], p[keep])


def per_class_auroc(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """AUROC per column, over its known labels; NaN where a column has only one class (AUROC undefined)."""
    out = []
    for k in range(labels.shape[1]):
        y, p = known(labels, probs, k)
        out.append(float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan)
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
    return [best_f1_threshold(*known(labels, probs, k)) for k in range(labels.shape[1])]


def per_class_f1(labels: np.ndarray, probs: np.ndarray, thresholds: list[float]) -> list[float]:
    """F1 per column at the given thresholds (prediction = prob >= threshold), over its known labels; NaN with no
    positive."""
    out = []
    for k, t in enumerate(thresholds):
        y, p = known(labels, probs, k)
        if y.sum() == 0:
            out.append(math.nan)
        else:
            out.append(float(f1_score(y, p >= t, zero_division=0)))
    return out
