"""The report stage: `reports/report.md`, rendered from the tracked metrics, the saved predictions and the training
histories, with its figures and `metrics/report.json`.

The jobs are split by module: `results` reads the files, `study` (on `stats` and `inference`) computes the
statistics, `references` holds the published numbers, `tables` builds the tables, `figures` draws, and
`templates/*.j2` word it (`render`). This module gathers the numbers the sentences need and writes the outputs.
Nothing on this side imports torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrstudy.atomic import atomic_file, check_writable, write_json
from cxrstudy.labels import FINDINGS
from cxrstudy.params import Params
from cxrstudy.reporting.references import (
    References,
    is_phantom,
    legend,
    load_references,
    our_split,
    reference_facts,
    references_tables,
)
from cxrstudy.reporting.render import MAX_CHARS, render
from cxrstudy.reporting.results import (
    SeedMetrics,
    check_agreement,
    load_seed_metrics,
    read_predictions,
    read_split_summary,
)
from cxrstudy.reporting.stats import mean_sd, min_max
from cxrstudy.reporting.study import SeedStudy, seed_study, settings
from cxrstudy.reporting.tables import (
    best_table,
    calibration_table,
    contrast_table,
    environment_table,
    f1_label,
    f1_table,
    overall_table,
    per_class_table,
    per_finding_table,
    variance_table,
)

TEMPLATE = "report.md.j2"
SUMMARY_FILE = "metrics/report.json"


@dataclass(frozen=True)
class Figures:
    """Links (relative to the report) to the PNGs written under reports/figures/; None for one not drawn."""

    roc: str | None = None
    auroc: str | None = None
    clahe: str | None = None
    training: str | None = None
    reliability: str | None = None


def _by_seed(pairs: dict[int, list[str]]) -> list[tuple[int, list[str]]]:
    return sorted(pairs.items(), key=lambda item: (-len(item[1]), item[0]))


def facts(seeds: list[SeedMetrics], study: SeedStudy | None, min_positives: int) -> dict[str, Any]:
    """The numbers the sentences of `wording.md.j2` need, computed here so that the template only words them."""
    auroc = [s.auroc_mean for s in seeds]
    f1s = [s.f1_mean for s in seeds]
    out: dict[str, Any] = {
        "n_seeds": len(seeds), "n_defined": sum(not math.isnan(seeds[0].auroc[n]) for n in FINDINGS),
        "top": max(seeds, key=lambda s: (s.auroc_mean, -s.seed)),
        "low": min(seeds, key=lambda s: (s.auroc_mean, s.seed)),
        "lowest_loss": min(seeds, key=lambda s: (s.loss, s.seed)),
        "auroc_mean": mean_sd(auroc)[0], "auroc_sd": mean_sd(auroc)[1],
        "auroc_low": min_max(auroc)[0], "auroc_high": min_max(auroc)[1],
        "f1_low": min_max(f1s)[0], "f1_high": min_max(f1s)[1], "f1_mean": mean_sd(f1s)[0],
        "f1_tuned": mean_sd([s.f1_test_tuned_mean for s in seeds])[0],
        "f1_protocol": seeds[0].f1_protocol, "f1_label": f1_label(seeds[0].f1_protocol),
        "mean_prob": mean_sd([s.mean_prob for s in seeds])[0], "prevalence": mean_sd([s.prevalence for s in seeds])[0],
        "brier": mean_sd([s.brier_mean for s in seeds])[0], "ece": mean_sd([s.ece_mean for s in seeds])[0],
        "min_positives": min_positives,
        "few_val": [(n, c) for n, c in seeds[0].val_positives.items() if c < min_positives],
    }
    highest: dict[int, list[str]] = {}
    claimed: dict[int, list[str]] = {}
    if study is None:
        for name in FINDINGS:
            scored = [(s.auroc[name], -s.seed) for s in seeds if not math.isnan(s.auroc[name])]
            if scored:
                highest.setdefault(-max(scored)[1], []).append(name)
    else:
        for b in study.best:
            if b.seed is not None:
                highest.setdefault(b.seed, []).append(b.finding)
                if b.claimed:
                    claimed.setdefault(b.seed, []).append(b.finding)
        seed_pairs = [c for c in study.overall if "ensemble" not in (c.first, c.second)]
        out.update(
            pairs_beyond=[c for c in seed_pairs if c.beyond_noise], n_pairs=len(seed_pairs),
            ensemble_contrasts=[c for c in study.overall if c.first == "ensemble"],
            rank_first=sorted(study.rank_first.items(), key=lambda item: (-item[1], item[0])),
            unranked=[(b.finding, b.positives) for b in study.best if not b.eligible and not math.isnan(b.auroc)])
    out.update(highest=_by_seed(highest), claimed=_by_seed(claimed), claimed_by=claimed)
    return out


def context(params: Params, seeds: list[SeedMetrics], split: dict[str, Any] | None, study: SeedStudy | None,
            refs: References, figures: Figures) -> dict[str, Any]:
    """Everything `report.md.j2` renders."""
    tables: dict[str, Any] = {
        "overall": overall_table(seeds, study), "per_class": per_class_table(seeds, study),
        "best": best_table(seeds, study), "f1": f1_table(seeds, study),
        "calibration": calibration_table(seeds, study, params.evaluate.calibration_bins),
        "environment": environment_table(seeds), "contrasts": None, "per_finding": None, "variance": None}
    if study is not None:
        tables.update(contrasts=contrast_table(study.overall, "Comparison"), per_finding=per_finding_table(study),
                      variance=variance_table(study))
    return {"params": params, "phantom": is_phantom(params), "split": split, "split_name": our_split(params),
            "seeds": seeds, "study": study, "figures": figures, "findings": FINDINGS, "tables": tables,
            "f": facts(seeds, study, params.report.min_positives),
            "refs": {"tables": references_tables(params, seeds, study, refs), "legend": legend(params, refs),
                     "facts": reference_facts(seeds, refs), "study_split_label": refs.study_split.label}}


def summary_metrics(seeds: list[SeedMetrics], study: SeedStudy | None) -> dict[str, Any]:
    """`metrics/report.json`: the report's headline numbers, so `dvc exp show` / `dvc metrics diff` list them."""
    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(float(value), 6)

    auroc = [s.auroc_mean for s in seeds]
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "seed_auroc": {"mean": clean(mean_sd(auroc)[0]), "sd": clean(mean_sd(auroc)[1]),
                       "min": clean(min_max(auroc)[0]), "max": clean(min_max(auroc)[1])},
        "seed_f1": {"mean": clean(mean_sd([s.f1_mean for s in seeds])[0]),
                    "sd": clean(mean_sd([s.f1_mean for s in seeds])[1])},
    }
    if study is not None:
        out["eligible_findings"] = len(study.eligible)
        out["test_sampling_sd"] = clean(study.variance.test) if study.variance else None
        if study.variance:
            v = study.variance
            out["training_sd"] = {"value": clean(v.seed), "ci_low": clean(v.seed_low), "ci_high": clean(v.seed_high)}
        if study.ensemble is not None:
            ens = study.ensemble
            out["ensemble_auroc"] = {"value": clean(ens.auroc_mean), "eligible": clean(ens.mean.value),
                                     "ci_low": clean(ens.mean.low), "ci_high": clean(ens.mean.high)}
            out["ensemble_f1"] = {"validation_thresholds": clean(ens.f1_val_mean),
                                  "test_tuned": clean(ens.f1_tuned_mean)}
            out["ensemble_calibration"] = {"brier": clean(ens.calibration.brier_mean),
                                           "ece": clean(ens.calibration.ece_mean)}
    return out


def run(params: Params, metrics_dir: Path, splits_dir: Path, out_file: Path, *,
        predictions_dir: Path | None = Path("predictions"), history_dir: Path | None = Path("plots/train"),
        raw_dir: Path | None = Path("data/raw"), processed_dir: Path | None = Path("data/processed"),
        figures_dir: Path | None = Path("reports/figures"), plots_dir: Path | None = Path("plots/report"),
        summary_file: Path | None = Path(SUMMARY_FILE)) -> None:
    """Stage entry point: render the report for every seed in `params.seeds`.

    A None input folder leaves out what needs it: predictions (intervals, comparisons, the ensemble, ROC and
    reliability), histories (training curves), raw/processed images (the CLAHE figure); a None output folder writes
    nothing there.
    """
    # The figure and plot folders are written file by file: a file in each stands for them.
    check_writable(*(p for p in (out_file, summary_file, figures_dir and figures_dir / "figure.png",
                                 plots_dir and plots_dir / "plot.csv") if p is not None))
    seeds = [load_seed_metrics(metrics_dir / f"seed_{seed}.json") for seed in params.seeds]
    study, preds = None, None
    if predictions_dir is not None:
        paths = [predictions_dir / f"seed_{s.seed}.csv" for s in seeds]
        preds = [read_predictions(p) for p in paths]
        val = [read_predictions(predictions_dir / "val" / f"seed_{s.seed}.csv") for s in seeds]
        study = seed_study(preds, val, [s.seed for s in seeds], settings(params))
        for s, p, m, path in zip(seeds, preds, study.per_seed, paths, strict=True):
            check_agreement(p, m.auroc, s, path, metrics_dir / f"seed_{s.seed}.json")
    refs = load_references()
    figures = Figures()
    if figures_dir is not None:
        from cxrstudy.reporting.figures import FigurePaths, draw_figures

        figures = Figures(**draw_figures(params, seeds, preds, study, refs, FigurePaths(
            figures_dir, plots_dir, out_file.parent, history_dir, raw_dir, processed_dir)))
    text = render(TEMPLATE, **context(params, seeds, read_split_summary(splits_dir), study, refs, figures))
    if len(text) >= MAX_CHARS:
        print(f"report: warning: {len(text)} characters, over GitHub's comment limit of {MAX_CHARS}", file=sys.stderr)
    with atomic_file(out_file) as handle:
        handle.write(text)
    if summary_file is not None:
        from cxrstudy.numerics import environment

        write_json(summary_file, {**summary_metrics(seeds, study), "environment": environment(params.numerics)})
    print(f"report: {len(seeds)} seed(s) -> {out_file}")
