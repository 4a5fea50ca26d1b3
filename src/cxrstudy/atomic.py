"""Atomic stage outputs: write beside the target, then rename into place only when complete.

A stage that fails (an exception, a kill, a full disk) leaves its previous output untouched, so DVC never records or
caches half an output. A temporary is named after its writer's process (`.NAME.tmp-PID-XXXX`), so that the next
write of the same output sweeps away what a killed writer left behind. A full disk, however the writer reports it,
and a folder that cannot be written are an `OutputError` that names the output, not its hidden temporary.
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
# Below this much free space, a writer's unexplained failure is taken for a full disk: torch's zip writer, for one,
# turns ENOSPC into "RuntimeError: ... unexpected pos".
LOW_SPACE_BYTES = 16 * 2**20


class OutputError(OSError):
    """An output could not be written: the disk (or quota) is full, or its folder is read-only or protected.
    `filename` is the output, `errno` says which."""


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


def _low_on_space(folder: Path) -> bool:
    """Whether the file system holding `folder` has (almost) no space left for this user."""
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):  # gone, or not POSIX
        return False
    return stat.f_bavail * stat.f_frsize < LOW_SPACE_BYTES


def _storage_error(err: BaseException, target: Path, folder: Path) -> OutputError | None:
    """`err`, raised while writing `target` (its temporary in `folder`), as an `OutputError` naming `target` when it
    is a storage failure: a full disk or an unwritable folder (a failed flush or fsync names no file; a nested writer
    names its temporary, which is gone by now), or a writer's own error on a disk with no space left. Called before
    the temporary is removed, while it still fills the disk. None for any other error."""
    if isinstance(err, OSError) and err.errno in DISK_FULL + UNWRITABLE:
        return OutputError(err.errno, err.strerror, str(target))
    if isinstance(err, RuntimeError | OSError) and _low_on_space(folder):
        reported = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        return OutputError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the writer reported {reported})", str(target))
    return None


@contextmanager
def _naming_errors(target: Path) -> Iterator[None]:
    """Storage failures in the block are reported as an `OutputError` on `target`."""
    try:
        yield
    except OSError as err:
        named = _storage_error(err, target, target.parent)
        if named is None:
            raise
        raise named from err


def check_writable(*targets: Path) -> None:
    """Raise `OutputError` naming the first of `targets` that could not be written (a read-only or protected folder),
    by creating and removing a temporary in its folder, or in the nearest existing folder above it (which is left
    as it was): a long stage checks before it works, not after."""
    for target in map(Path, targets):
        folder = target.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        with _naming_errors(target):
            fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=folder)
            os.close(fd)
            os.unlink(name)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    with _naming_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    _public(tmp, 0o777)
    try:
        yield tmp
    except BaseException as err:
        named = _storage_error(err, target, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if named is None:
            raise
        raise named from err
    old = None
    with _naming_errors(target):
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
    with _naming_errors(target):
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
    except BaseException as err:
        named = _storage_error(err, target, tmp.parent)
        tmp.unlink(missing_ok=True)
        if named is None:
            raise
        raise named from err


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
