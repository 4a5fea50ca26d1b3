"""The report stage: `reports/report.md`, rendered from the tracked metrics, the saved predictions, the training
histories and the coverage simulation, with its figures and `metrics/report.json`.

The jobs are split by module: `results` reads the files and `checks` checks them against the split and each other,
`study` (on `stats`, `inference`, `variance`) computes the statistics, `coverage` says how far the intervals can be
trusted, `reliability` and `caveats` what calibration and the data allow, `references` holds the published
numbers, `tables` builds the tables, `facts` the numbers the sentences need, `figures` draws, and `templates/*.j2`
word it (`render`). Nothing on this side imports torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrstudy.atomic import atomic_file, check_writable, write_json
from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import facts as words
from cxrstudy.reporting import sections, tables
from cxrstudy.reporting.caveats import Caveats, DatasetFacts, caveats, external_files, prevalence_gaps
from cxrstudy.reporting.checks import load_predictions
from cxrstudy.reporting.coverage import COVERAGE_FILE, NO_METHOD, Coverage, load_coverage
from cxrstudy.reporting.references import (
    References,
    is_phantom,
    legend,
    load_references,
    our_split,
    published_localisation,
    reference_facts,
    references_tables,
)
from cxrstudy.reporting.reliability import loss_effect
from cxrstudy.reporting.render import MAX_CHARS, render
from cxrstudy.reporting.results import (
    Predictions,
    SeedMetrics,
    in_order,
    load_seed_metrics,
    read_split_summary,
    rounded,
)
from cxrstudy.reporting.sections import SectionInputs, Sections
from cxrstudy.reporting.stats import mean_sd, min_max
from cxrstudy.reporting.study import SeedStudy, seed_study, settings

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
    overlays: str | None = None


@dataclass(frozen=True)
class Inputs:
    """What the report reads besides the metrics, predictions and split: the coverage simulation, and (optional)
    the data's own description (its folder's `images.csv` gives the subgroups), the external evaluation's metrics
    and predictions folders, the loss x CLAHE grid's summary, and the localisation metrics and heatmaps folders."""

    coverage: Path | None = Path(COVERAGE_FILE)
    dataset: Path | None = None
    external: Path | None = None
    grid: Path | None = None
    external_predictions: Path | None = None
    localize: Path | None = None
    heatmaps: Path | None = None
    subgroups: Path | None = None

    def sections(self, predictions_dir: Path | None) -> SectionInputs:
        external = self.external_predictions or (predictions_dir / "external" if predictions_dir else None)
        return SectionInputs(self.dataset, self.external, external, self.localize, self.heatmaps, self.subgroups)


def read_grid(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{path}: grid summary not found; `python -m cxrstudy experiments` writes it") from None
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: not a grid summary ({err})") from None


def run_caveats(params: Params, refs: References, seeds: list[SeedMetrics], preds: list[Predictions] | None,
                inputs: Inputs, site: str = "") -> Caveats:
    """The caveats from the data's description (else the source's entry in references.yaml), the external
    metrics files found, the known confounders and, on the phantom, its prevalences against NIH's."""
    from cxrstudy.reporting.caveats import read_dataset_facts

    dataset: DatasetFacts | None = (read_dataset_facts(inputs.dataset) if inputs.dataset is not None
                                    else refs.sources.get(params.ingest.source))
    gaps = (prevalence_gaps(preds[0].findings, preds[0].labels, refs.label_counts, refs.label_images)
            if preds else [])
    return caveats(dataset, external_files(inputs.external, [s.seed for s in seeds]), refs.confounders, gaps,
                   is_phantom(params), site)


def context(params: Params, seeds: list[SeedMetrics], split: dict[str, Any] | None, study: SeedStudy | None,
            refs: References, figures: Figures, coverage: Coverage | None = None,
            preds: list[Predictions] | None = None, inputs: Inputs | None = None,
            parts: Sections | None = None) -> dict[str, Any]:
    """Everything `report.md.j2` renders."""
    inputs = inputs or Inputs(coverage=None)
    parts = parts or Sections()
    t: dict[str, Any] = {
        "overall": tables.overall_table(seeds, study), "per_class": tables.per_class_table(seeds, study, coverage),
        "best": tables.best_table(seeds, study), "f1": tables.f1_table(seeds, study),
        "calibration": tables.calibration_table(seeds, study, params.evaluate.calibration_bins),
        "environment": tables.environment_table(seeds), "contrasts": None, "per_finding": None, "variance": None,
        "coverage_single": None, "coverage_difference": None, "prevalence": None}
    if study is not None:
        t.update(contrasts=tables.contrast_table(study.overall, study), per_finding=tables.per_finding_table(study),
                 variance=tables.variance_table(study))
    cover = None
    if coverage is not None and coverage.method("single") != NO_METHOD:
        cover = words.coverage_facts(coverage, study, params.report.min_positives)
        t.update(coverage_single=tables.coverage_table(coverage, "single", cover.counts),
                 coverage_difference=tables.coverage_table(coverage, "difference", cover.counts))
    calib = None
    if study is not None and preds is not None and study.settings.resamples:
        effect = loss_effect(read_grid(inputs.grid), words.loss_key(params.train.loss),
                             {s.seed: s.auroc_mean for s in seeds})
        calib = words.calibration_facts(study, preds, effect, words.loss_key(params.train.loss))
    notes = run_caveats(params, refs, seeds, preds, inputs, parts.site.name if parts.site else "")
    if notes.prevalence:
        t["prevalence"] = tables.prevalence_table(notes.prevalence, "NIH ChestX-ray14, all images")
    return {"params": params, "phantom": is_phantom(params), "split": split, "split_name": our_split(params),
            "seeds": seeds, "study": study, "figures": figures, "findings": seeds[0].findings, "tables": t,
            "f": words.headline(seeds, study, params.report.min_positives), "cover": cover, "calib": calib,
            "caveats": notes, "methods": tables.METHOD_NAMES,
            "refs": {"tables": references_tables(params, seeds, study, refs), "legend": legend(params, refs),
                     "facts": reference_facts(seeds, refs), "study_split_label": refs.study_split.label,
                     "counts_source": refs.label_counts_source, "localisation": published_localisation(refs)},
            "s": sections.context(parts, params, figures.overlays)}


def coverage_summary(coverage: Coverage | None) -> dict[str, Any]:
    """The coverage stage's choice, for `metrics/report.json`: per kind the method, its worst coverage from the
    threshold up and the count from which it stays within tolerance."""
    if coverage is None or coverage.method("single") == NO_METHOD:
        return {}
    choice = coverage.raw["choice"]
    return {"coverage": {kind: {"method": choice[kind]["method"],
                                "worst": choice[kind]["worst_coverage"][choice[kind]["method"]],
                                "supported_threshold": choice[kind]["supported_threshold"]}
                         for kind in ("single", "difference")}}


def summary_metrics(seeds: list[SeedMetrics], study: SeedStudy | None) -> dict[str, Any]:
    """`metrics/report.json`: the report's headline numbers, so `dvc exp show` / `dvc metrics diff` list them."""
    auroc = [s.auroc_mean for s in seeds]
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "seed_auroc": {"mean": rounded(mean_sd(auroc)[0]), "sd": rounded(mean_sd(auroc)[1]),
                       "min": rounded(min_max(auroc)[0]), "max": rounded(min_max(auroc)[1])},
        "seed_f1": {"mean": rounded(mean_sd([s.f1_mean for s in seeds])[0]),
                    "sd": rounded(mean_sd([s.f1_mean for s in seeds])[1])},
    }
    if study is not None:
        out["eligible_findings"] = len(study.eligible)
        out["test_sampling_sd"] = rounded(study.variance.test) if study.variance else None
        if study.variance:
            v = study.variance
            out["training_sd"] = {"value": rounded(v.seed), "ci_low": rounded(v.seed_low),
                                  "ci_high": rounded(v.seed_high), "p": rounded(v.p)}
        if study.ensemble is not None:
            ens = study.ensemble
            out["ensemble_auroc"] = {"value": rounded(ens.auroc_mean), "eligible": rounded(ens.mean.value),
                                     "ci_low": rounded(ens.mean.low), "ci_high": rounded(ens.mean.high)}
            out["ensemble_f1"] = {"validation_thresholds": rounded(ens.f1_val_mean),
                                  "test_tuned": rounded(ens.f1_tuned_mean)}
            out["ensemble_calibration"] = {"brier": rounded(ens.calibration.brier_mean),
                                           "ece": rounded(ens.calibration.ece_mean),
                                           "brier_skill": rounded(ens.skill)}
    return out


def run(params: Params, metrics_dir: Path, splits_dir: Path, out_file: Path, *,
        predictions_dir: Path | None = Path("predictions"), history_dir: Path | None = Path("plots/train"),
        raw_dir: Path | None = Path("data/raw"), processed_dir: Path | None = Path("data/processed"),
        figures_dir: Path | None = Path("reports/figures"), plots_dir: Path | None = Path("plots/report"),
        summary_file: Path | None = Path(SUMMARY_FILE), inputs: Inputs | None = None) -> None:
    """Stage entry point: render the report for every seed in `params.seeds`.

    A None input folder leaves out what needs it: predictions (intervals, comparisons, the ensemble, ROC and
    reliability), histories (training curves), raw/processed images (the CLAHE figure); a None output folder writes
    nothing there. The predictions need the coverage simulation's file (`inputs.coverage`).
    """
    inputs = inputs or Inputs()
    # The figure and plot folders are written file by file: a file in each stands for them.
    check_writable(*(p for p in (out_file, summary_file, figures_dir and figures_dir / "figure.png",
                                 plots_dir and plots_dir / "plot.csv") if p is not None))
    seeds = [load_seed_metrics(metrics_dir / f"seed_{seed}.json") for seed in params.seeds]
    study, preds, val, coverage = None, None, None, None
    if inputs.coverage is not None:
        coverage = load_coverage(inputs.coverage)
    if predictions_dir is not None:
        if coverage is None:
            raise InputError("report: intervals need the coverage simulation's choice of method; give its file "
                             f"({COVERAGE_FILE}, from `python -m cxrstudy coverage`)")
        preds, val = load_predictions(seeds, predictions_dir, splits_dir, metrics_dir)
        seeds = [in_order(s, preds[0].findings) for s in seeds]
        study = seed_study(preds, val, [s.seed for s in seeds], settings(params, coverage))
    parts = sections.compute(params, params.seeds, preds, val, study.settings if study else None,
                             inputs.sections(predictions_dir))
    refs = load_references()
    figures = Figures()
    if figures_dir is not None:
        from cxrstudy.reporting.figures import FigurePaths, draw_figures, relative_link
        from cxrstudy.reporting.overlays import OVERLAYS_PNG

        links = draw_figures(params, seeds, preds, study, refs, FigurePaths(
            figures_dir, plots_dir, out_file.parent, history_dir, raw_dir, processed_dir))
        if sections.overlay_figure(parts, inputs.sections(predictions_dir), params.seeds, figures_dir / OVERLAYS_PNG,
                                   is_phantom(params)):
            links["overlays"] = relative_link(figures_dir / OVERLAYS_PNG, out_file.parent)
        figures = Figures(**links)
    text = render(TEMPLATE, **context(params, seeds, read_split_summary(splits_dir), study, refs, figures, coverage,
                                      preds, inputs, parts))
    if len(text) >= MAX_CHARS:
        print(f"report: warning: {len(text)} characters, over GitHub's comment limit of {MAX_CHARS}", file=sys.stderr)
    with atomic_file(out_file) as handle:
        handle.write(text)
    if summary_file is not None:
        from cxrstudy.numerics import environment

        write_json(summary_file, {**summary_metrics(seeds, study), **coverage_summary(coverage),
                                  **sections.summary(parts), "environment": environment(params.numerics)})
    print(f"report: {len(seeds)} seed(s) -> {out_file}")
