"""The report's figures: byte-deterministic PNGs drawn from the tables of `cxrstudy.reporting.plotdata` (also DVC
plots data).

Matplotlib is used through `Figure` + the Agg canvas (no pyplot, no global figure state), under matplotlib's default
style whatever the user's matplotlibrc says, at a fixed dpi, and without the "Software" PNG metadata: the same
tables give the same bytes. In a phantom run every figure's title says so, and no published (real-data) number is
drawn beside the phantom's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxrstudy.atomic import atomic_file
from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import naming, plotdata
from cxrstudy.reporting.results import Predictions, SeedMetrics, make_ensemble, read_history
from cxrstudy.reporting.stats import mean_sd

if TYPE_CHECKING:
    from cxrstudy.reporting.references import References
    from cxrstudy.reporting.study import SeedStudy

DPI = 100
ENSEMBLE = naming.label(naming.ensemble())

# File names under reports/figures/ (the report links them) and under the plots folder (dvc.yaml names them).
ROC_PNG = "roc_curves.png"
AUROC_PNG = "auroc_by_seed.png"
CLAHE_PNG = "clahe_before_after.png"
TRAIN_PNG = "training_curves.png"
RELIABILITY_PNG = "reliability.png"
ROC_CSV = "roc.csv"
AUROC_CSV = "auroc.csv"
TRAIN_CSV = "train.csv"
RELIABILITY_CSV = "reliability.csv"


def model_name(seed: int) -> str:
    return naming.label(naming.seed(seed))


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


def plot_roc(table: pd.DataFrame, findings: Sequence[str], aurocs: dict[str, float], path: Path,
             title: str = "") -> None:
    """One panel per finding, one line per model (the ensemble dashed, black), the chance diagonal in grey."""
    models = list(dict.fromkeys(table["model"]))
    colors = _colors(models)
    rows = max(1, math.ceil((len(findings) + 1) / 5))  # one panel per finding and one for the legend
    with _style():
        fig = _new_figure(15, 3.2 * rows)
        axes = np.atleast_1d(fig.subplots(rows, 5, sharex=True, sharey=True, squeeze=False).ravel())
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
        if title:
            fig.suptitle(title)
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
                    path: Path, title: str = "", labels: dict[str, str] | None = None) -> None:
    """Per-class AUROC: a row per finding (`labels` may rename them), a dot per seed (nudged apart), the ensemble as
    a cross, references hollow."""
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
        ax.set_yticks([y_of[f] for f in findings], [(labels or {}).get(f, f) for f in findings])
        ax.set_ylim(-0.7, len(findings) - 0.3)
        ax.set_xlabel("test AUROC")
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(axis="x", color="0.9")
        fig.legend(loc="outside lower center", ncols=3, frameon=False, fontsize=8)
        save_png(fig, path)


def plot_reliability(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """Observed positive rate against mean predicted probability per bin, one line per model, the diagonal grey;
    beside it, how many (image, finding) pairs fall in each bin (log scale)."""
    models = list(dict.fromkeys(table["model"]))
    colors = _colors(models)
    with _style():
        fig = _new_figure(11, 4.6)
        ax, counts = fig.subplots(1, 2)
        ax.plot([0, 1], [0, 1], color="0.75", linewidth=0.8)
        for model in models:
            rows = table[table["model"] == model]
            ensemble = model == ENSEMBLE
            ax.plot(rows["mean_prob"], rows["frequency"], marker="o", markersize=3, color=colors[model], label=model,
                    linestyle="--" if ensemble else "-", linewidth=1.6 if ensemble else 1.0)
            if not rows.empty:  # each bin drawn across its whole width, the last one included
                counts.step(np.r_[rows["low"], rows["high"].iloc[-1]], np.r_[rows["count"], rows["count"].iloc[-1]],
                            where="post", color=colors[model], linewidth=1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability (bin)")
        ax.set_ylabel("observed positive rate")
        ax.grid(color="0.9")
        ax.legend(frameon=False, fontsize=8)
        counts.set_yscale("log")
        counts.set_xlim(0, 1)
        counts.set_xlabel("predicted probability (bin)")
        counts.set_ylabel("(image, finding) pairs")
        counts.grid(color="0.9")
        if title:
            fig.suptitle(title)
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


# ------------------------------------------------------------------------------------------------ the report's set


@dataclass(frozen=True)
class FigurePaths:
    figures: Path
    plots: Path | None
    report_dir: Path
    history: Path | None
    raw: Path | None
    processed: Path | None


def relative_link(target: Path, report_dir: Path) -> str:
    """A Markdown link from the report's folder to `target`, with forward slashes."""
    return Path(os.path.relpath(target, report_dir)).as_posix()


def draw_figures(params: Params, seeds: list[SeedMetrics], preds: list[Predictions] | None,
                 study: SeedStudy | None, refs: References, paths: FigurePaths) -> dict[str, str]:
    """Write the report's PNGs (and, with `paths.plots`, the DVC plots data they are drawn from); return their
    links by name (roc, auroc, clahe, training, reliability)."""
    phantom = params.ingest.source == "phantom"
    tag = "Phantom run (synthetic images): " if phantom else ""

    def emit(png: str, csv: str | None, table: pd.DataFrame | None, float_format: str = "%.6g") -> str:
        if csv is not None and table is not None and paths.plots is not None:
            plotdata.write_csv(paths.plots / csv, table, float_format)
        return relative_link(paths.figures / png, paths.report_dir)

    paths.figures.mkdir(parents=True, exist_ok=True)
    names = {s.seed: model_name(s.seed) for s in seeds}
    links: dict[str, str] = {}
    aurocs: dict[str, dict[str, float]] = {names[s.seed]: s.auroc for s in seeds}
    if study is not None and study.ensemble is not None:
        aurocs[ENSEMBLE] = study.ensemble.auroc
    dots = plotdata.auroc_table(aurocs)
    references: list[Reference] = []
    if not phantom:  # published numbers are real-data numbers: never drawn beside a phantom's
        study_mean = {n: mean_sd([s.auroc[n] for s in refs.study.values()])[0] for n in refs.findings}
        references = [Reference(f"CheXNet [{refs.chexnet_split.short}]", refs.chexnet, "D"),
                      Reference(f"seed study, mean of seeds [{refs.study_split.short}]", study_mean, "s")]
    findings = seeds[0].findings
    if study is not None:
        labels = {n: f"{n} ({study.counts.patients[n]})" for n in findings}
        what = "positive test patients"
    else:
        labels = {n: f"{n} ({seeds[0].test_positives[n]})" for n in findings if n in seeds[0].test_positives}
        what = "test positives"
    references = [Reference(r.label, {n: v for n, v in r.auroc.items() if n in findings}, r.marker)
                  for r in references]
    plot_auroc_dots(dots, findings, references, paths.figures / AUROC_PNG,
                    f"{tag}test AUROC per finding ({what})", labels)
    links["auroc"] = emit(AUROC_PNG, AUROC_CSV,
                          pd.concat([dots, *[plotdata.auroc_table({r.label: r.auroc}) for r in references]]))
    if preds is not None:
        curves = {names[s.seed]: (p.labels, p.probs) for s, p in zip(seeds, preds, strict=True)}
        ensemble, _ = make_ensemble(preds)
        if ensemble is not None:
            curves[ENSEMBLE] = (ensemble.labels, ensemble.probs)
        roc = plotdata.roc_table(curves, findings)
        mean_auroc = {n: mean_sd([s.auroc[n] for s in seeds])[0] for n in findings}
        plot_roc(roc, findings, mean_auroc, paths.figures / ROC_PNG, f"{tag}ROC curves per finding")
        links["roc"] = emit(ROC_PNG, ROC_CSV, roc, "%.4g")  # 4 digits draw a curve; the file stays small
        bins = params.evaluate.calibration_bins
        points = plotdata.reliability_table(curves, bins)
        plot_reliability(points, paths.figures / RELIABILITY_PNG,
                         f"{tag}reliability, all findings pooled ({bins} bins)")
        links["reliability"] = emit(RELIABILITY_PNG, RELIABILITY_CSV, points)
    if paths.history is not None:
        history = plotdata.history_table({s.seed: read_history(paths.history / f"seed_{s.seed}.csv") for s in seeds})
        plot_training_curves(history, paths.figures / TRAIN_PNG)
        links["training"] = emit(TRAIN_PNG, TRAIN_CSV, history)
    if paths.raw is not None and paths.processed is not None:
        samples, before, after = clahe_samples(params, paths.raw, paths.processed, preds[0].images if preds else None)
        plot_clahe(samples, before, after, paths.figures / CLAHE_PNG)
        links["clahe"] = emit(CLAHE_PNG, None, None)
    return links


def clahe_samples(params: Params, raw_dir: Path, processed_dir: Path,
                  candidates: list[str] | None) -> tuple[list[Any], str, str]:
    """A few images (evenly spaced through the sorted test images) before and after preprocessing, same size."""
    from cxrstudy.data.imageio import ImageError, read_raw_images
    from cxrstudy.data.preprocess import process_image
    from cxrstudy.data.shards import load_processed

    images = load_processed(processed_dir)
    names = images.names
    row_of = {n: i for i, n in enumerate(names)}
    pool = sorted(n for n in (candidates or names) if n in row_of)
    if not pool:
        raise InputError(f"{processed_dir}: none of the test images is among the processed images")
    count = min(params.report.clahe_samples, len(pool))
    picks = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, count).round()]
    cfg = params.preprocess
    plain = cfg.model_copy(update={"clahe": False})
    try:
        raw = read_raw_images(raw_dir, picks)  # one scan of the archives for all the picks
    except ImageError as err:
        raise InputError(f"CLAHE figure: {err}") from None
    samples = [ClaheSample(name, process_image(raw[name], plain), np.asarray(images[row_of[name]])) for name in picks]
    size = cfg.image_size
    after = (f"CLAHE (clip {cfg.clip_limit}, {cfg.tile_grid}×{cfg.tile_grid} tiles), {size} px" if cfg.clahe
             else f"processed (CLAHE off), {size} px")
    return samples, f"raw, resized to {size} px", after
