"""The numbers the report's sentences need, computed here so that the templates only word them: rankings on the
statistic the tests use, the seed verdict, calibration against its baseline, the coverage the intervals really have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrstudy.reporting import naming
from cxrstudy.reporting.cells import f1_label
from cxrstudy.reporting.coverage import Coverage
from cxrstudy.reporting.inference import Estimate, estimate
from cxrstudy.reporting.reliability import Bin, LossEffect, Shape, reliability_bins, shape, skill
from cxrstudy.reporting.results import Predictions, SeedMetrics, make_ensemble
from cxrstudy.reporting.stats import mean_sd, min_max
from cxrstudy.reporting.study import SeedStudy
from cxrstudy.reporting.tables import defined


def _by_seed(pairs: dict[int, list[str]]) -> list[tuple[int, list[str]]]:
    return sorted(pairs.items(), key=lambda item: (-len(item[1]), item[0]))


def _f1_trusted(seeds: list[SeedMetrics], study: SeedStudy | None, threshold: int) -> tuple[list[str], float]:
    """The findings whose F1 thresholds rest on at least `threshold` validation positive patients (images without
    predictions), and the mean F1 over them (mean over seeds)."""
    if study is not None and study.val_counts is not None:
        names = [n for n in study.findings if study.val_counts.patients[n] >= threshold]
    else:
        names = [n for n in seeds[0].findings if seeds[0].val_positives.get(n, 0) >= threshold]
    values = [float(np.nanmean([s.f1[n] for n in names])) for s in seeds if names]
    return names, mean_sd(values)[0] if values else math.nan


def headline(seeds: list[SeedMetrics], study: SeedStudy | None, min_positives: int) -> dict[str, Any]:
    auroc, f1s = [s.auroc_mean for s in seeds], [s.f1_mean for s in seeds]
    # Seeds are ranked on the statistic every test uses: the mean over the eligible findings (without predictions,
    # the metrics files' mean over every finding with a positive).
    ranked = ({s.seed: m.mean.value for s, m in zip(seeds, study.per_seed, strict=True)}
              if study and study.eligible else {s.seed: s.auroc_mean for s in seeds})
    trusted, f1_trusted = _f1_trusted(seeds, study, min_positives)
    out: dict[str, Any] = {
        "n_seeds": len(seeds), "n_defined": defined(seeds),
        "ranked_on_eligible": bool(study and study.eligible), "ranked": ranked,
        "top": max(seeds, key=lambda s: (ranked[s.seed], -s.seed)),
        "low": min(seeds, key=lambda s: (ranked[s.seed], s.seed)),
        "lowest_loss": min(seeds, key=lambda s: (s.loss, s.seed)),
        "auroc_mean": mean_sd(auroc)[0], "auroc_sd": mean_sd(auroc)[1],
        "auroc_low": min_max(auroc)[0], "auroc_high": min_max(auroc)[1],
        "f1_low": min_max(f1s)[0], "f1_high": min_max(f1s)[1], "f1_mean": mean_sd(f1s)[0],
        "f1_tuned": mean_sd([s.f1_test_tuned_mean for s in seeds])[0],
        "f1_protocol": seeds[0].f1_protocol, "f1_label": f1_label(seeds[0].f1_protocol),
        "f1_trusted": f1_trusted, "f1_trusted_names": trusted,
        "mean_prob": mean_sd([s.mean_prob for s in seeds])[0], "prevalence": mean_sd([s.prevalence for s in seeds])[0],
        "brier": mean_sd([s.brier_mean for s in seeds])[0], "ece": mean_sd([s.ece_mean for s in seeds])[0],
        "min_positives": min_positives,
        "few_val": [(n, c) for n, c in (study.val_counts.patients.items() if study and study.val_counts
                                        else seeds[0].val_positives.items()) if c < min_positives],
    }
    highest: dict[int, list[str]] = {}
    claimed: dict[int, list[str]] = {}
    if study is None:
        for name in seeds[0].findings:
            scored = [(s.auroc[name], -s.seed) for s in seeds if not math.isnan(s.auroc[name])]
            if scored:
                highest.setdefault(-max(scored)[1], []).append(name)
    else:
        for b in study.best:
            if b.seed is not None:
                highest.setdefault(b.seed, []).append(b.finding)
                if b.claimed:
                    claimed.setdefault(b.seed, []).append(b.finding)
        seed_pairs = study.contrasts(naming.SEED_PAIR)
        out.update(pairs_beyond=[t for t in seed_pairs if t.beyond_noise], n_pairs=len(seed_pairs),
                   ensemble_contrasts=[t for t in study.overall if t.contrast.kind != naming.SEED_PAIR],
                   rank_first=sorted(study.rank_first.items(), key=lambda item: (-item[1], item[0])),
                   unranked=[(b.finding, study.counts.patients[b.finding]) for b in study.best
                             if not b.eligible and not math.isnan(b.auroc)])
    out.update(highest=_by_seed(highest), claimed=_by_seed(claimed), claimed_by=claimed)
    return out


@dataclass(frozen=True)
class CoverageFacts:
    """What the report says about its intervals' real coverage (from `metrics/coverage.json`)."""

    coverage: Coverage
    single: list[float | None]  # at each eligible finding's count and AUROC
    difference: list[float | None]
    mean_single: float | None
    mean_difference: float | None
    threshold: int
    supported: int | None
    supported_single: int | None
    tolerance: float
    counts: list[int]


def coverage_facts(coverage: Coverage, study: SeedStudy | None, threshold: int) -> CoverageFacts:
    single, difference = [], []
    if study is not None and study.eligible:
        reference = study.ensemble or study.per_seed[0]
        for name in study.eligible:
            k, a = study.counts.patients[name], reference.auroc[name]
            single.append(coverage.at("single", k, a))
            difference.append(coverage.at("difference", k, a))
    counts = sorted(int(k) for k in coverage.raw["single"][coverage.method("single")])
    return CoverageFacts(coverage, single, difference, coverage.mean("single"), coverage.mean("difference"),
                         threshold, coverage.supported("difference"), coverage.supported("single"),
                         float(coverage.raw["choice"]["tolerance"]), counts)


@dataclass(frozen=True)
class CalibrationFacts:
    """Calibration against the prevalence predictor, the reliability curve's shape, and the loss's part in it."""

    skills: list[tuple[str, Estimate]]
    worse: list[str]  # models whose skill interval lies below 0
    better: list[str]
    bins: list[Bin]
    shape: Shape
    pooled: str  # whose curve is described
    loss: LossEffect | None
    loss_name: str


def calibration_facts(study: SeedStudy, preds: Sequence[Predictions], loss: LossEffect | None,
                      loss_name: str) -> CalibrationFacts:
    s = study.settings
    models = [(naming.label(naming.seed(seed)), p) for seed, p in zip(study.seeds, preds, strict=True)]
    ensemble, _ = make_ensemble(preds)
    if ensemble is not None:
        models.append((naming.label(naming.ensemble(len(preds))), ensemble))
    skills = [(name, estimate(skill(p.labels, p.probs, p.patients, s.resamples, s.seed), s.level, s.single))
              for name, p in models]
    bins = reliability_bins([(p.labels, p.probs) for p in preds], preds[0].patients, s.bins, s.resamples, s.seed,
                            s.level, s.single)
    return CalibrationFacts(skills, [n for n, e in skills if e.has_interval and e.high < 0],
                            [n for n, e in skills if e.has_interval and e.low > 0], bins, shape(bins),
                            f"the {len(preds)} seeds pooled" if len(preds) > 1 else "the one seed", loss, loss_name)


def loss_key(params_loss: Any) -> str:
    """The loss's name as the grid summary records it."""
    return str(params_loss.name)


def grid_ece(effect: LossEffect) -> Mapping[str, tuple[float, float, int]]:
    """Per loss: lowest and highest seed-model ECE and how many models."""
    return {k: (min(v), max(v), len(v)) for k, v in effect.ece.items() if v}
