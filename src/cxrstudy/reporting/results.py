"""Reading a run's results: the evaluate stage's metrics files and predictions, the training histories, the split
summary, and the same files as committed at a git revision (for comparisons across revisions and experiments).

Predictions are read with pandas rather than through `cxrstudy.learning.evaluate`, which would import torch into
commands that need none; the columns checked are the ones `evaluate.write_predictions` writes.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.errors import InputError
from cxrstudy.labels import FINDINGS

# The predictions hold evaluate's exact float32 probabilities and the metrics file its AUROCs to 6 decimals, so the
# AUROCs computed here from the predictions agree to that last decimal; a larger gap means stale or mismatched files.
AUROC_TOLERANCE = 1e-6


def num(value: Any) -> float:
    """A JSON number, or NaN for null / missing."""
    return math.nan if value is None else float(value)


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


def seed_metrics_from_dict(raw: Any, lenient: bool = False) -> SeedMetrics:
    """One evaluate stage's metrics; `lenient` (for `dvc exp show`, which drops nulls) reads a missing number as NaN."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")

    def top(key: str) -> Any:
        return raw.get(key) if lenient else raw[key]

    def by_class(key: str, required: bool) -> dict[str, float]:
        values = raw.get(key) if lenient or not required else raw[key]
        if values is None:
            return dict.fromkeys(FINDINGS, math.nan) if required else {}
        return {n: num(values.get(n) if lenient or not required else values[n]) for n in FINDINGS}

    def counts(key: str) -> dict[str, int]:
        values = raw.get(key) or {}
        return {n: int(values[n]) for n in FINDINGS if n in values}

    return SeedMetrics(
        seed=int(raw["seed"]), loss=num(top("loss")), auroc_mean=num(top("auroc_mean")), f1_mean=num(top("f1_mean")),
        f1_test_tuned_mean=num(top("f1_test_tuned_mean")), f1_protocol=str(top("f1_protocol") or "unknown"),
        auroc=by_class("auroc", True), f1=by_class("f1", True), n_test=int(top("n_test") or 0),
        f1_test_tuned=by_class("f1_test_tuned", False), test_positives=counts("test_positives"),
        val_positives=counts("val_positives"), brier_mean=num(raw.get("brier_mean")),
        ece_mean=num(raw.get("ece_mean")), mean_prob=num(raw.get("mean_prob")), prevalence=num(raw.get("prevalence")),
        environment=dict(raw.get("environment") or {}),
    )


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
    """One model's predictions on one set of images, rows sorted by image name."""

    images: list[str]
    patients: np.ndarray
    labels: np.ndarray
    probs: np.ndarray


def parse_predictions(text: str, where: str) -> Predictions:
    """Predictions from the CSV text `evaluate.write_predictions` writes (image, patient, label_<finding>...,
    prob_<finding>...); `where` names the file in errors."""
    label_cols = [f"label_{n}" for n in FINDINGS]
    prob_cols = [f"prob_{n}" for n in FINDINGS]
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{where}: not a readable CSV ({err})") from None
    missing = [c for c in ["image", "patient", *label_cols, *prob_cols] if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: malformed predictions file, missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise InputError(f"{where}: no predictions")
    frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
    labels = frame[label_cols].to_numpy(dtype=np.float64)
    probs = frame[prob_cols].to_numpy(dtype=np.float64)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InputError(f"{where}: label columns must hold 0 or 1")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise InputError(f"{where}: probabilities must be finite numbers in [0, 1]")
    return Predictions(frame["image"].astype(str).tolist(), frame["patient"].to_numpy(), labels, probs)


def read_predictions(path: Path) -> Predictions:
    """The evaluate stage's `predictions/seed_N.csv` (or `predictions/val/seed_N.csv`)."""
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found; run the evaluate stage for this seed")
    return parse_predictions(path.read_text(), str(path))


def git_show(repo: Path, rev: str, path: str) -> str | None:
    """The text of `path` as committed at `rev` in `repo`; None when that revision has no such file."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        raise InputError("git not found on PATH: it is needed to read predictions at a revision") from None
    return done.stdout if done.returncode == 0 else None


def predictions_at(repo: Path, rev: str, path: str) -> Predictions:
    """`path` (e.g. predictions/seed_12.csv) as committed at `rev`; an error naming both when it is not there."""
    text = git_show(repo, rev, path)
    if text is None:
        raise InputError(f"{rev}:{path}: not in git at that revision (predictions are committed from the evaluate "
                         "stage's cache: false outputs; re-run the pipeline there, or give a predictions folder)")
    return parse_predictions(text, f"{rev}:{path}")


def check_agreement(pred: Predictions, auroc: Mapping[str, float], metrics: SeedMetrics, pred_path: Path,
                    metrics_path: Path) -> None:
    """The predictions (their size, their per-class `auroc`) must be the ones the metrics were computed from."""
    if metrics.n_test and metrics.n_test != len(pred.images):
        raise InputError(f"{pred_path}: {len(pred.images)} test images, but {metrics_path} says n_test "
                         f"{metrics.n_test}; re-run the evaluate stage for seed {metrics.seed}")
    for name, value in auroc.items():
        stored = metrics.auroc[name]
        if math.isnan(value) != math.isnan(stored) or abs(value - stored) > AUROC_TOLERANCE:
            raise InputError(f"{pred_path} and {metrics_path} disagree on {name} AUROC ({value:.4f} from the "
                             f"predictions, {stored:.4f} in the metrics); re-run the evaluate stage for seed "
                             f"{metrics.seed}")


def same_images(preds: Sequence[Predictions]) -> bool:
    """Whether every model was scored on the same images with the same labels (so they can be paired)."""
    first = preds[0]
    return all(p.images == first.images and np.array_equal(p.labels, first.labels) for p in preds[1:])


def make_ensemble(preds: Sequence[Predictions]) -> tuple[Predictions | None, str]:
    """The mean of the seeds' probabilities; None, with the reason, when there is nothing to average."""
    if len(preds) < 2:
        return None, "one seed: no ensemble"
    if not same_images(preds):
        return None, "the seeds' test sets differ, so their predictions cannot be averaged"
    first = preds[0]
    return Predictions(first.images, first.patients, first.labels, np.mean([p.probs for p in preds], axis=0)), ""


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
