"""The dataset contract: the normalised table, what a label cell becomes, one error naming every fault, and the label
spaces' alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrstudy.data import dataset
from cxrstudy.data.dataset import Dataset, DatasetInfo, read_boxes, read_info, read_table, targets, write
from cxrstudy.errors import InputError
from cxrstudy.labels import shared_findings

LABELS = ("Cardiomegaly", "Pleural Effusion")


def table(**columns: list[str]) -> pd.DataFrame:
    base = {"image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "patient": ["p1", "p1", "p2", "p3"],
            "study": ["study1", "study2", "study1", "study1"], "follow_up": [0, 1, 0, 0],
            "sex": ["F", "F", "M", ""], "age": ["68", "69", "", "40"], "view": ["AP", "PA", "lateral", ""],
            "site": ["s"] * 4, "official_split": ["train_val", "train_val", "test", ""],
            "Cardiomegaly": ["1", "0", "-1", ""], "Pleural Effusion": ["", "1", "1", "-1"]}
    base.update(columns)
    return pd.DataFrame(base)


def info(**fields: object) -> DatasetInfo:
    base: dict[str, object] = {"source": "toy", "name": "Toy", "site": "s", "label_space": "chexpert",
                               "labels": LABELS, "uncertain": "ignore", "label_source": "radiologists",
                               "official_test": "c.jpg"}
    return DatasetInfo(**{**base, **fields})  # type: ignore[arg-type]


def test_a_written_dataset_reads_back_with_its_counts(tmp_path: Path) -> None:
    boxes = pd.DataFrame({"image": ["a.jpg"], "finding": ["Cardiomegaly"], "x": [0.1], "y": [0.2], "w": [0.3],
                          "h": [0.4]})
    written = write(Dataset(table(), info(), boxes), tmp_path)
    assert read_info(tmp_path) == written
    assert written.counts["images"] == 4 and written.counts["patients"] == 3
    assert written.counts["views"] == {"AP": 1, "PA": 1, "lateral": 1, "unknown": 1}
    assert written.counts["positives"] == {"Cardiomegaly": 1, "Pleural Effusion": 2}
    assert written.counts["uncertain"] == {"Cardiomegaly": 1, "Pleural Effusion": 1}
    assert written.counts["positive_patients"] == {"Cardiomegaly": 1, "Pleural Effusion": 2}
    back = read_table(tmp_path)
    assert back["follow_up"].tolist() == [0, 1, 0, 0]
    assert back["Pleural Effusion"].tolist() == ["", "1", "1", "-1"]
    assert read_boxes(tmp_path).iloc[0].to_dict() == {"image": "a.jpg", "finding": "Cardiomegaly", "x": 0.1,
                                                      "y": 0.2, "w": 0.3, "h": 0.4}


@pytest.mark.parametrize(("uncertain", "expected"), [
    ("zeros", [[1, 0], [0, 1], [0, 1], [0, 0]]),
    ("ones", [[1, 0], [0, 1], [1, 1], [0, 1]]),
    ("ignore", [[1, 0], [0, 1], [np.nan, 1], [0, np.nan]]),
])
def test_a_label_cell_becomes_a_target_by_the_uncertainty_policy(uncertain: str, expected: list[list[float]]) -> None:
    # 1 positive, 0 negative, empty (not mentioned) negative, -1 by the policy: ignore masks it (NaN).
    got = targets(table(), LABELS, uncertain)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))


def test_one_error_names_every_fault_with_its_line() -> None:
    bad = table(sex=["F", "female", "M", ""], view=["AP", "PA", "oblique", ""], age=["68", "x", "", "40"],
                Cardiomegaly=["1", "2", "-1", ""])
    with pytest.raises(InputError) as err:
        dataset.check_table(bad, LABELS, "toy table")
    text = str(err.value)
    assert "toy table: 4 fault(s)" in text
    assert "line 3 (b.jpg): sex 'female'; accepted: M, F or empty" in text
    assert "line 4 (c.jpg): view 'oblique'; accepted: PA, AP, lateral or empty" in text
    assert "line 3 (b.jpg): Cardiomegaly '2'; accepted: 1, 0, -1 or empty (not mentioned)" in text
    assert "line 3 (b.jpg): age 'x'" in text


def test_a_missing_column_or_a_repeated_image_is_refused() -> None:
    with pytest.raises(InputError, match="expected .*'Pleural Effusion'"):
        dataset.check_table(table().drop(columns=["Pleural Effusion"]), LABELS, "toy")
    with pytest.raises(InputError, match=r"listed more than once: \['a.jpg'\]"):
        dataset.check_table(table(image=["a.jpg", "a.jpg", "c.jpg", "d.jpg"]), LABELS, "toy")


def test_boxes_must_name_findings_of_the_label_space(tmp_path: Path) -> None:
    boxes = pd.DataFrame({"image": ["a.jpg"], "finding": ["Nodule"], "x": [0.1], "y": [0.1], "w": [0.1], "h": [0.1]})
    with pytest.raises(InputError, match=r"finding\(s\) \['Nodule'\] not in the label space"):
        write(Dataset(table(), info(), boxes), tmp_path)
    assert not (tmp_path / dataset.TABLE_FILE).exists()  # nothing written


def test_the_official_test_rows_or_every_row() -> None:
    assert dataset.official_test_rows(table()).tolist() == [2]
    assert dataset.official_test_rows(table(official_split=["train_val"] * 4)).tolist() == [0, 1, 2, 3]


def test_a_malformed_description_is_named(tmp_path: Path) -> None:
    (tmp_path / dataset.INFO_FILE).write_text('{"source": "toy", "labels": []}')
    with pytest.raises(InputError, match="dataset.json: malformed dataset description"):
        read_info(tmp_path)


def test_nih_and_chexpert_share_seven_findings_effusion_by_another_name() -> None:
    nih = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
           "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
    chexpert = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
    shared = shared_findings("nih", nih, "chexpert", chexpert)
    assert [(s.finding, s.other) for s in shared] == [
        ("Atelectasis", "Atelectasis"), ("Cardiomegaly", "Cardiomegaly"), ("Consolidation", "Consolidation"),
        ("Edema", "Edema"), ("Effusion", "Pleural Effusion"), ("Pneumonia", "Pneumonia"),
        ("Pneumothorax", "Pneumothorax")]
    back = shared_findings("chexpert", chexpert, "nih", nih)
    assert {s.finding: s.other for s in back}["Pleural Effusion"] == "Effusion"
    # Within one label space, what both list; a finding the other dataset lacks is not shared.
    assert [s.finding for s in shared_findings("nih", nih[:3], "nih", nih[1:])] == ["Cardiomegaly", "Consolidation"]
    assert [s.other for s in shared_findings("nih", nih, "chexpert", ("Edema",))] == ["Edema"]
    with pytest.raises(InputError, match="label space 'mimic' is not in resources/label_map.csv"):
        shared_findings("mimic", ("Edema",), "nih", nih)
