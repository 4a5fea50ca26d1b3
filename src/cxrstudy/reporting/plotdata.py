"""The figures' data: long-format tables, written as CSV for `dvc plots` and drawn by `cxrstudy.reporting.figures`.

Each figure is drawn from the same table that is written as CSV, so the PNG linked from the report and the
interactive plot show the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from cxrstudy.atomic import atomic_file
from cxrstudy.calibration import reliability

ROC_POINTS = 101  # false-positive-rate grid (steps of 0.01) of the ROC tables, whatever the test set's size


def roc_table(curves: dict[str, tuple[np.ndarray, np.ndarray]], findings: Sequence[str]) -> pd.DataFrame:
    """ROC curves on a fixed false-positive-rate grid: columns finding, model, point, fpr, tpr.

    `curves` maps a model's name to its test (labels, probabilities), N x C each (a NaN label: masked, left out).
    The tpr at a grid fpr is the highest one reached at or below it (the ROC step curve read from the left), so the
    table has `ROC_POINTS` rows per finding and model. A finding with one class only in a model's test set has no
    rows for it.
    """
    grid = np.linspace(0.0, 1.0, ROC_POINTS)
    frames = []
    for k, finding in enumerate(findings):
        for model, (labels, probs) in curves.items():
            keep = np.isfinite(labels[:, k])  # a masked cell takes no part in its finding
            y = labels[keep, k]
            if not 0 < y.sum() < len(y):
                continue
            fpr, tpr, _ = roc_curve(y, probs[keep, k])
            at = np.searchsorted(fpr, grid, side="right") - 1
            frames.append(pd.DataFrame({"finding": finding, "model": model, "point": np.arange(ROC_POINTS),
                                        "fpr": grid, "tpr": tpr[at]}))
    columns = ["finding", "model", "point", "fpr", "tpr"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def auroc_table(auroc_by_model: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per-class AUROC, one row per (finding, model); undefined values are left out. Columns finding, model, auroc."""
    rows = [(finding, model, value) for model, by_class in auroc_by_model.items()
            for finding, value in by_class.items() if not math.isnan(value)]
    return pd.DataFrame(rows, columns=["finding", "model", "auroc"])


def history_table(histories: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The train stage's per-epoch histories, stacked with a seed column first."""
    frames = [frame.assign(seed=seed)[["seed", *frame.columns]] for seed, frame in sorted(histories.items())]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["seed", "epoch"])


def write_csv(path: Path, table: pd.DataFrame, float_format: str = "%.6g") -> None:
    """A DVC plots data file: fixed float format, '\\n' line ends, no index."""
    with atomic_file(path) as handle:
        table.to_csv(handle, index=False, lineterminator="\n", float_format=float_format)


def reliability_table(models: dict[str, tuple[np.ndarray, np.ndarray]], bins: int) -> pd.DataFrame:
    """Reliability points, all findings pooled: columns model, bin, low, high, count, mean_prob, frequency (empty
    bins left out)."""
    frames = []
    for model, (labels, probs) in models.items():
        keep = np.isfinite(labels)  # masked cells left out
        r = reliability(labels[keep], probs[keep], bins)
        frames.append(pd.DataFrame({"model": model, "bin": np.arange(bins), "low": r.edges[:-1], "high": r.edges[1:],
                                    "count": r.count, "mean_prob": r.mean_prob, "frequency": r.frequency}))
    columns = ["model", "bin", "low", "high", "count", "mean_prob", "frequency"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table[table["count"] > 0].reset_index(drop=True)
