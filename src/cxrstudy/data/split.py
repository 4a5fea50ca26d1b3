"""The split stage: patient-wise train / validation / test lists, checked for leakage.

`official` keeps the dataset's own test list (the contract's `official_split` column: NIH's `test_list.txt`,
CheXpert's radiologist-labelled `valid.csv`, a phantom's patient-wise list); `random-patient` draws the test set by
patient with `split.seed` (the original study's protocol, but with its own seed, separate from the training seeds).
Either way the validation set is carved from the rest by patient with `split.seed`, so every training seed sees the
same data. Only images that preprocessing produced are split (`data/processed/index.csv`): with
`preprocess.on_bad_image: skip` the unusable ones are left out of every part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from cxrstudy.atomic import atomic_dir, write_json
from cxrstudy.data.dataset import TABLE_FILE, read_info, read_table, targets
from cxrstudy.errors import InputError
from cxrstudy.params import Params, SplitParams

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


def _patient_groups(patients: pd.Series) -> np.ndarray:
    """Patients as group numbers in their natural order (numerically when every id is a number, as NIH's are), so
    that a split does not depend on whether the ids were read as numbers or as text."""
    values = patients.astype(str)
    numeric = values.str.fullmatch(r"\d+").all()
    order = sorted(values.unique(), key=(lambda v: (int(v), v)) if numeric else str)
    return values.map({v: i for i, v in enumerate(order)}).to_numpy()


def patient_split(table: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions of `table` into (kept, held out) with about `fraction` of patients held out."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(table)), groups=_patient_groups(table["patient"])))
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
                "every listed image must have a row in the label table"
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


def make_splits(table: pd.DataFrame, cfg: SplitParams) -> dict[str, list[str]]:
    """Train / val / test image names, in the table's order."""
    if cfg.method == "official":
        in_test = (table["official_split"] == "test").to_numpy()
        if not in_test.any():
            raise InputError("split.method official: the dataset has no official test list (no row's official_split "
                             "is test); use split.method: random-patient")
        pool = table[~in_test]
        test_names = table["image"][in_test].tolist()
        check_split(table, {"train_val": pool["image"].tolist(), "test": test_names},
                    source=f"{TABLE_FILE} official_split")  # a leak in the dataset's own lists, named as such
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


def summarize(table: pd.DataFrame, labels: list[str], uncertain: str,
              parts: dict[str, list[str]]) -> dict[str, object]:
    """Images and patients per part, and per finding its positive images, positive patients and masked (uncertain
    under `ignore`) images."""
    matrix = targets(table, labels, uncertain)
    row_of = {name: i for i, name in enumerate(table["image"])}
    out: dict[str, object] = {}
    for part, names in parts.items():
        rows = np.array([row_of[n] for n in names], dtype=np.int64)
        sub = matrix[rows]
        patients = table["patient"].to_numpy()[rows]
        out[part] = {
            "images": len(rows),
            "patients": int(len(set(patients))),
            "positives": {f: int(np.nansum(sub[:, k])) for k, f in enumerate(labels)},
            "positive_patients": {f: int(len(set(patients[sub[:, k] == 1]))) for k, f in enumerate(labels)},
            "masked": {f: int(np.isnan(sub[:, k]).sum()) for k, f in enumerate(labels)},
        }
    return out


def run(params: Params, raw_dir: Path, out_dir: Path, processed_dir: Path | None = None) -> None:
    """Stage entry point: write `train.txt`, `val.txt`, `test.txt` and `summary.json` into `out_dir`; with
    `processed_dir`, only the images preprocessing produced are split."""
    from cxrstudy.data.shards import read_index

    info = read_info(raw_dir)
    table = read_table(raw_dir, info)
    if processed_dir is not None:
        produced = set(read_index(processed_dir))
        left_out = int((~table["image"].isin(produced)).sum())
        table = table[table["image"].isin(produced)].reset_index(drop=True)
        if left_out:
            print(f"split: {left_out} image(s) left out by preprocess (listed in {processed_dir}/bad_images.txt)")
    parts = make_splits(table, params.split)
    for part in PARTS:
        if not parts[part]:
            raise InputError(f"split: the {part} part is empty; lower split.val_fraction/test_fraction or add data")
    with atomic_dir(out_dir) as tmp:
        for part in PARTS:
            write_list(tmp / f"{part}.txt", parts[part])
        write_json(tmp / "summary.json", {"method": params.split.method, "seed": params.split.seed,
                                          "dataset": info.name, "labels": list(info.labels),
                                          **summarize(table, list(info.labels), info.uncertain, parts)})
    counts = ", ".join(f"{p} {len(parts[p])}" for p in PARTS)
    print(f"split ({params.split.method}, seed {params.split.seed}): {counts} images")
