"""The real NIH ChestX-ray14 release: download or link, and verify, for the NIH adapter (`cxrstudy.data.sources.nih`).

The raw data are NIH's own 12 archives, verified against their MD5s, linked as `data/raw/archives/images_0NN.tar.gz`
to the one real copy of each, and NIH's metadata files (the label table, the official lists, the boxes), turned into
the dataset contract (`cxrstudy.data.dataset`).

Three ways in, one result:

- download (`ingest.nih.local_path: null`): the archives and the metadata files are fetched from
  `ingest.nih.base_url` into `ingest.nih.download_dir` (outside `data/raw`; `cxrstudy.data.download`);
- a local copy of the archives (`local_path: DIR` holding `images_0NN.tar.gz`): MD5-checked once (remembered by
  file identity, size and modification time in `download_dir/verified.json`) and linked;
- a local extracted copy (`DIR/images/*.png`, or Kaggle's `DIR/images_0NN/images/*.png`): packed once into
  uncompressed archives `download_dir/packed/images_0NN.tar` (NIH's split into 12, by name), then linked.

No image is decoded here: `preprocess` reads every PNG once and names every bad one (docs/nih.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cxrstudy.atomic import write_json
from cxrstudy.data.dataset import Dataset, DatasetInfo
from cxrstudy.data.download import CHUNK, archive_url, download, join_url, metadata_base
from cxrstudy.data.imageio import ARCHIVES_DIR, member_name
from cxrstudy.data.localcopy import PACKED, link_file, pack_archives, plan_archives
from cxrstudy.data.localcopy import check_dvc_links as check_dvc_links  # re-exported: the NIH adapter calls it
from cxrstudy.data.nihtable import (
    DATA_ENTRY_FILE,
    FINDINGS,
    NIH_LABEL_SOURCE,
    NIH_SITE,
    read_bbox_list,
    read_data_entry,
    to_contract,
)
from cxrstudy.data.release import archive_names, expected_checksums, origin_of
from cxrstudy.data.split import check_split, read_list
from cxrstudy.errors import InputError
from cxrstudy.ingestschema import NihParams

NIH_BOX_PAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

# `ingest.nih.metadata` -> the Data_Entry file looked for (it is written out as Data_Entry_2017.csv).
DATA_ENTRY_SOURCES: dict[str, str] = {"v2020": "Data_Entry_2017_v2020.csv", "2017": "Data_Entry_2017.csv"}
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
VERIFIED_FILE = "verified.json"  # in download_dir: the MD5 of each local archive, by file identity


# ---------------------------------------------------------------------------------------------------------------
# Local archives: verified once


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"device": info.st_dev, "inode": info.st_ino, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def verify_archives(archives: Mapping[str, Path], checksums: Mapping[str, str], cache: Path,
                    workers: int) -> None:
    """Check each archive's MD5 against `checksums`, in parallel; an archive whose file (device, inode, size,
    modification time) is unchanged since it was last hashed is not read again. Every mismatch is named at once."""
    record_path = cache / VERIFIED_FILE
    try:
        record: dict[str, Any] = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    todo = {name: path for name, path in archives.items()
            if record.get(str(path), {}).get("identity") != _identity(path)}
    total = sum(path.stat().st_size for path in todo.values())
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, \
            tqdm(total=total, desc="verify archives", unit="B", unit_scale=True, disable=not todo) as bar:
        def hashed(item: tuple[str, Path]) -> tuple[Path, str]:
            md5 = file_md5(item[1])
            bar.update(item[1].stat().st_size)
            return item[1], md5

        for path, md5 in pool.map(hashed, todo.items()):  # hashlib releases the GIL: threads hash in parallel
            record[str(path)] = {"identity": _identity(path), "md5": md5}
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        write_json(record_path, record)
    wrong = [f"  {name}: got {record[str(path)]['md5']}, expected {checksums[name]} ({path})"
             for name, path in archives.items() if name in checksums
             and record[str(path)]["md5"] != checksums[name].lower()]
    if wrong:
        raise InputError(f"MD5 mismatch ({origin_of(checksums)}):\n" + "\n".join(wrong) + "\nthe archive is damaged "
                         "or another file than the list describes; replace it with a good copy, or correct "
                         "ingest.nih.md5_file if the list is wrong")


# ---------------------------------------------------------------------------------------------------------------
# Local extracted copies: packed once


def _image_dirs(root: Path) -> list[Path]:
    """NIH's layout (root/images) and Kaggle's (root/images_NNN/images), whichever exist."""
    dirs = [root / "images"] if (root / "images").is_dir() else []
    dirs += sorted(p for p in root.glob("images_*/images") if p.is_dir())
    return dirs


def index_images(dirs: Iterable[Path]) -> dict[str, Path]:
    """Image file name -> absolute path, over the folders given (a later folder wins on a repeated name)."""
    index: dict[str, Path] = {}
    for folder in dirs:
        with os.scandir(folder) as entries:
            for entry in entries:
                if member_name(entry.name) and entry.is_file():
                    index[entry.name] = Path(entry.path).absolute()
    return index


def pack_extracted(image_dirs: list[Path], cache: Path, workers: int) -> dict[str, Path]:
    """Pack an extracted copy into NIH's 12 archives (uncompressed: PNGs do not compress), once, in parallel."""
    index = index_images(image_dirs)
    if not index:
        raise InputError(f"no PNG in {', '.join(map(str, image_dirs))}")
    return pack_archives(plan_archives(index, ".tar"), cache / PACKED, workers)


# ---------------------------------------------------------------------------------------------------------------
# Where the files are


@dataclass
class Sources:
    """The files one ingest lays out: the (verified) archives and the metadata files found."""

    archives: dict[str, Path]
    metadata: dict[str, Path]


def _find_file(dirs: Iterable[Path], name: str) -> Path | None:
    for folder in dirs:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def metadata_names(cfg: NihParams) -> dict[str, str]:
    """Output name -> the source file name looked for (the Data_Entry file follows `cfg.metadata`)."""
    return {
        DATA_ENTRY_FILE: DATA_ENTRY_SOURCES[cfg.metadata],
        TRAIN_VAL_LIST: TRAIN_VAL_LIST,
        TEST_LIST: TEST_LIST,
        BBOX_FILE: BBOX_FILE,
    }


def _packaged_bbox() -> Path:
    with resources.as_file(resources.files("cxrstudy") / "resources" / f"{BBOX_FILE}.gz") as path:
        return Path(path)


def _resolve_metadata(cfg: NihParams, dirs: list[Path], fetch: Callable[[str], Path | None]) -> dict[str, Path]:
    """Find (or fetch) each metadata file; BBox falls back to the packaged copy of NIH's file."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for out_name, src_name in metadata_names(cfg).items():
        path = _find_file(dirs, src_name) or fetch(src_name)
        if path is None and out_name == BBOX_FILE:
            path = _packaged_bbox()
            print(f"{BBOX_FILE}: not in the source; using the copy of NIH's file packaged with cxrstudy")
        if path is None:
            missing.append(src_name)
        else:
            found[out_name] = path
    if missing:
        where = ", ".join(str(d) for d in dirs)
        raise InputError(
            f"NIH metadata file(s) not found: {', '.join(missing)} (looked in {where}, also as .gz). NIH's Box "
            f"publishes them on {NIH_BOX_PAGE} without fixed download addresses: download them into "
            f"{dirs[0]}, or set ingest.nih.metadata_url to a mirror that serves them by name"
        )
    return found


def _local_sources(cfg: NihParams, root: Path, checksums: Mapping[str, str], cache: Path) -> Sources:
    if not root.is_dir():
        raise InputError(f"ingest.nih.local_path: {root} is not a folder; expected NIH's archives "
                         "(images_001.tar.gz ...) or extracted images (images/*.png) plus the metadata files")
    metadata = _resolve_metadata(cfg, [root, cache], lambda _name: None)  # first: it is cheap to find missing
    names = archive_names(checksums)
    present = {n: root / n for n in names if (root / n).is_file()}
    image_dirs = _image_dirs(root)
    if present:  # archives win over extracted images beside them: they need no packing
        absent = [n for n in names if n not in present]
        if absent:
            raise InputError(f"ingest.nih.local_path: {root} has {len(present)} of {len(names)} archives; "
                             f"missing: {', '.join(absent)}")
        verify_archives(present, checksums, cache, cfg.workers)
        archives = present
    elif image_dirs:
        archives = pack_extracted(image_dirs, cache, cfg.workers)
    else:
        raise InputError(f"ingest.nih.local_path: {root} has neither NIH's archives ({names[0]} ...) nor extracted "
                         "images (images/*.png or images_NNN/images/*.png)")
    return Sources(archives, metadata)


def _download_sources(cfg: NihParams, checksums: Mapping[str, str], cache: Path) -> Sources:
    base = metadata_base(cfg)

    def fetch(name: str) -> Path | None:
        if base is None:
            return None
        try:
            return download(join_url(base, name), cache / name, checksums.get(name), cfg, origin=origin_of(checksums))
        except InputError:
            if name == BBOX_FILE:
                return None
            raise

    metadata = _resolve_metadata(cfg, [cache], fetch)
    archives = {name: cache / name for name in archive_names(checksums)}
    for name, path in archives.items():  # each MD5-checked as it arrives; a finished download is not fetched again
        download(archive_url(cfg, name), path, checksums.get(name), cfg, origin=origin_of(checksums))
    return Sources(archives, metadata)


def _sources(cfg: NihParams, checksums: Mapping[str, str]) -> Sources:
    cache = Path(cfg.download_dir).absolute()
    if cfg.local_path:
        return _local_sources(cfg, Path(cfg.local_path).expanduser().absolute(), checksums, cache)
    return _download_sources(cfg, checksums, cache)


# ---------------------------------------------------------------------------------------------------------------
# Writing data/raw


def ingest_nih(cfg: NihParams, out_dir: Path, checksums: Mapping[str, str] | None = None) -> Dataset:
    """Link the real NIH release's archives into `out_dir/archives` and return it as the dataset contract.

    `checksums` maps file names to MD5s (default: `ingest.nih.md5_file`'s list, or NIH_MD5): its images_NNN.tar.gz
    keys are the archives ingested. Raises `InputError` on a missing or mismatching archive, missing metadata, or
    official lists that name unknown images or leak patients.
    """
    checksums = expected_checksums(cfg) if checksums is None else checksums
    sources = _sources(cfg, checksums)
    entries = read_data_entry(sources.metadata[DATA_ENTRY_FILE])
    lists = {"train_val": read_list(sources.metadata[TRAIN_VAL_LIST]), "test": read_list(sources.metadata[TEST_LIST])}
    check_split(entries, lists, source=f"NIH split lists ({sources.metadata[TRAIN_VAL_LIST].parent})")
    boxes = read_bbox_list(sources.metadata[BBOX_FILE])
    boxes = boxes[boxes["image"].isin(set(entries["image"]))].reset_index(drop=True)
    (out_dir / ARCHIVES_DIR).mkdir()
    kinds: Counter[str] = Counter()
    for name, src in sources.archives.items():
        kinds[link_file(src, out_dir / ARCHIVES_DIR / name, cfg.link)] += 1
    size = sum(p.stat().st_size for p in sources.archives.values())
    links = ", ".join(f"{n} {k}s" for k, n in kinds.most_common())
    print(f"ingest (nih): {len(sources.archives)} archives ({size / 1e6:,.0f} MB) linked into "
          f"{out_dir.name}/{ARCHIVES_DIR} ({links}); preprocess decodes every image once and names any bad one")
    info = DatasetInfo(source="nih", name="NIH ChestX-ray14", site=NIH_SITE, label_space="nih", labels=FINDINGS,
                       uncertain="zeros", label_source=NIH_LABEL_SOURCE,
                       official_test="NIH's official patient-wise test list (test_list.txt)")
    table = to_contract(entries, lists["train_val"], lists["test"], NIH_SITE)
    md5 = {name: checksums[name].lower() for name in sources.archives if name in checksums}
    return Dataset(table, info, boxes, archive_md5=md5)
