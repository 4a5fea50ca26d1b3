"""Atomic stage outputs: write beside the target, then rename into place only when complete.

A stage that fails (an exception, a kill, a full disk) leaves its previous output untouched, so DVC never records or
caches half an output. A temporary is named after its writer's process (`.NAME.tmp-PID-XXXX`), so that the next
write of the same output sweeps away what a killed writer left behind, and a full disk is an `OSError` that names
the output being written.
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts). Off POSIX, assume so: nothing is swept."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale(target: Path) -> None:
    """Remove the temporaries that a killed writer of `target` left beside it; a live writer's are kept. A writer
    killed between atomic_dir's two renames left the earlier output as `.NAME.old-PID`: it is put back."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    name = glob.escape(target.name)
    for stale in target.parent.glob(f".{name}.tmp-*"):
        pid = stale.name[len(target.name) + 6 :].split("-", 1)[0]
        if not (pid.isdigit() and _alive(int(pid))):
            _remove(stale)
    for old in target.parent.glob(f".{name}.old-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if target.exists() or target.is_symlink():
            _remove(old)
        else:
            os.replace(old, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: Path, mode: int) -> None:
    """mkdtemp/mkstemp create private (0700/0600) temporaries: give the output the permissions a plain write would."""
    os.chmod(path, mode & ~_umask())


def _prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def _naming(err: OSError, target: Path) -> OSError:
    """A full disk reported as an error on `target` (a failed flush or fsync names no file; a nested writer names
    its temporary path, which is gone by now)."""
    return OSError(err.errno, err.strerror, str(target)) if err.errno in DISK_FULL else err


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    _public(tmp, 0o777)
    try:
        yield tmp
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        named = _naming(err, target)
        if named is err:
            raise
        raise named from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists() or target.is_symlink():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `target` for writing; on success it is flushed, synced and renamed over it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
    tmp = Path(name)
    _public(tmp, 0o666)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        named = _naming(err, target)
        if named is err:
            raise
        raise named from err
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
