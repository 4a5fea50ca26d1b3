"""NIH's label table (`cxrstudy.data.nihtable`), checked against NIH's real metadata (Data_Entry_2017_v2020,
BBox_List_2017), and the same as the dataset contract.

The files come from the project's shared data (`../shared/data/nih/` beside the repository, as in CI) or, failing
that, from an installed `torchxrayvision` (which ships the same files in `torchxrayvision/data/`; it is located,
never imported). Without either, these tests skip.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from cxrstudy.data import dataset
from cxrstudy.data.nihtable import FINDINGS, NO_FINDING, label_matrix, read_bbox_list, read_data_entry, to_contract
from cxrstudy.data.split import check_split
from cxrstudy.errors import InputError

ENTRY = "Data_Entry_2017_v2020.csv.gz"
BBOX = "BBox_List_2017.csv.gz"

# Field notes (NIH ChestX-ray14, Data_Entry_2017_v2020).
COUNTS = {
    "Infiltration": 19_894, "Effusion": 13_317, "Atelectasis": 11_559, "Nodule": 6_331, "Mass": 5_782,
    "Pneumothorax": 5_302, "Consolidation": 4_667, "Pleural_Thickening": 3_385, "Cardiomegaly": 2_776,
    "Emphysema": 2_516, "Edema": 2_303, "Fibrosis": 1_686, "Pneumonia": 1_431, "Hernia": 227,
}


def _candidates() -> list[Path]:
    dirs = [Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"]
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) / "data" for p in spec.submodule_search_locations]
    return dirs


def _real(name: str) -> Path:
    for folder in _candidates():
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"NIH's {name} not found (looked in {', '.join(map(str, _candidates()))})")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return read_data_entry(_real(ENTRY))


def test_images_and_patients(table: pd.DataFrame) -> None:
    assert len(table) == 112_120
    assert table["patient"].nunique() == 30_805


def test_every_finding_count(table: pd.DataFrame) -> None:
    counts = dict(zip(FINDINGS, label_matrix(table).sum(axis=0).tolist(), strict=True))
    assert counts == COUNTS


def test_no_finding_count(table: pd.DataFrame) -> None:
    assert int((table["labels"] == NO_FINDING).sum()) == 60_361
    assert int((label_matrix(table).sum(axis=1) == 0).sum()) == 60_361


def test_no_finding_never_mixed_with_a_finding(table: pd.DataFrame) -> None:
    mixed = table["labels"].str.contains(NO_FINDING, regex=False) & (table["labels"] != NO_FINDING)
    assert not mixed.any()


def test_views(table: pd.DataFrame) -> None:
    assert table["view"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}


def test_bbox_list() -> None:
    boxes = pd.read_csv(_real(BBOX))
    assert len(boxes) == 984
    assert boxes["Image Index"].nunique() == 880
    findings = set(boxes["Finding Label"])
    assert len(findings) == 8 and "Infiltrate" in findings and "Infiltration" not in findings


def test_the_contract_holds_every_count(table: pd.DataFrame) -> None:
    patients = sorted(table["patient"].unique())
    test = table["image"][table["patient"].isin(set(patients[::4]))]
    contract = to_contract(table, table["image"][~table["image"].isin(set(test))], test, "NIH Clinical Center")
    dataset.check_table(contract, FINDINGS, "NIH")
    counts = dataset.counts(contract, FINDINGS)
    assert counts["images"] == 112_120 and counts["patients"] == 30_805
    assert counts["positives"] == COUNTS
    assert counts["uncertain"] == dict.fromkeys(FINDINGS, 0)
    assert counts["views"] == {"AP": 44_810, "PA": 67_310}
    assert counts["official_split"] == {"test": len(test), "train_val": 112_120 - len(test)}
    assert set(contract["sex"]) == {"M", "F"}


def test_the_real_boxes_as_the_contract() -> None:
    boxes = read_bbox_list(_real(BBOX))
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert set(boxes["finding"]) <= set(FINDINGS) and "Infiltration" in set(boxes["finding"])
    assert ((boxes[["x", "y", "w", "h"]] >= 0) & (boxes[["x", "y", "w", "h"]] <= 1.1)).all().all()


def _two_image_patient(table: pd.DataFrame) -> tuple[str, str]:
    counts = table["patient"].value_counts()
    patient = counts.index[counts >= 2][0]
    first, second = table["image"][table["patient"] == patient].tolist()[:2]
    return first, second


def test_planted_patient_on_both_sides_is_leakage(table: pd.DataFrame) -> None:
    first, second = _two_image_patient(table)
    others = table["image"][~table["patient"].isin(table["patient"][table["image"].isin([first])])]
    train_val = [first, *others.iloc[:1000].tolist()]
    with pytest.raises(InputError, match="patient leakage: 1 patient"):
        check_split(table, {"train_val": train_val, "test": [second]})


def test_patient_wise_lists_pass(table: pd.DataFrame) -> None:
    patients = sorted(table["patient"].unique())
    test_patients = set(patients[::50])
    in_test = table["patient"].isin(test_patients)
    check_split(table, {"train_val": table["image"][~in_test].tolist(), "test": table["image"][in_test].tolist()})


def test_name_not_in_metadata_is_an_error(table: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="not in the metadata"):
        check_split(table, {"train_val": table["image"].iloc[:10].tolist(), "test": ["00099999_000.png"]})
