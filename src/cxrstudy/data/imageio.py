"""Reading chest X-rays (PNG, as NIH ships them, or JPEG, as CheXpert does) as they really are, into one 8-bit
channel, and where they are: in archives.

Rules (stated once, applied everywhere):
- grey images pass through; LA / RGB / RGBA images are reduced to their luminance (alpha is dropped);
- 16-bit images are reduced to 8 bits by keeping the high byte (`value >> 8`), i.e. a linear rescale of 0..65535
  onto 0..255 with no windowing;
- anything OpenCV cannot decode (empty, truncated, neither PNG nor JPEG) raises `ImageError` naming the file;
- an archive member is never trusted: its size is read from the tar header before its bytes (`max_bytes`), and its
  width and height from the image header before it is decoded (`image_size`), so that a bomb is refused, not read.

The raw images are kept as archives (NIH's `images_001.tar.gz` ..., members `images/<name>`) in
`data/raw/archives/`. Twelve files instead of 112,120 keep DVC's bookkeeping cheap (docs/performance.md); the
images are streamed out of them, each read once, never extracted to disk.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVES_DIR = "archives"  # data/raw/archives: the image archives
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MEMBER_DIR = "images"  # NIH's archives unpack into images/
Image.MAX_IMAGE_PIXELS = None  # the pixel cap is ours (`image_size` + preprocess.max_image_pixels), stated once


class ImageError(Exception):
    """An image that cannot be used; the message names the file and the reason."""


class ArchiveError(ImageError):
    """An archive that cannot be read to its end; the message names it and says how far it got."""


def to_gray8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Reduce a decoded image (H×W, H×W×2/3/4; uint8 or uint16) to one uint8 channel."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 2:  # grey + alpha
        return np.ascontiguousarray(image[:, :, 0])
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ImageError(f"{name}: unsupported channel count {channels}")


def _kind(data: bytes, name: str) -> str:
    """'PNG' or 'JPEG', from the signature; empty, unknown or truncated data is an `ImageError` naming `name`."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        # libpng decodes many truncated files with a warning; the missing IEND chunk catches them.
        if PNG_END not in data[-64:]:
            raise ImageError(f"{name}: truncated PNG (no IEND chunk at the end)")
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        if JPEG_END not in data[-64:]:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker at the end)")
        return "JPEG"
    raise ImageError(f"{name}: neither a PNG nor a JPEG (bad signature)")


def image_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) from a PNG's or JPEG's header, without decoding its pixels (Pillow reads only the header)."""
    kind = _kind(data, name)
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            return int(image.width), int(image.height)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt {kind} header ({err})") from None


def decode_gray(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode PNG or JPEG bytes into one uint8 channel, rejecting empty, truncated or unknown data; with
    `max_pixels`, an image whose header declares more pixels is refused before it is decoded."""
    kind = _kind(data, name)
    if max_pixels is not None:
        width, height = image_size(data, name)
        if width * height > max_pixels:
            raise ImageError(f"{name}: {width} x {height} px declared in its header, over the limit of "
                             f"{max_pixels:,} pixels (preprocess.max_image_pixels); not decoded")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: corrupt {kind} (OpenCV could not decode it)")
    return to_gray8(image, name)


def read_gray(path: Path) -> np.ndarray:
    """Read a PNG or JPEG file into one uint8 channel; `ImageError` names the file when it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: missing image file") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from None
    return decode_gray(data, str(path))


def encode_png(image: np.ndarray, compression: int = 1, name: str = "image") -> bytes:
    """A uint8 image as PNG bytes (fast compression by default)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ImageError(f"{name}: PNG encoding failed")
    return buf.tobytes()


def write_png(path: Path, image: np.ndarray, compression: int = 1) -> None:
    """Write a uint8 image as PNG (fast compression by default)."""
    Path(path).write_bytes(encode_png(image, compression, str(path)))


# ---------------------------------------------------------------------------------------------------------------
# Archives


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES) and not path.name.startswith(".")


def archive_paths(raw_dir: Path) -> list[Path]:
    """The image archives of a raw folder (`raw_dir/archives/*.tar.gz`, `*.tgz` or `*.tar`), sorted by name."""
    folder = Path(raw_dir) / ARCHIVES_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_archive(p) and p.is_file())


def member_name(path: str) -> str | None:
    """The image name of an archive member (`images/00000001_000.png` -> `00000001_000.png`); None if not an image
    (PNG or JPEG by its suffix)."""
    base = path.rsplit("/", 1)[-1]
    return base if base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".") else None


class _Hashing(io.RawIOBase):
    """A file read through a hash (`digest.update` on every byte read), so that an archive is verified in the one
    read that streams its images."""

    def __init__(self, handle: BinaryIO, digest: Any) -> None:
        self.handle = handle
        self.digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self.digest.update(memoryview(buffer)[:count])
        return count or 0

    def drain(self) -> None:
        while chunk := self.handle.read(1 << 20):
            self.digest.update(chunk)


def iter_images(archive: Path, max_bytes: int | None = None,
                digest: Any = None) -> Iterator[tuple[str, bytes | ImageError]]:
    """(image name, file bytes) of every PNG or JPEG in a tar or tar.gz archive, in archive order, streamed in one
    read. A member over `max_bytes` (read from its tar header) is not read: an `ImageError` naming the archive and the
    member stands in for its bytes. With `digest` (e.g. `hashlib.md5()`), every byte of the archive file goes through
    it, to its end.

    Folders in member paths are dropped (NIH's members are `images/<name>.png`); other members are skipped.
    Raises `ArchiveError` naming the archive when it is not a readable tar(.gz) or ends early.
    """
    count = 0
    try:
        with open(archive, "rb") as raw:
            source = _Hashing(raw, digest) if digest is not None else None
            stream = io.BufferedReader(source) if source is not None else raw
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    name = member_name(member.name)
                    if name is None or not member.isfile():
                        continue
                    count += 1
                    if max_bytes is not None and member.size > max_bytes:
                        yield name, ImageError(
                            f"{name}: member of {archive.name} declares {member.size / 1e6:,.1f} MB, over the limit "
                            f"of {max_bytes / 1e6:,.1f} MB (preprocess.max_image_mb); not read")
                        continue
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has one
                    yield name, handle.read()
            if source is not None:  # every byte the reader took went through the hash; now the rest of the file
                source.drain()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        where = f"after {count} image(s)" if count else "before any image"
        raise ArchiveError(f"{archive}: not a readable tar(.gz) archive ({err}), {where}") from None


def write_archive(path: Path, members: Iterable[tuple[str, bytes]], compresslevel: int | None = 6) -> int:
    """Write (name, bytes) pairs as `images/<name>` members of a tar archive, gzipped unless `compresslevel` is None.

    The bytes depend on the members only (no times, owners or file name inside), so that the same images give the
    same archive and DVC sees no change. Returns the number of members written.
    """
    count = 0
    with open(path, "wb") as raw:
        gz = None if compresslevel is None else gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                                compresslevel=compresslevel, mtime=0)
        try:
            with tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, data in members:
                    tar.addfile(member_info(name, len(data)), io.BytesIO(data))
                    count += 1
        finally:
            if gz is not None:
                gz.close()
    return count


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """The header of one image member: its name and size, nothing that varies between machines or runs."""
    info = tarfile.TarInfo(f"{MEMBER_DIR}/{name}")
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


def read_raw_images(raw_dir: Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Decode a few named images out of `raw_dir`'s archives (one uint8 channel each).

    The archives are scanned in parallel, each only until every wanted image is found. `ImageError` names an
    image that is in no archive or cannot be decoded.
    """
    wanted = set(names)
    archives = archive_paths(raw_dir)
    found: dict[str, bytes] = {}
    lock = threading.Lock()

    def scan(archive: Path) -> None:
        for name, data in iter_images(archive):
            with lock:
                if name in wanted and isinstance(data, bytes):
                    found.setdefault(name, data)
                if len(found) == len(wanted):
                    return

    if wanted and archives:
        with ThreadPoolExecutor(max_workers=min(len(archives), os.cpu_count() or 1)) as pool:
            list(pool.map(scan, archives))
    missing = sorted(wanted - set(found))
    if missing:
        raise ImageError(f"{missing[0]}: missing image file (in no archive of {Path(raw_dir) / ARCHIVES_DIR})")
    return {name: decode_gray(data, name) for name, data in found.items()}


def read_raw_image(raw_dir: Path, name: str) -> np.ndarray:
    """One image out of `raw_dir`'s archives (see `read_raw_images`, which reads several in one scan)."""
    return read_raw_images(raw_dir, [name])[name]
