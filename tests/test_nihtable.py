"""NIH's label table (`cxrstudy.data.nihtable`): its header quirk, the 14 findings, clear errors for bad rows, and the
table and boxes as the dataset contract."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrstudy.data import dataset
from cxrstudy.data.nihtable import (
    DATA_ENTRY_HEADER,
    FINDINGS,
    label_matrix,
    parse_labels,
    read_bbox_list,
    read_data_entry,
    to_contract,
    write_data_entry,
)
from cxrstudy.errors import InputError

HEADER = ",".join(DATA_ENTRY_HEADER)


def write_entry(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def row(image: str, labels: str, patient: int = 1, follow_up: int = 0, age: str = "58", sex: str = "M",
        view: str = "PA") -> str:
    return f"{image},{labels},{follow_up},{patient},{age},{sex},{view},2682,2749,0.143,0.143"


def test_reads_nihs_header_quirk_and_multi_labels(tmp_path: Path) -> None:
    path = write_entry(tmp_path / "d.csv", [row("a.png", "Cardiomegaly|Emphysema"), row("b.png", "No Finding", 2)])
    table = read_data_entry(path)
    assert table["image"].tolist() == ["a.png", "b.png"]
    matrix = label_matrix(table)
    assert matrix[0, FINDINGS.index("Cardiomegaly")] == 1
    assert matrix[0, FINDINGS.index("Emphysema")] == 1
    assert matrix[0].sum() == 2
    assert matrix[1].sum() == 0


def test_accepts_the_2017_files_trailing_empty_column(tmp_path: Path) -> None:
    rows = [row("a.png", "Mass") + ","]
    table = read_data_entry(write_entry(tmp_path / "d.csv", rows, HEADER + ","))
    assert label_matrix(table)[0, FINDINGS.index("Mass")] == 1


def test_a_wrong_header_names_the_file_and_the_expected_header(tmp_path: Path) -> None:
    path = write_entry(tmp_path / "d.csv", [row("a.png", "Mass")], HEADER.replace("Height]", "Height"))
    with pytest.raises(InputError, match=r"d\.csv: unexpected CSV header .*expected NIH's Data_Entry header"):
        read_data_entry(path)


def test_an_unknown_label_names_the_line_and_the_accepted_labels(tmp_path: Path) -> None:
    path = write_entry(tmp_path / "d.csv", [row("a.png", "Mass"), row("b.png", "Mass|Pneumonitis", 2)])
    with pytest.raises(InputError, match=r"line 3 \(b\.png\): unknown label 'Pneumonitis'; accepted: 'No Finding'"):
        read_data_entry(path)


def test_empty_finding_labels_are_refused(tmp_path: Path) -> None:
    path = write_entry(tmp_path / "d.csv", [row("a.png", "")])
    with pytest.raises(InputError, match=r"line 2 \(a\.png\): empty 'Finding Labels'"):
        read_data_entry(path)


def test_an_image_listed_twice_is_refused(tmp_path: Path) -> None:
    path = write_entry(tmp_path / "d.csv", [row("a.png", "Mass"), row("a.png", "Nodule")])
    with pytest.raises(InputError, match=r"listed more than once: \['a\.png'\]"):
        read_data_entry(path)


def test_no_finding_parses_to_no_labels() -> None:
    assert parse_labels("No Finding") == []
    assert parse_labels("Effusion|Infiltration") == ["Effusion", "Infiltration"]


def test_fourteen_findings_in_the_seed_studys_order() -> None:
    assert len(FINDINGS) == 14
    assert list(FINDINGS) == sorted(FINDINGS)
    assert "Pneumothorax" in FINDINGS  # the seed study's best-seed table dropped it


def test_label_matrix_is_one_column_per_finding() -> None:
    table = pd.DataFrame({"image": ["x.png"], "labels": ["Hernia|Pneumothorax"]})
    m = label_matrix(table)
    assert m.shape == (1, 14)
    assert [FINDINGS[i] for i in m[0].nonzero()[0]] == ["Hernia", "Pneumothorax"]


def test_the_table_becomes_the_contract_with_the_official_lists(tmp_path: Path) -> None:
    rows = [row("00000001_000.png", "Cardiomegaly|Effusion", 1, 0, age="58", sex="M", view="PA"),
            row("00000001_001.png", "No Finding", 1, 1, age="59", sex="M", view="AP"),
            row("00000002_000.png", "Hernia", 2, 0, age="", sex="F", view="PA"),
            row("00000003_000.png", "Mass", 3, 0, age="40", sex="O", view="LL")]
    table = read_data_entry(write_entry(tmp_path / "d.csv", rows))
    out = to_contract(table, ["00000001_000.png", "00000001_001.png"], ["00000002_000.png"], "NIH Clinical Center")
    dataset.check_table(out, FINDINGS, "NIH")  # every cell as the contract accepts it
    assert list(out.columns) == [*dataset.COLUMNS, *FINDINGS]
    first = out.iloc[0]
    assert (first["image"], first["patient"], first["study"], first["follow_up"]) == ("00000001_000.png", "1", "0", 0)
    assert out["follow_up"].tolist() == [0, 1, 0, 0] and out["study"].tolist() == ["0", "1", "0", "0"]
    assert out["official_split"].tolist() == ["train_val", "train_val", "test", ""]  # in neither list: empty
    assert out["age"].tolist() == ["58", "59", "", "40"]
    assert out["sex"].tolist() == ["M", "M", "F", ""] and out["view"].tolist() == ["PA", "AP", "PA", ""]
    assert set(out["site"]) == {"NIH Clinical Center"}
    # NIH lists a finding or not: 1 or 0, never uncertain or not mentioned
    assert out.loc[0, ["Cardiomegaly", "Effusion", "Hernia"]].tolist() == ["1", "1", "0"]
    assert (out.loc[1, list(FINDINGS)] == "0").all()
    assert out.loc[2, "Hernia"] == "1" and out.loc[3, "Mass"] == "1"


def test_a_table_written_back_in_nihs_layout_reads_the_same(tmp_path: Path) -> None:
    table = read_data_entry(write_entry(tmp_path / "d.csv", [row("a.png", "Mass|Nodule"), row("b.png", "No Finding",
                                                                                                2, 3)]))
    write_data_entry(table, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text().splitlines()[0] == HEADER
    pd.testing.assert_frame_equal(read_data_entry(tmp_path / "again.csv"), table)


def test_nihs_boxes_become_fractions_of_the_image_with_nihs_spelling_mended(tmp_path: Path) -> None:
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Infiltrate,512,256,102.4,51.2\n"
                    "00000002_000.png,Cardiomegaly,0,0,1024,1024\n")
    boxes = read_bbox_list(path)
    assert list(boxes.columns) == list(dataset.BOX_COLUMNS)
    assert boxes.to_dict("records") == [
        {"image": "00000001_000.png", "finding": "Infiltration", "x": 0.5, "y": 0.25, "w": 0.1, "h": 0.05},
        {"image": "00000002_000.png", "finding": "Cardiomegaly", "x": 0.0, "y": 0.0, "w": 1.0, "h": 1.0}]
