"""Whom it fails: each seed's model and the ensemble per subgroup of the test set, from the dataset contract's table
(`images.csv`: sex, age, view, follow-up).

- **Groups.** Sex (M, F), age in bands (`report.age_bands`, cut points in years: [40, 60] gives < 40, 40-59 and
  >= 60), view (PA, AP; lateral views and empty cells are in no view group) and follow-up (a patient's first study
  against the later ones). An image with an empty cell is in no group of that axis, and the report counts them.
- **AUROC per group.** The mean AUROC over the findings eligible in every group of the axis (at least
  `report.min_positives` positive patients in each, and a negative), so that the groups of an axis are compared on
  the same findings.
- **Resampling.** One patient bootstrap of the whole test set, the report's own draws (`report.bootstrap_seed`), and
  each group's AUROC computed on every draw from the images of that group: a patient in two groups (an AP and a PA
  film, a first and a later study) goes into both with the same count. A gap between two groups is therefore taken
  within each draw (paired), and Holm's correction runs over every gap of every model as one family.
- **Underdiagnosis** (CheXclusion; Seyyed-Kalantari et al. 2021): among the test images with at least one positive
  finding, the share the model calls "no finding": every finding's probability below its threshold, the threshold
  that maximises that finding's F1 on the validation set (the seeds' own, and for the ensemble the one chosen on its
  averaged validation predictions). A rate rests on its events as an AUROC rests on its positives: it gets an
  interval only with at least `report.min_positives` patients called "no finding" and as many not (a rate of 0 out
  of a few events has no bootstrap spread, and a gap to it would claim far more than it has); a gap is tested only
  where both groups carry intervals. Its gaps form a second family.
- **Tracked.** The `subgroups` stage (`python -m cxrstudy subgroups`) writes the headline numbers to
  `metrics/subgroups.json`, a DVC metrics file; the report recomputes the study for its tables and stops when they
  are not the tracked numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import naming, scoring
from cxrstudy.reporting.inference import (
    Estimate,
    Stat,
    Tested,
    column_mean,
    estimate,
    estimate_difference,
    family,
    none,
)
from cxrstudy.reporting.naming import Contrast, Model
from cxrstudy.reporting.results import Predictions, make_ensemble, rounded
from cxrstudy.reporting.stats import patient_counts, patient_jackknife_auroc, patient_weighted_auroc
from cxrstudy.reporting.study import Settings

AXES = ("sex", "age", "view", "follow-up")


@dataclass(frozen=True)
class Group:
    """One subgroup of the test images: its axis, its name and which rows of the predictions it holds."""

    axis: str
    name: str
    rows: np.ndarray  # bool, one per predictions row


def age_names(bands: Sequence[int]) -> list[str]:
    """[40, 60] -> ["< 40", "40–59", "≥ 60"]."""
    edges = list(bands)
    names = [f"< {edges[0]}"]
    names += [f"{a}–{b - 1}" for a, b in zip(edges, edges[1:], strict=False)]
    return names + [f"≥ {edges[-1]}"]


def groups(images: Sequence[str], table: pd.DataFrame, age_bands: Sequence[int], where: str) -> list[Group]:
    """The subgroups of `images` (the predictions' rows), from the contract's table (`where` names it in errors)."""
    by_image = table.set_index("image")
    missing = [n for n in images if n not in by_image.index]
    if missing:
        raise InputError(f"{where}: test image {missing[0]} (and {len(missing) - 1} more) not in the table; the "
                         "predictions and the data differ: re-run the pipeline")
    rows = by_image.loc[list(images)]
    sex, view = rows["sex"].astype(str).to_numpy(), rows["view"].astype(str).to_numpy()
    age = pd.to_numeric(rows["age"], errors="coerce").to_numpy(dtype=float)
    follow = rows["follow_up"].astype(int).to_numpy()
    band = np.digitize(age, np.asarray(age_bands, dtype=float))  # 0: below the first cut point
    out = [Group("sex", s, sex == s) for s in ("M", "F")]
    out += [Group("age", name, np.isfinite(age) & (band == i)) for i, name in enumerate(age_names(age_bands))]
    out += [Group("view", v, view == v) for v in ("PA", "AP")]
    out += [Group("follow-up", "first", follow == 0), Group("follow-up", "later", follow > 0)]
    return out


def read_groups(dataset_dir: Path, images: Sequence[str], age_bands: Sequence[int]) -> list[Group]:
    """The subgroups of `images`, from `dataset_dir`'s contract table."""
    from cxrstudy.data.dataset import TABLE_FILE, read_table

    return groups(images, read_table(dataset_dir), age_bands, str(dataset_dir / TABLE_FILE))


@dataclass(frozen=True)
class GroupResult:
    """One model on one group: the mean AUROC over its axis's findings and the underdiagnosis rate."""

    model: Model
    group: Group
    auroc: Estimate
    underdiagnosis: Estimate
    missed: int  # patients with a finding that have an image called "no finding"
    found: int  # patients with a finding that have an image with a finding called


@dataclass(frozen=True)
class GroupCounts:
    images: int
    patients: int
    positive_patients: dict[str, int]  # per finding
    negative_patients: dict[str, int]  # patients with a negative image, per finding
    with_finding_images: int  # images with at least one positive finding
    with_finding_patients: int


@dataclass(frozen=True)
class Gap:
    """A group minus its axis's reference group, for one model: AUROC and underdiagnosis, each tested."""

    model: Model
    axis: str
    first: str
    second: str
    auroc: Tested | None
    underdiagnosis: Tested | None


@dataclass(frozen=True)
class SubgroupStudy:
    settings: Settings
    findings: tuple[str, ...]
    groups: list[Group]
    counts: dict[str, GroupCounts]  # by group name
    axis_findings: dict[str, list[str]]  # the findings each axis's means are over
    ungrouped: dict[str, int]  # images in no group of the axis
    results: list[GroupResult]
    gaps: list[Gap]
    age_bands: list[int]

    def result(self, model: Model, group: str) -> GroupResult:
        return next(r for r in self.results if r.model == model and r.group.name == group)

    @property
    def models(self) -> list[Model]:
        return list(dict.fromkeys(r.model for r in self.results))


def _group_stats(labels: np.ndarray, probs: np.ndarray, index: np.ndarray, n_patients: int, counts: np.ndarray,
                 rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-finding AUROC of the `rows` on the test set, on every draw of `counts` and with each patient left out
    (NaN throughout for an empty group: a view no test image has)."""
    if not rows.any():
        nan = np.full(labels.shape[1], np.nan)
        return nan, np.tile(nan, (len(counts), 1)), np.tile(nan, (n_patients, 1))
    y, p, idx = labels[rows], probs[rows], index[rows]
    point = scoring.auroc(y, p)
    with threadpool_limits(limits=1, user_api="blas"):
        draws = patient_weighted_auroc(y, p, idx, counts)
    return point, draws, patient_jackknife_auroc(y, p, idx, n_patients)


def _no_finding_stat(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, index: np.ndarray,
                     n_patients: int, counts: np.ndarray, rows: np.ndarray) -> tuple[Stat, int, int]:
    """The share of the `rows` images with a positive finding that no finding reaches its threshold on, per draw
    (a ratio of patient-weighted sums) and with each patient left out; and the patients with such an image
    ("missed") and with a finding called ("found")."""
    has = rows & (np.nan_to_num(labels, nan=0.0) == 1).any(axis=1)
    called = has & (probs < thresholds).all(axis=1)
    n = np.bincount(index[has], minlength=n_patients).astype(float)
    c = np.bincount(index[called], minlength=n_patients).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = c.sum() / n.sum() if n.sum() else math.nan
        draws = (counts @ c) / (counts @ n)
        jack = (c.sum() - c) / (n.sum() - n)
    stat = Stat(float(point), np.where(np.isfinite(draws), draws, np.nan), np.where(np.isfinite(jack), jack, np.nan))
    return stat, int(np.count_nonzero(c)), int(np.count_nonzero(n - c))


def _count(group: Group, pred: Predictions) -> GroupCounts:
    rows = group.rows
    c = scoring.counts(pred.findings, pred.labels[rows], pred.patients[rows])
    has = rows & (np.nan_to_num(pred.labels, nan=0.0) == 1).any(axis=1)
    return GroupCounts(int(rows.sum()), len(set(pred.patients[rows].tolist())), c.patients, c.negative_patients,
                       int(has.sum()), len(set(pred.patients[has].tolist())))


def subgroup_study(preds: Sequence[Predictions], val: Sequence[Predictions], seeds: Sequence[int],
                   found: list[Group], settings: Settings, age_bands: Sequence[int]) -> SubgroupStudy:
    """Per model (each seed, the ensemble) and group: the mean AUROC over the axis's eligible findings and the
    underdiagnosis rate, with intervals; every gap to the axis's first group, tested (two Holm families)."""
    first = preds[0]
    names = first.findings
    ids, index = np.unique(first.patients, return_inverse=True)
    counts = patient_counts(len(ids), settings.resamples, settings.seed)  # the report's own draws
    by_name = {g.name: _count(g, first) for g in found}
    eligible = {axis: [n for n in names if all(
        by_name[g.name].positive_patients[n] >= settings.min_positives and by_name[g.name].negative_patients[n] > 0
        for g in found if g.axis == axis)] for axis in AXES}
    models = [(naming.seed(s), p, v) for s, p, v in zip(seeds, preds, val, strict=True)]
    ens, ens_val = make_ensemble(preds)[0], make_ensemble(val)[0] if len(val) > 1 else None
    if ens is not None and ens_val is not None:
        models.append((naming.ensemble(len(seeds)), ens, ens_val))
    results: list[GroupResult] = []
    stats: dict[tuple[Model, str], tuple[Stat, Stat]] = {}
    for model, pred, v in models:
        thresholds = np.asarray(scoring.thresholds(v.labels, v.probs))
        for g in found:
            cols = [names.index(n) for n in eligible[g.axis]]
            point, draws, jack = _group_stats(pred.labels, pred.probs, index, len(ids), counts, g.rows)
            mean = column_mean(point, draws, jack, cols)
            rate, missed, found_ = _no_finding_stat(pred.labels, pred.probs, thresholds, index, len(ids), counts,
                                                    g.rows)
            stats[(model, g.name)] = (mean, rate)
            enough = min(missed, found_) >= settings.min_positives
            results.append(GroupResult(model, g, estimate(mean, settings.level, settings.single) if cols
                                       else none(math.nan),
                                       estimate(rate, settings.level, settings.single) if enough
                                       else none(rate.point), missed, found_))
    rated = {(r.model, r.group.name) for r in results if r.underdiagnosis.has_interval}
    gaps = _gaps(models, found, stats, eligible, rated, settings)
    ungrouped = {axis: int((~np.any([g.rows for g in found if g.axis == axis], axis=0)).sum()) for axis in AXES}
    return SubgroupStudy(settings, names, found, by_name, eligible, ungrouped, results, gaps, list(age_bands))


def _gaps(models: Sequence[tuple[Model, Predictions, Predictions]], found: list[Group],
          stats: dict[tuple[Model, str], tuple[Stat, Stat]], eligible: dict[str, list[str]],
          rated: set[tuple[Model, str]], settings: Settings) -> list[Gap]:
    """Each group minus its axis's first group, per model; the AUROC gaps one Holm family, the underdiagnosis gaps
    another. A gap is tested only where both groups carry intervals."""
    pairs = [(g, ref) for axis in AXES for ref in [next(x for x in found if x.axis == axis)]
             for g in found if g.axis == axis and g is not ref]
    auroc_items: list[tuple[Contrast, Estimate]] = []
    rate_items: list[tuple[Contrast, Estimate]] = []
    slots: list[tuple[Model, Group, Group, int | None, int | None]] = []
    for model, _, _ in models:
        for g, ref in pairs:
            contrast = Contrast(naming.SUBGROUP, naming.scored_on(model, g.name), naming.scored_on(model, ref.name))
            a_mean, a_rate = stats[(model, g.name)]
            b_mean, b_rate = stats[(model, ref.name)]
            i = j = None
            if eligible[g.axis] and settings.resamples:
                i = len(auroc_items)
                auroc_items.append((contrast, estimate_difference(a_mean, b_mean, settings.level,
                                                                  settings.difference)))
            if (model, g.name) in rated and (model, ref.name) in rated:
                j = len(rate_items)
                rate_items.append((contrast, estimate_difference(a_rate, b_rate, settings.level,
                                                                 settings.difference)))
            slots.append((model, g, ref, i, j))
    auroc_tested, rate_tested = family(auroc_items, settings.level), family(rate_items, settings.level)
    return [Gap(m, g.axis, g.name, ref.name, None if i is None else auroc_tested[i],
                None if j is None else rate_tested[j]) for m, g, ref, i, j in slots]


# ------------------------------------------------------------------------------------------------ tracked numbers

SUBGROUPS_FILE = "metrics/subgroups.json"


def _key(model: Model) -> str:
    return "ensemble" if model.kind == naming.ENSEMBLE else f"seed_{model.seed}"


def _ascii(name: str) -> str:
    """A group's name as a metrics key ("≥ 60" -> ">=60", "40–59" -> "40-59"), plain for `dvc metrics diff`."""
    return name.replace("≥ ", ">=").replace("< ", "<").replace("–", "-")


def summary(study: SubgroupStudy) -> dict[str, Any]:
    """The tracked numbers (`metrics/subgroups.json`'s `subgroups`), compact enough for `dvc metrics diff`: per group
    its patients (all, and with a finding) and the headline model's mean AUROC and underdiagnosis rate; per tested
    gap each seed's point, and the headline model's (the ensemble's, else the one seed's) with its interval and
    Holm-adjusted p."""
    models = study.models
    head = models[-1]  # the ensemble when there are several seeds
    out: dict[str, Any] = {"age_bands": list(study.age_bands), "model": _key(head),
                           "findings": {axis: len(names) for axis, names in study.axis_findings.items()}}
    out["groups"] = {f"{g.axis}.{_ascii(g.name)}": {
        "patients": study.counts[g.name].patients, "patients_with_finding": study.counts[g.name].with_finding_patients,
        "auroc": rounded(study.result(head, g.name).auroc.value),
        "underdiagnosis": rounded(study.result(head, g.name).underdiagnosis.value)} for g in study.groups}
    out["gaps"] = {}
    for gap in study.gaps:
        if gap.auroc is None:
            continue  # no finding eligible in both groups: nothing tested
        entry = out["gaps"].setdefault(f"{gap.axis}.{_ascii(gap.first)}-vs-{_ascii(gap.second)}", {})
        if gap.model == head:
            d = gap.auroc.difference
            entry.update(auroc=rounded(d.value), low=rounded(d.low), high=rounded(d.high),
                         p_holm=rounded(gap.auroc.p_holm))
            if gap.underdiagnosis is not None:
                entry["underdiagnosis"] = rounded(gap.underdiagnosis.difference.value)
        else:
            entry[_key(gap.model)] = rounded(gap.auroc.difference.value)
    return {"subgroups": out}


def compute(params: Params, metrics_dir: Path, predictions_dir: Path, splits_dir: Path, dataset: Path,
            coverage_file: Path) -> SubgroupStudy:
    """The subgroup study of every seed in `params.seeds`, from the checked predictions and the contract's table."""
    from cxrstudy.reporting.checks import load_predictions
    from cxrstudy.reporting.coverage import load_coverage
    from cxrstudy.reporting.results import load_seed_metrics
    from cxrstudy.reporting.study import settings

    seeds = [load_seed_metrics(metrics_dir / f"seed_{seed}.json") for seed in params.seeds]
    preds, val = load_predictions(seeds, predictions_dir, splits_dir, metrics_dir)
    chosen = settings(params, load_coverage(coverage_file))
    found = read_groups(dataset.parent, preds[0].images, params.report.age_bands)
    return subgroup_study(preds, val, params.seeds, found, chosen, params.report.age_bands)


def check_tracked(study: SubgroupStudy, path: Path) -> None:
    """The report recomputes the study for its tables: they must be the tracked numbers in `path`, or it is stale."""
    try:
        tracked = json.loads(path.read_text())["subgroups"]
    except FileNotFoundError:
        raise InputError(f"{path}: subgroup metrics not found; run the subgroups stage "
                         "(`dvc repro subgroups`)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: malformed subgroup metrics ({type(err).__name__}: {err}); re-run the subgroups "
                         "stage") from None
    if tracked != json.loads(json.dumps(summary(study)["subgroups"])):
        raise InputError(f"{path}: not the subgroups of these predictions and this data; re-run the subgroups "
                         "stage (`dvc repro subgroups`)")


def run(params: Params, metrics_dir: Path, predictions_dir: Path, splits_dir: Path, dataset: Path,
        coverage_file: Path, out: Path) -> None:
    """Stage entry point: write `out` (`metrics/subgroups.json`), the tracked numbers of "Whom it fails"."""
    from cxrstudy.atomic import check_writable, write_json
    from cxrstudy.numerics import environment

    check_writable(out)
    study = compute(params, metrics_dir, predictions_dir, splits_dir, dataset, coverage_file)
    write_json(out, {**summary(study), "environment": environment(params.numerics)})
    gaps = [g for g in study.gaps if g.model == study.models[-1] and g.auroc is not None and g.auroc.beyond_noise]
    print(f"subgroups: {len(study.groups)} groups, {len(study.models)} model(s), {len(gaps)} AUROC gap(s) beyond "
          f"noise for {naming.label(study.models[-1])} -> {out}")
