"""Atomic stage outputs: write beside the target, then rename into place only when complete.

A stage that fails (an exception, a kill, a full disk) leaves its earlier output untouched, so DVC never records or
caches half an output. The temporaries are hidden beside the target (`.NAME.tmp-XXXX`); the next write of the same
target removes what a killed writer left there (DVC runs one writer of an output at a time). A full disk and a
folder that cannot be written are an `OutputError` that names the output, not its hidden temporary.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputError(OSError):
    """An output could not be written: the disk (or quota) is full, or its folder is read-only or protected.
    `filename` is the output, `errno` says which."""


@contextmanager
def _naming(target: Path) -> Iterator[None]:
    """A storage failure in the block (a full disk, an unwritable folder) becomes an `OutputError` naming `target`:
    a failed flush or fsync names no file, and a nested writer names its temporary."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL + UNWRITABLE:
            raise
        raise OutputError(err.errno, err.strerror, str(target)) from err


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def sweep_stale(target: Path) -> None:
    """Remove the temporaries that a killed writer of `target` left beside it. A writer killed between
    `atomic_dir`'s two renames left the earlier output as `.NAME.old-XXXX` and no `target`: it is put back."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(glob.escape(_prefix(target)) + "*"):
        _remove(stale)
    for old in target.parent.glob(glob.escape(f".{target.name}.old-") + "*"):
        if target.exists() or target.is_symlink():
            _remove(old)
        else:
            os.replace(old, target)


def _public(path: Path, mode: int) -> None:
    """mkdtemp/mkstemp create private (0700/0600) temporaries: give the output the permissions a plain write would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(*targets: Path) -> None:
    """Raise `OutputError` naming the first of `targets` that could not be written (a read-only or protected folder),
    by creating and removing a temporary in its folder, or in the nearest existing folder above it (which is left
    as it was): a long stage checks before it works, not after."""
    for target in map(Path, targets):
        folder = target.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        with _naming(target):
            fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=folder)
            os.close(fd)
            os.unlink(name)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
        try:
            _public(tmp, 0o777)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = target.parent / f".{target.name}.old-{tmp.name.removeprefix(_prefix(target))}"
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        _remove(old)


@contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `target` for writing; on success it is flushed, synced and renamed over it."""
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, mode) as handle:
                _public(tmp, 0o666)
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def sync(*handles: Any) -> None:
    """Flush and fsync open `atomic_file` handles. Called last inside nested `atomic_file` blocks, it makes a full
    disk fail there, before any of the files has replaced its target: several outputs are replaced all or none."""
    for handle in handles:
        handle.flush()
        os.fsync(handle.fileno())


def write_json(target: Path, payload: object) -> None:
    """Write `payload` as stable, indented JSON (sorted keys), atomically."""
    with atomic_file(target) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
