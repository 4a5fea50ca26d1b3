"""A synthetic seed study in the pipeline's file layout: metrics files, test and validation predictions (in the
split's order, label cells 1 / 0 / empty when masked, string patient ids), the split's lists and summary, training
histories, and a coverage file. Shared by the report, figure and comparison tests.

The metrics files carry the evaluate stage's keys, computed with the report's own masked scoring; the pipeline test
(`tests/test_pipeline.py`) checks the real evaluate stage against the report end to end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.params import Params
from cxrstudy.reporting import report, scoring
from cxrstudy.reporting.coverage import KINDS
from cxrstudy.reporting.inference import METHODS
from tests.conftest import tiny_params

STUDY_SEEDS = [12, 22, 32, 42]
# NIH ChestX-ray14's label space, alphabetical; CheXpert's, in its own column order. Label names are data: these are
# what a predictions file of each dataset would carry.
NIH_NAMES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
             "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
CHEXPERT_NAMES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                  "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                  "Fracture", "Support Devices")
PROTOCOL = "per-class thresholds maximising F1 on the validation set"


@dataclass
class Study:
    """Metrics, predictions, split lists and histories of a synthetic seed study under `root`."""

    root: Path
    params: Params

    @property
    def metrics(self) -> Path:
        return self.root / "metrics/eval"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def history(self) -> Path:
        return self.root / "plots/train"

    @property
    def splits(self) -> Path:
        return self.root / "data/splits"

    @property
    def coverage(self) -> Path:
        return self.root / "metrics/coverage.json"

    def metrics_of(self, seed: int) -> dict[str, Any]:
        return json.loads((self.metrics / f"seed_{seed}.json").read_text())

    def run(self, out: Path | None = None, params: Params | None = None, **paths: Any) -> str:
        out = out or self.root / "reports/report.md"
        kwargs: dict[str, Any] = {"predictions_dir": self.predictions, "history_dir": None, "raw_dir": None,
                                  "processed_dir": None, "figures_dir": None, "plots_dir": None,
                                  "summary_file": self.root / "metrics/report.json",
                                  "inputs": report.Inputs(self.coverage)}
        kwargs.update(paths)
        report.run(params or self.params, self.metrics, self.splits, out, **kwargs)
        return out.read_text()


def write_coverage(path: Path, params: Params, single: str = "bca", difference: str = "normal",
                   value: float = 0.93, counts: tuple[int, ...] = (2, 5, 10, 30),
                   aurocs: tuple[float, ...] = (0.75, 0.99)) -> Path:
    """A coverage file of the coverage stage's shape for `params` (the methods chosen and one coverage everywhere):
    the stage itself is tested in tests/test_coverage.py; report tests need only its choice."""
    r = params.report
    if r.bootstrap < 2:  # no resamples: the stage chooses no method
        single = difference = "none"
    cell = {"coverage": value, "width": 0.1, "without_interval": 0.0}
    grid = {kind: {m: {str(k): {f"{a:g}": dict(cell) for a in aurocs} for k in counts} for m in METHODS}
            for kind in KINDS}
    choice = {"threshold": r.min_positives, "tolerance": 0.025,
              **{kind: {"method": m, "worst_coverage": dict.fromkeys(METHODS, value), "supported_threshold": 10}
                 for kind, m in (("single", single), ("difference", difference))}}
    design = {**r.coverage.model_dump(), "resamples": r.bootstrap, "level": r.level, "images": 300,
              "min_positives": r.min_positives}
    mean = {kind: {m: dict(cell) for m in METHODS} for kind in KINDS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"design": design, **grid, "mean": mean, "choice": choice}))
    return path


def _labels(rng: np.random.Generator, n: int, names: tuple[str, ...], counts: dict[str, int]) -> np.ndarray:
    """Random labels; a finding named in `counts` gets exactly that many positives."""
    prevalence = rng.uniform(0.06, 0.2, len(names))
    labels = (rng.random((n, len(names))) < prevalence).astype(np.float64)
    for k, name in enumerate(names):
        if name in counts:
            labels[:, k] = 0
            labels[rng.choice(n, counts[name], replace=False), k] = 1
        elif labels[:, k].sum() == 0:
            labels[0, k] = 1
    return labels


def _probs(rng: np.random.Generator, labels: np.ndarray, strength: np.ndarray, shared: np.ndarray,
           noise: float) -> np.ndarray:
    """Image difficulty shared by all seeds plus seed noise, as with real seeds; float32 like the model's."""
    logits = strength * (2 * np.nan_to_num(labels) - 1) + shared + rng.normal(0, noise, labels.shape) - 1.5
    return (1 / (1 + np.exp(-logits))).astype(np.float32).astype(np.float64)


def write_predictions(path: Path, names: list[str], patients: list[str], findings: tuple[str, ...],
                      labels: np.ndarray, probs: np.ndarray) -> None:
    """The evaluate stage's layout: image, patient, label_<finding>... (1, 0, or empty when masked), prob_<finding>."""
    frame = pd.DataFrame({"image": names, "patient": patients})
    for k, name in enumerate(findings):
        frame[f"label_{name}"] = ["" if math.isnan(v) else str(int(v)) for v in labels[:, k]]
    for k, name in enumerate(findings):
        frame[f"prob_{name}"] = probs[:, k].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n", float_format="%.9g")


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def metrics(seed: int, loss: float, findings: tuple[str, ...], val: tuple[np.ndarray, np.ndarray],
            test: tuple[np.ndarray, np.ndarray], bins: int) -> dict[str, Any]:
    """A metrics file with the evaluate stage's keys (masked cells left out of each finding)."""
    (vl, vp), (tl, tp) = val, test
    auroc = scoring.auroc(tl, tp)
    chosen = scoring.thresholds(vl, vp)
    f1, tuned = scoring.f1(tl, tp, chosen), scoring.f1(tl, tp, scoring.thresholds(tl, tp))
    calib = scoring.calibration(tl, tp, bins)

    def by(values: Any) -> dict[str, float | None]:
        return {n: _clean(v) for n, v in zip(findings, values, strict=True)}

    def count(labels: np.ndarray) -> dict[str, int]:
        return {n: int(np.nansum(labels[:, k])) for k, n in enumerate(findings)}

    return {"seed": seed, "loss": round(loss, 6), "auroc_mean": _clean(float(np.nanmean(auroc))),
            "f1_mean": _clean(float(np.nanmean(f1))), "f1_test_tuned_mean": _clean(float(np.nanmean(tuned))),
            "f1_protocol": PROTOCOL, "auroc": by(auroc), "f1": by(f1), "f1_test_tuned": by(tuned),
            "threshold": by(chosen), "n_val": len(vl), "n_test": len(tl), "test_positives": count(tl),
            "val_positives": count(vl), "brier": by(calib.brier), "brier_mean": _clean(calib.brier_mean),
            "ece": by(calib.ece), "ece_mean": _clean(calib.ece_mean), "calibration_bins": bins,
            "mean_prob": _clean(calib.mean_prob), "prevalence": _clean(calib.prevalence), "environment": {}}


def make_study(root: Path, seeds: list[int] | None = None, n_test: int = 280, n_patients: int = 190,
               counts: dict[str, int] | None = None, bootstrap: int = 200, epochs: int = 3,
               names: list[str] | None = None, strength: dict[str, float] | None = None, noise: float = 0.35,
               offset: dict[int, float] | None = None, data_seed: int = 7, findings: tuple[str, ...] = NIH_NAMES,
               masked: float = 0.0, coverage: dict[str, Any] | None = None, **override: Any) -> Study:
    """A seed study with the real file formats. `counts`: exact test positives for some findings (0 = none);
    `strength`: how separable a finding is (large = AUROC 1); `offset`: extra signal for a seed (a better seed);
    `findings`: the label space; `masked`: the share of label cells left empty (uncertain, under `ignore`)."""
    seeds = seeds or STUDY_SEEDS
    params = tiny_params(seeds=seeds, **{"report": {"bootstrap": bootstrap, "bootstrap_seed": 0},
                                         "ingest": {"source": "phantom"}, "split": {"method": "official"},
                                         **override})
    data = np.random.default_rng(data_seed)
    test_labels, val_labels = _labels(data, n_test, findings, counts or {}), _labels(data, 150, findings, {})
    for labels in (test_labels, val_labels):
        labels[(data.random(labels.shape) < masked) & (labels == 0)] = np.nan
    patients = [f"p{v:05d}" for v in np.sort(data.integers(0, n_patients, n_test)) + 1000]
    val_patients = [f"p{v:05d}" for v in np.sort(data.integers(0, 100, 150)) + 9000]
    image_names = names[:n_test] if names else [f"{i:08d}_000.png" for i in range(n_test)]
    val_names = [f"{i:08d}_001.png" for i in range(150)]
    signal = data.uniform(0.3, 1.2, len(findings))
    for name, value in (strength or {}).items():
        signal[findings.index(name)] = value
    test_shared, val_shared = data.normal(0, 1.0, test_labels.shape), data.normal(0, 1.0, val_labels.shape)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        boost = signal + (offset or {}).get(seed, 0.0)
        test_probs = _probs(rng, test_labels, boost, test_shared, noise)
        val_probs = _probs(rng, val_labels, boost, val_shared, noise)
        found = metrics(seed, 0.04 + seed / 1e4, findings, (val_labels, val_probs), (test_labels, test_probs),
                        params.evaluate.calibration_bins)
        (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
        (root / f"metrics/eval/seed_{seed}.json").write_text(json.dumps(found, indent=2, sort_keys=True))
        write_predictions(root / f"predictions/seed_{seed}.csv", image_names, patients, findings, test_labels,
                          test_probs)
        write_predictions(root / f"predictions/val/seed_{seed}.csv", val_names, val_patients, findings, val_labels,
                          val_probs)
        history = pd.DataFrame({"epoch": range(1, epochs + 1), "train_loss": np.linspace(0.3, 0.1, epochs) + seed / 1e3,
                                "val_loss": np.linspace(0.35, 0.2, epochs), "val_auroc": np.linspace(0.6, 0.7, epochs),
                                "lr": 1e-3})
        (root / "plots/train").mkdir(parents=True, exist_ok=True)
        history.to_csv(root / f"plots/train/seed_{seed}.csv", index=False)
    write_split(root / "data/splits", {"test": (image_names, patients), "val": (val_names, val_patients)})
    write_coverage(root / "metrics/coverage.json", params, **(coverage or {}))
    return Study(root, params)


def write_split(folder: Path, parts: dict[str, tuple[list[str], list[str]]]) -> None:
    """The split stage's lists (one image a line, in order) and summary (images and patients per part)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"method": "official", "seed": 0}
    for part, (images, patients) in parts.items():
        (folder / f"{part}.txt").write_text("".join(f"{n}\n" for n in images))
        summary[part] = {"images": len(images), "patients": len(set(patients))}
    (folder / "summary.json").write_text(json.dumps(summary))


# NIH's findings that CheXpert shares (resources/label_map.csv), under NIH's names, and CheXpert's name for each.
SHARED = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
          "Edema": "Edema", "Effusion": "Pleural Effusion", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax"}


def make_external(study: Study, n_test: int = 240, n_patients: int = 160, strength: float | dict[str, float] = 0.9,
                  counts: dict[str, int] | None = None, data_seed: int = 11, masked: float = 0.0,
                  shared: dict[str, str] | None = None, noise_seed: int = 100) -> Path:
    """The external stage's files for every seed of `study`: `metrics/external/seed_N.json` (its keys, AUROCs from
    the predictions) and `predictions/external/seed_N.csv` (the model's names for the shared findings). `strength`:
    how separable each finding is at the external site (lower than the internal site's plants a drop); `noise_seed`:
    added to each seed for the seeds' noise there."""
    shared = shared or SHARED
    names = tuple(shared)
    data = np.random.default_rng(data_seed)
    labels = _labels(data, n_test, names, counts or {})
    labels[(data.random(labels.shape) < masked) & (labels == 0)] = np.nan
    patients = [f"x{v:05d}" for v in np.sort(data.integers(0, n_patients, n_test))]
    images = [f"patient{i:05d}_study1_view1_frontal.jpg" for i in range(n_test)]
    signal = np.array([strength.get(n, 0.9) if isinstance(strength, dict) else strength for n in names])
    common = data.normal(0, 1.0, labels.shape)
    for seed in study.params.seeds:
        probs = _probs(np.random.default_rng(seed + noise_seed), labels, signal, common, 0.35)
        auroc = scoring.auroc(labels, probs)
        write_predictions(study.root / f"predictions/external/seed_{seed}.csv", images, patients, names, labels, probs)
        payload = {"seed": seed, "external": {
            "source": "chexpert_phantom", "name": "CheXpert-shaped phantom (site B)", "site": "B",
            "label_source": "CheXpert's labeler on real report rows", "official_test": "every image",
            "uncertain": "ignore", "findings": dict(shared), "n_test": n_test,
            "test_patients": len(set(patients)), "auroc": {n: _clean(v) for n, v in zip(names, auroc, strict=True)},
            "auroc_mean": _clean(float(np.nanmean(auroc)))}}
        (study.root / "metrics/external").mkdir(parents=True, exist_ok=True)
        (study.root / f"metrics/external/seed_{seed}.json").write_text(json.dumps(payload, indent=2))
    return study.root / "metrics/external"


def no_external(study: Study) -> Path:
    """What the external stage writes with `ingest.external: none`, for every seed of `study`."""
    (study.root / "metrics/external").mkdir(parents=True, exist_ok=True)
    (study.root / "predictions/external").mkdir(parents=True, exist_ok=True)
    for seed in study.params.seeds:
        (study.root / f"metrics/external/seed_{seed}.json").write_text(json.dumps(
            {"seed": seed, "external": None, "reason": "no external test set (ingest.external: none)"}))
        (study.root / f"predictions/external/seed_{seed}.csv").write_text("image,patient\n")
    return study.root / "metrics/external"


def write_dataset(study: Study, folder: Path | None = None, source: str = "phantom",
                  label_source: str = "real NIH label rows (NLP-mined)", official_test: str = "the phantom's own",
                  data_seed: int = 5, ap_share: float = 0.3) -> Path:
    """The contract's `dataset.json` and `images.csv` for `study`'s test and validation images (sex, age, view and
    follow-up drawn per patient and image, labels from the predictions); returns the dataset.json path."""
    from cxrstudy.data.dataset import COLUMNS, DatasetInfo

    folder = folder or study.root / "data/raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(data_seed)
    frames = []
    for part in ("seed_{}.csv", "val/seed_{}.csv"):
        frame = pd.read_csv(study.predictions / part.format(study.params.seeds[0]), dtype=str,
                            keep_default_na=False)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    findings = [c[len("label_"):] for c in table.columns if c.startswith("label_")]
    patients = sorted(set(table["patient"]))
    sex = dict(zip(patients, rng.choice(["M", "F"], len(patients)), strict=True))
    age = dict(zip(patients, rng.integers(20, 85, len(patients)), strict=True))
    out = pd.DataFrame({"image": table["image"], "patient": table["patient"],
                        "study": table["patient"] + "_" + table.groupby("patient").cumcount().astype(str),
                        "follow_up": table.groupby("patient").cumcount(),
                        "sex": table["patient"].map(sex), "age": table["patient"].map(age).astype(str),
                        "view": np.where(rng.random(len(table)) < ap_share, "AP", "PA"), "site": "A",
                        "official_split": ""})
    for name in findings:
        out[name] = table[f"label_{name}"]
    out = out[[*COLUMNS, *findings]]
    out.to_csv(folder / "images.csv", index=False)
    info = DatasetInfo(source, "synthetic", "A", "nih", tuple(findings), "ignore", label_source, official_test,
                       {"images": len(out)})
    (folder / "dataset.json").write_text(json.dumps(info.to_json()))
    return folder / "dataset.json"


def write_localize(study: Study, hit: dict[int, float] | float = 0.4, chance: float = 0.06, shuffled: float = 0.15,
                   boxes_per_finding: dict[str, int] | None = None, data_seed: int = 3) -> tuple[Path, Path]:
    """The evaluate stage's localisation outputs for every seed of `study`, `metrics/localize/seed_N.json` (summed up
    by the stage's own `summarize` from per-box hits drawn with these rates) and `heatmaps/seed_N.npz` (one figure
    sample per finding); returns both folders."""
    from cxrstudy.learning import boxscore, localize

    boxes_per_finding = boxes_per_finding or {"Infiltration": 40, "Effusion": 20, "Nodule": 6}
    rng = np.random.default_rng(data_seed)
    images, patients = [], []
    pred = pd.read_csv(study.predictions / f"seed_{study.params.seeds[0]}.csv", dtype=str, keep_default_na=False)
    rows = rng.choice(len(pred), sum(boxes_per_finding.values()), replace=False)
    images, patients = pred["image"].to_numpy()[rows], pred["patient"].to_numpy()[rows]
    boxes = pd.DataFrame({"image": images, "patient": patients,
                          "finding": [f for f, n in boxes_per_finding.items() for _ in range(n)]})
    ids, index = np.unique(patients, return_inverse=True)
    params = study.params
    width = 1 + len(params.localize.iobb_thresholds)
    draws = boxscore.patient_draws(len(ids), params.report.bootstrap, params.report.bootstrap_seed)
    size = 16
    for seed in params.seeds:
        rate = hit.get(seed, 0.4) if isinstance(hit, dict) else hit
        local = np.random.default_rng(seed)
        scores = ((local.random((len(boxes), width)) < rate).astype(float), np.full((len(boxes), width), chance),
                  (local.random((len(boxes), width)) < shuffled).astype(float))
        findings = {name: localize.summarize((boxes["finding"] == name).to_numpy(), boxes, scores, draws, index,
                                             params) for name in boxes_per_finding}
        pooled = localize.summarize(np.ones(len(boxes), bool), boxes, scores, draws, index, params)
        metrics = {"seed": seed, "method": localize.METHOD, "layer": params.localize.layer, "map_size": [4, 4],
                   "image_size": size, "box_levels": params.localize.box_levels,
                   "iobb_thresholds": params.localize.iobb_thresholds, "bootstrap": params.report.bootstrap,
                   "level": params.report.level, "flat_maps": 0, "heatmaps": len(boxes), "pooled": pooled,
                   "findings": findings}
        (study.root / "metrics/localize").mkdir(parents=True, exist_ok=True)
        (study.root / f"metrics/localize/seed_{seed}.json").write_text(json.dumps(metrics, indent=2))
        first = [int(np.flatnonzero(boxes["finding"] == f)[0]) for f in boxes_per_finding]
        arrays = {"seed": np.array(seed), "layer": np.array(params.localize.layer),
                  "image": np.array([images[i] for i in first], dtype=str),
                  "finding": np.array(list(boxes_per_finding), dtype=str),
                  "pixels": local.integers(0, 255, (len(first), size, size)).astype(np.uint8),
                  "heatmap": local.integers(0, 255, (len(first), size, size)).astype(np.uint8),
                  "truth": np.array([(s, 0.2, 0.2, 0.5, 0.5) for s in range(len(first))], dtype=np.float64),
                  "predicted": np.array([(s, 0.25, 0.25, 0.5, 0.6) for s in range(len(first))], dtype=np.float64),
                  "peak": np.full((len(first), 2), 0.3), "pointing_hit": np.ones(len(first), bool)}
        (study.root / "heatmaps").mkdir(parents=True, exist_ok=True)
        with (study.root / f"heatmaps/seed_{seed}.npz").open("wb") as handle:
            localize.write_npz(handle, arrays)
    return study.root / "metrics/localize", study.root / "heatmaps"
