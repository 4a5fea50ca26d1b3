"""The localisation figure: for a few test images per finding, the image with its box, then every seed's Grad-CAM
heatmap over it, side by side (how the seeds differ is the study's question).

Drawn from the localize stage's `heatmaps/seed_N.npz` files (the images, heatmaps and boxes it scored), as
`cxrstudy.reporting.figures` draws: a `Figure` on the Agg canvas, matplotlib's default style, a fixed dpi and no
"Software" metadata, so the same files give the same PNG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrstudy.errors import InputError
from cxrstudy.reporting.figures import DPI, save_png

OVERLAYS_PNG = "localisation_overlays.png"
PANEL_IN = 1.25  # inches per image panel
KEYS = ("seed", "layer", "image", "finding", "pixels", "heatmap", "truth", "predicted", "peak", "pointing_hit")


@dataclass(frozen=True)
class Heatmaps:
    """One seed's figure samples: per sample its image name, finding, pixels and heatmap (uint8, H x W), and the
    boxes (rows `sample, x0, y0, x1, y1` as fractions of the image), true and predicted; the heatmap's peak
    (x, y fractions) and whether it lies inside a true box."""

    seed: int
    layer: str
    image: list[str]
    finding: list[str]
    pixels: np.ndarray
    heatmap: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray
    peak: np.ndarray
    pointing_hit: np.ndarray


def read_heatmaps(path: Path) -> Heatmaps:
    """A localize stage's heatmaps file; `InputError` naming it when it is missing or not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise InputError(f"{path}: not a localize heatmaps file (no {', '.join(missing)}); re-run localize")
            a = {k: z[k] for k in KEYS}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the localize heatmaps ({err}); re-run localize") from None
    return Heatmaps(int(a["seed"].reshape(-1)[0]), str(a["layer"].reshape(-1)[0]), [str(s) for s in a["image"]],
                    [str(s) for s in a["finding"]], a["pixels"], a["heatmap"], a["truth"], a["predicted"], a["peak"],
                    a["pointing_hit"])


def _boxes(ax: Axes, rows: np.ndarray, sample: int, size: int, **style: object) -> None:
    for _, x0, y0, x1, y1 in rows[rows[:, 0] == sample]:
        ax.add_patch(Rectangle((x0 * size - 0.5, y0 * size - 0.5), (x1 - x0) * size, (y1 - y0) * size,
                               fill=False, **style))  # type: ignore[arg-type]


def _panel(ax: Axes, maps: Heatmaps, sample: int, overlay: bool) -> None:
    size = maps.pixels.shape[-1]
    ax.imshow(maps.pixels[sample], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if overlay and not maps.heatmap[sample].any():  # a flat map (scaled to all zeros): no evidence anywhere
        ax.text(0.5, 0.04, "flat: no evidence", transform=ax.transAxes, ha="center", va="bottom", fontsize=6,
                color="red")
    elif overlay:
        ax.imshow(maps.heatmap[sample], cmap="inferno", vmin=0, vmax=255, alpha=0.5, interpolation="nearest")
        _boxes(ax, maps.predicted, sample, size, edgecolor="cyan", linewidth=0.7, linestyle="--")
        hit = bool(maps.pointing_hit[sample])
        x, y = maps.peak[sample] * size - 0.5
        ax.plot([x], [y], marker="x", markersize=6, markeredgewidth=1.6, color="lime" if hit else "red")
    _boxes(ax, maps.truth, sample, size, edgecolor="lime", linewidth=1.2)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlays(files: Sequence[Path], path: Path, title: str = "") -> None:
    """One row per sample (finding, test image), one column for the image and its box, then one per seed (in seed
    order): the heatmap over the image, the true box (green), the boxes predicted from the heatmap (dashed), and the
    heatmap's maximum (a cross: green inside the box, red outside)."""
    if not files:
        raise InputError("localisation figure: no heatmaps file given")
    loaded = sorted(((read_heatmaps(f), f) for f in files), key=lambda pair: pair[0].seed)
    sets = [maps for maps, _ in loaded]
    first = sets[0]
    for maps, name in loaded[1:]:
        if maps.seed == first.seed or maps.image != first.image or maps.finding != first.finding:
            raise InputError(f"{name}: seed {maps.seed}'s images differ from seed {first.seed}'s (or it is the same "
                             "seed twice); re-run localize for every seed with the same data and parameters")
    rows, cols = len(first.image), 1 + len(sets)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(PANEL_IN * cols + 0.8, PANEL_IN * max(rows, 1) + 1.0), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(max(rows, 1), cols, squeeze=False)
        for r in range(rows):
            _panel(axes[r, 0], first, r, overlay=False)
            axes[r, 0].set_ylabel(f"{first.finding[r]}\n{first.image[r]}", fontsize=7)
            for c, maps in enumerate(sets, start=1):
                _panel(axes[r, c], maps, r, overlay=True)
        for c, label in enumerate(["image and box", *[f"seed {m.seed}" for m in sets]]):
            axes[0, c].set_title(label, fontsize=9)
        if not rows:
            axes[0, 0].text(0.5, 0.5, "no test image with a box", ha="center", va="center")
        heading = (f"Grad-CAM at {first.layer}\ngreen: the finding's box; dashed: boxes from the heatmap;\n"
                   "×: the heatmap's maximum (green inside the box, red outside)")
        fig.suptitle(f"{title}\n{heading}" if title else heading, fontsize=9)
        save_png(fig, path)
