"""NIH ChestX-ray14's label table (`Data_Entry_2017.csv`), parsed in one place, and turned into the dataset contract.

`Data_Entry_2017.csv` (and its 2020 revision) spell bracketed column names across two header cells
(`OriginalImage[Width`, `Height]`, ...); the 2017 file also ends every line with an empty column. Both are accepted
exactly as NIH ships them, and nothing else is: a wrong header is an error that names the file. Used by the NIH
adapter and by the NIH-shaped phantom, which draws on real rows of this table.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.errors import InputError

# Alphabetical, as in the seed study's tables.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"
DATA_ENTRY_FILE = "Data_Entry_2017.csv"

DATA_ENTRY_HEADER: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)


def _check_header(path: Path, header: list[str]) -> None:
    cells = list(header)
    # The 2017 release ends each line with a trailing comma: one unnamed, empty column.
    if len(cells) == len(DATA_ENTRY_HEADER) + 1 and cells[-1].strip() in ("", "Unnamed: 11"):
        cells = cells[:-1]
    if tuple(c.strip() for c in cells) != DATA_ENTRY_HEADER:
        raise InputError(
            f"{path}: unexpected CSV header {cells!r}; expected NIH's Data_Entry header "
            f"{','.join(DATA_ENTRY_HEADER)} (optionally with one trailing empty column)"
        )


def read_data_entry(path: Path) -> pd.DataFrame:
    """Read an NIH `Data_Entry` CSV (plain or gzipped).

    Returns one row per image with columns `image` (file name), `labels` (the `|`-separated string), `follow_up`,
    `patient` (int), `age`, `sex`, `view`, `width`, `height`. Raises `InputError` naming the file and row on a bad
    header, an unknown label, an empty label cell or a duplicated image name.
    """
    if not path.is_file():
        raise InputError(f"{path}: label table not found")
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None
    _check_header(path, header)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    table = pd.DataFrame(
        {
            "image": raw["Image Index"].str.strip(),
            "labels": raw["Finding Labels"].str.strip(),
            "follow_up": pd.to_numeric(raw["Follow-up #"], errors="coerce"),
            "patient": pd.to_numeric(raw["Patient ID"], errors="coerce"),
            "age": pd.to_numeric(raw["Patient Age"], errors="coerce"),
            "sex": raw["Patient Gender"].str.strip(),
            "view": raw["View Position"].str.strip(),
            "width": pd.to_numeric(raw["OriginalImage[Width"], errors="coerce"),
            "height": pd.to_numeric(raw["Height]"], errors="coerce"),
        }
    )
    bad_patient = table.index[table["patient"].isna()].tolist()
    if bad_patient:
        row = bad_patient[0] + 2  # +1 for the header, +1 for 1-based line numbers
        raise InputError(f"{path}: line {row}: Patient ID {raw['Patient ID'][bad_patient[0]]!r} is not an integer")
    table["patient"] = table["patient"].astype(np.int64)
    dupes = table["image"][table["image"].duplicated()].unique().tolist()
    if dupes:
        raise InputError(f"{path}: image(s) listed more than once: {dupes[:10]} (each image must have one row)")
    label_matrix(table, source=path)  # validates every label cell
    return table


def parse_labels(cell: str) -> list[str]:
    """Split a `Finding Labels` cell on `|`; 'No Finding' becomes the empty list."""
    parts = [p.strip() for p in cell.split("|")]
    if parts == [NO_FINDING]:
        return []
    return parts


def label_matrix(table: pd.DataFrame, source: Path | str = "label table") -> np.ndarray:
    """One row per image, one column per finding in `FINDINGS` order, 1 where the finding is present (uint8)."""
    index = {name: i for i, name in enumerate(FINDINGS)}
    out = np.zeros((len(table), len(FINDINGS)), dtype=np.uint8)
    for row, cell in enumerate(table["labels"].tolist()):
        if not cell:
            raise InputError(
                f"{source}: line {row + 2} ({table['image'].iloc[row]}): empty 'Finding Labels'; "
                f"expected '{NO_FINDING}' or findings joined by '|'"
            )
        for name in parse_labels(cell):
            if name not in index:
                raise InputError(
                    f"{source}: line {row + 2} ({table['image'].iloc[row]}): unknown label {name!r}; "
                    f"accepted: {NO_FINDING!r} or any of {', '.join(FINDINGS)}"
                )
            out[row, index[name]] = 1
    return out


def write_data_entry(table: pd.DataFrame, path: Path) -> None:
    """Write a table with `read_data_entry`'s columns back in NIH's exact layout (header quirk included)."""
    spacing = table.get("spacing", pd.Series([0.143] * len(table), index=table.index))
    out = pd.DataFrame(
        {
            "Image Index": table["image"],
            "Finding Labels": table["labels"],
            "Follow-up #": table["follow_up"].astype(int),
            "Patient ID": table["patient"].astype(int),
            "Patient Age": table["age"].astype(int),
            "Patient Gender": table["sex"],
            "View Position": table["view"],
            "OriginalImage[Width": table["width"].astype(int),
            "Height]": table["height"].astype(int),
            "OriginalImagePixelSpacing[x": spacing,
            "y]": spacing,
        }
    )
    out.to_csv(path, index=False, lineterminator="\n")


NIH_SITE = "NIH Clinical Center"
NIH_LABEL_SOURCE = "NLP-mined from radiology reports (NIH's text-mining labels)"
BBOX_NAMES = {"Infiltrate": "Infiltration"}  # BBox_List_2017 spells Infiltration "Infiltrate"
BBOX_SIDE = 1024.0  # NIH's PNGs (and their boxes) are 1024 x 1024 px


def to_contract(table: pd.DataFrame, train_val: Iterable[str], test: Iterable[str], site: str) -> pd.DataFrame:
    """`read_data_entry`'s table as the dataset contract's normalised table (`cxrstudy.data.dataset`): one row per
    image, NIH's patient and follow-up, each image its own study, `official_split` from the two lists, and one column
    per finding (`1` listed, `0` not: NIH's labels have no uncertain or not-mentioned value)."""
    split = dict.fromkeys(train_val, "train_val") | dict.fromkeys(test, "test")
    matrix = label_matrix(table)
    out = pd.DataFrame({
        "image": table["image"].astype(str),
        "patient": table["patient"].astype(np.int64).astype(str),
        "study": table["follow_up"].astype(np.int64).astype(str),
        "follow_up": table["follow_up"].astype(np.int64),
        "sex": table["sex"].where(table["sex"].isin(["M", "F"]), ""),
        "age": table["age"].map(lambda a: "" if pd.isna(a) else str(int(a))),
        "view": table["view"].where(table["view"].isin(["PA", "AP"]), ""),
        "site": site,
        "official_split": table["image"].map(lambda n: split.get(n, "")),
    })
    for k, name in enumerate(FINDINGS):
        out[name] = matrix[:, k].astype(str)
    return out


def read_bbox_list(path: Path) -> pd.DataFrame:
    """NIH's `BBox_List_2017.csv` as the contract's boxes: `image, finding, x, y, w, h`, fractions of the 1024-px
    image, Infiltrate spelt Infiltration."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None
    if raw.shape[1] < 6:
        raise InputError(f"{path}: expected NIH's columns Image Index, Finding Label, Bbox [x, y, w, h]; got "
                         f"{list(raw.columns)}")
    boxes = raw.iloc[:, :6].copy()
    boxes.columns = ["image", "finding", "x", "y", "w", "h"]
    coords = boxes[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = ~np.isfinite(coords.to_numpy()).all(axis=1) | (coords["w"] <= 0).to_numpy() | (coords["h"] <= 0).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: line {row + 2}: a box needs numbers x, y and positive w, h; got "
                         f"{raw.iloc[row, 2:6].tolist()}")
    boxes[["x", "y", "w", "h"]] = coords / BBOX_SIDE
    boxes["finding"] = boxes["finding"].replace(BBOX_NAMES)
    return boxes.reset_index(drop=True)
