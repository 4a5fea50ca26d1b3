"""The real NIH ChestX-ray14 release: download or link, verify, and lay out as `data/raw/`.

Two ways in, one result (NIH's layout in the ingest stage's output folder):

- download (`ingest.nih.local_path: null`): the 12 archives and the metadata files are fetched from
  `ingest.nih.base_url` into `ingest.nih.download_dir` (outside `data/raw`), resumably (`.part` files, HTTP Range),
  with retries and MD5 checks against NIH's published list, then extracted once into `<download_dir>/extracted/`;
- local copy (`ingest.nih.local_path: DIR`): DIR holds either the archives (verified and extracted once into the
  download cache) or the extracted images (`DIR/images/*.png`, or Kaggle's `DIR/images_0NN/images/*.png`), plus
  the metadata files.

Either way `data/raw/images/` is a folder of links (hardlinks where possible, else symlinks; `ingest.nih.link`) to
the one real copy of each PNG, never a second 45 GB copy. Every image named in the metadata is then read and decoded
once, in parallel; missing, empty, truncated or corrupt files are reported all together (or, with
`on_bad_image: skip`, dropped and listed in `bad_images.txt`). See docs/nih.md for disk cost and DVC's behaviour.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Literal, cast

import pandas as pd
from tqdm import tqdm

from cxrstudy.errors import InputError
from cxrstudy.imageio import ImageError, read_gray
from cxrstudy.labels import DATA_ENTRY_FILE, read_data_entry
from cxrstudy.params import OFFICIAL_BASE_URL, NihParams, shown_address
from cxrstudy.split import TEST_LIST, TRAIN_VAL_LIST, check_split, read_list

NIH_BOX_PAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

# NIH's batch_download_zips.py: the file name of each archive at OFFICIAL_BASE_URL.
NIH_BOX_NAMES: dict[str, str] = {
    "images_001.tar.gz": "vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz",
    "images_002.tar.gz": "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz",
    "images_003.tar.gz": "f1t00wrtdk94satdfb9olcolqx20z2jp.gz",
    "images_004.tar.gz": "0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz",
    "images_005.tar.gz": "v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz",
    "images_006.tar.gz": "asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz",
    "images_007.tar.gz": "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz",
    "images_008.tar.gz": "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz",
    "images_009.tar.gz": "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz",
    "images_010.tar.gz": "l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz",
    "images_011.tar.gz": "hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz",
    "images_012.tar.gz": "ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz",
}

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

ARCHIVE_RE = re.compile(r"^images_\d{3}\.tar\.gz$")
NIH_ORIGIN = "NIH's published checksum"
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
# `ingest.nih.metadata` -> the Data_Entry file looked for (it is written out as Data_Entry_2017.csv).
DATA_ENTRY_SOURCES: dict[str, str] = {"v2020": "Data_Entry_2017_v2020.csv", "2017": "Data_Entry_2017.csv"}
BBOX_FILE = "BBox_List_2017.csv"
BAD_IMAGES_FILE = "bad_images.txt"
EXTRACTED = "extracted"
MAX_LISTED = 100  # bad images named in an error message; the full list goes to a file
CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# Downloads


class _Transient(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def archive_names(checksums: Mapping[str, str]) -> list[str]:
    """The archive names (images_NNN.tar.gz) in a checksum table, sorted."""
    return sorted(n for n in checksums if ARCHIVE_RE.match(n))


def archive_url(cfg: NihParams, name: str) -> str:
    """The address of archive `name` (images_NNN.tar.gz) under `cfg.base_url`."""
    style = cfg.url_style
    if style == "auto":
        style = "nih-box" if cfg.base_url.rstrip("/") == OFFICIAL_BASE_URL.rstrip("/") else "plain"
    if style == "nih-box":
        if name not in NIH_BOX_NAMES:
            raise InputError(f"{name}: not one of NIH's archives; url_style 'nih-box' knows {sorted(NIH_BOX_NAMES)}")
        return _join(cfg.base_url, NIH_BOX_NAMES[name])
    return _join(cfg.base_url, name)


def metadata_base(cfg: NihParams) -> str | None:
    """Where metadata files are fetched by name, or None when there is no such address (NIH's Box)."""
    if cfg.metadata_url:
        return cfg.metadata_url
    if cfg.base_url.rstrip("/") == OFFICIAL_BASE_URL.rstrip("/"):
        return None
    return cfg.base_url


@dataclass
class _Hashed:
    """An MD5 over the first `size` bytes of a `.part` file."""

    md5: hashlib._Hash = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))
    size: int = 0


def _hash_prefix(part: Path) -> _Hashed:
    state = _Hashed()
    if part.exists():
        with part.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                state.md5.update(chunk)
                state.size += len(chunk)
    return state


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "cxrstudy-ingest"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # nothing left to send: the .part is already whole
            raise _RangeDone() from None
        if err.code >= 500 or err.code in (408, 429):
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise InputError(f"{shown_address(url, keep_name=True)}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Transient(str(getattr(err, "reason", err))) from None
    return response


class _RangeDone(Exception):
    """The server answered 416 to a Range request: the partial file already holds everything."""


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Total size of the file from Content-Range (206) or Content-Length (200), when the server says."""
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-\d+/(\d+)", content_range)
    if response.status == 206 and match:
        if int(match.group(1)) != offset:
            raise _Transient(f"server resumed at byte {match.group(1)}, not {offset}")
        return int(match.group(2))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _fetch_once(url: str, part: Path, state: _Hashed, timeout: float, label: str) -> _Hashed:
    """One attempt: append the rest of `url` to `part` (from byte `state.size`), updating the running MD5."""
    try:
        response = _open(url, state.size, timeout)
    except _RangeDone:
        return state
    with response:
        if state.size and response.status != 206:  # the server ignored Range: start over
            state = _Hashed()
            part.unlink(missing_ok=True)
        total = _expected_total(response, state.size)
        with part.open("ab") as out, tqdm(total=total, initial=state.size, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=label, leave=False, mininterval=1.0) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    state.md5.update(chunk)
                    state.size += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:  # timeouts and cut connections
                raise _Transient(f"{type(err).__name__}: {err} after {state.size} bytes") from None
    if total is not None and state.size != total:
        raise _Transient(f"connection closed at byte {state.size} of {total}")
    return state


def download(url: str, dest: Path, md5: str | None, cfg: NihParams, label: str | None = None,
             origin: str = NIH_ORIGIN) -> Path:
    """Download `url` to `dest` unless `dest` exists (a finished, verified download).

    Bytes go to `dest.part` first, so a cut download resumes (HTTP Range) on the next attempt or the next run.
    Retries transient failures `cfg.retries` times with exponential backoff; checks the MD5 when `md5` is given and
    deletes a mismatching file. Raises `InputError` naming the file on a 4xx answer, a mismatch or when retries
    run out.
    """
    label = label or dest.name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    state = _hash_prefix(part)
    errors: list[str] = []
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            state = _fetch_once(url, part, state, cfg.timeout_s, label)
            break
        except _Transient as err:
            errors.append(str(err))
            print(f"{label}: attempt {attempt + 1} of {cfg.retries + 1} failed ({err})", file=sys.stderr)
        except InputError as err:
            raise InputError(f"{label}: cannot download: {err} (check ingest.nih.base_url / metadata_url)") from None
    else:
        raise InputError(
            f"{label}: download from {shown_address(url, keep_name=True)} failed {cfg.retries + 1} time(s), "
            f"last: {errors[-1]}; "
            f"{state.size} bytes are kept in {part} and the next run resumes from there "
            "(raise ingest.nih.retries / timeout_s, or set base_url to a mirror)"
        )
    if md5 is not None and state.md5.hexdigest() != md5.lower():
        part.unlink(missing_ok=True)
        raise InputError(
            f"{label}: MD5 mismatch: got {state.md5.hexdigest()}, expected {md5} ({origin}) for the file from "
            f"{shown_address(url, keep_name=True)}; "
            "the download was deleted. A cut transfer is fixed by running again; if it mismatches again, the server "
            "holds another file than the list describes: check ingest.nih.base_url, or ingest.nih.md5_file"
        )
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------------------------
# Archives


class _HashingReader:
    """A read-only file wrapper that MD5s everything read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.md5.update(data)
        return data

    def drain(self) -> str:
        while self.read(CHUNK):
            pass
        return self.md5.hexdigest()


def _extract_members(tar: tarfile.TarFile, staging: Path) -> int:
    """Extract every regular *.png member, flattened to its base name, into `staging`; return how many."""
    count = 0
    for member in tar:
        base = Path(member.name).name
        if not member.isfile() or not base.lower().endswith(".png") or base.startswith("."):
            continue
        member.name = base
        tar.extract(member, staging, filter="data")
        count += 1
    return count


def extract_archive(archive: Path, images_dir: Path, md5: str | None, label: str, origin: str = NIH_ORIGIN) -> int:
    """Extract `archive`'s PNGs into `images_dir`, checking its MD5 in the same single pass.

    Done once: a stamp `.done-<name>` beside `images_dir` (holding the MD5) makes later calls return at once.
    Files land in a staging folder first and are renamed into place only when the archive is whole and its MD5
    matches. Returns the number of images (0 when already extracted).
    """
    if _is_extracted(images_dir, label, md5):
        return 0
    stamp = images_dir.parent / f".done-{label}"
    staging = images_dir.parent / f".staging-{label}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with archive.open("rb") as raw:
            reader = _HashingReader(raw)
            unreadable = None
            try:
                with tarfile.open(fileobj=reader, mode="r|gz") as tar:  # type: ignore[call-overload]
                    count = _extract_members(tar, staging)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                unreadable = err  # a damaged archive: its checksum says more than the decompressor
            got = reader.drain()
        if unreadable is not None and (md5 is None or got == md5.lower()):
            raise InputError(f"{label}: not a readable .tar.gz ({archive}): {unreadable}")
        if md5 is not None and got != md5.lower():
            raise InputError(
                f"{label}: MD5 mismatch: got {got}, expected {md5} ({origin}) for {archive}: the archive is "
                "damaged or another file than the list describes; replace it with a good copy, or correct "
                "ingest.nih.md5_file if the list is wrong"
            )
        images_dir.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(staging):
            os.replace(entry.path, images_dir / entry.name)  # a rename: never writes through an existing link
        stamp.write_text(got + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{label}: {count} images extracted into {images_dir}")
    return count


# ---------------------------------------------------------------------------------------------------------------
# Where the files are


@dataclass
class Sources:
    """The files one ingest reads: image folders to index and the metadata files found."""

    image_dirs: list[Path]
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


def _image_dirs(root: Path) -> list[Path]:
    """NIH's layout (root/images) and Kaggle's (root/images_NNN/images), whichever exist."""
    dirs = [root / "images"] if (root / "images").is_dir() else []
    dirs += sorted(p for p in root.glob("images_*/images") if p.is_dir())
    return dirs


def _extract_all(archives: dict[str, Path], checksums: Mapping[str, str], cache: Path, delete: bool) -> Path:
    images_dir = cache / EXTRACTED / "images"
    for name, path in archives.items():
        extract_archive(path, images_dir, checksums.get(name), name, origin_of(checksums))
        if delete and path.is_file():
            path.unlink()
            print(f"{name}: deleted after extraction (ingest.nih.keep_archives: false)")
    return images_dir


def _local_sources(cfg: NihParams, root: Path, checksums: Mapping[str, str], cache: Path) -> Sources:
    if not root.is_dir():
        raise InputError(f"ingest.nih.local_path: {root} is not a folder; expected NIH's archives "
                         "(images_001.tar.gz ...) or extracted images (images/*.png) plus the metadata files")
    names = archive_names(checksums)
    present = {n: root / n for n in names if (root / n).is_file()}
    image_dirs = _image_dirs(root)  # extracted images win: archives beside them are not extracted again
    if present and not image_dirs:
        absent = [n for n in names if n not in present]
        if absent:
            raise InputError(f"ingest.nih.local_path: {root} has {len(present)} of {len(names)} archives; "
                             f"missing: {', '.join(absent)}")
        image_dirs.append(_extract_all(present, checksums, cache, delete=False))
    if not image_dirs:
        raise InputError(f"ingest.nih.local_path: {root} has neither NIH's archives ({names[0]} ...) nor extracted "
                         "images (images/*.png or images_NNN/images/*.png)")
    metadata = _resolve_metadata(cfg, [root, cache], lambda _name: None)
    return Sources(image_dirs, metadata)


def _download_sources(cfg: NihParams, checksums: Mapping[str, str], cache: Path) -> Sources:
    base = metadata_base(cfg)

    def fetch(name: str) -> Path | None:
        if base is None:
            return None
        try:
            return download(_join(base, name), cache / name, checksums.get(name), cfg, origin=origin_of(checksums))
        except InputError:
            if name == BBOX_FILE:
                return None
            raise

    metadata = _resolve_metadata(cfg, [cache], fetch)
    archives = {name: cache / name for name in archive_names(checksums)}
    todo = [n for n in archives if not _is_extracted(cache / EXTRACTED / "images", n, checksums.get(n))]
    for name in todo:
        download(archive_url(cfg, name), archives[name], checksums.get(name), cfg, origin=origin_of(checksums))
        _extract_all({name: archives[name]}, checksums, cache, delete=not cfg.keep_archives)
    return Sources([cache / EXTRACTED / "images"], metadata)


def _is_extracted(images_dir: Path, name: str, md5: str | None) -> bool:
    """True when archive `name` was extracted into `images_dir` (a stamp beside it, holding its MD5, says so)."""
    stamp = images_dir.parent / f".done-{name}"
    done = stamp.is_file() and images_dir.is_dir()
    return done and (md5 is None or stamp.read_text().strip() == md5.lower())


def index_images(dirs: Iterable[Path]) -> dict[str, Path]:
    """Image file name -> absolute path, over the folders given (a later folder wins on a repeated name)."""
    index: dict[str, Path] = {}
    for folder in dirs:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(".png"):
                    index[entry.name] = Path(entry.path).absolute()
    return index


# ---------------------------------------------------------------------------------------------------------------
# Linking and validating


def link_file(src: Path, dst: Path, mode: str) -> str:
    """Make `dst` refer to `src` (hardlink, absolute symlink or copy); 'auto' = hardlink, else symlink.

    Returns the kind made.
    """
    if mode in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError as err:
            if mode == "hardlink":
                raise InputError(f"{src}: cannot hardlink into {dst.parent} ({err.strerror}); set ingest.nih.link "
                                 "to auto, symlink or copy") from None
    if mode in ("auto", "symlink"):
        os.symlink(src.resolve(), dst)
        return "symlink"
    shutil.copyfile(src, dst)
    return "copy"


def link_images(names: Iterable[str], index: Mapping[str, Path], images_dir: Path,
                mode: str) -> tuple[list[tuple[str, str]], Counter[str]]:
    """Link each named image into `images_dir`; return (missing as (name, reason), kinds of links made)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    missing: list[tuple[str, str]] = []
    kinds: Counter[str] = Counter()
    for name in names:
        src = index.get(name)
        if src is None:
            missing.append((name, "missing image file (named in the metadata, not in the source)"))
            continue
        kinds[link_file(src, images_dir / name, mode)] += 1
    return missing, kinds


def check_image(path: Path) -> tuple[str, str | None, tuple[int, int]]:
    """Read and decode one PNG; return (name, reason it is unusable or None, (height, width))."""
    try:
        image = read_gray(path)
    except ImageError as err:
        return path.name, str(err).removeprefix(f"{path}: "), (0, 0)
    return path.name, None, (int(image.shape[0]), int(image.shape[1]))


def _check_chunk(paths: list[Path]) -> list[tuple[str, str | None, tuple[int, int]]]:
    return [check_image(p) for p in paths]


def _one_cv2_thread() -> None:
    import cv2

    cv2.setNumThreads(1)


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _executor(kind: str, workers: int) -> Executor:
    if kind == "process":
        return ProcessPoolExecutor(max_workers=workers, initializer=_one_cv2_thread)
    return ThreadPoolExecutor(max_workers=workers, initializer=_one_cv2_thread)


@dataclass
class Validation:
    """What the validation pass found: unusable images (name, reason) and a count of image sizes."""

    bad: list[tuple[str, str]]
    sizes: Counter[tuple[int, int]]


def validate_images(paths: list[Path], workers: int = 0, kind: Literal["thread", "process"] = "thread",
                    chunk: int = 32, progress: bool = True) -> Validation:
    """Decode every image once, in parallel (`workers` 0 = one per core; OpenCV limited to one thread each).

    cv2.imdecode releases the GIL, so threads scale like processes without copying anything between them.
    """
    workers = workers or os.cpu_count() or 1
    bad: list[tuple[str, str]] = []
    sizes: Counter[tuple[int, int]] = Counter()
    with _executor(kind, workers) as pool, tqdm(total=len(paths), desc="validate", unit="img",
                                                 disable=not progress, mininterval=1.0) as bar:
        for results in pool.map(_check_chunk, _chunks(paths, chunk)):
            for name, reason, size in results:
                if reason is None:
                    sizes[size] += 1
                else:
                    bad.append((name, reason))
            bar.update(len(results))
    return Validation(bad, sizes)


# ---------------------------------------------------------------------------------------------------------------
# Writing data/raw


def _open_text(path: Path) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")


def _first_field(line: bytes) -> str:
    return line.split(b",", 1)[0].strip().decode("utf-8", "replace")


def copy_metadata(src: Path, dst: Path, drop: Collection[str] = (), header: bool = True) -> None:
    """Copy a metadata file byte for byte (decompressing .gz), leaving out lines whose image is in `drop`.

    With `header`, the first line is kept as is and lines are keyed by their first CSV field; without, each line
    is an image name (the split lists).
    """
    drop = set(drop)
    with _open_text(src) as fin, dst.open("wb") as fout:
        for number, line in enumerate(fin):
            key = _first_field(line) if header else line.strip().decode("utf-8", "replace")
            if (header and number == 0) or key not in drop:
                fout.write(line)


def _write_metadata(metadata: Mapping[str, Path], out_dir: Path, drop: set[str]) -> None:
    for out_name, src in metadata.items():
        copy_metadata(src, out_dir / out_name, drop, header=out_name.endswith(".csv"))


def _read_lists(out_dir: Path) -> dict[str, list[str]]:
    return {"train_val": read_list(out_dir / TRAIN_VAL_LIST), "test": read_list(out_dir / TEST_LIST)}


def _check_lists(table: pd.DataFrame, out_dir: Path, source: str) -> None:
    """The official lists must name only known images and keep every patient on one side."""
    check_split(table, _read_lists(out_dir), source=source)


def _bad_report(bad: list[tuple[str, str]]) -> str:
    return "".join(f"{name}\t{reason}\n" for name, reason in sorted(bad))


def _raise_bad(bad: list[tuple[str, str]], n_images: int, report_path: Path) -> None:
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(_bad_report(bad))
    shown = "\n".join(f"  {name}: {reason}" for name, reason in sorted(bad)[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise InputError(
        f"{len(bad)} of {n_images} image(s) cannot be used (full list: {report_path}):\n{shown}{more}\n"
        "Replace them with good copies, or set ingest.nih.on_bad_image: skip to drop them (they are then listed "
        f"in data/raw/{BAD_IMAGES_FILE})"
    )


def _skip_bad(bad: list[tuple[str, str]], metadata: Mapping[str, Path], out_dir: Path) -> None:
    drop = {name for name, _ in bad}
    for name in drop:
        (out_dir / "images" / name).unlink(missing_ok=True)
    _write_metadata(metadata, out_dir, drop)
    (out_dir / BAD_IMAGES_FILE).write_text(_bad_report(bad))
    if bad:
        print(f"WARNING: skipped {len(bad)} unusable image(s) (ingest.nih.on_bad_image: skip); their rows were "
              f"dropped from the metadata and split lists; the list is in data/raw/{BAD_IMAGES_FILE}",
              file=sys.stderr)


def _describe(table: pd.DataFrame, index: Mapping[str, Path], kinds: Counter[str],
              sizes: Counter[tuple[int, int]]) -> None:
    extra = len(set(index) - set(table["image"]))
    if extra:
        print(f"note: {extra} PNG(s) in the source are not in the metadata and were not linked")
    links = ", ".join(f"{n} {k}s" for k, n in kinds.most_common())
    other = sum(n for size, n in sizes.items() if size != (1024, 1024))
    print(f"ingest (nih): linked {links}; {other} image(s) are not 1024x1024 "
          f"(sizes: {dict(sizes.most_common(5))}); preprocess resizes all of them")


LINKING_CACHE_TYPES = {"hardlink", "symlink", "reflink"}


def check_dvc_links(project: Path = Path(".")) -> None:
    """Refuse a DVC project whose cache would copy the release: DVC's default cache type on ext4 is `copy`, which
    doubles 45 GB. Outside a DVC project (the stage run by hand) there is nothing to check."""
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
            "the 45 GB release into its cache. Run `dvc config --local cache.type hardlink,symlink` first (`make "
            "study` does), then re-run"
        )


def _sources(cfg: NihParams, checksums: Mapping[str, str]) -> Sources:
    cache = Path(cfg.download_dir).absolute()
    if cfg.local_path:
        return _local_sources(cfg, Path(cfg.local_path).expanduser().absolute(), checksums, cache)
    return _download_sources(cfg, checksums, cache)


def ingest_nih(cfg: NihParams, out_dir: Path, checksums: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Lay out the real NIH release in `out_dir` (empty; NIH's layout) and return its label table.

    `checksums` maps file names to MD5s (default: `ingest.nih.md5_file`'s list, or NIH_MD5): its images_NNN.tar.gz
    keys are the archives ingested.
    Writes images/*.png (links), Data_Entry_2017.csv, train_val_list.txt, test_list.txt, BBox_List_2017.csv and,
    with on_bad_image: skip, bad_images.txt. Raises `InputError` on any bad input, listing every bad image at once.
    """
    checksums = expected_checksums(cfg) if checksums is None else checksums
    sources = _sources(cfg, checksums)
    _write_metadata(sources.metadata, out_dir, set())
    data_entry = out_dir / DATA_ENTRY_FILE
    table = read_data_entry(data_entry)
    _check_lists(table, out_dir, source=f"NIH split lists ({sources.metadata[TRAIN_VAL_LIST].parent})")
    index = index_images(sources.image_dirs)
    names = table["image"].tolist()
    missing, kinds = link_images(names, index, out_dir / "images", cfg.link)
    present = [out_dir / "images" / n for n in names if n in index]
    result = validate_images(present, cfg.workers)
    bad = missing + result.bad
    if bad and (cfg.on_bad_image == "error" or len(bad) == len(names)):
        _raise_bad(bad, len(names), Path(cfg.download_dir).absolute() / BAD_IMAGES_FILE)
    if cfg.on_bad_image == "skip":
        _skip_bad(bad, sources.metadata, out_dir)
    _describe(table, index, kinds, result.sizes)
    return read_data_entry(data_entry)
