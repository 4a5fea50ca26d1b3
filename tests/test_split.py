"""Splits are patient-wise, checked for leakage and for names that are not in the metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrstudy.data.split import check_split, make_splits, patient_split, write_list
from cxrstudy.errors import InputError
from tests.conftest import tiny_params


def table(n_patients: int = 30, per_patient: int = 3) -> pd.DataFrame:
    rows = [(f"{p:08d}_{f:03d}.png", p) for p in range(n_patients) for f in range(per_patient)]
    return pd.DataFrame(rows, columns=["image", "patient"]).assign(labels="No Finding")


def test_patient_split_keeps_every_patient_on_one_side() -> None:
    t = table()
    kept, held = patient_split(t, 0.2, seed=0)
    assert set(t["patient"].iloc[kept]).isdisjoint(t["patient"].iloc[held])
    assert len(kept) + len(held) == len(t)


def test_patient_split_depends_on_its_seed_only() -> None:
    t = table()
    assert patient_split(t, 0.2, 0)[1].tolist() == patient_split(t, 0.2, 0)[1].tolist()
    assert patient_split(t, 0.2, 0)[1].tolist() != patient_split(t, 0.2, 1)[1].tolist()


def test_a_patient_on_both_sides_is_an_error() -> None:
    t = table()
    parts = {"train": ["00000001_000.png", "00000002_000.png"], "test": ["00000001_001.png"]}
    with pytest.raises(InputError, match=r"patient leakage: 1 patient\(s\) in both train and test, e\.g\. \[1\]"):
        check_split(t, parts)


def test_a_listed_image_missing_from_the_metadata_is_an_error() -> None:
    with pytest.raises(InputError, match=r"test names 1 image\(s\) not in the metadata, e\.g\. \['ghost\.png'\]"):
        check_split(table(), {"train": ["00000001_000.png"], "test": ["ghost.png"]})


def test_an_image_in_two_parts_is_an_error() -> None:
    with pytest.raises(InputError, match="listed in both train and val"):
        check_split(table(), {"train": ["00000001_000.png"], "val": ["00000001_000.png"]})


def test_official_split_uses_the_lists_and_carves_validation_by_patient(tmp_path: Path) -> None:
    t = table()
    test_names = t["image"][t["patient"] < 6].tolist()
    write_list(tmp_path / "test_list.txt", test_names)
    write_list(tmp_path / "train_val_list.txt", t["image"][t["patient"] >= 6].tolist())
    parts = make_splits(t, tmp_path, tiny_params().split)
    assert parts["test"] == test_names
    assert len(parts["train"]) + len(parts["val"]) == len(t) - len(test_names)
    assert len(parts["val"]) > 0


def test_official_split_refuses_leaking_lists(tmp_path: Path) -> None:
    t = table()
    write_list(tmp_path / "test_list.txt", ["00000001_000.png"])
    write_list(tmp_path / "train_val_list.txt", ["00000001_001.png", "00000002_000.png"])
    with pytest.raises(InputError, match="patient leakage"):
        make_splits(t, tmp_path, tiny_params().split)


def test_random_patient_split_has_its_own_seed() -> None:
    t = table(60)
    a = make_splits(t, Path("unused"), tiny_params(split={"method": "random-patient", "seed": 3}).split)
    b = make_splits(t, Path("unused"), tiny_params(split={"method": "random-patient", "seed": 4}).split)
    assert a["test"] != b["test"]
    assert set(a["train"]).isdisjoint(a["test"])
