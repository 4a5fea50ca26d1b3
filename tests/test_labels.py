"""The label table: NIH's header quirk, the 14 findings, and clear errors for bad rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrstudy.errors import InputError
from cxrstudy.labels import DATA_ENTRY_HEADER, FINDINGS, label_matrix, parse_labels, read_data_entry

HEADER = ",".join(DATA_ENTRY_HEADER)


def write_entry(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def row(image: str, labels: str, patient: int = 1, follow_up: int = 0) -> str:
    return f"{image},{labels},{follow_up},{patient},58,M,PA,2682,2749,0.143,0.143"


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
