"""Splits are patient-wise, checked for leakage and for names that are not in the label table; the official split
is the dataset's own (`official_split`), validation is carved from the rest by patient."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxrstudy.data.split import PARTS, check_split, make_splits, patient_split, summarize
from cxrstudy.errors import InputError
from tests.conftest import tiny_params


def table(n_patients: int = 30, per_patient: int = 3, test_below: int = 6) -> pd.DataFrame:
    """The contract's columns that splitting reads: patients as strings; the first `test_below` patients are the
    official test list."""
    rows = [(f"{p:08d}_{f:03d}.png", str(p), "test" if p < test_below else "train_val")
            for p in range(n_patients) for f in range(per_patient)]
    return pd.DataFrame(rows, columns=["image", "patient", "official_split"])


def test_patient_split_keeps_every_patient_on_one_side() -> None:
    t = table()
    kept, held = patient_split(t, 0.2, seed=0)
    assert set(t["patient"].iloc[kept]).isdisjoint(t["patient"].iloc[held])
    assert len(kept) + len(held) == len(t)


def test_patient_split_depends_on_its_seed_only() -> None:
    t = table()
    assert patient_split(t, 0.2, 0)[1].tolist() == patient_split(t, 0.2, 0)[1].tolist()
    assert patient_split(t, 0.2, 0)[1].tolist() != patient_split(t, 0.2, 1)[1].tolist()


def test_patient_split_is_the_same_whether_ids_were_read_as_numbers_or_as_text() -> None:
    t = table(40)
    as_numbers = t.assign(patient=t["patient"].astype(int))
    assert patient_split(t, 0.25, 3)[1].tolist() == patient_split(as_numbers, 0.25, 3)[1].tolist()


def test_patient_ids_need_not_be_numbers() -> None:
    t = table(40).assign(patient=lambda f: "patient" + f["patient"].str.zfill(5))  # CheXpert's ids
    kept, held = patient_split(t, 0.25, 0)
    assert set(t["patient"].iloc[kept]).isdisjoint(t["patient"].iloc[held]) and len(held) > 0


def test_a_patient_on_both_sides_is_an_error() -> None:
    t = table()
    parts = {"train": ["00000001_000.png", "00000002_000.png"], "test": ["00000001_001.png"]}
    with pytest.raises(InputError, match=r"patient leakage: 1 patient\(s\) in both train and test, e\.g\. \['1'\]"):
        check_split(t, parts)


def test_a_listed_image_missing_from_the_metadata_is_an_error() -> None:
    with pytest.raises(InputError, match=r"test names 1 image\(s\) not in the metadata, e\.g\. \['ghost\.png'\]"):
        check_split(table(), {"train": ["00000001_000.png"], "test": ["ghost.png"]})


def test_an_image_in_two_parts_is_an_error() -> None:
    with pytest.raises(InputError, match="listed in both train and val"):
        check_split(table(), {"train": ["00000001_000.png"], "val": ["00000001_000.png"]})


def test_official_split_keeps_the_datasets_test_list_and_carves_validation_by_patient() -> None:
    t = table()
    test_names = t["image"][t["official_split"] == "test"].tolist()
    parts = make_splits(t, tiny_params().split)
    assert parts["test"] == test_names
    assert sorted(parts["train"] + parts["val"]) == sorted(set(t["image"]) - set(test_names))
    assert len(parts["val"]) > 0
    patient = dict(zip(t["image"], t["patient"], strict=True))
    assert {patient[n] for n in parts["train"]}.isdisjoint({patient[n] for n in parts["val"]})


def test_official_split_refuses_a_patient_on_both_sides_of_the_official_lists() -> None:
    t = table()
    t.loc[t["image"] == "00000001_001.png", "official_split"] = "train_val"  # patient 1's other images are test
    with pytest.raises(InputError, match=r"patient leakage: 1 patient\(s\) in both .* and test, e\.g\. \['1'\]"):
        make_splits(t, tiny_params().split)


def test_official_split_needs_an_official_test_list() -> None:
    with pytest.raises(InputError, match="no official test list .*use split.method: random-patient"):
        make_splits(table(test_below=0), tiny_params().split)


def test_random_patient_split_has_its_own_seed_and_ignores_the_official_list() -> None:
    t = table(60)
    a = make_splits(t, tiny_params(split={"method": "random-patient", "seed": 3}).split)
    b = make_splits(t, tiny_params(split={"method": "random-patient", "seed": 4}).split)
    assert a["test"] != b["test"]
    assert set(a["train"]).isdisjoint(a["test"])
    assert a["test"] != t["image"][t["official_split"] == "test"].tolist()
    assert make_splits(table(60, test_below=0), tiny_params(split={"method": "random-patient"}).split)["test"]


def test_the_summary_counts_positives_positive_patients_and_masked_labels() -> None:
    t = pd.DataFrame({"image": ["a", "b", "c", "d", "e"], "patient": ["1", "1", "2", "3", "3"],
                      "Edema": ["1", "1", "-1", "", "0"], "Pleural Effusion": ["-1", "0", "1", "1", "1"]})
    parts = {"train": ["a", "b", "c"], "val": [], "test": ["d", "e"]}
    ignore = summarize(t, ["Edema", "Pleural Effusion"], "ignore", parts)
    assert ignore["train"] == {"images": 3, "patients": 2, "positives": {"Edema": 2, "Pleural Effusion": 1},
                               "positive_patients": {"Edema": 1, "Pleural Effusion": 1},
                               "masked": {"Edema": 1, "Pleural Effusion": 1}}
    assert ignore["test"]["positive_patients"] == {"Edema": 0, "Pleural Effusion": 1}  # type: ignore[index]
    ones = summarize(t, ["Edema", "Pleural Effusion"], "ones", parts)
    assert ones["train"]["positives"] == {"Edema": 3, "Pleural Effusion": 2}  # type: ignore[index]
    assert ones["train"]["masked"] == {"Edema": 0, "Pleural Effusion": 0}  # type: ignore[index]


def test_the_stage_writes_the_lists_and_a_summary_in_the_datasets_label_space(tiny_data: Path, tmp_path: Path) -> None:
    from cxrstudy.data import split

    out = tmp_path / "splits"
    split.run(tiny_params(), tiny_data / "data/raw", out, tiny_data / "data/processed")
    for part in PARTS:
        assert (out / f"{part}.txt").read_bytes() == (tiny_data / f"data/splits/{part}.txt").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    info = json.loads((tiny_data / "data/raw/dataset.json").read_text())
    assert summary["labels"] == info["labels"] and summary["dataset"] == info["name"]
    assert sum(summary[p]["images"] for p in PARTS) == info["counts"]["images"]
    assert set(summary["train"]["positives"]) == set(info["labels"])
    test_names = (out / "test.txt").read_text().split()
    rows = pd.read_csv(tiny_data / "data/raw/images.csv", dtype=str, keep_default_na=False)
    assert sorted(test_names) == sorted(rows["image"][rows["official_split"] == "test"])  # the phantom's own list
