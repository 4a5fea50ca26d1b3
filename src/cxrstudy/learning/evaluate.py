"""The evaluate stage: test-set loss, per-class AUROC, F1 and calibration for one seed, as DVC metrics; the test and
validation predictions saved.

F1 thresholds are chosen per class on the validation set (never on the test set). The test-tuned F1 that the
original study reported is computed too, under its own key, labelled optimistic wherever it is shown. Calibration
(Brier score, ECE with `evaluate.calibration_bins` equal-width bins) is measured on the test set. The validation
predictions let the report choose thresholds for the ensemble the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch

from cxrstudy import numerics
from cxrstudy.atomic import all_or_nothing, atomic_file, check_writable
from cxrstudy.calibration import calibration
from cxrstudy.data.dataset import read_boxes
from cxrstudy.errors import InputError
from cxrstudy.learning.loader import SplitData, XrayDataset, eval_transform, load_parts, make_loader
from cxrstudy.learning.localize import localize, write_npz
from cxrstudy.learning.losses import make_criterion
from cxrstudy.learning.predict import (
    MODEL_FILE,
    load_trained,
    model_labels,
    pick_device,
    predict,
    read_trained,
    seed_everything,
    sigmoid,
)
from cxrstudy.metrics import per_class_auroc, per_class_f1, per_class_thresholds
from cxrstudy.params import Params

THRESHOLD_PROTOCOL = "per-class thresholds maximising F1 on the validation set"


def _clean(value: float) -> float | None:
    """JSON has no NaN: an undefined metric (no positive in the test set) is written as null."""
    return None if math.isnan(value) else round(float(value), 6)


def _by_class(names: tuple[str, ...], values: list[float]) -> dict[str, float | None]:
    return {name: _clean(v) for name, v in zip(names, values, strict=True)}


def _counts(names: tuple[str, ...], labels: np.ndarray) -> dict[str, int]:
    return {n: int(v) for n, v in zip(names, np.nansum(labels, axis=0), strict=True)}


def positive_patients(names: tuple[str, ...], labels: np.ndarray, patients: np.ndarray) -> dict[str, int]:
    """Per finding, how many patients have at least one positive image."""
    return {n: int(len(set(patients[labels[:, k] == 1]))) for k, n in enumerate(names)}


def compute_metrics(seed: int, loss: float, val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], environment: dict[str, object] | None = None,
                    calibration_bins: int = 10, names: tuple[str, ...] = (),
                    patients: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, object]:
    """Metrics from (labels, probabilities) of the validation and test sets; `names` are the label names (one per
    column), `patients` the (validation, test) patient of each row, for the positive-patient counts."""
    val_labels, val_probs = val
    test_labels, test_probs = test
    if not names:
        raise ValueError("compute_metrics needs the label names")
    auroc = per_class_auroc(test_labels, test_probs)
    thresholds = per_class_thresholds(val_labels, val_probs)
    f1 = per_class_f1(test_labels, test_probs, thresholds)
    tuned = per_class_f1(test_labels, test_probs, per_class_thresholds(test_labels, test_probs))
    calib = calibration(test_labels, test_probs, calibration_bins)
    return {
        "seed": seed,
        "loss": _clean(loss),
        "auroc_mean": _clean(float(np.nanmean(auroc))),
        "f1_mean": _clean(float(np.nanmean(f1))),
        "f1_test_tuned_mean": _clean(float(np.nanmean(tuned))),
        "f1_protocol": THRESHOLD_PROTOCOL,
        "auroc": _by_class(names, auroc),
        "f1": _by_class(names, f1),
        "f1_test_tuned": _by_class(names, tuned),
        "threshold": _by_class(names, thresholds),
        "n_val": int(len(val_labels)),
        "n_test": int(len(test_labels)),
        "test_positives": _counts(names, test_labels),
        "val_positives": _counts(names, val_labels),
        **({"test_positive_patients": positive_patients(names, test_labels, patients[1]),
            "val_positive_patients": positive_patients(names, val_labels, patients[0]),
            "test_patients": int(len(set(patients[1]))), "val_patients": int(len(set(patients[0])))}
           if patients is not None else {}),
        **({"masked": _counts(names, np.isnan(test_labels).astype(np.float32))} if np.isnan(test_labels).any()
           else {}),
        "brier": _by_class(names, list(calib.brier)),
        "brier_mean": _clean(calib.brier_mean),
        "ece": _by_class(names, list(calib.ece)),
        "ece_mean": _clean(calib.ece_mean),
        "calibration_bins": calibration_bins,
        "mean_prob": _clean(calib.mean_prob),
        "prevalence": _clean(calib.prevalence),
        "environment": environment or {},
    }


def run(params: Params, seed: int, raw_dir: Path, processed_dir: Path, splits_dir: Path, model_dir: Path,
        metrics_file: Path, predictions_file: Path, val_predictions_file: Path | None = None,
        localize_file: Path | None = None, heatmaps_file: Path | None = None) -> None:
    """Stage entry point: evaluate `model_dir/model.pt` on the validation and test sets, and where it looks on the
    test images with boxes (`cxrstudy.learning.localize`). The validation predictions go to `val_predictions_file`
    (default: a `val` folder beside the test predictions, same file name); the localisation metrics and heatmaps to
    `localize_file` and `heatmaps_file` (default: beside the metrics file; the stage names metrics/localize/seed_N.json
    and heatmaps/seed_N.npz)."""
    val_predictions_file = val_predictions_file or predictions_file.parent / "val" / predictions_file.name
    localize_file = localize_file or metrics_file.with_name(f"{metrics_file.stem}.localize.json")
    heatmaps_file = heatmaps_file or metrics_file.with_name(f"{metrics_file.stem}.heatmaps.npz")
    cfg = params.train
    check_writable(metrics_file, predictions_file, val_predictions_file, localize_file, heatmaps_file)
    numerics.apply_threads(params.numerics)
    seed_everything(seed, cfg.deterministic)
    device = pick_device(cfg)
    images, parts = load_parts(raw_dir, processed_dir, splits_dir, ("train", "val", "test"))
    train_part, val_part, test_part = parts["train"], parts["val"], parts["test"]
    transform = eval_transform(cfg.image_size, images.shape[-1])
    names = test_part.label_names
    trained_on = model_labels(read_trained(model_dir / MODEL_FILE))
    if trained_on != names:
        raise InputError(f"{model_dir / MODEL_FILE}: predicts {list(trained_on)}, but the dataset's labels are "
                         f"{list(names)}; re-run the train stage on this dataset (dvc repro train)")
    model = load_trained(model_dir / MODEL_FILE).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def infer(part: SplitData) -> tuple[np.ndarray, np.ndarray]:
        loader = make_loader(XrayDataset(images, part, transform), params.evaluate.batch_size, shuffle=False,
                             generator=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        return predict(model, loader, device, cfg.channels_last, cfg.amp)

    val_logits, val_labels = infer(val_part)
    test_logits, test_labels = infer(test_part)
    criterion = make_criterion(cfg.loss, train_part.labels)
    loss = float(criterion(torch.from_numpy(test_logits), torch.from_numpy(test_labels)))
    test_probs, val_probs = sigmoid(test_logits), sigmoid(val_logits)
    environment = numerics.environment(params.numerics, device)
    metrics = compute_metrics(seed, loss, (val_labels, val_probs), (test_labels, test_probs), environment,
                              params.evaluate.calibration_bins, names, (val_part.patients, test_part.patients))
    where, heatmaps = localize(params, seed, read_boxes(raw_dir), images, test_part, model_dir / MODEL_FILE, names)
    where["environment"] = numerics.environment(params.numerics, torch.device("cpu"))
    # All five files or none (cxrstudy.atomic.all_or_nothing): a failed rename undoes the others and is named.
    with all_or_nothing() as out:
        for payload, target in ((metrics, metrics_file), (where, localize_file)):
            handle = out.file(target)
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        write_predictions(out.file(predictions_file), test_part.names, test_part.patients, test_labels, test_probs,
                          names)
        write_predictions(out.file(val_predictions_file), val_part.names, val_part.patients, val_labels, val_probs,
                          names)
        write_npz(out.file(heatmaps_file, "wb"), heatmaps)
    print(f"evaluate seed {seed}: test loss {metrics['loss']}, mean AUROC {metrics['auroc_mean']}, "
          f"mean F1 {metrics['f1_mean']} -> {metrics_file}")


def write_predictions(handle: IO[str], images: list[str], patients: np.ndarray, labels: np.ndarray,
                      probs: np.ndarray, names: tuple[str, ...]) -> None:
    """One row per image: name, patient, a label per finding (1, 0, or empty when masked) and a predicted
    probability per finding, written with the 9 significant digits that give back every float32 exactly (so the
    report's AUROCs equal evaluate's)."""
    frame = pd.DataFrame({"image": images, "patient": patients})
    for k, name in enumerate(names):
        column = labels[:, k]
        frame[f"label_{name}"] = pd.array(np.where(np.isnan(column), 0, column).astype(np.int8), dtype="Int8")
        frame.loc[np.isnan(column), f"label_{name}"] = pd.NA
    for k, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, k].astype(np.float32)
    frame.to_csv(handle, index=False, lineterminator="\n", float_format="%.9g")


def save_predictions(path: Path, images: list[str], patients: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     names: tuple[str, ...]) -> None:
    """`write_predictions` into `path`, atomically."""
    with atomic_file(path) as handle:
        write_predictions(handle, images, patients, labels, probs, names)
