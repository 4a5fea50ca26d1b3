"""The dataset contract: what `ingest` makes of any source, and all that the later stages read of it.

A dataset folder (`data/raw/` for the training site, `data/external/raw/` for the external test site) holds:

    archives/*.tar.gz   the images (PNG or JPEG), members images/<image>
    archives.md5        the MD5 of every archive as ingest verified it (preprocess checks it as it reads)
    images.csv          one row per image: the normalised table (`COLUMNS`, then one column per label)
    dataset.json        the label space, the uncertainty policy, where the labels come from, and the counts
    boxes.csv           boxes drawn around findings, as fractions of the image (`BOX_COLUMNS`); its header alone
                        when the dataset has none

A label cell is `1` (positive), `0` (negative), `-1` (uncertain) or empty (not mentioned). What a cell becomes as a
training and evaluation target is decided here, once (`targets`): not mentioned is negative, as in CheXpert's paper
and NIH's release (where a finding not listed is absent); uncertain follows the dataset's `uncertain` policy:
`zeros`, `ones`, or `ignore`, which masks the cell (NaN) out of the loss and out of every metric.

Nothing outside `cxrstudy.data` knows any dataset's layout: the names of the labels, the patients and the views come
from these files. The adapters that make them live in `cxrstudy.data.sources`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxrstudy.atomic import write_json
from cxrstudy.errors import InputError

TABLE_FILE = "images.csv"
INFO_FILE = "dataset.json"
BOXES_FILE = "boxes.csv"
MD5_FILE = "archives.md5"  # md5sum format: the MD5 of every archive as ingest verified (or made) it
NONE = "none"  # `ingest.external: none`: the external folder holds only {"source": "none"} in dataset.json

COLUMNS: tuple[str, ...] = ("image", "patient", "study", "follow_up", "sex", "age", "view", "site", "official_split")
BOX_COLUMNS: tuple[str, ...] = ("image", "finding", "x", "y", "w", "h")
SEXES = ("M", "F", "")
VIEWS = ("PA", "AP", "lateral", "")
SPLITS = ("train_val", "test", "")
LABEL_VALUES = ("1", "0", "-1", "")
Uncertain = Literal["zeros", "ones", "ignore"]
UNCERTAIN_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")
MAX_LISTED = 20  # faults named in one error message


@dataclass(frozen=True)
class DatasetInfo:
    """`dataset.json`: what a dataset is, beyond its table."""

    source: str  # the adapter that made it (an `ingest.source` value)
    name: str  # what the report calls it, e.g. "NIH ChestX-ray14"
    site: str  # the hospital (or phantom site) the images come from
    label_space: str  # a column of resources/label_map.csv: how its labels align with other datasets'
    labels: tuple[str, ...]
    uncertain: Uncertain
    label_source: str  # how the labels were made, e.g. "NLP-mined from radiology reports"
    official_test: str  # what the official test list is, or "" when the source has none
    counts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "site": self.site, "label_space": self.label_space,
                "labels": list(self.labels), "uncertain": self.uncertain, "label_source": self.label_source,
                "official_test": self.official_test, "counts": self.counts}


@dataclass(frozen=True)
class Dataset:
    """A dataset as an adapter hands it over: the normalised table, what it is, and the boxes (possibly none).

    `table` has the `COLUMNS` (strings, `follow_up` an int) followed by one column per label (strings from
    `LABEL_VALUES`); `boxes` has the `BOX_COLUMNS`.
    """

    table: pd.DataFrame
    info: DatasetInfo
    boxes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BOX_COLUMNS)))
    # archive file name -> its MD5, where the adapter verified it (the rest are hashed by ingest)
    archive_md5: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Checking a table


def _faults(table: pd.DataFrame, labels: Sequence[str]) -> list[str]:
    """Every fault of a normalised table, each naming the line (2 = the first row) and what is accepted."""
    faults: list[str] = []

    def bad(column: str, accepted: Sequence[str], what: str) -> None:
        wrong = ~table[column].isin(accepted)
        for row in np.flatnonzero(wrong.to_numpy())[:MAX_LISTED]:
            faults.append(f"line {row + 2} ({table['image'].iloc[row]}): {column} {table[column].iloc[row]!r}; "
                          f"accepted: {what}")
        if wrong.sum() > MAX_LISTED:
            faults.append(f"... and {int(wrong.sum()) - MAX_LISTED} more bad {column} cells")

    for name in ("image", "patient", "study"):
        empty = table[name] == ""
        if empty.any():
            faults.append(f"line {int(np.flatnonzero(empty.to_numpy())[0]) + 2}: empty {name} "
                          f"({int(empty.sum())} row(s))")
    dupes = table["image"][table["image"].duplicated()].unique().tolist()
    if dupes:
        faults.append(f"image(s) listed more than once: {dupes[:MAX_LISTED]} (each image must have one row)")
    bad("sex", SEXES, "M, F or empty")
    bad("view", VIEWS, "PA, AP, lateral or empty")
    bad("official_split", SPLITS, "train_val, test or empty")
    for label in labels:
        bad(label, LABEL_VALUES, "1, 0, -1 or empty (not mentioned)")
    ages = table["age"]
    not_age = (ages != "") & ~ages.str.fullmatch(r"\d{1,3}")
    if not_age.any():
        row = int(np.flatnonzero(not_age.to_numpy())[0])
        faults.append(f"line {row + 2} ({table['image'].iloc[row]}): age {ages.iloc[row]!r}; accepted: whole "
                      "years or empty")
    return faults


def check_table(table: pd.DataFrame, labels: Sequence[str], where: str) -> None:
    """Raise one `InputError` naming every fault of a normalised table (`where` names it)."""
    expected = [*COLUMNS, *labels]
    if list(table.columns) != expected:
        raise InputError(f"{where}: columns {list(table.columns)}; expected {expected}")
    faults = _faults(table, labels)
    if faults:
        raise InputError(f"{where}: {len(faults)} fault(s):\n" + "\n".join(f"  {f}" for f in faults))


def counts(table: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """Images and patients, per view and per official split; positives, uncertain and positive patients per label."""
    def by(column: str) -> dict[str, int]:
        values = table[column].replace("", "unknown")
        return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}

    return {
        "images": len(table),
        "patients": int(table["patient"].nunique()),
        "views": by("view"),
        "official_split": by("official_split"),
        "sex": by("sex"),
        "positives": {name: int((table[name] == "1").sum()) for name in labels},
        "uncertain": {name: int((table[name] == "-1").sum()) for name in labels},
        "positive_patients": {name: int(table["patient"][table[name] == "1"].nunique()) for name in labels},
    }


# ---------------------------------------------------------------------------------------------------------------
# Writing and reading a dataset folder


def write(dataset: Dataset, folder: Path) -> DatasetInfo:
    """Write the table, `dataset.json` (with the counts) and the boxes into `folder` (the images are the adapter's:
    `folder/archives`). The table is checked first; returns the info as written."""
    info = dataset.info
    table = dataset.table
    check_table(table, info.labels, f"{info.source} table")
    boxes = dataset.boxes
    if list(boxes.columns) != list(BOX_COLUMNS):
        raise InputError(f"{info.source} boxes: columns {list(boxes.columns)}; expected {list(BOX_COLUMNS)}")
    unknown = sorted(set(boxes["finding"]) - set(info.labels))
    if unknown:
        raise InputError(f"{info.source} boxes: finding(s) {unknown} not in the label space {list(info.labels)}")
    info = DatasetInfo(**{**info.__dict__, "counts": counts(table, info.labels)})
    table.to_csv(folder / TABLE_FILE, index=False, lineterminator="\n")
    write_json(folder / INFO_FILE, info.to_json())
    boxes.round(5).to_csv(folder / BOXES_FILE, index=False, lineterminator="\n")  # the header alone: no boxes
    return info


def has_dataset(folder: Path) -> bool:
    """Whether `folder` holds a dataset, not the placeholder that `ingest.external: none` writes."""
    path = folder / INFO_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    try:
        return json.loads(path.read_text()).get("source") != NONE
    except (ValueError, AttributeError) as err:
        raise InputError(f"{path}: malformed dataset description ({err}); re-run ingest") from None


def read_info(folder: Path) -> DatasetInfo:
    """`folder/dataset.json`; a missing or malformed file is an `InputError` naming it."""
    path = folder / INFO_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    try:
        raw = json.loads(path.read_text())
        info = DatasetInfo(source=str(raw["source"]), name=str(raw["name"]), site=str(raw["site"]),
                           label_space=str(raw["label_space"]), labels=tuple(str(n) for n in raw["labels"]),
                           uncertain=raw["uncertain"], label_source=str(raw["label_source"]),
                           official_test=str(raw["official_test"]), counts=dict(raw.get("counts") or {}))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: malformed dataset description ({type(err).__name__}: {err}); re-run ingest") \
            from None
    if info.uncertain not in UNCERTAIN_POLICIES:
        raise InputError(f"{path}: uncertain {info.uncertain!r}; accepted: {', '.join(UNCERTAIN_POLICIES)}")
    if not info.labels or len(set(info.labels)) != len(info.labels):
        raise InputError(f"{path}: labels must be a non-empty list of distinct names, got {list(info.labels)}")
    return info


def read_table(folder: Path, info: DatasetInfo | None = None) -> pd.DataFrame:
    """`folder/images.csv`, every cell a string but `follow_up` (int), checked against the contract."""
    info = info or read_info(folder)
    path = folder / TABLE_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None
    follow_up = pd.to_numeric(table.get("follow_up", pd.Series(dtype=str)), errors="coerce")
    if follow_up.isna().any():
        row = int(np.flatnonzero(follow_up.isna().to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: follow_up {table['follow_up'].iloc[row]!r} is not a whole number")
    check_table(table, info.labels, str(path))
    return table.assign(follow_up=follow_up.astype(np.int64))


def read_boxes(folder: Path, info: DatasetInfo | None = None) -> pd.DataFrame:
    """`folder/boxes.csv` (x, y, w, h as fractions of the image; no row when the dataset has no boxes)."""
    path = folder / BOXES_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; re-run the ingest stage (dvc repro ingest)")
    boxes = pd.read_csv(path, dtype={"image": str, "finding": str, "x": float, "y": float, "w": float, "h": float})
    if list(boxes.columns) != list(BOX_COLUMNS):
        raise InputError(f"{path}: columns {list(boxes.columns)}; expected {list(BOX_COLUMNS)}")
    info = info or read_info(folder)
    unknown = sorted(set(boxes["finding"]) - set(info.labels))
    if unknown:
        raise InputError(f"{path}: finding(s) {unknown} not in the label space {list(info.labels)}")
    return boxes


# ---------------------------------------------------------------------------------------------------------------
# Targets


def targets(table: pd.DataFrame, labels: Sequence[str], uncertain: str) -> np.ndarray:
    """Training and evaluation targets, one row per table row, one column per label (float32): 1 positive; 0
    negative or not mentioned; an uncertain cell 0, 1 or NaN (masked) by `uncertain`."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise InputError(f"uncertain {uncertain!r}; accepted: {', '.join(UNCERTAIN_POLICIES)}")
    cells = table[list(labels)].to_numpy(dtype=str)
    out = (cells == "1").astype(np.float32)
    if uncertain == "ones":
        out[cells == "-1"] = 1.0
    elif uncertain == "ignore":
        out[cells == "-1"] = np.nan
    return out


def official_test_rows(table: pd.DataFrame) -> np.ndarray:
    """Row positions of the official test list; every row when the source has none (an external test site)."""
    test = (table["official_split"] == "test").to_numpy()
    return np.flatnonzero(test) if test.any() else np.arange(len(table))
