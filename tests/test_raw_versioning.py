"""The raw data under DVC: a dozen archives and the dataset contract's small files, which DVC hashes cheaply, yet any
changed byte of any image shows in `dvc status`; and each stage that reads the raw data depends on exactly the raw
files it reads.

Runs the project's own dvc.yaml (ingest, preprocess, split, and one seed's train and evaluate) in a temporary git
clone with the tiny parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrstudy.data.imageio import archive_paths, decode_gray, encode_png, write_archive
from tests.conftest import copy_project, sh, tiny_raw
from tests.raw_data import members as archive_members

pytestmark = pytest.mark.slow

INGEST, PREPROCESS, TRAIN, EVALUATE = "ingest@internal", "preprocess@internal", "train@1", "evaluate@1"
RAW_READERS = (INGEST, PREPROCESS, "split", TRAIN, EVALUATE)  # every stage run here (the report, too, reads data/raw)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project after `dvc repro evaluate@1` (and the stages before it) on the tiny data, its outputs committed
    (kept pristine; copy it)."""
    root = copy_project(tmp_path_factory.mktemp("raw-versioning"), drop=("dvc.lock",), params=tiny_raw())
    sh(["dvc", "repro", EVALUATE], root)
    return root


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    return root


def data_stage_status(root: Path) -> dict[str, object]:
    status = json.loads(sh(["dvc", "status", "--json"], root).stdout)
    return {stage: status[stage] for stage in RAW_READERS if stage in status}


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()  # a new file, as an editor or a re-download makes: DVC's cache entry is never written through
    path.write_bytes(data)


def test_nothing_changed_nothing_shown(project: Path) -> None:
    assert data_stage_status(project) == {}


def test_one_changed_pixel_of_one_image_shows(project: Path) -> None:
    archive = archive_paths(project / "data/raw")[5]
    members = list(archive_members(archive))
    name, data = members[len(members) // 2]
    image = decode_gray(data, name)
    image[10, 10] ^= 1
    members[len(members) // 2] = (name, encode_png(image))
    archive.unlink()
    write_archive(archive, members, compresslevel=1)
    status = data_stage_status(project)
    assert status.pop(INGEST) == [{"changed outs": {"data/raw": "modified"}}]
    assert list(status) == [PREPROCESS]  # split, train and evaluate read the images as preprocess made them
    assert status[PREPROCESS] in ([{"changed deps": {"data/raw/archives": "modified"}}],
                                  [{"changed deps": {"data/raw": "modified"}}]), status[PREPROCESS]


# Preprocess depends on the whole raw folder, boxes.csv included though it does not read it: one dvc.yaml entry serves
# both sites, and the external site's folder under `ingest.external: none` holds only dataset.json (a dependency that
# does not exist stops `dvc repro`). A changed boxes.csv re-runs it at no cost: every shard's key (its archive's MD5,
# the settings, the code, the table's images) is unchanged, so each is kept as it is and the output's bytes with it
# (`test_a_changed_box_file_reruns_preprocess_to_the_same_bytes`).
@pytest.mark.parametrize(("raw_file", "readers"), [
    ("boxes.csv", (PREPROCESS, EVALUATE)),  # evaluate scores its heatmaps against the test images' boxes
    ("images.csv", (PREPROCESS, "split", TRAIN, EVALUATE)),
    ("dataset.json", (PREPROCESS, "split", TRAIN, EVALUATE)),
    ("archives.md5", (PREPROCESS,)),
])
def test_each_stage_depends_on_exactly_the_raw_files_it_reads(project: Path, raw_file: str,
                                                              readers: tuple[str, ...]) -> None:
    path = project / "data/raw" / raw_file
    assert path.is_file(), f"the tiny phantom writes {raw_file}"
    replace_file(path, path.read_bytes() + b"\n")
    status = data_stage_status(project)
    assert status.pop(INGEST) == [{"changed outs": {"data/raw": "modified"}}]
    assert set(status) == set(readers), f"{raw_file}: {status}"
    for stage in readers:  # the file itself (or, where a stage reads most of the folder, the folder)
        assert status[stage] in ([{"changed deps": {f"data/raw/{raw_file}": "modified"}}],
                                 [{"changed deps": {"data/raw": "modified"}}]), status[stage]


def test_a_changed_box_file_reruns_preprocess_to_the_same_bytes(project: Path) -> None:
    path = project / "data/raw/boxes.csv"
    replace_file(path, path.read_bytes() + b"\n")
    sh(["dvc", "commit", "-f", INGEST], project)  # the changed file recorded as ingest's output
    sh(["dvc", "repro", "-s", PREPROCESS], project)
    status = data_stage_status(project)
    assert status == {EVALUATE: [{"changed deps": {"data/raw/boxes.csv": "modified"}}]}, status


def test_a_rerun_of_ingest_that_writes_the_same_bytes_changes_nothing(project: Path) -> None:
    sh(["dvc", "repro", "-f", "-s", INGEST], project)  # the phantom is rendered and packed again
    assert data_stage_status(project) == {}
