"""The CheXpert adapter (`cxrstudy.data.sources.chexpert`) on small copies in CheXpert-v1.0-small's layout, made here
from real CheXpert rows (the committed sample, `resources/chexpert_sample.csv`): the contract it makes, the views and
uncertainty policies, packing once, and one error naming every fault of a bad copy, with nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrstudy.data import ingest as ingest_stage
from cxrstudy.data.dataset import COLUMNS, check_table, read_info, read_table, targets, write
from cxrstudy.data.imageio import ARCHIVES_DIR, archive_paths, iter_images
from cxrstudy.data.localcopy import PACKED
from cxrstudy.data.phantom import resource_path
from cxrstudy.data.sources import chexpert
from cxrstudy.data.sources.chexpert import OBSERVATIONS, Faults, number_follow_ups, read_labels_csv
from cxrstudy.errors import InputError
from cxrstudy.params import Params
from tests.conftest import sh, tiny_params

PREFIX = "CheXpert-v1.0-small"
# Patients of the committed sample chosen for what they hold (asserted in `test_the_fixture_holds_what_it_is_for`):
SEVERAL_STUDIES = "patient33875"  # 3 studies listed study1, study3, study2; PA, AP, lateral; uncertain and blank cells
WITH_PA_AND_AP = "patient30117"  # 3 studies: PA with a lateral twice, then AP; an uncertain cell
VALID = "patient19566"  # moved into valid.csv (the official test list): PA and lateral, a man


def sample_rows() -> pd.DataFrame:
    """The committed sample as CheXpert's train.csv lines (every cell a string, as in the file)."""
    return pd.read_csv(resource_path("chexpert_sample.csv"), dtype=str, keep_default_na=False)


def of_patient(rows: pd.DataFrame, patient: str) -> pd.DataFrame:
    return rows[rows["Path"].str.contains(f"/{patient}/", regex=False)]


def jpeg(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (24, 24), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def make_copy(root: Path, train: pd.DataFrame, valid: pd.DataFrame) -> Path:
    """A CheXpert-v1.0-small folder at `root` with these rows and a small JPEG for every row."""
    valid = valid.assign(Path=valid["Path"].str.replace(f"{PREFIX}/train/", f"{PREFIX}/valid/", regex=False))
    root.mkdir(parents=True)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        rows.to_csv(root / name, index=False, lineterminator="\n")
        for k, path in enumerate(rows["Path"]):
            file = root / path.removeprefix(f"{PREFIX}/")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(jpeg(k + (1000 if name == "valid.csv" else 0)))
    return root


def fixture_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train.csv rows, valid.csv rows) from the sample: the patients above and the sample's first three others."""
    rows = sample_rows()
    first = rows["Path"].str.extract(r"/(patient\d+)/")[0].drop_duplicates().head(3).tolist()
    train = pd.concat([of_patient(rows, p) for p in [SEVERAL_STUDIES, WITH_PA_AND_AP, *first]], ignore_index=True)
    return train, of_patient(rows, VALID).reset_index(drop=True)


@pytest.fixture(autouse=True)
def outside_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages run from the project root; here, from a folder that is no DVC project (DVC's cache type is tested on
    its own)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    return make_copy(tmp_path / PREFIX, *fixture_rows())


def params(tmp_path: Path, root: Path, **settings: object) -> Params:
    cfg = {"local_path": str(root), "download_dir": str(tmp_path / "downloads"), "workers": 1, **settings}
    return tiny_params(ingest={"external": "chexpert", "chexpert": cfg})


def ingest(tmp_path: Path, root: Path, name: str = "raw", **settings: object) -> tuple[pd.DataFrame, Path]:
    """Ingest the copy into a new folder through the adapter and the contract's writer: (its table, the folder)."""
    out = tmp_path / name
    out.mkdir()
    dataset = chexpert.ingest(params(tmp_path, root, **settings), out, workers=1)
    write(dataset, out)
    return read_table(out), out


def row(table: pd.DataFrame, image: str) -> pd.Series:
    match = table[table["image"] == image]
    assert len(match) == 1, image
    return match.iloc[0]


# ---------------------------------------------------------------------------------------------------------------
# The contract


def test_the_fixture_holds_what_it_is_for() -> None:
    train, valid = fixture_rows()
    several = of_patient(train, SEVERAL_STUDIES)
    assert several["Path"].str.extract(r"/(study\d+)/")[0].tolist() == ["study1", "study1", "study3", "study2"]
    assert set(several["AP/PA"]) == {"PA", "AP", ""} and "Lateral" in set(several["Frontal/Lateral"])
    assert (several[list(OBSERVATIONS)] == "-1.0").any().any() and (several[list(OBSERVATIONS)] == "").any().any()
    assert set(of_patient(train, WITH_PA_AND_AP)["AP/PA"]) == {"PA", "AP", ""}
    assert set(valid["Frontal/Lateral"]) == {"Frontal", "Lateral"} and set(valid["Sex"]) == {"Male"}


def test_a_copy_becomes_the_contract(tmp_path: Path, copy: Path) -> None:
    table, out = ingest(tmp_path, copy, views="all")
    train, valid = fixture_rows()
    assert list(table.columns) == [*COLUMNS, *OBSERVATIONS]
    assert len(table) == len(train) + len(valid)
    first = row(table, f"{SEVERAL_STUDIES}_study1_view1_frontal.jpg")
    assert (first["patient"], first["study"], first["follow_up"]) == (SEVERAL_STUDIES, f"{SEVERAL_STUDIES}_study1", 0)
    assert (first["sex"], first["age"], first["view"], first["official_split"]) == ("F", "71", "PA", "train_val")
    # The cells as the CSV has them: -1.0 uncertain, blank not mentioned, 1.0 positive.
    assert (first["Enlarged Cardiomediastinum"], first["No Finding"], first["Lung Opacity"]) == ("-1", "", "1")
    lateral = row(table, f"{SEVERAL_STUDIES}_study1_view2_lateral.jpg")
    assert (lateral["view"], lateral["study"]) == ("lateral", first["study"])
    third = row(table, f"{SEVERAL_STUDIES}_study3_view1_frontal.jpg")
    assert (third["view"], third["follow_up"], third["Pneumothorax"]) == ("AP", 2, "0")
    assert row(table, f"{SEVERAL_STUDIES}_study2_view1_frontal.jpg")["follow_up"] == 1
    tested = table[table["patient"] == VALID]
    assert set(tested["official_split"]) == {"test"} and set(table["official_split"]) == {"train_val", "test"}
    assert set(tested["sex"]) == {"M"}
    info = read_info(out)
    assert (info.source, info.label_space, info.labels, info.uncertain) == ("chexpert", "chexpert", OBSERVATIONS,
                                                                           "ignore")
    assert "valid.csv" in info.official_test and "hidden" in info.official_test
    assert "CheXpert labeler" in info.label_source and "radiologists" in info.label_source
    assert info.counts["views"] == {"AP": int((table["view"] == "AP").sum()), "PA": int((table["view"] == "PA").sum()),
                                    "lateral": int((table["view"] == "lateral").sum())}


def test_every_listed_jpeg_is_in_the_archives_byte_for_byte(tmp_path: Path, copy: Path) -> None:
    table, out = ingest(tmp_path, copy, views="all")
    members = {name: data for archive in archive_paths(out) for name, data in iter_images(archive)}
    assert sorted(members) == sorted(table["image"])
    for image, data in members.items():
        patient, study, view = image.split("_", 2)
        folder = "valid" if patient == VALID else "train"
        assert data == (copy / folder / patient / study / view).read_bytes()
    for link in (out / ARCHIVES_DIR).iterdir():  # linked to the packed copy, not copied
        assert os.path.samefile(link, tmp_path / "downloads" / PACKED / link.name)


def test_views_frontal_keeps_the_frontal_rows_and_packs_them_all(tmp_path: Path, copy: Path) -> None:
    every, _ = ingest(tmp_path, copy, "all", views="all")
    frontal, out = ingest(tmp_path, copy, "frontal", views="frontal")
    assert set(frontal["image"]) == set(every["image"][every["view"] != "lateral"])
    assert "lateral" not in set(frontal["view"]) and (every["view"] == "lateral").sum() >= 4
    # The archives hold every view, so that switching views packs nothing again.
    members = {name for archive in archive_paths(out) for name, _ in iter_images(archive)}
    assert members == set(every["image"])


@pytest.mark.parametrize(("policy", "uncertain_becomes"), [("zeros", 0.0), ("ones", 1.0), ("ignore", None)])
def test_the_uncertainty_policy_decides_what_an_uncertain_label_becomes(tmp_path: Path, copy: Path, policy: str,
                                                                        uncertain_becomes: float | None) -> None:
    table, out = ingest(tmp_path, copy, uncertain=policy)
    info = read_info(out)
    assert info.uncertain == policy
    y = targets(table, info.labels, info.uncertain)
    cells = table[list(info.labels)].to_numpy(dtype=str)
    assert (cells == "-1").any() and (cells == "").any() and (cells == "0").any() and (cells == "1").any()
    assert np.all(y[cells == "1"] == 1.0) and np.all(y[cells == "0"] == 0.0) and np.all(y[cells == ""] == 0.0)
    if uncertain_becomes is None:
        assert np.isnan(y[cells == "-1"]).all() and not np.isnan(y[cells != "-1"]).any()
    else:
        assert np.all(y[cells == "-1"] == uncertain_becomes)


def test_the_copy_is_packed_once_and_a_changed_image_again(tmp_path: Path, copy: Path) -> None:
    ingest(tmp_path, copy, "first")
    packed = tmp_path / "downloads" / PACKED
    before = {p.name: p.stat().st_mtime_ns for p in packed.glob("*.tar")}
    ingest(tmp_path, copy, "second")
    assert {p.name: p.stat().st_mtime_ns for p in packed.glob("*.tar")} == before
    changed = copy / "train" / SEVERAL_STUDIES / "study2" / "view1_frontal.jpg"
    changed.write_bytes(jpeg(99))
    _, out = ingest(tmp_path, copy, "third")
    after = {p.name: p.stat().st_mtime_ns for p in packed.glob("*.tar")}
    assert after.keys() == before.keys()
    assert sum(after[name] != before[name] for name in before) == 1  # only the changed image's archive
    members = {name: data for a in archive_paths(out) for name, data in iter_images(a)}
    assert members[f"{SEVERAL_STUDIES}_study2_view1_frontal.jpg"] == jpeg(99)


def test_real_values_beyond_ap_and_pa_and_an_unknown_sex(tmp_path: Path) -> None:
    # Both occur in CheXpert's train.csv: 17 frontal rows say LL or RL, one row's sex is Unknown.
    train, valid = fixture_rows()
    first = train.index[train["Frontal/Lateral"] == "Frontal"][0]
    train.loc[first, ["AP/PA", "Sex"]] = ["LL", "Unknown"]
    table, _ = ingest(tmp_path, make_copy(tmp_path / PREFIX, train, valid), views="frontal")
    image = "_".join(train.loc[first, "Path"].split("/")[-3:])
    assert (row(table, image)["view"], row(table, image)["sex"]) == ("", "")


def test_follow_up_is_the_rank_of_the_study_number() -> None:
    faults = Faults()
    rows = number_follow_ups(read_labels_csv(resource_path("chexpert_sample.csv"), "train_val", faults))
    assert not faults
    numbers = rows["study"].str.extract(r"_study(\d+)$")[0].astype(int)
    # In the sample, as in all of train.csv, a patient's studies are numbered 1..n without a gap.
    assert (rows["follow_up"] == numbers - 1).all()
    check_table(chexpert.to_contract(rows, "all"), OBSERVATIONS, "the sample")


# ---------------------------------------------------------------------------------------------------------------
# Bad copies: one error naming every fault, nothing written


def spoil_label(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    train.loc[0, "Edema"] = "2.0"
    make_copy(root, train, valid)
    return (r"train\.csv line 2 \(.*\): Edema '2\.0'; accepted: 1\.0 \(positive\), 0\.0 \(negative\), "
            r"-1\.0 \(uncertain\) or blank \(not mentioned\)")


def spoil_column(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    make_copy(root, train.drop(columns=["Pleural Effusion"]), valid)
    return r"train\.csv: missing column\(s\) Pleural Effusion; CheXpert's header is Path,Sex,"


def spoil_view(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    train.loc[1, "Frontal/Lateral"] = "Oblique"
    make_copy(root, train, valid)
    return r"train\.csv line 3 \(.*view2_lateral\.jpg\): Frontal/Lateral 'Oblique'; accepted: Frontal or Lateral"


def spoil_projection(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    valid.loc[0, "AP/PA"] = "XX"
    make_copy(root, train, valid)
    return r"valid\.csv line 2 \(.*\): AP/PA 'XX'; accepted: AP, PA, LL, RL or blank"


def spoil_missing_image(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    make_copy(root, train, valid)
    (root / "train" / SEVERAL_STUDIES / "study3" / "view1_frontal.jpg").unlink()
    return rf"{SEVERAL_STUDIES}/study3/view1_frontal\.jpg: missing image file \(train\.csv line 4\)"


def spoil_image(data: bytes, reason: str) -> object:
    def spoil(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
        make_copy(root, train, valid)
        (root / "valid" / VALID / "study1" / "view2_lateral.jpg").write_bytes(data)
        return rf"{VALID}/study1/view2_lateral\.jpg: {reason} \(valid\.csv line 3\)"
    return spoil


def spoil_valid_csv(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    make_copy(root, train, valid)
    (root / "valid.csv").unlink()
    return r"valid\.csv: not found; a CheXpert copy holds train\.csv and valid\.csv"


def spoil_leak(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    moved = train.iloc[[0]].assign(Path=lambda t: t["Path"].str.replace("/study1/", "/study9/", regex=False))
    make_copy(root, train, pd.concat([valid, moved], ignore_index=True))
    return rf"{SEVERAL_STUDIES}: in both train\.csv and valid\.csv"


def spoil_path(train: pd.DataFrame, valid: pd.DataFrame, root: Path) -> str:
    make_copy(root, train, valid)
    text = (root / "train.csv").read_text().replace("view1_frontal.jpg", "view1_frontal.png", 1)
    (root / "train.csv").write_text(text)
    return r"train\.csv line 2 \(.*view1_frontal\.png\): Path '.*\.png'; accepted: a path in CheXpert's layout"


BAD = {
    "a label outside 1, 0, -1, blank": spoil_label,
    "a missing column": spoil_column,
    "an unknown view": spoil_view,
    "an unknown projection": spoil_projection,
    "a missing image": spoil_missing_image,
    "an empty image": spoil_image(b"", r"empty file \(0 bytes\)"),
    "not a JPEG": spoil_image(b"\x89PNG\r\n\x1a\n not a jpeg at all", r"not a JPEG \(bad signature\)"),
    "a truncated JPEG": spoil_image(jpeg(5)[:200], r"truncated JPEG \(no end-of-image marker at the end\)"),
    "no valid.csv": spoil_valid_csv,
    "a patient in both lists": spoil_leak,
    "a path outside the layout": spoil_path,
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_copy_is_named_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    root = tmp_path / PREFIX
    expected = BAD[case](*fixture_rows(), root)  # type: ignore[operator]
    out = tmp_path / "data" / "external" / "raw"
    with pytest.raises(InputError, match=expected) as err:
        ingest_stage.run(params(tmp_path, root), "external", out, workers=1)
    assert "nothing was written" in str(err.value)
    assert not out.exists() and not list(out.parent.glob("*"))  # no dataset, no temporary left behind
    assert not list((tmp_path / "downloads").rglob("*.tar"))  # nothing packed


def test_one_error_names_every_fault_at_once(tmp_path: Path) -> None:
    train, valid = fixture_rows()
    root = tmp_path / PREFIX
    train.loc[0, "Edema"] = "yes"
    train.loc[2, "Frontal/Lateral"] = "Sideways"
    make_copy(root, train, valid.drop(columns=["Fracture"]))
    (root / "train" / WITH_PA_AND_AP / "study2" / "view1_frontal.jpg").write_bytes(b"")
    (root / "train" / WITH_PA_AND_AP / "study1" / "view2_lateral.jpg").unlink()
    with pytest.raises(InputError) as err:
        chexpert.ingest(params(tmp_path, root), tmp_path / "out", workers=1)
    message = str(err.value)
    assert "5 fault(s)" in message
    for part in ("Edema 'yes'", "Frontal/Lateral 'Sideways'", "valid.csv: missing column(s) Fracture",
                 "study2/view1_frontal.jpg: empty file", "study1/view2_lateral.jpg: missing image file"):
        assert part in message, part


def test_many_faults_of_one_kind_are_counted_beyond_the_first_twenty(tmp_path: Path) -> None:
    rows = sample_rows().head(60)
    rows["Edema"] = "maybe"
    faults = Faults()
    path = tmp_path / "train.csv"
    rows.to_csv(path, index=False)
    read_labels_csv(path, "train_val", faults)
    with pytest.raises(InputError, match=r"60 fault\(s\)") as err:
        faults.raise_if_any("a copy")
    assert str(err.value).count("Edema 'maybe'") == 20 and "... and 40 more" in str(err.value)


@pytest.mark.parametrize(("local_path", "expected"), [
    (None, r"ingest\.chexpert\.local_path is not set: CheXpert cannot be downloaded without registering"),
    ("nowhere", r"ingest\.chexpert\.local_path: .*nowhere is not a folder"),
])
def test_the_local_copy_must_be_given_and_be_a_folder(tmp_path: Path, local_path: str | None, expected: str) -> None:
    cfg = {"local_path": None if local_path is None else str(tmp_path / local_path)}
    p = tiny_params(ingest={"external": "chexpert", "chexpert": cfg})
    with pytest.raises(InputError, match=expected):
        chexpert.ingest(p, tmp_path, workers=1)
    with pytest.raises(InputError, match=expected):
        chexpert.manifest(p)


def test_dvc_must_link_not_copy_the_copy(tmp_path: Path, copy: Path) -> None:
    sh(["dvc", "init", "--no-scm", "-q"], tmp_path)
    with pytest.raises(InputError, match=r"dvc config --local cache\.type hardlink,symlink"):
        chexpert.ingest(params(tmp_path, copy), tmp_path / "out", workers=1)


def test_the_manifest_changes_exactly_when_the_copy_does(tmp_path: Path, copy: Path) -> None:
    p = params(tmp_path, copy)
    first = chexpert.manifest(p)
    assert first == chexpert.manifest(p)
    assert first["local_copy"]["files"] == len(list(copy.rglob("*.jpg"))) + 2
    image = copy / "train" / SEVERAL_STUDIES / "study1" / "view1_frontal.jpg"
    image.write_bytes(jpeg(1234))
    assert chexpert.manifest(p) != first
