"""The real release's edges: a mirror's own checksum list, DVC's cache type for 45 GB, and a local copy that
changes under the pipeline (the manifest stage, which `make repro` forces before DVC's own run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cxrstudy.data import manifest
from cxrstudy.data.nih import check_dvc_links, ingest_nih
from cxrstudy.data.release import read_md5_file
from cxrstudy.errors import InputError
from tests.conftest import copy_project, section, sh, tiny_params, tiny_raw, write_params
from tests.test_nih import Release, make_release


def archive_copy(tmp_path: Path, release: Release) -> Path:
    """The release as archives + metadata files in one folder (no extracted images)."""
    root = tmp_path / "mirror-copy"
    root.mkdir()
    for name, data in release.files.items():
        (root / name).write_bytes(data)
    return root


def md5_list(path: Path, release: Release) -> Path:
    path.write_text("# re-packed copy\n" + "".join(f"{md5}  {name}\n" for name, md5 in release.checksums.items()))
    return path


def test_an_archive_set_with_its_own_md5_list_ingests(tmp_path: Path) -> None:
    release = make_release()  # two archives, not NIH's twelve
    root = archive_copy(tmp_path, release)
    cfg = section("ingest", "nih", local_path=str(root), md5_file=str(md5_list(tmp_path / "sums.md5", release)),
                  download_dir=str(tmp_path / "cache"))
    out = tmp_path / "raw"
    out.mkdir()
    got = ingest_nih(cfg, out)
    assert sorted(got.table["image"]) == sorted(release.images)
    assert got.archive_md5 == release.checksums


def test_a_flipped_byte_names_the_archive_and_the_list_it_failed(tmp_path: Path) -> None:
    release = make_release()
    root = archive_copy(tmp_path, release)
    damaged = bytearray((root / "images_002.tar.gz").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (root / "images_002.tar.gz").write_bytes(bytes(damaged))
    sums = md5_list(tmp_path / "sums.md5", release)
    cfg = section("ingest", "nih", local_path=str(root), md5_file=str(sums), download_dir=str(tmp_path / "cache"))
    out = tmp_path / "raw"
    out.mkdir()
    with pytest.raises(InputError) as err:
        ingest_nih(cfg, out)
    message = str(err.value)
    assert "images_002.tar.gz" in message and str(sums) in message
    assert "NIH's published" not in message


@pytest.mark.parametrize(("text", "where"), [
    ("d41d8cd98f00b204e9800998ecf8427e images_001.tar.gz\n", ":1: not an md5sum line"),
    ("d41d8cd98f00b204e9800998ecf8427e  images_001.tar.gz\nd41d8cd98f00b204e9800998ecf8427e  images_001.tar.gz\n",
     ":2: images_001.tar.gz is listed twice"),
    ("d41d8cd98f00b204e9800998ecf8427e  Data_Entry_2017_v2020.csv\n", ": lists no archive"),
])
def test_a_bad_md5_list_is_named_with_its_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "sums.md5"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{path}{where}")):
        read_md5_file(path)


def test_dvc_must_link_not_copy_the_release(tmp_path: Path) -> None:
    sh(["dvc", "init", "--no-scm", "-q"], tmp_path)
    with pytest.raises(InputError, match=r"dvc config --local cache\.type hardlink,symlink"):
        check_dvc_links(tmp_path)
    sh(["dvc", "config", "--local", "cache.type", "hardlink,symlink"], tmp_path)
    check_dvc_links(tmp_path)


def test_the_manifest_changes_exactly_when_the_local_copy_does(tmp_path: Path) -> None:
    release = make_release()
    root = archive_copy(tmp_path, release)
    params = tiny_params(ingest={"source": "nih", "nih": {"local_path": str(root)}})
    first = manifest.build(params)
    assert first == manifest.build(params)  # reading it twice changes nothing
    assert first["internal"]["local_copy"]["files"] == len(release.files)
    (root / "images_002.tar.gz").write_bytes(b"another file")
    assert manifest.build(params) != first
    assert manifest.build(tiny_params())["internal"] == {"source": "phantom"}


INGEST = "ingest@internal"
FORCE_MANIFEST = ["dvc", "repro", "--force", "--single-item", "manifest"]  # what `make repro` runs first


@pytest.mark.slow
def test_dvc_repro_reruns_ingest_when_the_local_copy_changes(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    release = make_release()
    root = archive_copy(tmp_path, release)
    raw = tiny_raw(ingest={"source": "nih", "nih": {"local_path": str(root), "download_dir": str(tmp_path / "dl"),
                                                     "md5_file": str(md5_list(tmp_path / "sums.md5", release))}})
    write_params(project / "params.yaml", raw)
    sh(["dvc", "config", "--local", "cache.type", "hardlink,symlink"], project)
    assert f"Running stage '{INGEST}'" in sh(["dvc", "repro", INGEST], project).stdout

    def repro() -> str:
        return sh(FORCE_MANIFEST, project).stdout + sh(["dvc", "repro", INGEST], project).stdout

    again = repro()
    assert "Running stage 'manifest'" in again and f"Running stage '{INGEST}'" not in again
    status = json.loads(sh(["dvc", "status", "--json", "manifest", INGEST], project).stdout)
    assert status == {}, status  # the forced manifest wrote the same bytes: nothing is shown as changed
    (root / "train_val_list.txt").write_text((root / "train_val_list.txt").read_text())  # same bytes, new mtime
    assert f"Running stage '{INGEST}'" in repro()
    record = json.loads((project / "data/source-manifest.json").read_text())
    assert record["internal"]["source"] == "nih" and record["external"] == {"source": "none"}
