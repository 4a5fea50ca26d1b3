"""The report's sections beyond the seed study: "External validation" (`external`), "Where it looks"
(`localisation`), "Whom it fails" (`subgroups`) and "Label quality" (`labelquality`). Each is computed here from
the files the report is given, turned into the template's tables and facts, and into `metrics/report.json`'s
tracked numbers; a section whose input is not given is left out (and says so where a reader would look for it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrstudy.params import Params
from cxrstudy.reporting import labelquality as lq
from cxrstudy.reporting import localisation as loc
from cxrstudy.reporting import sites as ext
from cxrstudy.reporting import subgroup_tables as sub_tables
from cxrstudy.reporting import subgroups as sub
from cxrstudy.reporting.results import Predictions
from cxrstudy.reporting.study import Settings

NIH_SOURCE = "nih"  # the training site whose labels the experts' can be compared with


@dataclass(frozen=True)
class SectionInputs:
    """Where each section's input is (None: not given, the section is left out)."""

    dataset: Path | None = None  # data/raw/dataset.json: its folder holds the contract's images.csv
    external: Path | None = None  # metrics/external
    external_predictions: Path | None = None  # predictions/external
    localize: Path | None = None  # metrics/localize
    heatmaps: Path | None = None  # heatmaps (seed_N.npz)
    subgroups: Path | None = None  # metrics/subgroups.json: the tables must be its tracked numbers


@dataclass(frozen=True)
class Sections:
    external_given: bool = False
    site: ext.Site | None = None
    external: ext.ExternalStudy | None = None
    subgroups: sub.SubgroupStudy | None = None
    localisation: loc.Localisation | None = None
    experts: lq.ExpertLabels | None = None
    quality: lq.LabelQuality | None = None
    source: str = ""  # the training site's source (dataset.json, else ingest.source)


def training_source(params: Params, dataset: Path | None) -> str:
    """The training site's adapter: `dataset.json`'s `source` when given and recorded, else `ingest.source`."""
    if dataset is not None and dataset.is_file():
        try:
            recorded = json.loads(dataset.read_text()).get("source")
        except (ValueError, AttributeError):
            recorded = None  # read_dataset_facts names a broken file
        if recorded:
            return str(recorded)
    return params.ingest.source


def compute(params: Params, seeds: Sequence[int], preds: Sequence[Predictions] | None,
            val: Sequence[Predictions] | None, settings: Settings | None, inputs: SectionInputs) -> Sections:
    """Every section whose inputs are given (the statistical ones need the predictions and their settings)."""
    localisation = loc.read_localisation(inputs.localize, seeds) if inputs.localize is not None else None
    source = training_source(params, inputs.dataset)
    experts = lq.load_expert_labels()
    if preds is None or val is None or settings is None:
        return Sections(inputs.external is not None, localisation=localisation, experts=experts, source=source)
    site, external = None, None
    if inputs.external is not None:
        loaded = ext.load_external(inputs.external, inputs.external_predictions or Path("predictions/external"),
                                   seeds)
        if loaded is not None:
            site, ext_preds = loaded
            external = ext.external_study(preds, ext_preds, seeds, site, settings)
    subgroups = None
    if inputs.dataset is not None:
        found = sub.read_groups(inputs.dataset.parent, preds[0].images, params.report.age_bands)
        subgroups = sub.subgroup_study(preds, val, seeds, found, settings, params.report.age_bands)
        if inputs.subgroups is not None:
            sub.check_tracked(subgroups, inputs.subgroups)
    quality = lq.label_quality(preds, seeds, experts, settings) if source == NIH_SOURCE else None
    return Sections(inputs.external is not None, site, external, subgroups, localisation, experts, quality, source)


def context(s: Sections, params: Params, overlays: str | None) -> dict[str, Any]:
    """What the sections' templates render: tables and facts per section (None where a section is absent)."""
    level, threshold = params.report.level, params.report.min_positives
    out: dict[str, Any] = {"external": None, "subgroups": None, "localisation": None, "quality": None,
                           "external_given": s.external_given, "site": s.site, "source": s.source,
                           "nih_source": NIH_SOURCE}
    if s.external is not None:
        out["external"] = {"study": s.external, "site_table": ext.site_table(s.external),
                           "means": ext.means_table(s.external), "findings": ext.findings_table(s.external),
                           "renamed": [(k, v) for k, v in s.site.mapping.items() if k != v] if s.site else [],
                           "headline": next((r for r in s.external.models if r.model.kind == "ensemble"),
                                            s.external.models[-1] if s.external.models else None)}
    if s.subgroups is not None:
        g = s.subgroups
        out["subgroups"] = {"study": g, "groups": sub_tables.groups_table(g),
                            "underdiagnosis": sub_tables.underdiagnosis_table(g), "gaps": sub_tables.gaps_table(g),
                            "facts": sub_tables.subgroup_facts(g), "bands": sub.age_names(g.age_bands),
                            "planted": params.ingest.phantom.ap_signature_contrast}
    if s.localisation is not None:
        lo = s.localisation
        out["localisation"] = {"data": lo, "facts": loc.localisation_facts(lo), "overlays": overlays,
                               "threshold": threshold}
        if lo.seeds:
            out["localisation"].update(
                pooled=loc.pooled_table(lo, level),
                pointing=loc.findings_table(lo, loc.POINTING, level, threshold),
                iobb=[(t, loc.findings_table(lo, t, level, threshold)) for t in lo.seeds[0].thresholds])
    if s.experts is not None:
        out["quality"] = {"data": s.quality, "counts": lq.expert_counts(s.experts), "source": s.experts,
                          "agreement": lq.agreement_table(s.quality) if s.quality else None,
                          "auroc": lq.auroc_table(s.quality) if s.quality else None}
    return out


def summary(s: Sections) -> dict[str, Any]:
    """The sections' tracked numbers for `metrics/report.json` (the subgroups' are the subgroups stage's own file)."""
    out: dict[str, Any] = {}
    if s.external_given:
        out.update(ext.external_summary(s.external))
    out.update(loc.localisation_summary(s.localisation))
    out.update(lq.quality_summary(s.quality))
    return out


def overlay_figure(s: Sections, inputs: SectionInputs, seeds: Sequence[int], path: Path, phantom: bool) -> bool:
    """Draw every seed's heatmaps side by side (`cxrstudy.reporting.overlays`) into `path`; False when there are
    none (no heatmaps folder given, or no box on a test image)."""
    if inputs.heatmaps is None or s.localisation is None or not s.localisation.seeds:
        return False
    from cxrstudy.reporting.overlays import plot_overlays

    plot_overlays([inputs.heatmaps / f"seed_{seed}.npz" for seed in seeds], path,
                  "Phantom run (synthetic images)" if phantom else "")
    return True
