"""What NIH publishes about its release: the 12 archives, how many images each holds, and their MD5s; and the
md5sum-format list that replaces those MD5s for a mirror or a re-packed copy (`ingest.nih.md5_file`)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path

from cxrstudy.errors import InputError
from cxrstudy.ingestschema import NihParams

# MD5 of each archive, as published in NIH's FAQ (Q07). `ingest.nih.md5_file` (or `ingest_nih(checksums=...)`)
# replaces it: its archive names (images_NNN.tar.gz) are the archives ingested, and a metadata file named in it is
# checked too.
NIH_MD5: dict[str, str] = {
    "images_001.tar.gz": "fe8ed0a6961412fddcbb3603c11b3698",
    "images_002.tar.gz": "ab07a2d7cbe6f65ddd97b4ed7bde10bf",
    "images_003.tar.gz": "2301d03bde4c246388bad3876965d574",
    "images_004.tar.gz": "9f1b7f5aae01b13f4bc8e2c44a4b8ef6",
    "images_005.tar.gz": "1861f3cd0ef7734df8104f2b0309023b",
    "images_006.tar.gz": "456b53a8b351afd92a35bc41444c58c8",
    "images_007.tar.gz": "1075121ea20a137b87f290d6a4a5965e",
    "images_008.tar.gz": "b61f34cec3aa69f295fbb593cbd9d443",
    "images_009.tar.gz": "442a3caa61ae9b64e61c561294d1e183",
    "images_010.tar.gz": "09ec81c4c31e32858ad8cf965c494b74",
    "images_011.tar.gz": "499aefc67207a5a97692424cf5dbeed5",
    "images_012.tar.gz": "dc9fda1757c2de0032b63347a7d2895c",
}
# How many images each of NIH's archives holds, in order (the images sorted by name): 112,120 in all.
NIH_ARCHIVE_IMAGES = (4_999,) + (10_000,) * 10 + (7_121,)

NIH_ORIGIN = "NIH's published checksum"
ARCHIVE_RE = re.compile(r"^images_\d{3}\.tar\.gz$")
MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")


class Checksums(dict[str, str]):
    """File name -> expected MD5, and where the list comes from (named in every mismatch message)."""

    def __init__(self, md5: Mapping[str, str], origin: str) -> None:
        super().__init__(md5)
        self.origin = origin


def origin_of(checksums: Mapping[str, str]) -> str:
    return checksums.origin if isinstance(checksums, Checksums) else "the checksum list given"


def read_md5_file(path: Path) -> Checksums:
    """An md5sum-format list (`<md5>  <file name>` a line; `#` comments and blank lines ignored); it must name at
    least one images_NNN.tar.gz archive. `InputError` names the file and line at fault."""
    if not path.is_file():
        raise InputError(f"ingest.nih.md5_file: {path} not found; give a file in md5sum format "
                         "(`<md5>  <file name>` a line), or null for NIH's published checksums")
    md5: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = MD5_LINE.match(line.strip())
        if not match:
            raise InputError(f"{path}:{number}: not an md5sum line (expected `<32 hex digits>  <file name>`): "
                             f"{line.strip()[:80]!r}")
        name = Path(match.group(2).strip()).name
        if name in md5:
            raise InputError(f"{path}:{number}: {name} is listed twice")
        md5[name] = match.group(1).lower()
    if not archive_names(md5):
        raise InputError(f"{path}: lists no archive named images_NNN.tar.gz; nothing to ingest")
    return Checksums(md5, f"the checksum in {path}")


def expected_checksums(cfg: NihParams) -> Checksums:
    """`ingest.nih.md5_file`'s list, or NIH's published one."""
    return read_md5_file(Path(cfg.md5_file)) if cfg.md5_file else Checksums(NIH_MD5, NIH_ORIGIN)


def archive_names(checksums: Mapping[str, str]) -> list[str]:
    """The archive names (images_NNN.tar.gz) in a checksum table, sorted."""
    return sorted(n for n in checksums if ARCHIVE_RE.match(n))


def archive_file_names(n_images: int, suffix: str = ".tar.gz") -> dict[str, int]:
    """NIH's archive names, each with how many of `n_images` images (sorted by name) it holds: NIH's own counts
    (4,999, then 10,000 ten times, then 7,121) scaled to `n_images`. An archive left empty is left out."""
    total = sum(NIH_ARCHIVE_IMAGES)
    ends = [round(n_images * c / total) for c in itertools.accumulate(NIH_ARCHIVE_IMAGES)]
    counts = [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    return {f"images_{i:03d}{suffix}": c for i, c in enumerate(counts, 1) if c}
