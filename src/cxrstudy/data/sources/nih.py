"""NIH ChestX-ray14 (`ingest.source: nih`): NIH's 12 archives, downloaded or linked from a local copy and verified
against NIH's MD5s, with NIH's label table, official lists and boxes (`cxrstudy.data.nih`, docs/nih.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cxrstudy.data.dataset import Dataset
from cxrstudy.data.manifest import folder_record
from cxrstudy.data.nih import check_dvc_links, ingest_nih
from cxrstudy.errors import InputError
from cxrstudy.params import Params

NAME = "nih"


def ingest(params: Params, out_dir: Path, workers: int) -> Dataset:
    check_dvc_links()
    return ingest_nih(params.ingest.nih, out_dir)


def manifest(params: Params) -> dict[str, Any]:
    """The checksum list the archives are verified against, and a local copy's files (names, sizes, times)."""
    cfg = params.ingest.nih
    record: dict[str, Any] = {}
    if cfg.md5_file:
        path = Path(cfg.md5_file)
        if not path.is_file():
            raise InputError(f"ingest.nih.md5_file: {path} not found; give a file in md5sum format "
                             "(`<md5>  <file name>` a line), or null for NIH's published checksums")
        record["md5_file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if cfg.local_path:
        record["local_copy"] = folder_record(Path(cfg.local_path).expanduser(), "ingest.nih.local_path")
    return record
