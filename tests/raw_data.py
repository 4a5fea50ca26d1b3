"""Test helpers for the raw layout: images live in the archives of `data/raw/archives/`, so spoiling or removing one
image means rewriting the archive that holds it (a new file: never a write through a link or into DVC's cache)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrstudy.data.imageio import archive_paths, iter_pngs, write_archive


def archive_of(raw: Path, name: str) -> Path:
    """The archive of `raw` that holds image `name`."""
    for archive in archive_paths(raw):
        if any(member == name for member, _ in iter_pngs(archive)):
            return archive
    raise AssertionError(f"{name} is in no archive of {raw}")


def raw_names(raw: Path) -> list[str]:
    """Every image name in `raw`'s archives, sorted."""
    return sorted(name for archive in archive_paths(raw) for name, _ in iter_pngs(archive))


def raw_bytes(raw: Path, name: str) -> bytes:
    return dict(iter_pngs(archive_of(raw, name)))[name]


def rewrite_member(raw: Path, name: str, how: Callable[[bytes], bytes] | None) -> Path:
    """Replace image `name`'s bytes by `how(bytes)` (None: drop the image) in the archive that holds it."""
    archive = archive_of(raw, name)
    members = [(member, data if member != name else how(data)) for member, data in iter_pngs(archive)
               if member != name or how is not None]
    archive.unlink()
    write_archive(archive, members, compresslevel=1 if archive.name.endswith(".gz") else None)
    return archive
