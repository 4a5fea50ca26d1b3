"""Calibration against a baseline, and the reliability curve's shape in words, on the patient bootstrap.

- The Brier skill score: 1 - (mean Brier over findings) / (mean Brier of predicting each finding's test prevalence
  for every image). Below 0 the model is worse than that constant predictor.
- The reliability curve: per equal-width probability bin, all findings pooled, the observed positive rate minus the
  mean predicted probability. A bin whose interval lies below 0 over-predicts, above 0 under-predicts. Runs of such
  bins are the curve's shape: over-prediction at low probabilities with under-prediction at high ones is an S that is
  flatter than the diagonal (predictions pulled towards the middle: under-confident), the reverse is over-confident.
- Whether the loss causes it: the loss x CLAHE grid (`python -m cxrstudy experiments`) writes each arm's per-seed
  calibration; if every model of the run's loss lies apart from every model of each other loss, the loss decides it.

Every resample draws the report's patients (`stats.patient_counts`, the same seed), so these intervals are paired
with the AUROC ones; masked label cells are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrstudy.reporting.inference import Estimate, Stat, estimate
from cxrstudy.reporting.stats import patient_counts


def _per_patient(values: np.ndarray, patient: np.ndarray, n_patients: int) -> np.ndarray:
    """Sums of each column of `values` (N x C) by patient: P x C."""
    out = np.zeros((n_patients, values.shape[1]))
    np.add.at(out, patient, values)
    return out


def _draws(table: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test set, resamples, each patient left out) sums of a per-patient table."""
    total = table.sum(axis=0)
    return total, counts @ table, total[None, :] - table


def skill(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, resamples: int, seed: int) -> Stat:
    """The Brier skill score against the prevalence predictor, with its patient bootstrap and jackknife."""
    ids, patient = np.unique(patients, return_inverse=True)
    valid = np.isfinite(labels)
    y = np.where(valid, labels, 0.0)
    tables = [_per_patient(np.where(valid, (probs - y) ** 2, 0.0), patient, len(ids)),
              _per_patient(y, patient, len(ids)), _per_patient(valid.astype(float), patient, len(ids))]
    counts = patient_counts(len(ids), resamples, seed) if resamples else np.zeros((0, len(ids)))
    parts = [_draws(t, counts) for t in tables]

    def score(squared: np.ndarray, positives: np.ndarray, cells: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = positives / cells
            model = np.nansum(squared / cells, axis=-1)
            reference = np.nansum(rate * (1 - rate), axis=-1)
            return np.where(reference > 0, 1 - model / np.where(reference > 0, reference, 1), np.nan)

    point, draws, jack = (score(parts[0][i], parts[1][i], parts[2][i]) for i in range(3))
    return Stat(float(point), np.asarray(draws, dtype=float), np.asarray(jack, dtype=float))


@dataclass(frozen=True)
class Bin:
    """One probability bin, all findings (and models) pooled: (image, finding) pairs, mean predicted probability,
    observed rate, and observed - predicted with its interval."""

    low: float
    high: float
    pairs: int
    mean_prob: float
    frequency: float
    gap: Estimate

    @property
    def verdict(self) -> str:
        """over (observed below predicted, beyond noise), under, or within."""
        if self.gap.excludes(0.0):
            return "over" if self.gap.high < 0 else "under"
        return "within"


def reliability_bins(models: Sequence[tuple[np.ndarray, np.ndarray]], patients: np.ndarray, bins: int,
                     resamples: int, seed: int, level: float, method: str) -> list[Bin]:
    """The pooled reliability bins of `models` ((labels, probs) on the same images), each with its interval."""
    ids, patient = np.unique(patients, return_inverse=True)
    n, y, p = (np.zeros((len(ids), bins)) for _ in range(3))
    for labels, probs in models:
        valid = np.isfinite(labels)
        index = np.minimum((np.where(valid, probs, 0) * bins).astype(np.int64), bins - 1)
        for b in range(bins):
            cell = valid & (index == b)
            n[:, b] += _per_patient(cell.astype(float), patient, len(ids)).sum(axis=1)
            y[:, b] += _per_patient(np.where(cell, labels, 0.0), patient, len(ids)).sum(axis=1)
            p[:, b] += _per_patient(np.where(cell, probs, 0.0), patient, len(ids)).sum(axis=1)
    counts = patient_counts(len(ids), resamples, seed) if resamples else np.zeros((0, len(ids)))
    parts = [_draws(t, counts) for t in (n, y, p)]
    out = []
    for b in range(bins):
        total = parts[0][0][b]
        if total == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = [(parts[1][i][..., b] - parts[2][i][..., b]) / parts[0][i][..., b] for i in range(3)]
        stat = Stat(float(gaps[0]), np.where(np.isfinite(gaps[1]), gaps[1], np.nan), gaps[2])
        out.append(Bin(b / bins, (b + 1) / bins, int(total), float(parts[2][0][b] / total),
                       float(parts[1][0][b] / total), estimate(stat, level, method)))
    return out


@dataclass(frozen=True)
class Shape:
    """The reliability curve in words: runs of over- and under-predicting bins, and what they make."""

    over: list[tuple[float, float]]
    under: list[tuple[float, float]]
    kind: str  # s-shaped (flatter: under-confident), steeper (over-confident), over, under, within


def _runs(bins: Sequence[Bin], verdict: str) -> list[tuple[float, float]]:
    runs: list[tuple[float, float]] = []
    for b in bins:
        if b.verdict != verdict:
            continue
        if runs and math.isclose(runs[-1][1], b.low):
            runs[-1] = (runs[-1][0], b.high)
        else:
            runs.append((b.low, b.high))
    return runs


def shape(bins: Sequence[Bin]) -> Shape:
    over, under = _runs(bins, "over"), _runs(bins, "under")
    if over and under:
        flatter = np.mean([b.mean_prob for b in bins if b.verdict == "over"]) < np.mean(
            [b.mean_prob for b in bins if b.verdict == "under"])
        kind = "flatter" if flatter else "steeper"
    else:
        kind = "over" if over else "under" if under else "within"
    return Shape(over, under, kind)


@dataclass(frozen=True)
class LossEffect:
    """From the grid: per loss, every seed model's ECE (all CLAHE settings), and whether the run's loss lies apart
    from every other loss (`apart`), as against the spread between CLAHE settings within the run's loss. `other_run`:
    why the grid given is not this run's (then nothing else is filled in), else empty."""

    loss: str
    ece: dict[str, list[float]]
    apart: bool
    clahe_spread: float
    arms: int
    other_run: str = ""


GRID_TOLERANCE = 1e-6  # the grid summary rounds to 6 decimals


def _other_run(grid: Mapping[str, Any], this_run: Mapping[int, float]) -> str:
    """Why the grid's baseline arm is not this run (another seed or another mean AUROC), else empty: a summary
    made before the run changed must not speak for it."""
    base = next((a for a in grid.get("arms", []) if a.get("baseline")), None)
    if base is None:
        return "it marks no baseline arm"
    seeds = {int(s): v.get("auroc_mean") for s, v in base["seeds"].items()}
    if sorted(seeds) != sorted(this_run):
        return f"its baseline arm has seeds {sorted(seeds)}, this run {sorted(this_run)}"
    for seed, value in sorted(this_run.items()):
        theirs = seeds[seed]
        if theirs is None or math.isnan(value) or abs(float(theirs) - value) > GRID_TOLERANCE:
            return (f"its baseline arm's seed {seed} has mean AUROC {theirs}, this run's {value:.6f}: re-run the grid "
                    "on this commit (docs/experiments.md)")
    return ""


def loss_effect(grid: Mapping[str, Any] | None, loss: str, this_run: Mapping[int, float]) -> LossEffect | None:
    """`grid`: `reports/experiments.json` (`cxrstudy.reporting.experiments.grid_summary`); `this_run`: each seed's
    mean AUROC in this run, which the grid's baseline arm must repeat. None without a grid or without another loss
    in it."""
    if not grid:
        return None
    other = _other_run(grid, this_run)
    if other:
        return LossEffect(loss, {}, False, math.nan, len(grid.get("arms", [])), other)
    by_loss: dict[str, list[float]] = {}
    by_clahe: dict[str, list[float]] = {}
    for arm in grid.get("arms", []):
        values = [float(v["ece"]) for v in arm["seeds"].values() if v.get("ece") is not None]
        by_loss.setdefault(str(arm["loss_name"]), []).extend(values)
        if arm["loss_name"] == loss:
            by_clahe.setdefault(str(arm["clahe"]), []).append(float(np.mean(values)) if values else math.nan)
    if loss not in by_loss or len(by_loss) < 2 or not by_loss[loss]:
        return None
    mine = by_loss[loss]
    apart = all(v and (max(v) < min(mine) or min(v) > max(mine)) for k, v in by_loss.items() if k != loss)
    means = [m for v in by_clahe.values() for m in v if not math.isnan(m)]
    return LossEffect(loss, {k: sorted(v) for k, v in by_loss.items()}, apart,
                      float(max(means) - min(means)) if len(means) > 1 else math.nan, len(grid.get("arms", [])))
