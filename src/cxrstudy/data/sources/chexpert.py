"""CheXpert (`ingest.source: chexpert` or `ingest.external: chexpert`): a local copy of CheXpert-v1.0-small (Irvin et
al., AAAI 2019), turned into the dataset contract (`cxrstudy.data.dataset`; set-up: docs/datasets.md).

`ingest.chexpert.local_path` holds `train.csv` and `valid.csv` (columns Path, Sex, Age, Frontal/Lateral, AP/PA, then the
14 observations) and the JPEGs they list, `train|valid/patientNNNNN/studyN/viewN_frontal.jpg` (or `_lateral.jpg`).
Mapping onto the contract:

- image: `patient00001_study1_view1_frontal.jpg`, the path's last three parts joined (CheXpert's file names alone
  repeat in every study); patient `patient00001`; study `patient00001_study1`;
- follow_up: the rank of the study's number among the patient's studies (0 = the first). CheXpert numbers each
  patient's studies 1, 2, ... in time order: in train.csv they run from 1 without a gap for all 64,540 patients, and the
  age never falls from one study to the next (123,101 consecutive pairs; it rises in 14,495);
- sex: Male / Female -> M / F, Unknown -> empty; age in whole years as given (CheXpert caps it at 90);
- view: Frontal with AP / PA -> AP / PA; Frontal with another projection (train.csv has 17 frontal rows marked LL or
  RL) or none -> empty; Lateral -> lateral. `ingest.chexpert.views: frontal` keeps the frontal rows only;
- official_split: valid.csv's rows are the official test list (CheXpert's own test set is hidden, not public);
  train.csv's are train_val;
- the 14 observations as label columns: 1.0 / 0.0 / -1.0 (uncertain) / blank (not mentioned) -> 1 / 0 / -1 / empty;
  what an uncertain label becomes is `ingest.chexpert.uncertain` (`cxrstudy.data.dataset.targets` applies it).

The extracted JPEGs (223,648 files) are packed once into 12 uncompressed archives in `ingest.chexpert.download_dir`
(`cxrstudy.data.localcopy`), all views whatever `views` says, so that changing it packs nothing again; the archives
are linked into the dataset folder. Bad input is one error that names every fault before anything is written: a
missing file or column, a row outside CheXpert's layout or vocabulary, a listed JPEG that is missing, empty, not a JPEG
or cut short (its first and last bytes are read; decoding it is preprocess's work).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from cxrstudy.data.dataset import COLUMNS, MAX_LISTED, Dataset, DatasetInfo
from cxrstudy.data.imageio import ARCHIVES_DIR, JPEG_END, JPEG_SIGNATURE
from cxrstudy.data.localcopy import (
    PACKED,
    check_dvc_links,
    describe_links,
    link_archives,
    pack_archives,
    plan_archives,
    stale_members,
)
from cxrstudy.data.manifest import folder_record
from cxrstudy.errors import InputError
from cxrstudy.ingestschema import ChexpertParams
from cxrstudy.params import Params

NAME = "chexpert"
SITE = "Stanford Hospital (CheXpert)"
# The 14 observations, in CheXpert's column order.
OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
CSV_SPLITS: dict[str, str] = {"train.csv": "train_val", "valid.csv": "test"}  # file -> official_split
PATH_PATTERN = (r"^(?:[^/]+/)?(?P<folder>train|valid)/(?P<patient>patient\d+)/(?P<study>study(?P<number>\d+))/"
                r"(?P<view>view\d+)_(?P<kind>frontal|lateral)\.jpg$")
PATH_LAYOUT = "[CheXpert-v1.0-small/]train|valid/patientNNNNN/studyN/viewN_frontal|lateral.jpg"
LABEL_CELLS = {"1.0": "1", "1": "1", "0.0": "0", "0": "0", "-1.0": "-1", "-1": "-1", "": ""}
SEXES = {"Male": "M", "Female": "F", "Unknown": "", "": ""}
VIEW_KINDS = {"Frontal": "frontal", "Lateral": "lateral"}
PROJECTIONS = {"AP": "AP", "PA": "PA", "LL": "", "RL": "", "": ""}  # a frontal row's AP/PA cell -> its view
LABEL_SOURCE = ("train.csv (train_val): the CheXpert labeler, rule-based NLP on the radiology reports (positive, "
                "negative, uncertain or not mentioned); valid.csv (the official test list): radiologists, the "
                "majority vote of three board-certified radiologists")
ROW_COLUMNS = ("file", "where", *COLUMNS, "study_number", "frontal", *OBSERVATIONS)


class Faults:
    """Every fault found in a local copy, by kind; at most `MAX_LISTED` of each kind named, the rest counted."""

    def __init__(self) -> None:
        self.kinds: dict[str, list[str]] = {}

    def add(self, kind: str, message: str) -> None:
        self.kinds.setdefault(kind, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def raise_if_any(self, where: str) -> None:
        if not self.kinds:
            return
        lines: list[str] = []
        for kind, messages in self.kinds.items():
            lines += [f"  {m}" for m in messages[:MAX_LISTED]]
            if len(messages) > MAX_LISTED:
                lines.append(f"  ... and {len(messages) - MAX_LISTED} more: {kind}")
        total = sum(len(m) for m in self.kinds.values())
        raise InputError(f"{where}: {total} fault(s); nothing was written. The layout expected: docs/datasets.md\n"
                         + "\n".join(lines))


def _bad_cells(faults: Faults, where: pd.Series, values: pd.Series, wrong: pd.Series, kind: str,
               accepted: str) -> None:
    """A fault for each cell of `values` where `wrong` holds, naming its file and line, its column and what is
    accepted."""
    for line, value in zip(where[wrong], values[wrong], strict=True):
        faults.add(kind, f"{line}: {values.name} {value!r}; accepted: {accepted}")


def read_labels_csv(path: Path, split: str, faults: Faults) -> pd.DataFrame:
    """One of CheXpert's CSVs (train.csv, valid.csv, or rows of them) as rows in the contract's terms, every fault
    added to `faults`: `file` (the image's path below the copy's folder; empty for a row whose Path is not in
    CheXpert's layout), `where` (file and line), the contract's `COLUMNS` (follow_up still 0), `study_number`,
    `frontal` (bool) and the 14 observations (`1`, `0`, `-1` or ''). `split` is the rows' official_split."""
    empty = pd.DataFrame(columns=list(ROW_COLUMNS))
    if not path.is_file():
        faults.add("missing file", f"{path}: not found; a CheXpert copy holds train.csv and valid.csv")
        return empty
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        faults.add("unreadable file", f"{path}: not a readable CSV ({err})")
        return empty
    missing = [c for c in (*META_COLUMNS, *OBSERVATIONS) if c not in raw.columns]
    if missing:
        faults.add("missing column", f"{path}: missing column(s) {', '.join(missing)}; CheXpert's header is "
                                     f"{','.join((*META_COLUMNS, *OBSERVATIONS))}")
        return empty
    raw = raw.apply(lambda column: column.str.strip())
    where = f"{path.name} line " + pd.Series(range(2, len(raw) + 2), index=raw.index).astype(str)
    located = where + " (" + raw["Path"] + ")"
    parts = raw["Path"].str.extract(PATH_PATTERN)
    laid_out = parts["patient"].notna()
    _bad_cells(faults, located, raw["Path"], ~laid_out, f"Path outside CheXpert's layout in {path.name}",
               f"a path in CheXpert's layout, {PATH_LAYOUT}")
    parts = parts.fillna("")
    stem = parts["patient"] + "/" + parts["study"] + "/" + parts["view"] + "_" + parts["kind"] + ".jpg"
    kind = raw["Frontal/Lateral"].map(VIEW_KINDS)
    whole_years = raw["Age"].str.fullmatch(r"\d{1,3}(\.0*)?")
    for column, wrong, what, accepted in (
        ("Sex", ~raw["Sex"].isin(SEXES), "unknown sex", "Male, Female, Unknown or blank"),
        ("Age", ~whole_years & (raw["Age"] != ""), "bad age", "whole years or blank"),
        ("Frontal/Lateral", kind.isna(), "unknown view", "Frontal or Lateral"),
        ("Frontal/Lateral", kind.notna() & laid_out & (kind != parts["kind"]), "view unlike its file name",
         "the view its file name says (_frontal.jpg: Frontal, _lateral.jpg: Lateral)"),
        ("AP/PA", ~raw["AP/PA"].isin(PROJECTIONS), "unknown projection", "AP, PA, LL, RL or blank"),
    ):
        _bad_cells(faults, located, raw[column], wrong, f"{what} in {path.name}", accepted)
    frontal = kind == "frontal"
    age = pd.to_numeric(raw["Age"].where(whole_years), errors="coerce").astype("Int64")
    rows = pd.DataFrame({
        "file": (parts["folder"] + "/" + stem).where(laid_out, ""),
        "where": where,
        "image": stem.str.replace("/", "_").where(laid_out, ""),
        "patient": parts["patient"],
        "study": parts["patient"] + "_" + parts["study"],
        "follow_up": 0,
        "sex": raw["Sex"].map(SEXES).fillna(""),
        "age": age.astype(str).where(age.notna(), ""),
        "view": raw["AP/PA"].map(PROJECTIONS).fillna("").where(frontal, "lateral").where(kind.notna(), ""),
        "site": SITE,
        "official_split": split,
        "study_number": pd.to_numeric(parts["number"], errors="coerce").fillna(0).astype(int),
        "frontal": frontal,
    })
    for name in OBSERVATIONS:
        _bad_cells(faults, located, raw[name], ~raw[name].isin(LABEL_CELLS), f"bad label in {path.name}",
                   "1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned)")
        rows[name] = raw[name].map(LABEL_CELLS).fillna("")
    return rows


def number_follow_ups(rows: pd.DataFrame) -> pd.DataFrame:
    """`follow_up`: the rank of each row's study number among its patient's studies, 0 for the first."""
    rank = rows.groupby("patient")["study_number"].rank(method="dense")
    return rows.assign(follow_up=rank.fillna(1).astype("int64") - 1)


def read_copy(root: Path, faults: Faults) -> pd.DataFrame:
    """Both CSVs of the copy at `root` as rows (`read_labels_csv`), follow-ups numbered; a patient in both, or an image
    listed twice, is a fault."""
    rows = pd.concat([read_labels_csv(root / name, split, faults) for name, split in CSV_SPLITS.items()],
                     ignore_index=True)
    twice = rows["image"].duplicated(keep=False) & (rows["image"] != "")
    for where, file in zip(rows["where"][twice], rows["file"][twice], strict=True):
        faults.add("image listed twice", f"{where}: {file} is listed more than once")
    in_both = set(rows["patient"][rows["official_split"] == "test"]) & set(rows["patient"][
        rows["official_split"] == "train_val"])
    for patient in sorted(in_both - {""}):
        faults.add("patient in both CSVs", f"{patient}: in both train.csv and valid.csv; CheXpert's official split "
                                           "is by patient, so a patient's images belong to one of them")
    return number_follow_ups(rows)


def to_contract(rows: pd.DataFrame, views: str) -> pd.DataFrame:
    """The contract's normalised table of `rows` (`read_copy`'s), the frontal rows only with `views: frontal`."""
    keep = rows if views == "all" else rows[rows["frontal"].astype(bool)]
    table = keep[[*COLUMNS, *OBSERVATIONS]].reset_index(drop=True)
    return table.assign(follow_up=table["follow_up"].astype("int64"))


# ---------------------------------------------------------------------------------------------------------------
# The images: found, their first and last bytes checked, packed once


def jpeg_fault(path: Path) -> str | None:
    """Why the file at `path` cannot be a whole JPEG (missing, empty, another format, cut short), or None."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(len(JPEG_SIGNATURE))
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except FileNotFoundError:
        return "missing image file"
    except OSError as err:
        return f"cannot read ({err.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    if head != JPEG_SIGNATURE:
        return "not a JPEG (bad signature)"
    if JPEG_END not in tail:
        return "truncated JPEG (no end-of-image marker at the end)"
    return None


def check_images(rows: pd.DataFrame, root: Path, folder: Path, faults: Faults, workers: int) -> dict[str, Path]:
    """Image name -> file of every row; each file that is missing is a fault, and so is each one about to be packed
    (not in an up-to-date archive of `folder`) that is not a whole JPEG."""
    files = {image: root / file for image, file in zip(rows["image"], rows["file"], strict=True)}
    where = dict(zip(rows["image"], rows["where"], strict=True))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        present = dict(zip(files, pool.map(lambda path: path.is_file(), files.values()), strict=True))
        if all(present.values()):
            todo = [name for name, _ in stale_members(plan_archives(files), folder)]
        else:
            todo = [name for name, here in present.items() if here]
        for name in files:
            if not present[name]:
                faults.add("missing image", f"{files[name]}: missing image file ({where[name]})")
        for name, fault in zip(todo, pool.map(lambda n: jpeg_fault(files[n]), todo), strict=True):
            if fault:
                faults.add("bad image", f"{files[name]}: {fault} ({where[name]})")
    return files


def local_root(cfg: ChexpertParams) -> Path:
    """`ingest.chexpert.local_path`, which must be a folder."""
    if not cfg.local_path:
        raise InputError("ingest.chexpert.local_path is not set: CheXpert cannot be downloaded without registering "
                         "with the Stanford AIMI Center; download CheXpert-v1.0-small, extract it, and set "
                         "ingest.chexpert.local_path to the folder holding train.csv (docs/datasets.md)")
    root = Path(cfg.local_path).expanduser().absolute()
    if not root.is_dir():
        raise InputError(f"ingest.chexpert.local_path: {root} is not a folder; expected CheXpert-v1.0-small's "
                         "folder: train.csv, valid.csv, train/ and valid/")
    return root


def describe(table: pd.DataFrame, cfg: ChexpertParams) -> DatasetInfo:
    """What the ingested copy is (the counts are added when it is written)."""
    test = table[table["official_split"] == "test"]
    official = (f"CheXpert's valid.csv ({len(test)} images of {test['patient'].nunique()} patients, labelled by "
                "radiologists), standing in for CheXpert's test set, which is hidden (not public)")
    return DatasetInfo(source=NAME, name="CheXpert-v1.0-small", site=SITE, label_space="chexpert",
                       labels=OBSERVATIONS, uncertain=cfg.uncertain, label_source=LABEL_SOURCE,
                       official_test=official)


def ingest(params: Params, out_dir: Path, workers: int) -> Dataset:
    """Check the copy, pack its JPEGs once, link the archives into `out_dir/archives`, and return its table."""
    cfg = params.ingest.chexpert
    root = local_root(cfg)
    check_dvc_links()
    faults = Faults()
    rows = read_copy(root, faults)
    folder = Path(cfg.download_dir).absolute() / PACKED
    files = check_images(rows[rows["file"] != ""], root, folder, faults, cfg.workers)
    faults.raise_if_any(f"ingest.chexpert.local_path: the CheXpert copy at {root}")
    archives = pack_archives(plan_archives(files), folder, cfg.workers)
    links = link_archives(archives, out_dir / ARCHIVES_DIR)
    table = to_contract(rows, cfg.views)
    print(f"ingest (chexpert): {len(files)} JPEGs in {len(archives)} archives, linked into {out_dir.name}/"
          f"{ARCHIVES_DIR} ({describe_links(links)}); {len(table)} images kept (views: {cfg.views})")
    return Dataset(table, describe(table, cfg))


def manifest(params: Params) -> dict[str, Any]:
    """The local copy's files (names, sizes, modification times), so that a changed copy re-runs ingest."""
    return {"local_copy": folder_record(local_root(params.ingest.chexpert), "ingest.chexpert.local_path")}

