"""The manifest stage: its small output changes exactly when a configured source (the training site's or the external
one's) does, so DVC re-runs ingest then and only then; and it writes the same bytes when nothing changed, so that it
need not run every time (`make repro` forces it) and `dvc status` stays clean."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cxrstudy.data import manifest
from cxrstudy.errors import InputError
from tests.conftest import ROOT, tiny_params


def local_copy(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images_001.tar.gz").write_bytes(b"archive one")
    (root / "images_002.tar.gz").write_bytes(b"archive two")
    (root / "Data_Entry_2017_v2020.csv").write_text("header\n")
    return root


def nih_params(root: Path, **nih: object) -> object:
    return tiny_params(ingest={"source": "nih", "nih": {"local_path": str(root), **nih}})


def record(root: Path, **nih: object) -> dict[str, object]:
    """The training site's part of the manifest, for a local NIH copy at `root`."""
    built = manifest.build(nih_params(root, **nih))  # type: ignore[arg-type]
    assert built["external"] == {"source": "none"}
    return dict(built["internal"])


def test_the_phantom_has_nothing_outside_the_repository() -> None:
    assert manifest.build(tiny_params()) == {"internal": {"source": "phantom"}, "external": {"source": "none"}}


def test_an_unchanged_copy_gives_the_same_record(tmp_path: Path) -> None:
    root = local_copy(tmp_path)
    first = record(root)
    assert first["source"] == "nih"
    held = first["local_copy"]
    assert isinstance(held, dict) and held["files"] == 3 and held["bytes"] == 29
    assert record(root) == first


def test_the_external_sites_copy_is_watched_too(tmp_path: Path) -> None:
    root = local_copy(tmp_path)
    params = tiny_params(ingest={"source": "phantom", "external": "nih", "nih": {"local_path": str(root)}})
    before = manifest.build(params)
    assert before["internal"] == {"source": "phantom"}
    assert before["external"]["source"] == "nih" and before["external"]["local_copy"]["files"] == 3
    (root / "images_003.tar.gz").write_bytes(b"x")
    after = manifest.build(params)
    assert after["external"] != before["external"] and after["internal"] == before["internal"]


@pytest.mark.parametrize("change", ["content", "mtime", "rename", "new file"])
def test_any_change_to_the_copy_changes_the_record(tmp_path: Path, change: str) -> None:
    root = local_copy(tmp_path)
    before = record(root)
    archive = root / "images_002.tar.gz"
    if change == "content":
        archive.write_bytes(b"archive 2!!")  # same size
        os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    elif change == "mtime":
        os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    elif change == "rename":
        archive.rename(root / "images_003.tar.gz")
    else:
        (root / "images_003.tar.gz").write_bytes(b"x")
    assert record(root) != before


def test_the_md5_list_is_part_of_the_record(tmp_path: Path) -> None:
    root = local_copy(tmp_path / "copy")
    md5 = tmp_path / "release.md5"
    md5.write_text(f"{'0' * 32}  images_001.tar.gz\n")
    before = record(root, md5_file=str(md5))
    md5.write_text(f"{'1' * 32}  images_001.tar.gz\n")
    assert record(root, md5_file=str(md5))["md5_file_sha256"] != before["md5_file_sha256"]


def test_a_missing_md5_list_or_copy_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"ingest.nih.md5_file: .*nope.md5 not found"):
        record(local_copy(tmp_path), md5_file=str(tmp_path / "nope.md5"))
    with pytest.raises(InputError, match=r"ingest.nih.local_path: .*elsewhere is not a folder"):
        record(tmp_path / "elsewhere")


def test_the_stage_writes_the_record_as_stable_json(tmp_path: Path) -> None:
    root = local_copy(tmp_path / "copy")
    out = tmp_path / "data" / "source-manifest.json"
    manifest.run(nih_params(root), out)  # type: ignore[arg-type]
    first = out.read_bytes()
    assert json.loads(first) == manifest.build(nih_params(root))  # type: ignore[arg-type]
    manifest.run(nih_params(root), out)  # type: ignore[arg-type]
    assert out.read_bytes() == first  # DVC sees no change: ingest does not re-run


def test_the_stage_runs_when_a_source_setting_changes_not_every_time() -> None:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["manifest"]
    assert not stage.get("always_changed"), "dvc status would never be clean (make repro forces the stage instead)"
    assert {"ingest.source", "ingest.external", "ingest.nih.local_path", "ingest.nih.md5_file"} <= set(stage["params"])
