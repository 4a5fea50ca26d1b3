"""Scoring a heatmap against a finding's box: the pointing game, Wang et al. 2017's IoBB accuracy, their chance
rates, and the patient bootstrap of the hit rates.

Coordinates are pixels of the heatmap (the model's input size); a box is `(x0, y0, x1, y1)`, its edges on pixel
boundaries for a predicted box and anywhere for a true one (the dataset's box, scaled from fractions of the image).

- **Pointing game**: a hit when the heatmap's maximum (the centre of its maximum pixel; of all of them, on a tie)
  lies inside the box. Chance: the share of the image's pixel centres inside the box, i.e. the hit rate of a
  uniformly random point.
- **IoBB** (Wang et al. 2017, "intersection over the detected B-Box area"): the heatmap is scaled to [0, 1]
  (min-max, as Wang normalised it to [0, 255]) and thresholded at each level; every 8-connected region at every
  level gives one predicted box, its bounding rectangle. The true box counts as localised at T when some predicted
  box has IoBB = overlap / predicted box's area >= T. Chance: the probability that the same predicted boxes, each
  placed uniformly at random inside the image (every whole-pixel position), localise the box.
- A flat heatmap (maximum = minimum: Grad-CAM found no positive evidence anywhere) points at nothing and predicts
  no box: a miss in both.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connected regions
_EPS = 1e-9  # IoBB >= T decided with this slack, the same for the model's boxes and for chance


def is_flat(heatmap: np.ndarray) -> bool:
    return not float(heatmap.max()) > float(heatmap.min())


def predicted_boxes(heatmap: np.ndarray, levels: list[float]) -> np.ndarray:
    """(m x 4) boxes `(x0, y0, x1, y1)` in pixels: one per 8-connected region of the min-max-scaled heatmap at or
    above each level (none for a flat heatmap), ordered by level, then by region label."""
    if is_flat(heatmap):
        return np.empty((0, 4))
    low, high = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap.astype(np.float64) - low) / (high - low)
    boxes = []
    for level in levels:
        labelled, _ = ndimage.label(scaled >= level, structure=_EIGHT)
        for rows, cols in ndimage.find_objects(labelled):
            boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def overlap_1d(start: np.ndarray, stop: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.minimum(stop, hi) - np.maximum(start, lo), 0.0, None)


def iobb(pred: np.ndarray, truth: Box) -> np.ndarray:
    """IoBB of each predicted box (m x 4) with the true box: overlap area / predicted box's area."""
    x0, y0, x1, y1 = truth
    inter = overlap_1d(pred[:, 0], pred[:, 2], x0, x1) * overlap_1d(pred[:, 1], pred[:, 3], y0, y1)
    return inter / ((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]))


def localised(pred: np.ndarray, truth: Box, thresholds: list[float]) -> np.ndarray:
    """Per threshold T: does some predicted box reach IoBB >= T (bool, one per threshold)."""
    best = float(iobb(pred, truth).max()) if len(pred) else 0.0
    return np.array([len(pred) > 0 and best >= t - _EPS for t in thresholds])


def pixel_centres_inside(size: int, lo: float, hi: float) -> np.ndarray:
    centres = np.arange(size) + 0.5
    return (centres >= lo) & (centres <= hi)


def peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(y, x) in pixels of where the heatmap points: the centre of its maximum pixel or, when several pixels share
    the maximum, the centre of them all. Upsampled from a coarse grid, a map is flat from its hottest cell's centre
    to the image's edge; the first pixel of that plateau (a corner) would say where the plateau starts, not where
    the map points."""
    rows, cols = np.nonzero(heatmap == heatmap.max())
    return float(rows.mean()) + 0.5, float(cols.mean()) + 0.5


def pointing_hit(heatmap: np.ndarray, truth: Box) -> bool:
    if is_flat(heatmap):
        return False
    y, x = peak(heatmap)
    x0, y0, x1, y1 = truth
    return bool(x0 <= x <= x1 and y0 <= y <= y1)


def pointing_chance(shape: tuple[int, int], truth: Box) -> float:
    """The share of pixel centres inside the box: where a uniformly random point lands."""
    height, width = shape
    x0, y0, x1, y1 = truth
    return float(pixel_centres_inside(width, x0, x1).mean() * pixel_centres_inside(height, y0, y1).mean())


def chance_localised(pred: np.ndarray, truth: Box, shape: tuple[int, int], thresholds: list[float]) -> np.ndarray:
    """Per threshold: the probability that the predicted boxes, each moved to a uniformly random whole-pixel position
    inside the image (independently), localise the true box. Zero without predicted boxes."""
    height, width = shape
    x0, y0, x1, y1 = truth
    miss = np.ones(len(thresholds))
    for bx0, by0, bx1, by1 in pred:
        w, h = bx1 - bx0, by1 - by0
        xs = np.arange(0, width - w + 1, dtype=np.float64)
        ys = np.arange(0, height - h + 1, dtype=np.float64)
        area = np.outer(overlap_1d(ys, ys + h, y0, y1), overlap_1d(xs, xs + w, x0, x1))
        for k, t in enumerate(thresholds):
            miss[k] *= 1.0 - float((area >= (t - _EPS) * w * h).mean())
    return 1.0 - miss


def patient_draws(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples x n_patients) multinomial counts, each row `n_patients` patients drawn with replacement: the
    report's patient bootstrap (`cxrstudy.reporting.stats.patient_counts`), drawn from the same generator."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=resamples).astype(np.float64)


def bootstrap_rates(draws: np.ndarray, patient: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The mean of `values` (boxes x k) on each resample, every box weighted by its patient's count: (resamples x k);
    NaN where a resample drew none of these boxes' patients."""
    weights = draws[:, patient]
    totals = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, (weights @ values) / np.where(totals > 0, totals, 1.0), np.nan)


def percentile_interval(rates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the percentile interval of the finite resampled values (NaN where there are none)."""
    tail = (1.0 - level) / 2
    low = np.full(rates.shape[1], np.nan)
    high = np.full(rates.shape[1], np.nan)
    for k in range(rates.shape[1]):
        finite = rates[np.isfinite(rates[:, k]), k]
        if len(finite):
            low[k], high[k] = np.quantile(finite, [tail, 1.0 - tail])
    return low, high
