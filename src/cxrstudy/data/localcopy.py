"""A local copy of a release, shared by the adapters that take one (NIH, CheXpert): an extracted copy packed once into
archives, and archives linked (never copied) into a dataset folder.

An extracted copy (NIH's `images/*.png`, CheXpert's `train/patient*/study*/view*.jpg`) is hundreds of thousands of
files; the dataset contract keeps images in a dozen archives, so that DVC tracks a dozen files (docs/performance.md).
Each archive is written once into the adapter's cache folder (`download_dir/packed`), via a `.part` file, with a stamp
beside it: the names, sizes and modification times of its members. An archive whose stamp still matches its members is
not written again, so a second ingest of the same copy packs nothing, and a changed image repacks only its archive.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cxrstudy.data.imageio import member_info
from cxrstudy.data.release import archive_file_names
from cxrstudy.errors import InputError

PACKED = "packed"  # download_dir/packed: archives made from an extracted copy

Members = list[tuple[str, Path]]  # (member name, the file it is packed from)


def plan_archives(files: Mapping[str, Path], suffix: str = ".tar") -> dict[str, Members]:
    """Archive name -> its members: the images sorted by name, split into NIH's 12 archives' proportions (NIH's
    names, `images_001.tar` ...; `cxrstudy.data.release.archive_file_names`)."""
    names = sorted(files)
    plan: dict[str, Members] = {}
    start = 0
    for archive, count in archive_file_names(len(names), suffix).items():
        plan[archive] = [(n, files[n]) for n in names[start : start + count]]
        start += count
    return plan


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.done")


def _digest(members: Members) -> str:
    digest = hashlib.sha256()
    for name, path in members:
        info = path.stat()
        digest.update(f"{name}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_packed(dest: Path, members: Members) -> bool:
    """Whether `dest` already holds exactly these files (names, sizes and modification times, by its stamp)."""
    stamp = _stamp_path(dest)
    return dest.is_file() and stamp.is_file() and stamp.read_text().strip() == _digest(members)


def pack_one(dest: Path, members: Members) -> None:
    """Write `members` as an uncompressed tar at `dest` (via a `.part` file), unless its stamp says that `dest`
    already holds these files."""
    if is_packed(dest, members):
        return
    digest = _digest(members)
    part = dest.with_name(dest.name + ".part")
    with part.open("wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, path in members:
            with path.open("rb") as fh:
                tar.addfile(member_info(name, os.fstat(fh.fileno()).st_size), fh)
    os.replace(part, dest)
    _stamp_path(dest).write_text(digest + "\n")


def pack_archives(plan: Mapping[str, Members], folder: Path, workers: int) -> dict[str, Path]:
    """Pack each planned archive into `folder` (made if need be), those already packed skipped, in parallel
    (uncompressed: PNGs and JPEGs do not compress). Returns archive name -> its path."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [name for name, members in plan.items() if not is_packed(folder / name, members)]
    if todo:
        count = sum(len(plan[name]) for name in todo)
        print(f"packing {count} extracted images into {len(todo)} archive(s) in {folder} (once; a second copy)")
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(lambda name: pack_one(folder / name, plan[name]), todo))
    return {name: folder / name for name in plan}


def stale_members(plan: Mapping[str, Members], folder: Path) -> Members:
    """The members of the archives that `pack_archives` would (re)write: the files not yet packed as they are."""
    return [m for name, members in plan.items() if not is_packed(folder / name, members) for m in members]


# ---------------------------------------------------------------------------------------------------------------
# Linking archives into a dataset folder


def link_file(src: Path, dst: Path, mode: str, parameter: str = "ingest.nih.link") -> str:
    """Make `dst` refer to `src` (hardlink, absolute symlink or copy); 'auto' = hardlink, else symlink.

    Returns the kind made. `parameter` names the setting of `mode` in the error of a hardlink that cannot be made.
    """
    if mode in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError as err:
            if mode == "hardlink":
                raise InputError(f"{src}: cannot hardlink into {dst.parent} ({err.strerror}); set {parameter} "
                                 "to auto, symlink or copy") from None
    if mode in ("auto", "symlink"):
        os.symlink(src.resolve(), dst)
        return "symlink"
    shutil.copyfile(src, dst)
    return "copy"


def link_archives(archives: Mapping[str, Path], dest: Path, mode: str = "auto") -> dict[str, int]:
    """Link every archive into the folder `dest` (made here); returns how many of each kind of link were made."""
    dest.mkdir()
    kinds: dict[str, int] = {}
    for name, src in archives.items():
        kind = link_file(src, dest / name, mode)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


LINKING_CACHE_TYPES = {"hardlink", "symlink", "reflink"}


def check_dvc_links(project: Path = Path(".")) -> None:
    """Refuse a DVC project whose cache would copy a release: DVC's default cache type on ext4 is `copy`, which
    doubles it (NIH's 45 GB, CheXpert-v1.0-small's 11 GB). Outside a DVC project (the stage run by hand) there is
    nothing to check."""
    if not (project / ".dvc").is_dir():
        return
    try:
        from dvc.config import Config
    except ImportError:
        return
    configured = Config(dvc_dir=str(project / ".dvc"))["cache"].get("type")
    types = {t.strip() for t in (configured if isinstance(configured, list) else str(configured or "").split(","))}
    if not types & LINKING_CACHE_TYPES or "copy" in types:
        raise InputError(
            f"DVC's cache.type is {configured or 'unset (reflink,copy: a copy on most file systems)'}: DVC would copy "
            "the release (NIH's 45 GB, CheXpert's 11 GB) into its cache. Run `dvc config --local cache.type "
            "hardlink,symlink` first (`make study` does), then re-run"
        )


def describe_links(kinds: Mapping[str, int]) -> str:
    """'12 hardlinks' or '11 hardlinks, 1 symlink'."""
    return ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))

