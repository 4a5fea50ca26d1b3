"""Where one seed's model looks, measured against the boxes of the test set (run by the evaluate stage).

For each test image with a box, Grad-CAM (captum's `LayerGradCam`, with the original method's ReLU) of the boxed
finding's logit at DenseNet-121's `localize.layer`, upsampled bilinearly to the model's input size, and scored by
`cxrstudy.learning.boxscore`: the pointing game and Wang et al. 2017's accuracy at each T(IoBB). Per finding, and
pooled over all boxes, every rate comes with

- its chance rate, and the rate of the same heatmaps against the true boxes shuffled between the images of that
  finding (a negative control: what the finding's usual position alone scores), with `specific` = hit - shuffled:
  what the heatmaps know of this image's finding beyond where that finding usually is;
- a patient-bootstrap percentile interval of the rate, of rate - chance and of `specific`: the test patients with
  a box drawn with replacement `report.bootstrap` times from `report.bootstrap_seed` (the same draws for every
  seed), and no interval for a finding with fewer than `report.min_positives` patients;
- its counts: boxes, images, patients.

Outputs, written by the evaluate stage together with its own, or not at all: `metrics/localize/seed_N.json` (DVC
metrics, rounded to 6 decimals) and `heatmaps/seed_N.npz` (the first `localize.figure_images` test images of each
finding, by name, with their heatmaps and boxes: what `cxrstudy.reporting.overlays` draws), an uncompressed zip whose
bytes depend only on its arrays. Measuring inside evaluate, which has the model and the test images loaded already,
keeps the cost to Grad-CAM itself (benchmarks/bench_localize.py); a stage of its own paid a process start, torch's
import and the data's load again for each seed. A dataset without boxes (CheXpert) gets a metrics file that says so.

Grad-CAM runs on the CPU whatever `train.device` says: on CUDA the backward of DenseNet's adaptive average pooling
has no deterministic kernel, while on the CPU the pinned numerics give the same heatmaps on any x86-64 machine. The
model's parameters are frozen, so the backward pass computes only the layer's gradient.
"""

from __future__ import annotations

import io
import math
import time
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from cxrstudy.data.shards import Processed
from cxrstudy.learning import boxscore
from cxrstudy.learning.loader import SplitData, XrayDataset, eval_transform, make_loader, to_input
from cxrstudy.learning.predict import load_trained
from cxrstudy.params import Params

METHOD = "Grad-CAM (captum LayerGradCam, ReLU), bilinear upsampling to the model's input"


def boxes_on_test_images(boxes: pd.DataFrame, test: SplitData, names: list[str]) -> pd.DataFrame:
    """The boxes on test images of findings the model predicts, with `k` (the finding's output), `row` (the image's
    place in the test part) and `patient`; ordered by finding, image and position."""
    where = {name: i for i, name in enumerate(test.names)}
    column = {name: k for k, name in enumerate(names)}
    kept = boxes[boxes["image"].isin(where) & boxes["finding"].isin(column)].copy()
    left = len(boxes) - len(kept)
    if left:
        print(f"localize: {left} of {len(boxes)} boxes are on images outside the test split or of findings the "
              "model does not predict; they are not scored")
    kept["k"] = kept["finding"].map(column).astype(int)
    kept["row"] = kept["image"].map(where).astype(int)
    kept["patient"] = test.patients[kept["row"].to_numpy()]
    return kept.sort_values(["k", "image", "x", "y", "w", "h"], kind="stable").reset_index(drop=True)


def gradcam_maps(model: nn.Module, layer: nn.Module, images: Processed, part: SplitData, targets: np.ndarray,
                 size: int, batch_size: int, channels_last: bool) -> tuple[np.ndarray, list[int]]:
    """Grad-CAM of output `targets[i]` on test image `part.rows[i]`, on the CPU: (n x size x size) float32, and the
    layer's grid (rows, columns) it was upsampled from."""
    for p in model.parameters():
        p.requires_grad_(False)
    cam = LayerGradCam(model, layer)
    loader = make_loader(XrayDataset(images, part, eval_transform(size, images.shape[-1])), batch_size,
                         shuffle=False, generator=None, num_workers=0, pin_memory=False)
    out, start, grid = [], 0, [0, 0]
    for batch, _ in loader:
        x = to_input(batch, torch.device("cpu"), channels_last)
        target = targets[start:start + len(x)].tolist()
        maps = cam.attribute(x, target=target, relu_attributions=True)
        grid = [int(maps.shape[-2]), int(maps.shape[-1])]
        up = LayerAttribution.interpolate(maps, (size, size), interpolate_mode="bilinear")
        out.append(up[:, 0].detach().float().contiguous().numpy())
        start += len(x)
    return (np.concatenate(out) if out else np.empty((0, size, size), np.float32)), grid


def pixel_box(row: Any, size: int) -> boxscore.Box:
    """A box in fractions as pixels of the model's input, clipped to the image."""
    x0, y0 = min(max(row.x, 0.0), 1.0), min(max(row.y, 0.0), 1.0)
    x1, y1 = min(max(row.x + row.w, 0.0), 1.0), min(max(row.y + row.h, 0.0), 1.0)
    return x0 * size, y0 * size, x1 * size, y1 * size


def shuffled_partner(boxes: pd.DataFrame, seed: int) -> np.ndarray:
    """For each box, another box of the same finding on another image (a random cycle through them, drawn from
    `seed`), or -1 when the finding has boxes on one image only."""
    rng = np.random.default_rng(seed)
    partner = np.full(len(boxes), -1)
    for _, group in boxes.groupby("k", sort=True):
        idx = group.index.to_numpy()
        if group["image"].nunique() < 2:
            continue
        for _ in range(100):  # a cycle that keeps every box off its own image; a few draws suffice
            order = rng.permutation(idx)
            moved = np.roll(order, 1)
            other = boxes.loc[order, "image"].to_numpy() != boxes.loc[moved, "image"].to_numpy()
            if other.all():
                break
        partner[order[other]] = moved[other]
    return partner


def score(boxes: pd.DataFrame, maps: np.ndarray, map_of: np.ndarray, levels: list[float],
          thresholds: list[float], shuffle_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box (rows) and score (pointing, then IoBB at each threshold): hit (0/1), chance, and the hit of its
    heatmap against a shuffled box (NaN where there is none)."""
    size = maps.shape[-1]
    preds = [boxscore.predicted_boxes(m, levels) for m in maps]
    truth = [pixel_box(r, size) for r in boxes.itertuples(index=False)]
    n, width = len(boxes), 1 + len(thresholds)
    hits, chance, shuffled = np.zeros((n, width)), np.zeros((n, width)), np.full((n, width), np.nan)
    partner = shuffled_partner(boxes, shuffle_seed)
    for i, (m, box) in enumerate(zip(map_of, truth, strict=True)):
        hits[i, 0] = boxscore.pointing_hit(maps[m], box)
        hits[i, 1:] = boxscore.localised(preds[m], box, thresholds)
        chance[i, 0] = boxscore.pointing_chance((size, size), box)
        chance[i, 1:] = boxscore.chance_localised(preds[m], box, (size, size), thresholds)
        if partner[i] >= 0:
            other = truth[partner[i]]
            shuffled[i, 0] = boxscore.pointing_hit(maps[m], other)
            shuffled[i, 1:] = boxscore.localised(preds[m], other, thresholds)
    return hits, chance, shuffled


def _clean(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 6)


def summarize(sel: np.ndarray, boxes: pd.DataFrame, scores: tuple[np.ndarray, np.ndarray, np.ndarray],
              draws: np.ndarray, patient_index: np.ndarray, params: Params) -> dict[str, Any]:
    """Counts, and per score for the boxes `sel`: the hit rate, its chance, hit - chance, the rate against shuffled
    boxes and `specific` (hit - shuffled, on the boxes that have a shuffled partner), each difference and the rate
    with its interval."""
    hits, chance, shuffled = (s[sel] for s in scores)
    patients = patient_index[sel]
    n_patients = len(np.unique(patients))
    out: dict[str, Any] = {"boxes": int(sel.sum()), "images": int(boxes.loc[sel, "image"].nunique()),
                           "patients": n_patients}
    with_interval = len(draws) > 0 and n_patients >= params.report.min_positives
    out["interval"] = with_interval
    width = hits.shape[1]
    defined = np.isfinite(shuffled[:, 0])  # boxes with a shuffled partner
    low = high = np.full(3 * width, np.nan)
    if with_interval:
        rates = boxscore.bootstrap_rates(draws, patients, np.hstack([hits, hits - chance]))
        specific = boxscore.bootstrap_rates(draws, patients[defined], hits[defined] - shuffled[defined])
        low, high = boxscore.percentile_interval(np.hstack([rates, specific]), params.report.level)
    rate, base = hits.mean(axis=0), chance.mean(axis=0)
    control = shuffled[defined].mean(axis=0) if defined.any() else np.full(width, np.nan)
    own = (hits[defined] - shuffled[defined]).mean(axis=0) if defined.any() else np.full(width, np.nan)
    entries = [{"hit": _clean(rate[j]), "low": _clean(low[j]), "high": _clean(high[j]), "chance": _clean(base[j]),
                "excess": _clean(rate[j] - base[j]), "excess_low": _clean(low[width + j]),
                "excess_high": _clean(high[width + j]), "shuffled": _clean(control[j]),
                "specific": _clean(own[j]), "specific_low": _clean(low[2 * width + j]),
                "specific_high": _clean(high[2 * width + j])} for j in range(width)]
    out["pointing"] = entries[0]
    out["iobb"] = {f"{t:g}": entries[1 + j] for j, t in enumerate(params.localize.iobb_thresholds)}
    return out


def figure_samples(boxes: pd.DataFrame, pairs: pd.DataFrame, maps: np.ndarray, images: Processed,
                   part: SplitData, params: Params) -> dict[str, np.ndarray]:
    """The first `localize.figure_images` images of each finding (by name): image, heatmap (0..255, min-max), true
    and predicted boxes (fractions), the heatmap's peak (fractions) and whether it points inside a true box."""
    size, loc = maps.shape[-1], params.localize
    chosen = pairs.groupby("k", sort=True).head(loc.figure_images).index.to_numpy()
    transform = eval_transform(size, images.shape[-1])
    pics, heat, truth, predicted, peaks, hit = [], [], [], [], [], []
    for s, m in enumerate(chosen):
        image = torch.from_numpy(np.array(images[part.rows[m]]))[None]
        pics.append((transform(image) if transform is not None else image)[0].numpy().astype(np.uint8))
        hm = maps[m].astype(np.float64)
        span = hm.max() - hm.min()
        heat.append(np.rint(255 * (hm - hm.min()) / span if span > 0 else np.zeros_like(hm)).astype(np.uint8))
        mine = boxes[(boxes["image"] == pairs.at[m, "image"]) & (boxes["k"] == pairs.at[m, "k"])]
        pix = [pixel_box(r, size) for r in mine.itertuples(index=False)]
        truth += [(s, *(v / size for v in b)) for b in pix]
        predicted += [(s, *(v / size for v in b)) for b in boxscore.predicted_boxes(maps[m], loc.box_levels)]
        y, x = boxscore.peak(maps[m])
        peaks.append((x / size, y / size))
        hit.append(any(boxscore.pointing_hit(maps[m], b) for b in pix))
    return {"image": np.array(pairs.loc[chosen, "image"].tolist(), dtype=str),
            "finding": np.array(pairs.loc[chosen, "finding"].tolist(), dtype=str),
            "pixels": np.array(pics, dtype=np.uint8).reshape(-1, size, size),
            "heatmap": np.array(heat, dtype=np.uint8).reshape(-1, size, size),
            "truth": np.array(truth, dtype=np.float64).reshape(-1, 5),
            "predicted": np.array(predicted, dtype=np.float64).reshape(-1, 5),
            "peak": np.array(peaks, dtype=np.float64).reshape(-1, 2),
            "pointing_hit": np.array(hit, dtype=bool)}


def write_npz(handle: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` with fixed member times and no compression: the bytes depend only on the arrays (np.load reads
    it)."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array, order="C"), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())


def localize(params: Params, seed: int, boxes: pd.DataFrame, images: Processed, test: SplitData, model_file: Path,
             names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Grad-CAM of the model in `model_file` (outputs `names`) on the `test` images that have a box in `boxes` (the
    dataset's, as fractions), scored against them: the metrics and the figure's arrays."""
    cfg, loc = params.train, params.localize
    started = time.perf_counter()
    boxes = boxes_on_test_images(boxes, test, list(names))
    if boxes.empty:
        return {"seed": seed, "method": METHOD, "boxes": 0,
                "reason": "no box on a test image of a finding the model predicts"}, {}
    model = load_trained(model_file).eval()  # on the CPU, whatever evaluate runs on
    pairs = boxes.drop_duplicates(["row", "k"]).sort_values(["k", "image"], kind="stable").reset_index(drop=True)
    rows = pairs["row"].to_numpy()
    part = SplitData(test.rows[rows], test.labels[rows], pairs["image"].tolist(), pairs["patient"].to_numpy(),
                     test.label_names)
    layer = getattr(model.net.features, loc.layer)
    cam_started = time.perf_counter()
    maps, grid = gradcam_maps(model, layer, images, part, pairs["k"].to_numpy(), cfg.image_size, loc.batch_size,
                              cfg.channels_last)
    cam_seconds, scoring_started = time.perf_counter() - cam_started, time.perf_counter()
    map_of = pd.MultiIndex.from_frame(pairs[["row", "k"]]).get_indexer(pd.MultiIndex.from_frame(boxes[["row", "k"]]))
    scores = score(boxes, maps, map_of, loc.box_levels, loc.iobb_thresholds, params.report.bootstrap_seed)
    patient_ids, patient_index = np.unique(boxes["patient"].to_numpy(), return_inverse=True)
    draws = boxscore.patient_draws(len(patient_ids), params.report.bootstrap, params.report.bootstrap_seed)
    findings = {name: summarize((boxes["finding"] == name).to_numpy(), boxes, scores, draws, patient_index, params)
                for name in boxes.drop_duplicates("k")["finding"]}
    pooled = summarize(np.ones(len(boxes), bool), boxes, scores, draws, patient_index, params)
    scoring_seconds = time.perf_counter() - scoring_started
    metrics = {"seed": seed, "method": METHOD, "layer": loc.layer, "map_size": grid, "image_size": cfg.image_size,
               "box_levels": loc.box_levels, "iobb_thresholds": loc.iobb_thresholds,
               "bootstrap": params.report.bootstrap, "level": params.report.level,
               "flat_maps": int(sum(boxscore.is_flat(m) for m in maps)), "heatmaps": len(maps),
               "pooled": pooled, "findings": findings}
    arrays = {"seed": np.array(seed), "layer": np.array(loc.layer),
              **figure_samples(boxes, pairs, maps, images, part, params)}
    point = pooled["pointing"]
    print(f"localize seed {seed}: {pooled['boxes']} boxes on {pooled['images']} test images of {pooled['patients']} "
          f"patients, Grad-CAM at {loc.layer} ({grid[0]}x{grid[1]}); pointing game {point['hit']} (chance "
          f"{point['chance']}, shuffled boxes {point['shuffled']}); {time.perf_counter() - started:.1f} s, of which "
          f"Grad-CAM {cam_seconds:.1f} s, scores and bootstrap {scoring_seconds:.1f} s")
    return metrics, arrays
