"""The report's figures: long-format tables (also DVC plots data) and byte-deterministic PNGs drawn from them.

Each figure is drawn from the same table that is written as CSV for `dvc plots`, so the PNG linked from the report and
the interactive plot show the same numbers. Matplotlib is used through `Figure` + the Agg canvas (no pyplot, no global
figure state), under matplotlib's default style whatever the user's matplotlibrc says, at a fixed dpi, and without
the "Software" PNG metadata: the same tables give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from cxrstudy.atomic import atomic_file

DPI = 100
ROC_POINTS = 101  # false-positive-rate grid (steps of 0.01) of the ROC tables, whatever the test set's size
ENSEMBLE = "ensemble"

# File names under reports/figures/ (the report links them) and under the plots folder (dvc.yaml names them).
ROC_PNG = "roc_curves.png"
AUROC_PNG = "auroc_by_seed.png"
CLAHE_PNG = "clahe_before_after.png"
TRAIN_PNG = "training_curves.png"
ROC_CSV = "roc.csv"
AUROC_CSV = "auroc.csv"
TRAIN_CSV = "train.csv"


def model_name(seed: int) -> str:
    return f"seed {seed}"


def roc_table(curves: dict[str, tuple[np.ndarray, np.ndarray]], findings: Sequence[str]) -> pd.DataFrame:
    """ROC curves on a fixed false-positive-rate grid: columns finding, model, point, fpr, tpr.

    `curves` maps a model's name to its test (labels, probabilities), N x C each. The tpr at a grid fpr is the
    highest one reached at or below it (the ROC step curve read from the left), so the table has `ROC_POINTS` rows
    per finding and model. A finding with one class only in a model's test set has no rows for it.
    """
    grid = np.linspace(0.0, 1.0, ROC_POINTS)
    frames = []
    for k, finding in enumerate(findings):
        for model, (labels, probs) in curves.items():
            y = labels[:, k]
            if not 0 < y.sum() < len(y):
                continue
            fpr, tpr, _ = roc_curve(y, probs[:, k])
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


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write `fig` as a PNG whose bytes depend only on what was drawn."""
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": None})


def _colors(models: Sequence[str]) -> dict[str, str]:
    cycle = [f"C{i % 10}" for i in range(len(models))]
    return {m: ("black" if m == ENSEMBLE else c) for m, c in zip(models, cycle, strict=True)}


def _style() -> AbstractContextManager[None]:
    """Matplotlib's defaults, so a user's matplotlibrc cannot change the bytes."""
    return matplotlib.style.context("default")


def plot_roc(table: pd.DataFrame, findings: Sequence[str], aurocs: dict[str, float], path: Path) -> None:
    """One panel per finding, one line per model (the ensemble dashed, black), the chance diagonal in grey."""
    models = list(dict.fromkeys(table["model"]))
    colors = _colors(models)
    with _style():
        fig = _new_figure(15, 9.5)
        axes = fig.subplots(3, 5, sharex=True, sharey=True).ravel()
        for ax, finding in zip(axes, findings, strict=False):
            _roc_panel(ax, table[table["finding"] == finding], models, colors)
            ax.set_title(f"{finding}  (mean AUROC {_fmt(aurocs.get(finding, math.nan))})", fontsize=9)
        for ax in axes[len(findings):]:
            ax.axis("off")
        handles, names = axes[0].get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, names, loc="center", title="model", frameon=False)
        fig.supxlabel("false positive rate")
        fig.supylabel("true positive rate")
        save_png(fig, path)


def _roc_panel(ax: Axes, rows: pd.DataFrame, models: list[str], colors: dict[str, str]) -> None:
    ax.plot([0, 1], [0, 1], color="0.75", linewidth=0.8)
    for model in models:
        curve = rows[rows["model"] == model]
        if curve.empty:
            continue
        ensemble = model == ENSEMBLE
        ax.step(curve["fpr"], curve["tpr"], where="post", label=model, color=colors[model],
                linewidth=1.6 if ensemble else 1.0, linestyle="--" if ensemble else "-")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    if rows.empty:
        ax.text(0.5, 0.5, "no positive in the test set", ha="center", va="center", fontsize=8)


@dataclass(frozen=True)
class Reference:
    """A published per-class AUROC drawn beside ours (a hollow marker), labelled with its split protocol."""

    label: str
    auroc: dict[str, float]
    marker: str


def plot_auroc_dots(table: pd.DataFrame, findings: Sequence[str], references: Sequence[Reference],
                    path: Path) -> None:
    """Per-class AUROC: a row per finding, a dot per seed (nudged apart), the ensemble as a cross, references hollow."""
    models = list(dict.fromkeys(table["model"]))
    colors = _colors(models)
    seeds = [m for m in models if m != ENSEMBLE]
    y_of = {finding: len(findings) - 1 - i for i, finding in enumerate(findings)}
    with _style():
        fig = _new_figure(7, 8)
        ax = fig.subplots()
        for ref in references:
            ys = [float(y_of[f]) for f in findings if f in ref.auroc]
            ax.scatter([ref.auroc[f] for f in findings if f in ref.auroc], ys, marker=ref.marker, s=46,
                       facecolors="none", edgecolors="0.45", label=ref.label, zorder=2)
        for model in models:
            rows = table[table["model"] == model]
            nudge = 0.0 if model == ENSEMBLE else 0.5 * (seeds.index(model) - (len(seeds) - 1) / 2) / max(1, len(seeds))
            ys = [y_of[f] + nudge for f in rows["finding"]]
            ax.scatter(rows["auroc"], ys, color=colors[model], label=model, zorder=3,
                       marker="x" if model == ENSEMBLE else "o", s=40 if model == ENSEMBLE else 22)
        ax.set_yticks([y_of[f] for f in findings], list(findings))
        ax.set_ylim(-0.7, len(findings) - 0.3)
        ax.set_xlabel("test AUROC")
        ax.grid(axis="x", color="0.9")
        fig.legend(loc="outside lower center", ncols=3, frameon=False, fontsize=8)
        save_png(fig, path)


def plot_training_curves(table: pd.DataFrame, path: Path) -> None:
    """Training loss, validation loss and validation mean AUROC per epoch, one line per seed."""
    panels = [("train_loss", "training loss"), ("val_loss", "validation loss"), ("val_auroc", "validation mean AUROC")]
    seeds = sorted(set(table["seed"]))
    colors = _colors([model_name(s) for s in seeds])
    with _style():
        fig = _new_figure(13, 3.8)
        axes = fig.subplots(1, 3)
        for ax, (column, title) in zip(axes, panels, strict=True):
            for seed in seeds:
                rows = table[table["seed"] == seed]
                if column in rows:
                    ax.plot(rows["epoch"], rows[column], marker="o", markersize=3, color=colors[model_name(seed)],
                            label=model_name(seed))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(color="0.9")
        if seeds:
            axes[-1].legend(frameon=False, fontsize=8)
        save_png(fig, path)


@dataclass(frozen=True)
class ClaheSample:
    name: str
    before: np.ndarray
    after: np.ndarray


def plot_clahe(samples: Sequence[ClaheSample], before_label: str, after_label: str, path: Path) -> None:
    """A column per sample image: above, the raw image resized; below, the processed image the model sees."""
    with _style():
        fig = _new_figure(2.6 * max(1, len(samples)), 5.6)
        axes = np.atleast_2d(fig.subplots(2, max(1, len(samples)), squeeze=False))
        for j, sample in enumerate(samples):
            for i, image in enumerate((sample.before, sample.after)):
                ax = axes[i, j]
                ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(sample.name, fontsize=8)
                if j == 0:
                    ax.set_ylabel(before_label if i == 0 else after_label, fontsize=8)
        save_png(fig, path)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"
