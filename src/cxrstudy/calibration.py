"""Calibration of predicted probabilities: Brier score, expected calibration error (ECE), reliability bins.

Every function takes labels and probabilities as N x C arrays (one column per finding). The ECE uses equal-width
probability bins: the mean over bins of |observed frequency - mean predicted probability|, each bin weighted by its
share of the images. Both scores are defined for a finding without positives (its probabilities should then be
low), so the means over findings cover all of them. A NaN label (masked: an uncertain label under `uncertain:
ignore`) is left out of its finding's scores and of the pooled reliability diagram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each probability: [0, 1/bins), ..., [(bins-1)/bins, 1] (1.0 goes into the last bin)."""
    return np.minimum((np.asarray(probs, dtype=np.float64) * bins).astype(np.int64), bins - 1)


def brier(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Brier score per column: mean squared difference between probability and known label."""
    if not np.isnan(labels).any():
        return np.mean((np.asarray(probs, dtype=np.float64) - labels) ** 2, axis=0)
    return np.nanmean((np.asarray(probs, dtype=np.float64) - labels) ** 2, axis=0)


def ece(labels: np.ndarray, probs: np.ndarray, bins: int) -> np.ndarray:
    """Expected calibration error per column with `bins` equal-width bins, over the known labels."""
    out = np.empty(labels.shape[1])
    for k in range(labels.shape[1]):
        keep = ~np.isnan(labels[:, k])
        column = np.asarray(probs[keep, k], dtype=np.float64)
        index = _bin_index(column, bins)
        # Per bin, count x |positive rate - mean probability| = |positives - sum of probabilities|.
        gap = np.bincount(index, weights=labels[keep, k], minlength=bins) - np.bincount(index, weights=column,
                                                                                        minlength=bins)
        out[k] = float(np.sum(np.abs(gap)) / max(len(index), 1))
    return out


@dataclass(frozen=True)
class Reliability:
    """Pooled over findings: per bin, how many (image, finding) pairs, their mean probability and positive rate."""

    edges: np.ndarray
    count: np.ndarray
    mean_prob: np.ndarray
    frequency: np.ndarray


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int) -> Reliability:
    """The reliability diagram's points for all findings pooled; empty bins hold NaN."""
    flat_probs = np.asarray(probs, dtype=np.float64).ravel()
    flat_labels = np.asarray(labels, dtype=np.float64).ravel()
    keep = ~np.isnan(flat_labels)
    if not keep.all():
        flat_probs, flat_labels = flat_probs[keep], flat_labels[keep]
    index = _bin_index(flat_probs, bins)
    count = np.bincount(index, minlength=bins)
    safe = np.where(count > 0, count, 1)
    mean_prob = np.where(count > 0, np.bincount(index, weights=flat_probs, minlength=bins) / safe, np.nan)
    frequency = np.where(count > 0, np.bincount(index, weights=flat_labels, minlength=bins) / safe, np.nan)
    return Reliability(np.linspace(0.0, 1.0, bins + 1), count, mean_prob, frequency)


@dataclass(frozen=True)
class Calibration:
    """One model's calibration summary: per finding and the mean over all findings."""

    brier: np.ndarray
    ece: np.ndarray
    mean_prob: float
    prevalence: float

    @property
    def brier_mean(self) -> float:
        return float(np.mean(self.brier))

    @property
    def ece_mean(self) -> float:
        return float(np.mean(self.ece))


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int) -> Calibration:
    """Brier and ECE per finding, the mean predicted probability and the positive rate over all findings."""
    keep = ~np.isnan(labels)
    if keep.all():
        return Calibration(brier(labels, probs), ece(labels, probs, bins), float(np.mean(probs)),
                           float(np.mean(labels)))
    return Calibration(brier(labels, probs), ece(labels, probs, bins), float(np.mean(probs[keep])),
                       float(np.mean(labels[keep])))
