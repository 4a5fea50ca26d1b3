"""External validation: each seed's model and the ensemble on the training site's test set and at the external test
site (the `external` stage: `metrics/external/seed_N.json`, `predictions/external/seed_N.csv`), per finding both
label spaces share (NIH's Effusion is CheXpert's Pleural Effusion: `resources/label_map.csv`, recorded in each
metrics file).

The two test sets hold different patients, so they are independent samples: each is resampled by its own patients
(`report.bootstrap` resamples; the internal draws are the report's own, from `report.bootstrap_seed`, the external
ones from `report.bootstrap_seed + 1`), and the drop (internal - external AUROC) is taken draw by draw. A finding
gets an interval at a site only with at least `report.min_positives` positive patients there, and a drop only when
both sites have them; the means are over the findings eligible at both sites, so that the two means are of the same
findings. Holm's correction runs over the models' mean drops as one family and over the per-finding drops as
another. With `ingest.external: none` the metrics files say `"external": null`, and there is no section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrstudy.errors import InputError
from cxrstudy.reporting import naming, scoring
from cxrstudy.reporting.cells import Diff, Table, WithCI, pvalue
from cxrstudy.reporting.checks import check_rows_agree
from cxrstudy.reporting.inference import (
    Engine,
    Estimate,
    Stat,
    Tested,
    estimate,
    family,
    none,
)
from cxrstudy.reporting.naming import Contrast, Model
from cxrstudy.reporting.results import AUROC_TOLERANCE, Predictions, make_ensemble, num, read_predictions, rounded
from cxrstudy.reporting.stats import bootstrap_auroc
from cxrstudy.reporting.study import Scored, Settings
from cxrstudy.reporting.tables import METHOD_NAMES

EXTERNAL_STREAM = 1  # the external site's resamples come from report.bootstrap_seed + this: independent draws
INTERNAL, EXTERNAL = "internal", "external site"


@dataclass(frozen=True)
class Site:
    """What the external metrics files say of the external test site."""

    name: str
    site: str
    source: str
    label_source: str
    official_test: str
    uncertain: str
    mapping: dict[str, str]  # the model's finding -> the external site's name for it
    n_images: int
    n_patients: int


def _site(raw: Mapping[str, Any]) -> Site:
    return Site(str(raw["name"]), str(raw.get("site") or ""), str(raw.get("source") or ""),
                str(raw["label_source"]), str(raw.get("official_test") or ""), str(raw["uncertain"]),
                {str(k): str(v) for k, v in raw["findings"].items()}, int(raw["n_test"]),
                int(raw.get("test_patients") or 0))


def read_external_metrics(folder: Path, seeds: Sequence[int]) -> tuple[Site, dict[int, dict[str, float]]] | None:
    """Every seed's `folder/seed_N.json`: the site and each seed's external AUROC per finding; None when the files
    say there is no external test set (`"external": null`). A missing, malformed or disagreeing file is an error
    naming it."""
    found: dict[int, Mapping[str, Any] | None] = {}
    for seed in seeds:
        path = folder / f"seed_{seed}.json"
        if not path.is_file():
            raise InputError(f"{path}: external metrics file not found; run the external stage for seed {seed} "
                             "(`dvc repro external`)")
        try:
            raw = json.loads(path.read_text())
            found[seed] = raw["external"]
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: malformed external metrics file ({type(err).__name__}: {err}); re-run the "
                             "external stage") from None
    if all(v is None for v in found.values()):
        return None
    if any(v is None for v in found.values()):
        missing = [s for s, v in found.items() if v is None]
        raise InputError(f"{folder}: seed(s) {missing} say there is no external test set, the others have one; "
                         "re-run the external stage for every seed")
    sites, aurocs = {}, {}
    for seed, raw in found.items():
        assert raw is not None
        try:
            sites[seed] = _site(raw)
            aurocs[seed] = {str(k): num(v) for k, v in raw["auroc"].items()}
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise InputError(f"{folder / f'seed_{seed}.json'}: malformed external metrics file "
                             f"({type(err).__name__}: {err}); re-run the external stage") from None
    first = sites[seeds[0]]
    for seed, site in sites.items():
        if site != first:
            raise InputError(f"{folder / f'seed_{seed}.json'}: another external test set than seed {seeds[0]}'s; "
                             "re-run the external stage for every seed")
    return first, aurocs


def load_external(metrics_folder: Path, predictions_folder: Path,
                  seeds: Sequence[int]) -> tuple[Site, list[Predictions]] | None:
    """The external site and every seed's external predictions, checked against each other and against their
    metrics files (the same images, findings and AUROCs); None without an external test set."""
    read = read_external_metrics(metrics_folder, seeds)
    if read is None:
        return None
    site, aurocs = read
    paths = [predictions_folder / f"seed_{s}.csv" for s in seeds]
    preds = [read_predictions(p) for p in paths]
    check_rows_agree([(p, str(path)) for p, path in zip(preds, paths, strict=True)])
    for seed, pred, path in zip(seeds, preds, paths, strict=True):
        where = metrics_folder / f"seed_{seed}.json"
        if set(pred.findings) != set(site.mapping) or len(pred.images) != site.n_images:
            raise InputError(f"{path} and {where} disagree on the findings or the number of images; re-run the "
                             f"external stage for seed {seed}")
        for name, value in zip(pred.findings, scoring.auroc(pred.labels, pred.probs).tolist(), strict=True):
            stored = aurocs[seed].get(name, math.nan)
            if math.isnan(value) != math.isnan(stored) or abs(value - stored) > AUROC_TOLERANCE:
                raise InputError(f"{path} and {where} disagree on {name} AUROC ({value:.4f} from the predictions, "
                                 f"{stored:.4f} in the metrics); re-run the external stage for seed {seed}")
    return site, preds


def scores_at(model: Model, pred: Predictions, names: Sequence[str], settings: Settings, seed: int) -> Scored:
    """One model on one test set, over the shared findings `names`, resampled by its patients from `seed`."""
    columns = [pred.findings.index(n) for n in names]
    labels, probs = pred.labels[:, columns], pred.probs[:, columns]
    return Scored(model, scoring.auroc(labels, probs),
                  bootstrap_auroc(labels, probs, pred.patients, settings.resamples, seed))


def independent(a: Stat, b: Stat) -> Stat:
    """a - b for statistics of two independent test sets, resampled each by its own patients: the draws are
    subtracted pairwise (independent draws), and leaving out one patient of either set moves one side only."""
    return Stat(a.point - b.point, a.draws - b.draws, np.concatenate([a.jack - b.point, a.point - b.jack]))


def drop_estimate(a: Stat, b: Stat, settings: Settings, pairs: tuple[int, int]) -> Estimate:
    """The drop a - b with its interval by the difference method; when both are perfect in every resample (no
    bootstrap interval exists), the interval their two exact bounds allow, each at 1 - (1 - level) / 2."""
    diff = independent(a, b)
    if Engine.of(diff, settings.difference) is not None or not all(pairs):
        return estimate(diff, settings.level, settings.difference)
    joint = 1 - (1 - settings.level) / 2
    one, two = (estimate(s, joint, settings.single, n) for s, n in zip((a, b), pairs, strict=True))
    if one.method != "exact" or two.method != "exact":
        return estimate(diff, settings.level, settings.difference)
    low, high = one.low - two.high, one.high - two.low
    return Estimate(diff.point, low, high, "exact", 0, len(diff.draws), 1.0 if low <= 0 <= high else 0.0)


@dataclass(frozen=True)
class FindingRow:
    """One model, one shared finding: internal and external AUROC with their intervals, and the drop (tested in the
    per-finding family when both sites have enough positive patients)."""

    model: Model
    finding: str
    internal: Estimate
    external: Estimate
    drop: Tested | None
    drop_point: float


@dataclass(frozen=True)
class ModelRow:
    """One model over the findings eligible at both sites: the two means and the tested drop."""

    model: Model
    internal: Estimate
    external: Estimate
    drop: Tested | None


@dataclass(frozen=True)
class ExternalStudy:
    site: Site
    settings: Settings
    shared: list[str]
    eligible: list[str]  # enough positive patients at both sites
    internal_counts: scoring.Counts
    external_counts: scoring.Counts
    internal_size: tuple[int, int]  # images, patients
    external_size: tuple[int, int]
    models: list[ModelRow]
    findings: list[FindingRow]


def enough(counts: scoring.Counts, name: str, min_positives: int) -> bool:
    """Whether a finding's AUROC may carry an interval on this test set: enough positive patients, and a negative."""
    return counts.patients[name] >= min_positives and counts.negative_patients[name] > 0


def _pairs(counts: scoring.Counts, name: str) -> int:
    return min(counts.patients[name], counts.negative_patients[name])


def shared_counts(internal: Predictions, external: Predictions) -> tuple[list[str], scoring.Counts, scoring.Counts]:
    """The findings both label spaces share (in the model's order), and their positive counts on each test set."""
    names = [n for n in internal.findings if n in set(external.findings)]

    def counts(pred: Predictions) -> scoring.Counts:
        return scoring.counts(tuple(names), pred.labels[:, [pred.findings.index(n) for n in names]], pred.patients)

    return names, counts(internal), counts(external)


def external_study(internal: Sequence[Predictions], external: Sequence[Predictions], seeds: Sequence[int],
                   site: Site, settings: Settings) -> ExternalStudy:
    """Internal vs external AUROC per seed and for the ensemble (the mean of the seeds' probabilities at each site),
    per shared finding and over the findings eligible at both sites, with the drops tested."""
    names, counts_int, counts_ext = shared_counts(internal[0], external[0])
    models: list[tuple[Model, Predictions, Predictions]] = [
        (naming.seed(s), i, e) for s, i, e in zip(seeds, internal, external, strict=True)]
    ens_int, ens_ext = make_ensemble(internal)[0], make_ensemble(external)[0]
    if ens_int is not None and ens_ext is not None:
        models.append((naming.ensemble(len(seeds)), ens_int, ens_ext))
    first_int, first_ext = internal[0], external[0]
    ok_int = [enough(counts_int, n, settings.min_positives) for n in names]
    ok_ext = [enough(counts_ext, n, settings.min_positives) for n in names]
    both = [k for k in range(len(names)) if ok_int[k] and ok_ext[k]]
    mean_items: list[tuple[Contrast, Estimate]] = []
    finding_items: list[tuple[Contrast, Estimate]] = []
    rows: list[tuple[Model, int, Estimate, Estimate, float]] = []
    means: list[tuple[Model, Estimate, Estimate]] = []
    for model, at_home, away in models:
        home = scores_at(model, at_home, names, settings, settings.seed)
        there = scores_at(model, away, names, settings, settings.seed + EXTERNAL_STREAM)
        contrast = Contrast(naming.SITE_DROP, naming.scored_on(model, INTERNAL), naming.scored_on(model, EXTERNAL))
        for k, name in enumerate(names):
            a, b = home.finding(k), there.finding(k)
            inside = (estimate(a, settings.level, settings.single, _pairs(counts_int, name)) if ok_int[k]
                      else none(a.point))
            outside = (estimate(b, settings.level, settings.single, _pairs(counts_ext, name)) if ok_ext[k]
                       else none(b.point))
            rows.append((model, k, inside, outside, a.point - b.point))
            if k in both:
                pairs = (_pairs(counts_int, name), _pairs(counts_ext, name))
                finding_items.append((Contrast(naming.SITE_DROP, naming.scored_on(model, f"{INTERNAL} {name}"),
                                               naming.scored_on(model, f"{EXTERNAL} {name}")),
                                      drop_estimate(a, b, settings, pairs)))
        if both:
            a, b = home.mean_over(both), there.mean_over(both)
            means.append((model, estimate(a, settings.level, settings.single),
                          estimate(b, settings.level, settings.single)))
            mean_items.append((contrast, drop_estimate(a, b, settings, (0, 0))))
    tested_means: list[Tested | None] = (list(family(mean_items, settings.level)) if settings.resamples
                                         else [None] * len(means))
    tested_rows = iter(family(finding_items, settings.level) if settings.resamples else [])
    model_rows = [ModelRow(m, a, b, t) for (m, a, b), t in zip(means, tested_means, strict=True)]
    finding_rows = []
    for model, k, inside, outside, point in rows:
        tested = next(tested_rows) if k in both and settings.resamples else None
        finding_rows.append(FindingRow(model, names[k], inside, outside, tested, point))
    return ExternalStudy(site, settings, names, [names[k] for k in both], counts_int, counts_ext,
                         (len(first_int.images), len(set(first_int.patients.tolist()))),
                         (len(first_ext.images), len(set(first_ext.patients.tolist()))), model_rows, finding_rows)


def external_summary(study: ExternalStudy | None) -> dict[str, Any]:
    """`metrics/report.json`'s `external`: per model the two means, the drop with its interval and Holm-adjusted p,
    and per shared finding the internal and external AUROC and the drop (points); null without an external site."""
    if study is None:
        return {"external": None}
    out: dict[str, Any] = {"site": study.site.name, "eligible_findings": len(study.eligible), "models": {}}
    for row in study.models:
        entry: dict[str, Any] = {"internal": rounded(row.internal.value), "external": rounded(row.external.value)}
        if row.drop is not None:
            d = row.drop.difference
            entry.update(drop=rounded(d.value), drop_low=rounded(d.low), drop_high=rounded(d.high),
                         p_holm=rounded(row.drop.p_holm))
        out["models"][_key(row.model)] = entry
    for f in study.findings:
        model = out["models"].setdefault(_key(f.model), {})
        model.setdefault("findings", {})[f.finding] = {"internal": rounded(f.internal.value),
                                                       "external": rounded(f.external.value),
                                                       "drop": rounded(f.drop_point)}
    return {"external": out}


def _key(model: Model) -> str:
    return "ensemble" if model.kind == naming.ENSEMBLE else f"seed_{model.seed}"


# ------------------------------------------------------------------------------------------------ tables


def _pct(settings: Settings, method: str) -> str:
    return f"{settings.level:.0%} CI, {METHOD_NAMES[method]}"


def _counts(counts: scoring.Counts, name: str, threshold: int) -> str:
    patients = counts.patients[name]
    return f"{patients}{' (< ' + str(threshold) + ')' if patients < threshold else ''} / {counts.images[name]}"


def site_table(study: ExternalStudy) -> Table:
    """The shared findings: the external site's name for each, the positive patients / images at each site, the
    masked (uncertain) cells at the external site, and whether both sites allow an interval."""
    t = study.settings.min_positives
    rows = [[n, study.site.mapping.get(n, n), _counts(study.internal_counts, n, t),
             _counts(study.external_counts, n, t), study.external_counts.masked[n],
             "yes" if n in study.eligible else "no"] for n in study.shared]
    return Table(["Finding (model)", f"At {study.site.name}", "Positive patients / images (internal test)",
                  "Positive patients / images (external test)", "Uncertain, masked (external)",
                  f"≥ {t} positive patients at both sites"], ["l", "l", "r", "r", "r", "c"], rows)


def means_table(study: ExternalStudy) -> Table:
    s = study.settings
    rows = [[naming.label(r.model), WithCI(r.internal), WithCI(r.external), Diff(r.drop) if r.drop else None,
             pvalue(r.drop.p_holm) if r.drop else None, ("yes" if r.drop.beyond_noise else "no") if r.drop else None]
            for r in study.models]
    n = len(study.eligible)
    return Table(["Model", f"Internal mean AUROC, {n} findings [{_pct(s, s.single)}]",
                  f"External mean AUROC, same {n} findings [{_pct(s, s.single)}]",
                  f"Drop, internal − external [{_pct(s, s.difference)}, independent sets]", "Holm-adjusted p",
                  "Beyond test-sampling noise"], ["l", "c", "c", "c", "r", "c"], rows)


def findings_table(study: ExternalStudy) -> Table:
    s, t = study.settings, study.settings.min_positives
    rows = []
    for f in study.findings:
        drop: Any = Diff(f.drop) if f.drop else f.drop_point
        rows.append([f.finding, naming.label(f.model),
                     f"{study.internal_counts.patients[f.finding]} / {study.external_counts.patients[f.finding]}",
                     WithCI(f.internal), WithCI(f.external), drop])
    return Table(["Finding", "Model", "Positive patients, internal / external",
                  f"Internal AUROC [{_pct(s, s.single)}]", f"External AUROC [{_pct(s, s.single)}]",
                  f"Drop [{_pct(s, s.difference)}; a point only under {t} positive patients at either site]"],
                 ["l", "l", "r", "c", "c", "c"], rows)
