"""The split stage: patient-wise train / validation / test lists, checked for leakage.

`official` reads NIH's `train_val_list.txt` / `test_list.txt`; `random-patient` draws the test set by patient with
`split.seed` (the original study's protocol, but with its own seed, separate from the training seeds). Either way
the validation set is carved from train_val by patient with `split.seed`, so every training seed sees the same data.
Only images that preprocessing produced are split (`data/processed/index.txt`): with `preprocess.on_bad_image: skip`
the unusable ones are left out of every part, and of the official lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from cxrstudy.atomic import atomic_dir, write_json
from cxrstudy.errors import InputError
from cxrstudy.labels import DATA_ENTRY_FILE, FINDINGS, label_matrix, read_data_entry
from cxrstudy.params import Params, SplitParams

TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
PROCESSED_INDEX = "index.txt"  # preprocess's list of the images it produced (cxrstudy.data.preprocess.INDEX_FILE)
PARTS = ("train", "val", "test")


def read_list(path: Path) -> list[str]:
    """Read a split list: one image name a line, blank lines ignored."""
    if not path.is_file():
        raise InputError(f"{path}: split list not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path}: split list is empty")
    return names


def write_list(path: Path, names: list[str]) -> None:
    path.write_text("".join(f"{n}\n" for n in names))


def patient_split(table: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions of `table` into (kept, held out) with about `fraction` of patients held out."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(table)), groups=table["patient"].to_numpy()))
    return np.sort(kept), np.sort(held)


def check_split(table: pd.DataFrame, parts: dict[str, list[str]], source: str = "split") -> None:
    """Raise `InputError` if a part names an image not in the table, repeats one, or shares a patient."""
    known = set(table["image"])
    patient_of = dict(zip(table["image"], table["patient"], strict=True))
    seen: dict[str, str] = {}
    for part, names in parts.items():
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(
                f"{source}: {part} names {len(unknown)} image(s) not in the metadata, e.g. {unknown[:5]}; "
                "every listed image must have a row in Data_Entry_2017.csv"
            )
        for name in names:
            if name in seen:
                raise InputError(f"{source}: image {name} is listed in both {seen[name]} and {part}")
            seen[name] = part
    patients = {part: {patient_of[n] for n in names} for part, names in parts.items()}
    keys = list(patients)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            shared = sorted(patients[a] & patients[b])
            if shared:
                raise InputError(
                    f"{source}: patient leakage: {len(shared)} patient(s) in both {a} and {b}, e.g. {shared[:5]}; "
                    "all images of a patient must be on one side of a split"
                )


def make_splits(table: pd.DataFrame, raw_dir: Path, cfg: SplitParams,
                left_out: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Train / val / test image names, in the table's order; `left_out` images are in none of them (the table must
    not hold them either)."""
    if cfg.method == "official":
        train_val = [n for n in read_list(raw_dir / TRAIN_VAL_LIST) if n not in left_out]
        test = [n for n in read_list(raw_dir / TEST_LIST) if n not in left_out]
        check_split(table, {"train_val": train_val, "test": test}, source=str(raw_dir))
        in_test = set(test)
        pool = table[table["image"].isin(set(train_val))]
        test_names = table["image"][table["image"].isin(in_test)].tolist()
    else:
        rest, held = patient_split(table, cfg.test_fraction, cfg.seed)
        pool = table.iloc[rest]
        test_names = table["image"].iloc[held].tolist()
    train_idx, val_idx = patient_split(pool, cfg.val_fraction, cfg.seed)
    parts = {
        "train": pool["image"].iloc[train_idx].tolist(),
        "val": pool["image"].iloc[val_idx].tolist(),
        "test": test_names,
    }
    check_split(table, parts)
    return parts


def summarize(table: pd.DataFrame, parts: dict[str, list[str]]) -> dict[str, object]:
    """Images, patients and positives per finding for each part."""
    labels = label_matrix(table)
    row_of = {name: i for i, name in enumerate(table["image"])}
    out: dict[str, object] = {}
    for part, names in parts.items():
        rows = [row_of[n] for n in names]
        sub = labels[rows]
        out[part] = {
            "images": len(rows),
            "patients": int(table["patient"].iloc[rows].nunique()),
            "positives": {f: int(v) for f, v in zip(FINDINGS, sub.sum(axis=0), strict=True)},
        }
    return out


def run(params: Params, raw_dir: Path, out_dir: Path, processed_dir: Path | None = None) -> None:
    """Stage entry point: write `train.txt`, `val.txt`, `test.txt` and `summary.json` into `out_dir`; with
    `processed_dir`, only the images preprocessing produced are split."""
    table = read_data_entry(raw_dir / DATA_ENTRY_FILE)
    left_out: frozenset[str] = frozenset()
    if processed_dir is not None:
        if not (processed_dir / PROCESSED_INDEX).is_file():
            raise InputError(f"{processed_dir / PROCESSED_INDEX}: not found; run the preprocess stage first (only the "
                             "images it produced are split)")
        produced = set(read_list(processed_dir / PROCESSED_INDEX))
        left_out = frozenset(table["image"][~table["image"].isin(produced)])
        table = table[table["image"].isin(produced)].reset_index(drop=True)
        if left_out:
            print(f"split: {len(left_out)} image(s) left out by preprocess (listed in {processed_dir}/bad_images.txt)")
    parts = make_splits(table, raw_dir, params.split, left_out)
    for part in PARTS:
        if not parts[part]:
            raise InputError(f"split: the {part} part is empty; lower split.val_fraction/test_fraction or add data")
    with atomic_dir(out_dir) as tmp:
        for part in PARTS:
            write_list(tmp / f"{part}.txt", parts[part])
        write_json(tmp / "summary.json", {"method": params.split.method, "seed": params.split.seed,
                                          **summarize(table, parts)})
    counts = ", ".join(f"{p} {len(parts[p])}" for p in PARTS)
    print(f"split ({params.split.method}, seed {params.split.seed}): {counts} images")
