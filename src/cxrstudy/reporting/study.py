"""The seed study's statistics, from the saved predictions: per model (each seed, the ensemble) the AUROC with its
interval, and across models the paired comparisons, the best seed per finding, the probability that each seed ranks
first, and training (seed) variance against test-sampling variance. Methods: `inference` and `variance`.

Which findings get intervals: the *eligible* ones, with at least `report.min_positives` positive test *patients*
(and a patient with a negative image). A patient's images are not independent, so what an interval can rest on is
the number of positive patients, not of images; below the threshold the coverage simulation
(`cxrstudy.reporting.coverage`) shows that intervals cover far less than they claim, so such a finding gets no
interval, no rank and no claim. The means with intervals are over the eligible findings; the metrics files' mean,
over every finding with a positive, is shown as a point only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cxrstudy.calibration import Calibration
from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import naming, scoring
from cxrstudy.reporting.coverage import Coverage
from cxrstudy.reporting.inference import (
    Estimate,
    Stat,
    Tested,
    column,
    column_mean,
    estimate,
    estimate_difference,
    family,
    mean_of,
    none,
    paired_contrasts,
    rank_first,
)
from cxrstudy.reporting.naming import Contrast, Model
from cxrstudy.reporting.results import Predictions, make_ensemble, same_images
from cxrstudy.reporting.stats import Bootstrap, bootstrap_auroc
from cxrstudy.reporting.variance import VarianceComponents, variance_components


@dataclass(frozen=True)
class Settings:
    """The report's statistical settings (`report.*`, `evaluate.calibration_bins`) and the interval methods the
    coverage simulation chose: `single` for one model's values, `difference` for paired contrasts."""

    resamples: int
    seed: int
    level: float
    min_positives: int
    bins: int
    single: str
    difference: str


def settings(params: Params, coverage: Coverage) -> Settings:
    """The settings, with the methods `coverage` chose; it must have simulated these very settings."""
    r = params.report
    design = coverage.raw["design"]
    ran = {"report.bootstrap": design["resamples"], "report.level": design["level"],
           "report.min_positives": design["min_positives"]}
    wanted = {"report.bootstrap": r.bootstrap, "report.level": r.level, "report.min_positives": r.min_positives}
    stale = [f"{k} {ran[k]} (params.yaml: {wanted[k]})" for k in ran if ran[k] != wanted[k]]
    if stale:
        raise InputError(f"{coverage.path}: simulated for {', '.join(stale)}; re-run the coverage stage "
                         "(`dvc repro coverage`) so that the methods and coverage it reports are this run's")
    return Settings(r.bootstrap, r.bootstrap_seed, r.level, r.min_positives, params.evaluate.calibration_bins,
                    coverage.method("single"), coverage.method("difference"))


@dataclass(frozen=True)
class Scored:
    """One model on one test set: per-finding AUROC (masked cells left out) and its patient resampling."""

    model: Model
    auroc: np.ndarray
    boot: Bootstrap

    def finding(self, k: int) -> Stat:
        return column(self.auroc, self.boot.per_class, self.boot.jackknife, k)

    def mean_over(self, columns: Sequence[int]) -> Stat:
        return column_mean(self.auroc, self.boot.per_class, self.boot.jackknife, columns)


def score(model: Model, pred: Predictions, settings: Settings) -> Scored:
    return Scored(model, scoring.auroc(pred.labels, pred.probs),
                  bootstrap_auroc(pred.labels, pred.probs, pred.patients, settings.resamples, settings.seed))


def eligible(counts: scoring.Counts, findings: Sequence[str], min_positives: int) -> list[int]:
    """Columns with at least `min_positives` positive patients and at least one patient with a negative image."""
    return [k for k, n in enumerate(findings)
            if counts.patients[n] >= min_positives and counts.negative_patients[n] > 0]


@dataclass(frozen=True)
class ModelSummary:
    """One model's AUROC per finding and over the defined findings (points), the mean over the eligible findings
    with its interval, an interval per eligible finding, its calibration with the Brier skill score against the
    prevalence predictor, and (ensemble) F1."""

    model: Model
    auroc: dict[str, float]
    auroc_mean: float
    mean: Estimate
    per_class: dict[str, Estimate]
    calibration: Calibration
    skill: float
    f1_val_mean: float = math.nan
    f1_tuned_mean: float = math.nan


def summarise(scored: Scored, pred: Predictions, columns: list[int], counts: scoring.Counts,
              settings: Settings) -> ModelSummary:
    names = pred.findings
    auroc = dict(zip(names, scored.auroc.tolist(), strict=True))
    pairs = {n: min(counts.patients[n], counts.negative_patients[n]) for n in names}
    per_class = {names[k]: estimate(scored.finding(k), settings.level, settings.single, pairs[names[k]])
                 for k in columns}
    mean = estimate(scored.mean_over(columns), settings.level, settings.single) if columns else none(math.nan)
    calib = scoring.calibration(pred.labels, pred.probs, settings.bins)
    defined = [v for v in auroc.values() if not math.isnan(v)]
    return ModelSummary(scored.model, auroc, float(np.mean(defined)) if defined else math.nan, mean, per_class, calib,
                        scoring.brier_skill(calib.brier, scoring.reference_brier(pred.labels)))


@dataclass(frozen=True)
class BestSeed:
    """The seed with the highest test AUROC for one finding; `claimed` when it beats every other seed beyond
    test-sampling noise. `lead` is best minus runner-up. Not ranked (no seed) below the threshold."""

    finding: str
    seed: int | None
    auroc: float
    eligible: bool
    lead: Tested | None
    claimed: bool


@dataclass(frozen=True)
class SeedStudy:
    settings: Settings
    findings: tuple[str, ...]
    seeds: list[int]
    per_seed: list[ModelSummary]
    ensemble: ModelSummary | None
    ensemble_note: str
    counts: scoring.Counts
    val_counts: scoring.Counts | None
    eligible: list[str]
    lacking: dict[str, int]
    n_images: int
    n_patients: int
    overall: list[Tested]
    per_finding: dict[str, list[Tested]]
    best: list[BestSeed]
    rank_first: dict[int, float]
    variance: VarianceComponents | None
    reference_brier: float
    paired: bool = True

    @property
    def mean_dropped(self) -> int:
        return self.per_seed[0].mean.dropped

    def contrasts(self, kind: str) -> list[Tested]:
        return [t for t in self.overall if t.contrast.kind == kind]


def oriented(t: Tested, first: Model) -> Tested:
    """`t` as `first` minus the other (the interval mirrored when it was the other way round)."""
    if t.contrast.first == first:
        return t
    d = t.difference
    return replace(t, contrast=t.contrast.reversed(), difference=replace(d, value=-d.value, low=-d.high, high=-d.low))


def _comparisons(models: list[Model], stats: list[Stat], ensemble: Stat | None) -> list[tuple[Contrast, Stat, Stat]]:
    """Every pair of seeds; with an ensemble, it against the mean of the seeds and against the best seed."""
    pairs = [(Contrast(naming.SEED_PAIR, models[i], models[j]), stats[i], stats[j])
             for i in range(len(models)) for j in range(i + 1, len(models))]
    if ensemble is not None:
        best = max(range(len(stats)), key=lambda i: (stats[i].point, -i))
        pairs += [(Contrast(naming.ENSEMBLE_VS_MEAN, naming.ensemble(len(stats)), naming.mean(len(stats))),
                   ensemble, mean_of(stats)),
                  (Contrast(naming.ENSEMBLE_VS_BEST, naming.ensemble(len(stats)), models[best]), ensemble,
                   stats[best])]
    return pairs


def best_seeds(findings: tuple[str, ...], scored: list[Scored], per_finding: dict[str, list[Tested]],
               columns: list[int]) -> list[BestSeed]:
    out = []
    for k, name in enumerate(findings):
        ranked = sorted(((float(s.auroc[k]), -s.model.seed) for s in scored if not math.isnan(s.auroc[k])),
                        reverse=True)
        if not ranked:
            out.append(BestSeed(name, None, math.nan, False, None, False))
            continue
        top, top_seed = ranked[0][0], naming.seed(-ranked[0][1])
        if k not in columns or len(ranked) < 2 or name not in per_finding:
            out.append(BestSeed(name, top_seed.seed if k in columns else None, top, k in columns, None, False))
            continue
        mine = [oriented(t, top_seed) for t in per_finding[name]
                if t.contrast.kind == naming.SEED_PAIR and t.contrast.involves(top_seed)]
        lead = next(t for t in mine if t.contrast.second == naming.seed(-ranked[1][1]))
        out.append(BestSeed(name, top_seed.seed, top, True, lead, all(t.beyond_noise for t in mine)))
    return out


def seed_study(preds: Sequence[Predictions], val_preds: Sequence[Predictions] | None, seeds: Sequence[int],
               settings: Settings) -> SeedStudy:
    """Everything the report says about uncertainty, from the seeds' test (and validation) predictions."""
    first = preds[0]
    names = first.findings
    counts = scoring.counts(names, first.labels, first.patients)
    columns = eligible(counts, names, settings.min_positives)
    models = [naming.seed(s) for s in seeds]
    scored = [score(m, p, settings) for m, p in zip(models, preds, strict=True)]
    per_seed = [summarise(s, p, columns, counts, settings) for s, p in zip(scored, preds, strict=True)]
    ens_pred, note = make_ensemble(preds)
    ensemble, ens_scored = None, None
    if ens_pred is not None:
        ens_scored = score(naming.ensemble(len(preds)), ens_pred, settings)
        ensemble = _with_f1(summarise(ens_scored, ens_pred, columns, counts, settings), ens_pred,
                            make_ensemble(val_preds)[0] if val_preds else None)
    means = [s.mean_over(columns) for s in scored]
    paired = same_images(preds)
    tested = bool(columns) and settings.resamples > 0 and paired
    overall = paired_contrasts(_comparisons(models, means, ens_scored.mean_over(columns) if ens_scored else None),
                             settings.level, settings.difference) if tested else []
    flat = [(names[k], item) for k in (columns if tested else [])
            for item in _comparisons(models, [s.finding(k) for s in scored],
                                     ens_scored.finding(k) if ens_scored else None)]
    pairs = {n: min(counts.patients[n], counts.negative_patients[n]) for n in names}
    per_finding_all = family([(c, estimate_difference(a, b, settings.level, settings.difference, pairs[n]))
                              for n, (c, a, b) in flat], settings.level)
    per_finding: dict[str, list[Tested]] = {n: [] for n, _ in flat}
    for (n, _), t in zip(flat, per_finding_all, strict=True):
        per_finding[n].append(t)
    reference = scoring.reference_brier(first.labels)
    return SeedStudy(
        settings, names, list(seeds), per_seed, ensemble, note, counts,
        scoring.counts(names, val_preds[0].labels, val_preds[0].patients) if val_preds else None,
        [names[k] for k in columns], dict(zip(names, (int(v) for v in scored[0].boot.lacking()), strict=True)),
        len(first.images), len(set(first.patients.tolist())), overall, per_finding,
        best_seeds(names, scored, per_finding, columns),
        dict(zip(seeds, rank_first(means), strict=True)) if len(seeds) > 1 and overall else {},
        variance_components(means, settings.level, settings.seed) if paired and tested else None,
        float(np.nanmean(reference)) if np.isfinite(reference).any() else math.nan, paired)


def _with_f1(summary: ModelSummary, test: Predictions, val: Predictions | None) -> ModelSummary:
    """The ensemble's F1: at thresholds chosen on its validation predictions (the seeds' protocol) and tuned on the
    test set (optimistic)."""
    tuned = scoring.f1(test.labels, test.probs, scoring.thresholds(test.labels, test.probs))
    chosen = math.nan
    if val is not None:
        f1 = scoring.f1(test.labels, test.probs, scoring.thresholds(val.labels, val.probs))
        chosen = float(np.nanmean(f1)) if np.isfinite(f1).any() else math.nan
    return replace(summary, f1_val_mean=chosen,
                   f1_tuned_mean=float(np.nanmean(tuned)) if np.isfinite(tuned).any() else math.nan)
