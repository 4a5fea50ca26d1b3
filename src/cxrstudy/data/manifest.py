"""The manifest stage: a small record of what the configured data source holds, so that DVC re-runs ingest when it
changes.

DVC cannot watch a folder outside the repository cheaply (it would hash all 45 GB of it), so `dvc.yaml` runs this
stage every time (`always_changed: true`) and ingest depends on its output, which changes exactly when the source
does: for a local copy, the name, size and modification time of every file in it (as counts and a digest); for a
download, the checksums the archives are verified against; for the phantom, nothing beyond its parameters, which
are a dependency of ingest already.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cxrstudy.atomic import write_json
from cxrstudy.errors import InputError
from cxrstudy.params import Params


def _walk(root: Path) -> list[tuple[str, int, int]]:
    """(path relative to `root`, size, mtime in ns) of every file under `root`, links followed, sorted."""
    entries: list[tuple[str, int, int]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file():
                    info = entry.stat()
                    entries.append((os.path.relpath(entry.path, root), info.st_size, info.st_mtime_ns))
    return sorted(entries)


def folder_record(root: Path) -> dict[str, Any]:
    """Counts and a digest of the names, sizes and modification times of the files under `root`."""
    if not root.is_dir():
        raise InputError(f"ingest.nih.local_path: {root} is not a folder; expected NIH's archives "
                         "(images_001.tar.gz ...) or extracted images (images/*.png) plus the metadata files")
    entries = _walk(root)
    digest = hashlib.sha256()
    for name, size, mtime in entries:
        digest.update(f"{name}\t{size}\t{mtime}\n".encode())
    return {"files": len(entries), "bytes": sum(size for _, size, _ in entries), "sha256": digest.hexdigest()}


def build(params: Params) -> dict[str, Any]:
    """The manifest of `params.ingest`'s source."""
    cfg = params.ingest
    if cfg.source == "phantom":
        return {"source": "phantom"}
    record: dict[str, Any] = {"source": "nih"}
    if cfg.nih.md5_file:
        path = Path(cfg.nih.md5_file)
        if not path.is_file():
            raise InputError(f"ingest.nih.md5_file: {path} not found; give a file in md5sum format "
                             "(`<md5>  <file name>` a line), or null for NIH's published checksums")
        record["md5_file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if cfg.nih.local_path:
        record["local_copy"] = folder_record(Path(cfg.nih.local_path).expanduser())
    return record


def run(params: Params, out_file: Path) -> None:
    """Stage entry point: write the manifest of the configured source to `out_file`."""
    record = build(params)
    write_json(out_file, record)
    held = record.get("local_copy")
    print(f"manifest ({record['source']}): " + (f"{held['files']} files, {held['bytes']} bytes" if held else
                                                "nothing outside the repository") + f" -> {out_file}")
