"""The raw data under DVC: a dozen archives and the dataset contract's small files, which DVC hashes cheaply, yet any
changed byte of any image shows in `dvc status`; and each data stage depends on exactly the raw files it reads.

Runs the project's own dvc.yaml (ingest, preprocess, split) in a temporary git clone with the tiny parameters.
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

INGEST, PREPROCESS = "ingest@internal", "preprocess@internal"
DATA_STAGES = (INGEST, PREPROCESS, "split")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project after `dvc repro split` on the tiny data, its outputs committed (kept pristine; copy it)."""
    root = copy_project(tmp_path_factory.mktemp("raw-versioning"), drop=("dvc.lock",), params=tiny_raw())
    sh(["dvc", "repro", "split"], root)
    return root


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    return root


def data_stage_status(root: Path) -> dict[str, object]:
    status = json.loads(sh(["dvc", "status", "--json"], root).stdout)
    return {stage: status[stage] for stage in DATA_STAGES if stage in status}


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
    assert list(status) == [PREPROCESS]  # split reads no image: unaffected
    assert status[PREPROCESS] in ([{"changed deps": {"data/raw/archives": "modified"}}],
                                  [{"changed deps": {"data/raw": "modified"}}]), status[PREPROCESS]


@pytest.mark.parametrize(("raw_file", "readers"), [
    ("boxes.csv", ()),  # read by no data stage (the report draws them)
    ("images.csv", (PREPROCESS, "split")),
    ("dataset.json", (PREPROCESS, "split")),
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


def test_a_rerun_of_ingest_that_writes_the_same_bytes_changes_nothing(project: Path) -> None:
    sh(["dvc", "repro", "-f", "-s", INGEST], project)  # the phantom is rendered and packed again
    assert data_stage_status(project) == {}
