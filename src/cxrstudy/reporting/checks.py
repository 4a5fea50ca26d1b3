"""Nothing read is trusted: predictions are checked against the split they claim to score and against each other,
and against the metrics computed from them, before any number is drawn from them.

- The split's lists (`data/splits/test.txt`, `val.txt`) name the images of each part in the order the evaluate stage
  writes them: a predictions file must hold exactly those images, in that order. A renamed id, a missing or extra
  row, or two swapped ids stop the run with the file, its line and the split list's line.
- Every predictions file of one part must give each image the same patient and the same labels, and as many
  patients as the split's summary counts.
- The per-finding AUROCs recomputed from a predictions file must equal its metrics file's.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrstudy.errors import InputError
from cxrstudy.reporting import scoring
from cxrstudy.reporting.results import AUROC_TOLERANCE, Predictions, SeedMetrics, read_predictions

PARTS = ("test", "val")


@dataclass(frozen=True)
class SplitLists:
    """The split's image lists by part (in their files' order) and, from its summary, the patients per part."""

    folder: Path
    images: dict[str, list[str]]
    patients: dict[str, int]

    def path(self, part: str) -> Path:
        return self.folder / f"{part}.txt"


def read_split_lists(folder: Path, parts: Sequence[str] = PARTS) -> SplitLists:
    """`folder/<part>.txt` for each part (one image a line) and the patient counts of `folder/summary.json`."""
    images: dict[str, list[str]] = {}
    for part in parts:
        path = folder / f"{part}.txt"
        if not path.is_file():
            raise InputError(f"{path}: split list not found; run the split stage (`dvc repro split`): the "
                             "predictions are checked against it")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise InputError(f"{path}: split list is empty")
        images[part] = names
    patients: dict[str, int] = {}
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            raw = json.loads(summary.read_text())
            patients = {p: int(raw[p]["patients"]) for p in parts if isinstance(raw.get(p), Mapping)}
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{summary}: malformed split summary ({type(err).__name__}: {err})") from None
    return SplitLists(folder, images, patients)


def check_images(pred: Predictions, split: SplitLists, part: str, where: str) -> None:
    """The predictions' rows must be the split list's images, in its order; the first difference is named."""
    listed, rows = split.images[part], pred.order
    line_of = {name: i for i, name in enumerate(listed)}
    listing = split.path(part)
    for i, (got, want) in enumerate(zip(rows, listed, strict=False)):
        if got == want:
            continue
        if got not in line_of:
            raise InputError(f"{where}: line {i + 2} holds image {got}, which is not in {listing} (line {i + 1} "
                             f"there is {want}): renamed, or predicted on another split")
        raise InputError(f"{where}: line {i + 2} holds image {got} where {listing} line {i + 1} has {want} ({got} is "
                         f"on its line {line_of[got] + 1}): rows swapped or reordered")
    if len(rows) < len(listed):
        raise InputError(f"{where}: {len(listed) - len(rows)} image(s) of {listing} have no row, the first "
                         f"{listed[len(rows)]} (its line {len(rows) + 1})")
    if len(rows) > len(listed):
        raise InputError(f"{where}: line {len(listed) + 2} holds image {rows[len(listed)]}, beyond the "
                         f"{len(listed)} images of {listing}")


def _cells(pred: Predictions, i: int) -> tuple[str, tuple[float, ...]]:
    return str(pred.patients[i]), tuple(np.nan_to_num(pred.labels[i], nan=-1.0).tolist())


def check_rows_agree(preds: Sequence[tuple[Predictions, str]], split: SplitLists | None = None,
                     part: str = "test") -> None:
    """Every file must give each image the same patient and labels (the majority names the odd file out), and hold
    as many patients as the split's summary says."""
    if not preds:
        return
    first = preds[0][0]
    for pred, where in preds[1:]:
        if pred.images != first.images or pred.findings != first.findings:
            raise InputError(f"{where} and {preds[0][1]} hold different images or findings")
    agree = all(np.array_equal(p.patients, first.patients) and np.array_equal(p.labels, first.labels, equal_nan=True)
                for p, _ in preds[1:])
    for i, image in enumerate([] if agree else first.images):  # row by row only to name the first difference
        votes = Counter(_cells(p, i) for p, _ in preds)
        if len(votes) == 1:
            continue
        common, _ = votes.most_common(1)[0]
        odd = next((p, w) for p, w in preds if _cells(p, i) != common)
        other = next(w for p, w in preds if _cells(p, i) == common)
        patient, labels = _cells(odd[0], i)
        what = (f"patient {patient} where {other} has {common[0]}" if patient != common[0]
                else f"labels {labels} where {other} has {common[1]} (-1: masked)")
        raise InputError(f"{odd[1]}: image {image} has {what}")
    if split is not None and part in split.patients:
        found = len(set(first.patients.tolist()))
        if found != split.patients[part]:
            raise InputError(f"{preds[0][1]}: {found} patients, but {split.folder / 'summary.json'} counts "
                             f"{split.patients[part]} in the {part} part")


def check_against_split(preds: Sequence[tuple[Predictions, str]], split: SplitLists, part: str) -> None:
    """Every predictions file of one part against the split's list, then against each other."""
    for pred, where in preds:
        check_images(pred, split, part, where)
    check_rows_agree(preds, split, part)


def check_agreement(pred: Predictions, auroc: Mapping[str, float], metrics: SeedMetrics, pred_path: Path,
                    metrics_path: Path) -> None:
    """The predictions (their size, findings and per-class `auroc`) must be the ones the metrics were computed
    from."""
    if metrics.n_test and metrics.n_test != len(pred.images):
        raise InputError(f"{pred_path}: {len(pred.images)} test images, but {metrics_path} says n_test "
                         f"{metrics.n_test}; re-run the evaluate stage for seed {metrics.seed}")
    if set(pred.findings) != set(metrics.findings):
        raise InputError(f"{pred_path} and {metrics_path} name different findings ({', '.join(pred.findings)} / "
                         f"{', '.join(metrics.findings)}); re-run the evaluate stage for seed {metrics.seed}")
    for name, value in auroc.items():
        stored = metrics.auroc[name]
        if math.isnan(value) != math.isnan(stored) or abs(value - stored) > AUROC_TOLERANCE:
            raise InputError(f"{pred_path} and {metrics_path} disagree on {name} AUROC ({value:.4f} from the "
                             f"predictions, {stored:.4f} in the metrics); re-run the evaluate stage for seed "
                             f"{metrics.seed}")


def load_predictions(seeds: list[SeedMetrics], predictions_dir: Path, splits_dir: Path,
                     metrics_dir: Path) -> tuple[list[Predictions], list[Predictions]]:
    """Every seed's test and validation predictions, checked against the split's lists, against each other and
    against their metrics files."""
    paths = [predictions_dir / f"seed_{s.seed}.csv" for s in seeds]
    val_paths = [predictions_dir / "val" / f"seed_{s.seed}.csv" for s in seeds]
    preds = [read_predictions(p) for p in paths]
    val = [read_predictions(p) for p in val_paths]
    split = read_split_lists(splits_dir)
    check_against_split([(p, str(path)) for p, path in zip(preds, paths, strict=True)], split, "test")
    check_against_split([(p, str(path)) for p, path in zip(val, val_paths, strict=True)], split, "val")
    for s, p, path in zip(seeds, preds, paths, strict=True):
        auroc = dict(zip(p.findings, scoring.auroc(p.labels, p.probs).tolist(), strict=True))
        check_agreement(p, auroc, s, path, metrics_dir / f"seed_{s.seed}.json")
    return preds, val
