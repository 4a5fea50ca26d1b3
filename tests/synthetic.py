"""A synthetic seed study in the pipeline's file layout, written by the evaluate stage's own functions: metrics files,
test and validation predictions, training histories. Shared by the report, figure and comparison tests.

Its label space is NIH's (the names of `cxrstudy.data.nihtable`, as a dataset's `dataset.json` would give them);
patients are strings, as in the dataset contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.data.nihtable import FINDINGS
from cxrstudy.learning.evaluate import compute_metrics, save_predictions
from cxrstudy.params import Params
from cxrstudy.reporting import report
from tests.conftest import tiny_params

STUDY_SEEDS = [12, 22, 32, 42]


@dataclass
class Study:
    """Metrics, predictions and histories of a synthetic seed study under `root`."""

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

    def metrics_of(self, seed: int) -> dict[str, Any]:
        return json.loads((self.metrics / f"seed_{seed}.json").read_text())

    def run(self, out: Path | None = None, params: Params | None = None, **paths: Any) -> str:
        out = out or self.root / "reports/report.md"
        kwargs: dict[str, Any] = {"predictions_dir": self.predictions, "history_dir": None, "raw_dir": None,
                                  "processed_dir": None, "figures_dir": None, "plots_dir": None,
                                  "summary_file": self.root / "metrics/report.json"}
        kwargs.update(paths)
        report.run(params or self.params, self.metrics, self.root / "data/splits", out, **kwargs)
        return out.read_text()


def _labels(rng: np.random.Generator, n: int, counts: dict[str, int]) -> np.ndarray:
    """Random labels; a finding named in `counts` gets exactly that many positives."""
    prevalence = rng.uniform(0.06, 0.2, len(FINDINGS))
    labels = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.float32)
    for k, name in enumerate(FINDINGS):
        if name in counts:
            labels[:, k] = 0
            labels[rng.choice(n, counts[name], replace=False), k] = 1
        elif labels[:, k].sum() == 0:
            labels[0, k] = 1
    return labels


def _probs(rng: np.random.Generator, labels: np.ndarray, strength: np.ndarray, shared: np.ndarray,
           noise: float) -> np.ndarray:
    """Image difficulty shared by all seeds plus seed noise, as with real seeds."""
    logits = strength * (2 * labels - 1) + shared + rng.normal(0, noise, labels.shape) - 1.5
    return 1 / (1 + np.exp(-logits))


def make_study(root: Path, seeds: list[int] | None = None, n_test: int = 280, n_patients: int = 190,
               counts: dict[str, int] | None = None, bootstrap: int = 200, epochs: int = 3,
               names: list[str] | None = None, strength: dict[str, float] | None = None, noise: float = 0.35,
               offset: dict[int, float] | None = None, data_seed: int = 7, **override: Any) -> Study:
    """A seed study with the real file formats. `counts`: exact test positives for some findings (0 = none);
    `strength`: how separable a finding is (large = AUROC 1); `offset`: extra signal for a seed (a better seed)."""
    seeds = seeds or STUDY_SEEDS
    params = tiny_params(seeds=seeds, **{"report": {"bootstrap": bootstrap, "bootstrap_seed": 0},
                                         "ingest": {"source": "phantom"}, "split": {"method": "official"},
                                         **override})
    data = np.random.default_rng(data_seed)
    test_labels = _labels(data, n_test, counts or {})
    val_labels = _labels(data, 150, {})
    patients = (np.sort(data.integers(0, n_patients, n_test)) + 1000).astype(str)
    val_patients = (np.sort(data.integers(0, 100, 150)) + 9000).astype(str)
    names = names[:n_test] if names else [f"{i:08d}_000.png" for i in range(n_test)]
    val_names = [f"{i:08d}_001.png" for i in range(150)]
    signal = data.uniform(0.3, 1.2, len(FINDINGS))
    for name, value in (strength or {}).items():
        signal[FINDINGS.index(name)] = value
    test_shared, val_shared = data.normal(0, 1.0, test_labels.shape), data.normal(0, 1.0, val_labels.shape)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        boost = signal + (offset or {}).get(seed, 0.0)
        test_probs = _probs(rng, test_labels, boost, test_shared, noise)
        val_probs = _probs(rng, val_labels, boost, val_shared, noise)
        metrics = compute_metrics(seed, 0.04 + seed / 1e4, (val_labels, val_probs), (test_labels, test_probs),
                                  calibration_bins=params.evaluate.calibration_bins, names=FINDINGS,
                                  patients=(val_patients, patients))
        (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
        (root / f"metrics/eval/seed_{seed}.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        save_predictions(root / f"predictions/seed_{seed}.csv", names, patients, test_labels, test_probs, FINDINGS)
        save_predictions(root / f"predictions/val/seed_{seed}.csv", val_names, val_patients, val_labels, val_probs,
                         FINDINGS)
        history = pd.DataFrame({"epoch": range(1, epochs + 1), "train_loss": np.linspace(0.3, 0.1, epochs) + seed / 1e3,
                                "val_loss": np.linspace(0.35, 0.2, epochs), "val_auroc": np.linspace(0.6, 0.7, epochs),
                                "lr": 1e-3})
        (root / "plots/train").mkdir(parents=True, exist_ok=True)
        history.to_csv(root / f"plots/train/seed_{seed}.csv", index=False)
    return Study(root, params)
