"""The processed images: one uint8 array per raw archive (a shard), and an index saying where each image is.

    data/processed/shards/images_001.npy   N x S x S uint8, the archive's images in archive order
    data/processed/shards/images_001.json  what made the shard (its key), its images, its bad images
    data/processed/index.csv               image,shard,row: every processed image, in the label table's order
    data/processed/meta.json               the preprocessing settings and counts

One array per archive lets DVC hash them in parallel (`core.checksum_jobs`) and lets a changed archive re-process
only its own shard; the training loader reads any image from the memory-mapped shards without decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from cxrstudy.errors import InputError

SHARDS_DIR = "shards"
INDEX_FILE = "index.csv"
META_FILE = "meta.json"
BAD_IMAGES_FILE = "bad_images.txt"
HEADER_BYTES = 128  # a fixed .npy header, rewritten with the final row count when the shard is complete
RERUN = "re-run the preprocess stage (dvc repro preprocess, or python -m cxrstudy preprocess)"


def shard_name(archive: Path) -> str:
    """The shard of an archive: its name without the archive suffix (images_001.tar.gz -> images_001)."""
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _header(rows: int, size: int) -> bytes:
    """A version 1.0 .npy header for `rows` x `size` x `size` uint8, padded to `HEADER_BYTES`."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({rows}, {size}, {size}), }}"
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class ShardWriter:
    """Appends S x S uint8 images to a .npy file whose row count is known only at the end."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.rows = 0
        self.handle: IO[bytes] = path.open("wb")
        self.handle.write(_header(0, size))

    def append(self, image: np.ndarray) -> int:
        if image.shape != (self.size, self.size) or image.dtype != np.uint8:
            raise ValueError(f"shard rows are {self.size} x {self.size} uint8, got {image.dtype} {image.shape}")
        self.handle.write(np.ascontiguousarray(image).tobytes())
        self.rows += 1
        return self.rows - 1

    def close(self) -> None:
        self.handle.seek(0)
        self.handle.write(_header(self.rows, self.size))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


@dataclass(frozen=True)
class Processed:
    """The processed images, memory-mapped shard by shard: `images[i]` is the i-th image of `names`."""

    names: list[str]
    shards: list[np.ndarray]
    where: np.ndarray  # N x 2: (shard, row) of each image
    size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.names), self.size, self.size)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> np.ndarray:
        shard, row = self.where[i]
        return self.shards[shard][row]


def read_index(processed_dir: Path) -> list[str]:
    """The names of the processed images, in the label table's order."""
    path = processed_dir / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{path}: processed image index not found; run the preprocess stage first")
    return pd.read_csv(path, dtype={"image": str, "shard": str})["image"].tolist()


def load_processed(processed_dir: Path) -> Processed:
    """The processed images (memory-mapped, read-only) and their names. A missing, truncated or foreign file is an
    `InputError` naming it."""
    index_path = processed_dir / INDEX_FILE
    if not index_path.is_file():
        raise InputError(f"{index_path}: processed data not found; {RERUN}")
    try:
        index = pd.read_csv(index_path, dtype={"image": str, "shard": str, "row": np.int64})
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{index_path}: not a readable index ({err}); {RERUN}") from None
    if list(index.columns) != ["image", "shard", "row"]:
        raise InputError(f"{index_path}: columns {list(index.columns)}; expected image,shard,row; {RERUN}")
    order = sorted(index["shard"].unique())
    shards: list[np.ndarray] = []
    size = 0
    for name in order:
        path = processed_dir / SHARDS_DIR / f"{name}.npy"
        if not path.is_file():
            raise InputError(f"{path}: processed shard not found; {RERUN}")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # numpy's words for a truncated or foreign file
            raise InputError(f"{path}: not a complete .npy array ({err}); {RERUN}") from None
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1] != array.shape[2]:
            raise InputError(f"{path}: holds a {array.dtype} array of shape {array.shape}; expected uint8 images "
                             f"N x S x S; {RERUN}")
        if size and array.shape[1] != size:
            raise InputError(f"{path}: {array.shape[1]} px images beside {size} px ones; {RERUN}")
        size = array.shape[1]
        rows = index["row"][index["shard"] == name]
        if len(rows) and int(rows.max()) >= len(array):
            raise InputError(f"{index_path}: row {int(rows.max())} of shard {name}, which holds {len(array)} images; "
                             f"{RERUN}")
        shards.append(array)
    number = {name: k for k, name in enumerate(order)}
    where = np.stack([index["shard"].map(number).to_numpy(np.int64), index["row"].to_numpy(np.int64)], axis=1)
    return Processed(index["image"].tolist(), shards, where.reshape(-1, 2), size)


def write_index(path: Path, names: Sequence[str], located: dict[str, tuple[str, int]]) -> None:
    """`index.csv`: each of `names` (in order) with its shard and row."""
    frame = pd.DataFrame({"image": list(names), "shard": [located[n][0] for n in names],
                          "row": [located[n][1] for n in names]})
    frame.to_csv(path, index=False, lineterminator="\n")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A shard's `.json` record, or None when it is missing or unreadable (the shard is then made again)."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _records_digest(processed_dir: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    for path in sorted([processed_dir / INDEX_FILE, processed_dir / META_FILE,
                        *(processed_dir / SHARDS_DIR).glob("*.json")]):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"missing\0")
    return digest


def records_fingerprint(processed_dir: Path) -> str:
    """A digest of what made the processed data, the same wherever it lies: the index, the settings and each shard's
    record (the archive MD5, settings and code that made it). The checkpoint and the model file record it."""
    return _records_digest(processed_dir).hexdigest()[:16]
