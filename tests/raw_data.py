"""Test helpers for the raw layout: images live in the archives of `data/raw/archives/`, so spoiling or removing one
image means rewriting the archive that holds it (a new file: never a write through a link or into DVC's cache), and
recording its new MD5 in `archives.md5`, as ingest would have had the source held that archive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from cxrstudy.data.dataset import MD5_FILE
from cxrstudy.data.imageio import archive_paths, iter_images, write_archive
from cxrstudy.data.ingest import file_md5


def members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every image member of `archive`; a member the reader refuses fails the test."""
    for name, data in iter_images(archive):
        assert isinstance(data, bytes), f"{archive}: {data}"
        yield name, data


def archive_of(raw: Path, name: str) -> Path:
    """The archive of `raw` that holds image `name`."""
    for archive in archive_paths(raw):
        if any(member == name for member, _ in members(archive)):
            return archive
    raise AssertionError(f"{name} is in no archive of {raw}")


def raw_names(raw: Path) -> list[str]:
    """Every image name in `raw`'s archives, sorted."""
    return sorted(name for archive in archive_paths(raw) for name, _ in members(archive))


def raw_bytes(raw: Path, name: str) -> bytes:
    return dict(members(archive_of(raw, name)))[name]


def record_md5(raw: Path, archive: Path) -> None:
    """Set (or add) `archive`'s line of `raw/archives.md5` to its current MD5, as ingest writes it."""
    path = raw / MD5_FILE
    lines = [line for line in path.read_text().splitlines() if not line.endswith(f"  {archive.name}")]
    path.write_text("".join(f"{line}\n" for line in sorted([*lines, f"{file_md5(archive)}  {archive.name}"],
                                                             key=lambda line: line.split("  ", 1)[1])))


def add_archive(raw: Path, name: str, images: list[tuple[str, bytes]]) -> Path:
    """A new archive `name` in `raw` holding `images`, recorded in `archives.md5`."""
    archive = archive_paths(raw)[0].parent / name
    write_archive(archive, images, compresslevel=1 if name.endswith(".gz") else None)
    record_md5(raw, archive)
    return archive


def rewrite_member(raw: Path, name: str, how: Callable[[bytes], bytes] | None, record: bool = True) -> Path:
    """Replace image `name`'s bytes by `how(bytes)` (None: drop the image) in the archive that holds it; with
    `record`, its new MD5 goes into `archives.md5` (the source held it so), else the archive no longer matches."""
    archive = archive_of(raw, name)
    kept = [(member, data if member != name else how(data)) for member, data in members(archive)
            if member != name or how is not None]
    archive.unlink()
    write_archive(archive, kept, compresslevel=1 if archive.name.endswith(".gz") else None)
    if record:
        record_md5(raw, archive)
    return archive
