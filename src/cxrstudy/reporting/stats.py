"""Resampling for the report: a patient-level bootstrap and a patient jackknife of per-class AUROC.

A bootstrap resample draws the test set's *patients* with replacement (their images go with them: images of one
patient are not independent). Drawing n patients with replacement is the same as giving each patient a multinomial
count, so a resample is a row of patient counts and an image weighs its patient's count. The AUROC of a resample is
then a weighted Mann-Whitney statistic, computed for all resamples at once as one matrix product with a
per-patient table of "negatives below each positive", so 1000 resamples x 14 findings x 5 models take about a second
on the embedded sample and well under a minute per model on the full NIH test set. The draws depend only on the
seed and the set of patients, so every model scored on the same patients sees the same resamples: differences
taken within a draw are a paired bootstrap. The jackknife (each patient left out once, for the BCa intervals of
`cxrstudy.reporting.inference`) reads the same table in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

# Cells in one stacked "negatives below" table: ~16 MB (float32) per product, ~32 MB for its float64 result.
_GROUP_CELLS = 4_000_000


@dataclass(frozen=True)
class _ClassTerms:
    """One finding's per-patient tables: negatives below each positive (P x positives), positives' patients, counts."""

    below: np.ndarray
    pos_patient: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray


def _class_terms(label: np.ndarray, scores: np.ndarray, patient: np.ndarray, n_patients: int) -> _ClassTerms | None:
    """None when the finding has one class only. Otherwise, for each positive (sorted by score) and patient: how many
    of that patient's negatives score below it, ties counting one half. A NaN label (masked: an uncertain label
    left out) is neither positive nor negative: that image takes no part in this finding.

    A negative scoring s lies strictly below the positives from rank #(pos <= s) on, and at or below them from rank
    #(pos < s) on; a cumulative sum over ranks turns those start ranks into counts. Every entry is a multiple of 1/2
    below 2^23, so float32 holds it exactly (and the matrix product with integer counts stays exact too).
    """
    valid = np.isfinite(label)
    if not valid.all():
        label, scores, patient = label[valid], scores[valid], patient[valid]
    positive = label == 1
    if positive.all() or not positive.any():
        return None
    order = np.argsort(scores[positive], kind="stable")
    pos_scores, pos_patient = scores[positive][order], patient[positive][order]
    neg_scores, neg_patient = scores[~positive], patient[~positive]
    n_pos = len(pos_scores)
    size = (n_pos + 1) * n_patients
    strictly = np.searchsorted(pos_scores, neg_scores, side="right") * n_patients + neg_patient
    at_most = np.searchsorted(pos_scores, neg_scores, side="left") * n_patients + neg_patient
    starts = np.bincount(strictly, minlength=size) + np.bincount(at_most, minlength=size)
    below = np.cumsum(starts.reshape(n_pos + 1, n_patients)[:n_pos], axis=0).T.astype(np.float32) * np.float32(0.5)
    return _ClassTerms(np.ascontiguousarray(below), pos_patient, np.bincount(pos_patient, minlength=n_patients),
                       np.bincount(neg_patient, minlength=n_patients))


def _groups(terms: list[tuple[int, _ClassTerms]], width: int) -> list[list[tuple[int, _ClassTerms]]]:
    """Consecutive findings whose stacked tables stay under `_GROUP_CELLS` cells (a larger one goes alone)."""
    groups: list[list[tuple[int, _ClassTerms]]] = [[]]
    used = 0
    for item in terms:
        cells = len(item[1].pos_patient) * width
        if groups[-1] and used + cells > _GROUP_CELLS:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += cells
    return [g for g in groups if g]


def patient_weighted_auroc(labels: np.ndarray, scores: np.ndarray, patient: np.ndarray,
                           counts: np.ndarray) -> np.ndarray:
    """AUROC for each row of patient `counts` (B x P) and each column of `labels`/`scores` (N x C, or N); NaN where
    a column has one class only. Returns B x C (or B).

    `patient` maps each image to a column of `counts` (0..P-1); a NaN label leaves that image out of its column. A
    row of counts weights every image by its patient's count: that is the AUROC (Mann-Whitney U, ties one half) of the
    test set with each patient's images repeated that many times, and with all counts 1 it is scikit-learn's
    `roc_auc_score`. The work is a matrix product, counts x (negatives below each positive, per patient), so it grows
    with positives x patients, not with images squared.
    """
    single = labels.ndim == 1
    labels = labels.reshape(len(labels), -1).astype(np.float64)
    scores = scores.reshape(len(scores), -1)
    counts = np.atleast_2d(counts).astype(np.float64)
    n_resamples, n_patients = counts.shape
    out = np.full((n_resamples, labels.shape[1]), np.nan)
    terms = [(k, t) for k in range(labels.shape[1])
             if (t := _class_terms(labels[:, k], scores[:, k], patient, n_patients)) is not None]
    small = counts.astype(np.float32)
    for group in _groups(terms, max(n_resamples, n_patients)):
        below = np.concatenate([t.below for _, t in group], axis=1)
        pos_patient = np.concatenate([t.pos_patient for _, t in group])
        weighted = (small @ below).astype(np.float64) * counts[:, pos_patient]
        offsets = np.cumsum([0, *[len(t.pos_patient) for _, t in group[:-1]]])
        numerator = np.add.reduceat(weighted, offsets, axis=1)
        for j, (k, t) in enumerate(group):
            denominator = (counts @ t.positives) * (counts @ t.negatives)
            safe = np.where(denominator > 0, denominator, 1.0)
            out[:, k] = np.where(denominator > 0, numerator[:, j] / safe, np.nan)
    return out[:, 0] if single else out


def patient_counts(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples x n_patients) multinomial counts: each row draws `n_patients` patients with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=resamples).astype(np.float64)


def patient_jackknife_auroc(labels: np.ndarray, scores: np.ndarray, patient: np.ndarray,
                            n_patients: int) -> np.ndarray:
    """AUROC with each patient left out in turn: P x C (NaN where the rest has one class only).

    Leaving patient i out removes every pair with one of its images: U_(-i) = U - (pairs of i's positives) - (pairs
    of i's negatives) + (pairs within i, removed twice), all read off the "negatives below each positive" table.
    """
    labels = labels.reshape(len(labels), -1).astype(np.float64)
    scores = scores.reshape(len(scores), -1)
    out = np.full((n_patients, labels.shape[1]), np.nan)
    for k in range(labels.shape[1]):
        terms = _class_terms(labels[:, k], scores[:, k], patient, n_patients)
        if terms is None:
            continue
        below = terms.below.astype(np.float64)
        per_positive = below.sum(axis=0)
        own = below[terms.pos_patient, np.arange(len(terms.pos_patient))]
        kept = (per_positive.sum() - np.bincount(terms.pos_patient, weights=per_positive, minlength=n_patients)
                - below.sum(axis=1) + np.bincount(terms.pos_patient, weights=own, minlength=n_patients))
        pairs = (terms.positives.sum() - terms.positives) * (terms.negatives.sum() - terms.negatives)
        out[:, k] = np.where(pairs > 0, kept / np.where(pairs > 0, pairs, 1), np.nan)
    return out


@dataclass(frozen=True)
class Bootstrap:
    """Per-class AUROC on every resample (B x C) and with each patient left out (P x C); NaN where undefined (no
    positive, or no negative, in that resample)."""

    per_class: np.ndarray
    jackknife: np.ndarray

    @property
    def resamples(self) -> int:
        return int(self.per_class.shape[0])

    def lacking(self) -> np.ndarray:
        """Per class: how many resamples have no positive (or no negative), so that its AUROC is undefined there."""
        return np.isnan(self.per_class).sum(axis=0)


def bootstrap_auroc(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, resamples: int,
                    seed: int) -> Bootstrap:
    """Patient-level bootstrap (and patient jackknife) of per-class AUROC for one model's predictions.

    `labels` and `probs` are N x C (NaN: a masked label, left out of its finding), `patients` the N patient ids
    (strings or numbers). The draws depend only on `seed` and the sorted set
    of patient ids, so two models scored on the same test patients see the same resamples (a paired bootstrap);
    the jackknife rows follow the sorted patient ids, so they pair the same way.
    """
    n_classes = labels.shape[1]
    ids, image_patient = np.unique(np.asarray(patients), return_inverse=True)
    if resamples <= 0:
        return Bootstrap(np.empty((0, n_classes)), np.empty((0, n_classes)))
    counts = patient_counts(len(ids), resamples, seed)
    # Many mid-sized products: one BLAS thread is as fast on an idle machine and far faster on a busy one (threads
    # oversubscribed by other processes stall OpenBLAS). The results are exact either way (see `_class_terms`).
    with threadpool_limits(limits=1, user_api="blas"):
        out = patient_weighted_auroc(labels, probs, image_patient, counts)
    return Bootstrap(out, patient_jackknife_auroc(labels, probs, image_patient, len(ids)))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (n - 1) of the finite values; sd is NaN with fewer than two."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = float(np.mean(finite))
    return mean, float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def min_max(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)
