"""Reading a run's results: the evaluate stage's metrics files and predictions, the training histories and the split
summary. Finding names always come from the files (the columns of a predictions file, the keys of a metrics file).

Predictions are read with pandas rather than through `cxrstudy.learning.evaluate`, which would import torch into
commands that need none; the columns checked are the ones `evaluate.write_predictions` writes.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.errors import InputError

# The predictions hold evaluate's exact float32 probabilities and the metrics file its AUROCs to 6 decimals, so the
# AUROCs computed here from the predictions agree to that last decimal; a larger gap means stale or mismatched files.
AUROC_TOLERANCE = 1e-6


def num(value: Any) -> float:
    """A JSON number, or NaN for null / missing."""
    return math.nan if value is None else float(value)


def rounded(value: float) -> float | None:
    """A statistic as the summary files store it (`num` reads it back): 6 decimals, null where undefined."""
    return None if math.isnan(value) else round(float(value), 6)


@dataclass(frozen=True)
class SeedMetrics:
    seed: int
    loss: float
    auroc_mean: float
    f1_mean: float
    f1_test_tuned_mean: float
    f1_protocol: str
    auroc: dict[str, float]
    f1: dict[str, float]
    n_test: int
    f1_test_tuned: dict[str, float] = field(default_factory=dict)
    test_positives: dict[str, int] = field(default_factory=dict)
    val_positives: dict[str, int] = field(default_factory=dict)
    brier_mean: float = math.nan
    ece_mean: float = math.nan
    mean_prob: float = math.nan
    prevalence: float = math.nan
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> tuple[str, ...]:
        """The label space of this model, as its metrics file names it."""
        return tuple(self.auroc)


def _names(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The finding names of a metrics file, from the data: the keys of its per-finding counts (never null), else of
    its AUROCs, in the file's order."""
    for key in ("test_positives", "auroc"):
        values = raw.get(key)
        if isinstance(values, Mapping) and values:
            return tuple(str(n) for n in values)
    raise KeyError("test_positives")


def seed_metrics_from_dict(raw: Any, lenient: bool = False) -> SeedMetrics:
    """One evaluate stage's metrics; `lenient` (for `dvc exp show`, which drops nulls) reads a missing number as NaN.
    The findings are the file's own (its per-finding keys), in its order."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    names = _names(raw)

    def top(key: str) -> Any:
        return raw.get(key) if lenient else raw[key]

    def by_class(key: str, required: bool) -> dict[str, float]:
        values = raw.get(key) if lenient or not required else raw[key]
        if values is None:
            return dict.fromkeys(names, math.nan) if required else {}
        return {n: num(values.get(n) if lenient or not required else values[n]) for n in names}

    def counts(key: str) -> dict[str, int]:
        values = raw.get(key) or {}
        return {n: int(values[n]) for n in names if n in values}

    return SeedMetrics(
        seed=int(raw["seed"]), loss=num(top("loss")), auroc_mean=num(top("auroc_mean")), f1_mean=num(top("f1_mean")),
        f1_test_tuned_mean=num(top("f1_test_tuned_mean")), f1_protocol=str(top("f1_protocol") or "unknown"),
        auroc=by_class("auroc", True), f1=by_class("f1", True), n_test=int(top("n_test") or 0),
        f1_test_tuned=by_class("f1_test_tuned", False), test_positives=counts("test_positives"),
        val_positives=counts("val_positives"), brier_mean=num(raw.get("brier_mean")),
        ece_mean=num(raw.get("ece_mean")), mean_prob=num(raw.get("mean_prob")), prevalence=num(raw.get("prevalence")),
        environment=dict(raw.get("environment") or {}),
    )


def in_order(metrics: SeedMetrics, names: Sequence[str]) -> SeedMetrics:
    """`metrics` with its per-finding values in the order of `names` (the model's, from its predictions: a metrics
    file's keys are sorted); a finding it lacks is left out here and named by `checks.check_agreement`."""
    def ordered(values: dict[str, Any]) -> dict[str, Any]:
        return {n: values[n] for n in names if n in values}

    return replace(metrics, auroc=ordered(metrics.auroc), f1=ordered(metrics.f1),
                   f1_test_tuned=ordered(metrics.f1_test_tuned), test_positives=ordered(metrics.test_positives),
                   val_positives=ordered(metrics.val_positives))


def load_seed_metrics(path: Path) -> SeedMetrics:
    """Read one evaluate stage's metrics file; a missing file or key is an error naming it."""
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found; run the evaluate stage for this seed")
    try:
        return seed_metrics_from_dict(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: malformed metrics file ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Predictions:
    """One model's predictions on one set of images, rows sorted by image name. `findings`: the label space, from the
    file's columns; `labels` holds NaN for a masked cell (left out of that finding); `patients` are strings;
    `order`: the images in the file's own row order (checked against the split's list)."""

    images: list[str]
    patients: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    findings: tuple[str, ...] = ()
    order: tuple[str, ...] = ()


def finding_columns(columns: Sequence[str], where: str) -> tuple[str, ...]:
    """The findings of a predictions file: every `label_<name>` column, in order, each with its `prob_<name>`."""
    names = tuple(c[len("label_"):] for c in columns if c.startswith("label_"))
    probs = tuple(c[len("prob_"):] for c in columns if c.startswith("prob_"))
    missing = [c for c in ("image", "patient") if c not in columns]
    missing += [f"prob_{n}" for n in names if n not in probs] + [f"label_{n}" for n in probs if n not in names]
    if missing or not names:
        raise InputError(f"{where}: malformed predictions file, missing column(s) "
                         f"{', '.join(missing) or 'label_<finding> and prob_<finding>'}")
    return names


def parse_predictions(text: str, where: str) -> Predictions:
    """Predictions from the CSV text `evaluate.write_predictions` writes (image, patient, label_<finding>...,
    prob_<finding>...); `where` names the file in errors. A label cell is 1, 0 or empty (masked)."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"image": str, "patient": str}, keep_default_na=False,
                            na_values=[""])
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{where}: not a readable CSV ({err})") from None
    names = finding_columns([str(c) for c in frame.columns], where)
    if frame.empty:
        raise InputError(f"{where}: no predictions")
    order = tuple(frame["image"].astype(str))
    if len(set(order)) != len(order):
        twice = next(n for i, n in enumerate(order) if n in order[:i])
        raise InputError(f"{where}: image {twice} has more than one row")
    frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
    try:
        labels = frame[[f"label_{n}" for n in names]].to_numpy(dtype=np.float64)
        probs = frame[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{where}: label and probability cells must be numbers ({err})") from None
    if not np.isin(labels[np.isfinite(labels)], (0.0, 1.0)).all():
        raise InputError(f"{where}: label cells must hold 1, 0 or nothing (masked)")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise InputError(f"{where}: probabilities must be finite numbers in [0, 1]")
    if frame["patient"].isna().any():
        raise InputError(f"{where}: image {frame['image'][int(frame['patient'].isna().argmax())]} has no patient")
    patients = frame["patient"].astype(str).to_numpy()
    return Predictions(frame["image"].astype(str).tolist(), patients, labels, probs, names, order)


def read_predictions(path: Path) -> Predictions:
    """The evaluate stage's `predictions/seed_N.csv` (or `predictions/val/seed_N.csv`)."""
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found; run the evaluate stage for this seed")
    return parse_predictions(path.read_text(), str(path))


def same_images(preds: Sequence[Predictions]) -> bool:
    """Whether every model was scored on the same images with the same labels (so they can be paired)."""
    first = preds[0]
    return all(p.images == first.images and p.findings == first.findings
               and np.array_equal(p.labels, first.labels, equal_nan=True) for p in preds[1:])


def make_ensemble(preds: Sequence[Predictions]) -> tuple[Predictions | None, str]:
    """The mean of the seeds' probabilities; None, with the reason, when there is nothing to average."""
    if len(preds) < 2:
        return None, "one seed: no ensemble"
    if not same_images(preds):
        return None, "the seeds' test sets differ, so their predictions cannot be averaged"
    first = preds[0]
    return Predictions(first.images, first.patients, first.labels, np.mean([p.probs for p in preds], axis=0),
                       first.findings, first.order), ""


def read_history(path: Path) -> pd.DataFrame:
    """The train stage's per-epoch history CSV (epoch, train_loss, val_loss, val_auroc, lr)."""
    if not path.is_file():
        raise InputError(f"{path}: training history not found; run the train stage for this seed")
    frame = pd.read_csv(path)
    missing = [c for c in ("epoch", "train_loss", "val_loss", "val_auroc") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: malformed training history, missing column(s) {', '.join(missing)}")
    return frame


def read_split_summary(splits_dir: Path) -> dict[str, Any] | None:
    """The split stage's `summary.json` (images and patients per part), or None when there is none."""
    path = splits_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
