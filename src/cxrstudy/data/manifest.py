"""The manifest stage: a small record of what the configured data sources hold outside the project, so that ingest
re-runs when one changes.

DVC cannot watch a folder outside the repository cheaply (it would hash all 45 GB of it), so ingest depends on this
record instead, which changes exactly when a source does: for a local copy, the name, size and modification time of
every file in it (as counts and a digest); for a download, the checksums the archives are verified against; for a
phantom, nothing beyond its parameters, which are a dependency of ingest already. Each adapter says what its source
holds (`manifest()` in `cxrstudy.data.sources`).

The stage runs when its parameters change; `make repro` and `make study` re-run it every time (`dvc repro --force
--single-item manifest`), so that a changed local copy is seen, and it rewrites the same bytes when nothing changed,
so that `dvc status` stays clean.
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


def folder_record(root: Path, parameter: str) -> dict[str, Any]:
    """Counts and a digest of the names, sizes and modification times of the files under `root` (`parameter` names
    the setting that points there, in the error when it is not a folder)."""
    if not root.is_dir():
        raise InputError(f"{parameter}: {root} is not a folder; see docs/datasets.md for the layout expected")
    entries = _walk(root)
    digest = hashlib.sha256()
    for name, size, mtime in entries:
        digest.update(f"{name}\t{size}\t{mtime}\n".encode())
    return {"files": len(entries), "bytes": sum(size for _, size, _ in entries), "sha256": digest.hexdigest()}


def build(params: Params) -> dict[str, Any]:
    """The manifest of both sites' sources: the training site (`ingest.source`) and the external one."""
    from cxrstudy.data.dataset import NONE
    from cxrstudy.data.sources import adapter

    record: dict[str, Any] = {}
    for site, source in (("internal", params.ingest.source), ("external", params.ingest.external)):
        record[site] = {"source": source, **(adapter(source).manifest(params) if source != NONE else {})}
    return record


def run(params: Params, out_file: Path) -> None:
    """Stage entry point: write the manifest of the configured sources to `out_file`."""
    record = build(params)
    write_json(out_file, record)
    held = [r["local_copy"] for r in record.values() if "local_copy" in r]
    print("manifest: " + (", ".join(f"{h['files']} files, {h['bytes']} bytes" for h in held) if held else
                          "nothing outside the repository") + f" -> {out_file}")
