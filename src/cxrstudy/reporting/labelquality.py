"""Label quality, on the real release: NIH's NLP-mined labels against the radiologists' labels of Majkowska et al.
2019 (`resources/google2019_nih-chest-xray-labels.csv.gz`; its findings and their NIH counterparts in
`references.yaml`, `expert_labels`), on the test images both cover.

- **Agreement.** Sensitivity (the share of the experts' positives NIH calls positive), specificity (of the experts'
  negatives, the share NIH calls negative) and Cohen's kappa of NIH's label against the experts'.
- **The models against both.** Each seed's AUROC, and the ensemble's, scored once against NIH's labels and once
  against the experts' on the same images, and the difference (experts − NIH) tested, paired, Holm over every model
  and finding. For an expert finding that covers several NIH findings ("Nodule or mass"), NIH's label is positive
  when any of them is, and the model's score is the largest of their probabilities.

Every interval comes from one patient bootstrap of these images (`report.bootstrap`, `report.bootstrap_seed`); a
statistic gets one only with at least `report.min_positives` patients on each side it rests on (expert positives
for sensitivity, expert negatives for specificity, both for kappa and AUROC). The phantom's image ids are real NIH
ids, but its images are drawn: its predictions are never scored against the experts.
"""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxrstudy.errors import InputError
from cxrstudy.reporting import naming, scoring
from cxrstudy.reporting.cells import Diff, Table, WithCI, pvalue
from cxrstudy.reporting.inference import Estimate, Stat, Tested, estimate, estimate_difference, family, none
from cxrstudy.reporting.naming import Contrast, Model
from cxrstudy.reporting.results import Predictions, make_ensemble
from cxrstudy.reporting.stats import bootstrap_auroc, patient_counts
from cxrstudy.reporting.study import Settings
from cxrstudy.reporting.tables import METHOD_NAMES

IMAGE, PATIENT, SET = "Image Index", "Patient ID", "Set Id"
EXPERT, NIH = "experts", "NIH"


@dataclass(frozen=True)
class ExpertLabels:
    """The experts' labels: one row per image (image, patient, set, one 0/1 column per expert finding) and, per
    expert finding, the NIH findings it covers."""

    table: pd.DataFrame
    findings: dict[str, list[str]]
    name: str
    source: str
    file: str


def load_expert_labels() -> ExpertLabels:
    """The committed labels file and its entry in `references.yaml`; an error naming the file when unusable."""
    folder = resources.files("cxrstudy") / "resources"
    try:
        entry = yaml.safe_load((folder / "references.yaml").read_text())["expert_labels"]
        name = str(entry["file"])
        text = gzip.decompress((folder / name).read_bytes()).decode()
        findings = {str(k): [str(n) for n in v] for k, v in entry["findings"].items()}
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        table = pd.DataFrame({"image": frame[IMAGE], "patient": frame[PATIENT], "set": frame[SET]})
        for finding in findings:
            values = frame[finding]
            if not values.isin(("YES", "NO")).all():
                raise ValueError(f"column {finding!r} holds {sorted(set(values) - {'YES', 'NO'})[:3]}; YES or NO")
            table[finding] = (values == "YES").astype(np.float64)
    except (KeyError, ValueError, OSError, yaml.YAMLError) as err:
        raise InputError(f"resources/references.yaml expert_labels or its file: unusable ({type(err).__name__}: "
                         f"{err})") from None
    return ExpertLabels(table, findings, str(entry["name"]), " ".join(str(entry["source"]).split()), name)


def _cells(nih: np.ndarray, expert: np.ndarray, index: np.ndarray, n_patients: int) -> np.ndarray:
    """Per patient, its images in each cell of the 2 x 2 table: (NIH 1 expert 1, NIH 0 expert 1, NIH 1 expert 0,
    NIH 0 expert 0); P x 4."""
    cells = [(nih == 1) & (expert == 1), (nih == 0) & (expert == 1), (nih == 1) & (expert == 0),
             (nih == 0) & (expert == 0)]
    return np.stack([np.bincount(index[c], minlength=n_patients) for c in cells], axis=1).astype(np.float64)


def agreement(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sensitivity, specificity and Cohen's kappa of NIH's label against the experts' from 2 x 2 tables (rows of
    `_cells`' columns); NaN where undefined."""
    tp, fn, fp, tn = (table[..., j] for j in range(4))
    n = tp + fn + fp + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        observed = (tp + tn) / n
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n ** 2
        kappa = (observed - expected) / (1 - expected)
    return sens, spec, kappa


@dataclass(frozen=True)
class FindingQuality:
    """One expert finding on the test images the experts labelled: counts, agreement, and per model the AUROC
    against both label sets with the tested difference."""

    finding: str
    covers: list[str]
    images: int
    patients: int
    expert_positive: tuple[int, int]  # images, patients
    nih_positive: tuple[int, int]
    sensitivity: Estimate
    specificity: Estimate
    kappa: Estimate
    auroc: list[tuple[Model, Estimate, Estimate, Tested | None]]  # model, against NIH, against the experts, gap


@dataclass(frozen=True)
class LabelQuality:
    source: ExpertLabels
    findings: list[FindingQuality]
    skipped: list[str]  # expert findings whose NIH findings the model does not predict
    settings: Settings


def _patients(patients: np.ndarray, rows: np.ndarray) -> int:
    return len(set(patients[rows].tolist()))


def label_quality(preds: Sequence[Predictions], seeds: Sequence[int], experts: ExpertLabels,
                  settings: Settings) -> LabelQuality:
    """Agreement and the models' AUROC against both label sets, on the test images in `experts`."""
    first = preds[0]
    labelled = experts.table.set_index("image")
    keep = np.array([n in labelled.index for n in first.images])
    models: list[tuple[Model, Predictions]] = [(naming.seed(s), p) for s, p in zip(seeds, preds, strict=True)]
    ens = make_ensemble(preds)[0]
    if ens is not None:
        models.append((naming.ensemble(len(seeds)), ens))
    out: list[FindingQuality] = []
    skipped: list[str] = []
    items: list[tuple[Contrast, Estimate]] = []
    slots: list[tuple[int, Model, Estimate, Estimate, int | None]] = []
    for finding, covers in experts.findings.items():
        if not keep.any() or any(c not in first.findings for c in covers):
            skipped.append(finding)
            continue
        cols = np.array([first.findings.index(c) for c in covers])
        nih_cells = first.labels[np.ix_(keep, cols)]
        valid = ~np.isnan(nih_cells).all(axis=1)
        rows = np.flatnonzero(keep)[valid]
        images = [first.images[i] for i in rows]
        nih = (np.nan_to_num(nih_cells[valid], nan=0.0) == 1).any(axis=1).astype(np.float64)
        expert = labelled.loc[images, finding].to_numpy(dtype=np.float64)
        patients = first.patients[rows]
        ids, index = np.unique(patients, return_inverse=True)
        per_patient = _cells(nih, expert, index, len(ids))
        counts = patient_counts(len(ids), settings.resamples, settings.seed)
        jack = per_patient.sum(axis=0) - per_patient
        stats = [Stat(float(p[0]), d, j) for p, d, j in zip(agreement(per_patient.sum(axis=0)[None]),
                                                            agreement(counts @ per_patient), agreement(jack),
                                                            strict=True)]
        pos = _patients(patients, expert == 1)
        neg = _patients(patients, expert == 0)
        enough_pos, enough_neg = pos >= settings.min_positives, neg >= settings.min_positives
        sens, spec, kappa = (estimate(s, settings.level, settings.single) if ok else none(s.point)
                             for s, ok in zip(stats, (enough_pos, enough_neg, enough_pos and enough_neg),
                                              strict=True))
        nih_pos = _patients(patients, nih == 1)
        k = len(out)
        out.append(FindingQuality(finding, covers, len(rows), len(ids), (int(expert.sum()), pos),
                                  (int(nih.sum()), nih_pos), sens, spec, kappa, []))
        for model, pred in models:
            score = pred.probs[np.ix_(rows, cols)].max(axis=1)
            both = np.stack([nih, expert], axis=1)
            boot = bootstrap_auroc(both, np.stack([score, score], axis=1), patients, settings.resamples,
                                   settings.seed)
            point = scoring.auroc(both, np.stack([score, score], axis=1))
            a, b = (Stat(float(point[j]), boot.per_class[:, j], boot.jackknife[:, j]) for j in (0, 1))
            ok_nih = min(nih_pos, _patients(patients, nih == 0)) >= settings.min_positives
            ok_exp = enough_pos and enough_neg
            against_nih = estimate(a, settings.level, settings.single) if ok_nih else none(a.point)
            against_exp = estimate(b, settings.level, settings.single) if ok_exp else none(b.point)
            slot = None
            if ok_nih and ok_exp and settings.resamples:
                slot = len(items)
                items.append((Contrast(naming.LABEL_SET, naming.scored_on(model, f"{EXPERT} {finding}"),
                                       naming.scored_on(model, f"{NIH} {finding}")),
                              estimate_difference(b, a, settings.level, settings.difference)))
            slots.append((k, model, against_nih, against_exp, slot))
    tested = family(items, settings.level)
    for k, model, against_nih, against_exp, slot in slots:
        out[k].auroc.append((model, against_nih, against_exp, None if slot is None else tested[slot]))
    return LabelQuality(experts, out, skipped, settings)


def expert_counts(experts: ExpertLabels) -> dict[str, Any]:
    """What the labels file holds: images and patients per set, and each finding's positives."""
    t = experts.table
    return {"images": len(t), "patients": int(t["patient"].nunique()),
            "sets": {str(k): int(v) for k, v in t["set"].value_counts().sort_index().items()},
            "positives": {f: int(t[f].sum()) for f in experts.findings}}


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def quality_summary(quality: LabelQuality | None) -> dict[str, Any]:
    """`metrics/report.json`'s `label_quality`: per expert finding the images and the agreement with intervals, and
    per model the AUROC against each label set."""
    if quality is None:
        return {}
    out: dict[str, Any] = {}
    for f in quality.findings:
        entry: dict[str, Any] = {"images": f.images, "patients": f.patients, "expert_positive_patients":
                                 f.expert_positive[1]}
        for name, e in (("sensitivity", f.sensitivity), ("specificity", f.specificity), ("kappa", f.kappa)):
            entry[name] = {"value": _clean(e.value), "low": _clean(e.low), "high": _clean(e.high)}
        entry["auroc"] = {("ensemble" if m.kind == naming.ENSEMBLE else f"seed_{m.seed}"):
                          {"nih": _clean(a.value), "experts": _clean(b.value)} for m, a, b, _ in f.auroc}
        out[f.finding] = entry
    return {"label_quality": out}


def agreement_table(quality: LabelQuality) -> Table:
    s = quality.settings
    ci = f"{s.level:.0%} CI, {METHOD_NAMES[s.single]}"
    rows = [[f.finding, " or ".join(f.covers), f.images, f.patients,
             f"{f.expert_positive[1]} / {f.expert_positive[0]}", f"{f.nih_positive[1]} / {f.nih_positive[0]}",
             WithCI(f.sensitivity), WithCI(f.specificity), WithCI(f.kappa)] for f in quality.findings]
    return Table(["Experts' finding", "NIH finding(s)", "Test images", "Patients",
                  "Expert positives, patients / images", "NIH positives, patients / images",
                  f"Sensitivity of NIH's label [{ci}]", f"Specificity [{ci}]", f"Cohen's kappa [{ci}]"],
                 ["l", "l", "r", "r", "r", "r", "c", "c", "c"], rows)


def auroc_table(quality: LabelQuality) -> Table:
    s = quality.settings
    ci = f"{s.level:.0%} CI, {METHOD_NAMES[s.single]}"
    rows = [[f.finding, naming.label(m), WithCI(a), WithCI(b), Diff(t) if t else None,
             pvalue(t.p_holm) if t else None] for f in quality.findings for m, a, b, t in f.auroc]
    return Table(["Experts' finding", "Model", f"AUROC against NIH's labels [{ci}]",
                  f"AUROC against the experts' labels [{ci}]",
                  f"Experts − NIH [{s.level:.0%} CI, {METHOD_NAMES[s.difference]}, paired]", "Holm-adjusted p"],
                 ["l", "l", "c", "c", "c", "r"], rows)
