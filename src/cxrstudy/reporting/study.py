"""The seed study's statistics, from the saved predictions: per model (each seed, the ensemble) the AUROC with BCa
intervals, and across models the paired comparisons, the best seed per finding, the probability that each seed ranks
first, and training (seed) variance against test-sampling variance. The methods are in `cxrstudy.reporting.inference`.

Which findings the means cover: the mean AUROC of the metrics files (and of the seed study) is over every finding
with a positive in the test set. Intervals and comparisons use the mean over the *eligible* findings, those with at
least `report.min_positives` test positives, because a finding with a handful of positives has no positive at all in
many resamples (the mean would then change meaning from resample to resample) and ranks models on a few images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrstudy.calibration import Calibration, calibration
from cxrstudy.labels import FINDINGS
from cxrstudy.metrics import per_class_auroc, per_class_f1, per_class_thresholds
from cxrstudy.params import Params
from cxrstudy.reporting.inference import (
    Contrast,
    Estimate,
    Stat,
    VarianceComponents,
    column,
    column_mean,
    contrasts,
    estimate,
    mean_of,
    rank_first,
    variance_components,
)
from cxrstudy.reporting.results import Predictions, make_ensemble, same_images
from cxrstudy.reporting.stats import Bootstrap, bootstrap_auroc


@dataclass(frozen=True)
class Settings:
    """The report's statistical settings (`report.*`, `evaluate.calibration_bins` in params.yaml)."""

    resamples: int
    seed: int
    level: float
    min_positives: int
    bins: int


def settings(params: Params) -> Settings:
    r = params.report
    return Settings(r.bootstrap, r.bootstrap_seed, r.level, r.min_positives, params.evaluate.calibration_bins)


@dataclass(frozen=True)
class Scored:
    """One model on one test set: per-class AUROC and its patient resampling."""

    name: str
    auroc: np.ndarray
    boot: Bootstrap

    def finding(self, k: int) -> Stat:
        return column(self.auroc, self.boot.per_class, self.boot.jackknife, k)

    def mean_over(self, columns: Sequence[int]) -> Stat:
        return column_mean(self.auroc, self.boot.per_class, self.boot.jackknife, columns)


def score(name: str, pred: Predictions, settings: Settings) -> Scored:
    auroc = np.array(per_class_auroc(pred.labels, pred.probs))
    return Scored(name, auroc, bootstrap_auroc(pred.labels, pred.probs, pred.patients, settings.resamples,
                                               settings.seed))


def eligible(labels: np.ndarray, min_positives: int) -> list[int]:
    """Columns with at least `min_positives` positives and at least one negative."""
    positives = labels.sum(axis=0)
    return [k for k in range(labels.shape[1]) if positives[k] >= min_positives and positives[k] < len(labels)]


def perfect_pairs(pred: Predictions, k: int) -> int:
    """Independent positive-negative pairs available for finding `k`: the smaller of the numbers of patients with a
    positive and with a negative image (see `inference.perfect_bound`)."""
    positive = pred.labels[:, k] == 1
    return min(len(set(pred.patients[positive].tolist())), len(set(pred.patients[~positive].tolist())))


@dataclass(frozen=True)
class ModelSummary:
    """One model's AUROC: per finding and mean over the defined findings (points), the mean over the eligible findings
    with its interval, an interval per finding, its calibration and (ensemble) F1."""

    name: str
    auroc: dict[str, float]
    auroc_mean: float
    mean: Estimate
    per_class: dict[str, Estimate]
    calibration: Calibration
    f1_val_mean: float = math.nan
    f1_tuned_mean: float = math.nan


def summarise(scored: Scored, pred: Predictions, columns: list[int], settings: Settings) -> ModelSummary:
    auroc = dict(zip(FINDINGS, scored.auroc.tolist(), strict=True))
    per_class = {n: estimate(scored.finding(k), settings.level, perfect_pairs(pred, k))
                 for k, n in enumerate(FINDINGS) if not math.isnan(auroc[n])}
    return ModelSummary(scored.name, auroc, float(np.nanmean(list(auroc.values()))),
                        estimate(scored.mean_over(columns), settings.level), per_class,
                        calibration(pred.labels, pred.probs, settings.bins))


@dataclass(frozen=True)
class BestSeed:
    """The seed with the highest test AUROC for one finding; `claimed` when it beats every other seed beyond
    test-sampling noise. `lead` is best minus runner-up. Not ranked (no seed) below the positives threshold."""

    finding: str
    positives: int
    seed: int | None
    auroc: float
    eligible: bool
    lead: Contrast | None
    claimed: bool


@dataclass(frozen=True)
class SeedStudy:
    settings: Settings
    seeds: list[int]
    per_seed: list[ModelSummary]
    ensemble: ModelSummary | None
    ensemble_note: str
    test_positives: dict[str, int]
    eligible: list[str]
    lacking: dict[str, int]
    n_images: int
    n_patients: int
    overall: list[Contrast]
    per_finding: dict[str, list[Contrast]]
    best: list[BestSeed]
    rank_first: dict[int, float]
    variance: VarianceComponents | None
    paired: bool = True

    @property
    def mean_dropped(self) -> int:
        return self.per_seed[0].mean.dropped


def oriented(c: Contrast, first: str) -> Contrast:
    """`c` as `first` minus the other (the interval mirrored when it was the other way round)."""
    if c.first == first:
        return c
    d = c.difference
    return Contrast(c.second, c.first, Estimate(-d.value, -d.high, -d.low, d.method, d.dropped, d.resamples),
                    c.p, c.p_holm, c.level)


def seed_pairs(names: list[str], stats: list[Stat]) -> list[tuple[str, str, Stat]]:
    return [(names[i], names[j], stats[i] - stats[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def _with_ensemble(names: list[str], stats: list[Stat], ensemble: Stat | None) -> list[tuple[str, str, Stat]]:
    """Every pair of seeds; with an ensemble, it against the mean of the seeds and against the best seed."""
    pairs = seed_pairs(names, stats)
    if ensemble is not None:
        best = max(range(len(stats)), key=lambda i: (stats[i].point, -i))
        pairs += [("ensemble", "mean of seeds", ensemble - mean_of(stats)),
                  ("ensemble", f"best {names[best]}", ensemble - stats[best])]
    return pairs


def best_seeds(seeds: list[int], scored: list[Scored], per_finding: dict[str, list[Contrast]],
               positives: dict[str, int], columns: list[int]) -> list[BestSeed]:
    out = []
    for k, name in enumerate(FINDINGS):
        ranked = sorted(((float(s.auroc[k]), -seed) for s, seed in zip(scored, seeds, strict=True)
                         if not math.isnan(s.auroc[k])), reverse=True)
        if not ranked:
            out.append(BestSeed(name, positives[name], None, math.nan, False, None, False))
            continue
        top, top_seed = ranked[0][0], -ranked[0][1]
        if k not in columns or len(ranked) < 2 or name not in per_finding:
            out.append(BestSeed(name, positives[name], None if k not in columns else top_seed, top,
                                k in columns, None, False))
            continue
        mine = [oriented(c, f"seed {top_seed}") for c in per_finding[name]
                if "ensemble" not in (c.first, c.second) and f"seed {top_seed}" in (c.first, c.second)]
        lead = next(c for c in mine if c.second == f"seed {-ranked[1][1]}")
        out.append(BestSeed(name, positives[name], top_seed, top, True, lead, all(c.beyond_noise for c in mine)))
    return out


def seed_study(preds: Sequence[Predictions], val_preds: Sequence[Predictions] | None, seeds: Sequence[int],
               settings: Settings) -> SeedStudy:
    """Everything the report says about uncertainty, from the seeds' test (and validation) predictions."""
    first = preds[0]
    columns = eligible(first.labels, settings.min_positives)
    names = [f"seed {s}" for s in seeds]
    scored = [score(n, p, settings) for n, p in zip(names, preds, strict=True)]
    per_seed = [summarise(s, p, columns, settings) for s, p in zip(scored, preds, strict=True)]
    ens_pred, note = make_ensemble(preds)
    ensemble, ens_scored = None, None
    if ens_pred is not None:
        ens_scored = score("ensemble", ens_pred, settings)
        ensemble = summarise(ens_scored, ens_pred, columns, settings)
        ensemble = _with_f1(ensemble, ens_pred, make_ensemble(val_preds)[0] if val_preds else None)
    means = [s.mean_over(columns) for s in scored]
    # Differences are paired only when every seed was tested on the same images.
    paired = same_images(preds)
    overall = contrasts(_with_ensemble(names, means, ens_scored.mean_over(columns) if ens_scored else None),
                        settings.level) if columns and settings.resamples and paired else []
    flat = [(FINDINGS[k], pair) for k in (columns if paired else [])
            for pair in _with_ensemble(names, [s.finding(k) for s in scored],
                                       ens_scored.finding(k) if ens_scored else None)]
    tested = contrasts([pair for _, pair in flat], settings.level)
    per_finding: dict[str, list[Contrast]] = {finding: [] for finding, _ in flat}
    for (finding, _), c in zip(flat, tested, strict=True):
        per_finding[finding].append(c)
    positives = {n: int(v) for n, v in zip(FINDINGS, first.labels.sum(axis=0), strict=True)}
    lacking = dict(zip(FINDINGS, (int(v) for v in scored[0].boot.lacking()), strict=True))
    return SeedStudy(
        settings, list(seeds), per_seed, ensemble, note, positives, [FINDINGS[k] for k in columns],
        lacking, len(first.images), len(set(first.patients.tolist())), overall, per_finding,
        best_seeds(list(seeds), scored, per_finding, positives, columns),
        dict(zip(seeds, rank_first(means), strict=True)) if len(seeds) > 1 and overall else {},
        variance_components(means, settings.level) if paired else None, paired)


def _with_f1(summary: ModelSummary, test: Predictions, val: Predictions | None) -> ModelSummary:
    """The ensemble's F1: at thresholds chosen on its validation predictions (the seeds' protocol) and tuned on the
    test set (optimistic)."""
    tuned = float(np.nanmean(per_class_f1(test.labels, test.probs, per_class_thresholds(test.labels, test.probs))))
    chosen = math.nan
    if val is not None:
        chosen = float(np.nanmean(per_class_f1(test.labels, test.probs, per_class_thresholds(val.labels, val.probs))))
    return ModelSummary(summary.name, summary.auroc, summary.auroc_mean, summary.mean, summary.per_class,
                        summary.calibration, chosen, tuned)
