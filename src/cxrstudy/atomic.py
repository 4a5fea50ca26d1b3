"""Stage outputs, all or nothing: written beside their targets, renamed into place together only when complete.

A stage that fails (an error, a signal, a full disk, an output it may not replace) leaves every earlier output as it
was, so DVC never records half a result. `check_writable(*targets)` before the work stops a stage whose outputs could
not be written; `with all_or_nothing() as out:` stages them (`out.dir(target)`: an empty folder, `out.file(target)`:
an open file, `out.path(target)`: a file to write by name). When the block ends, every temporary is synced (a full
disk fails there), then each target is moved aside and its temporary renamed in; a refused rename (a mount point, an
immutable file) undoes those done, and `OutputError` names the output. An exception replaces nothing. Either way no
temporary is left. `atomic_dir`, `atomic_file` and `write_json` are the one-output forms.

Temporaries are hidden beside their target (`.NAME.tmp-XXXXXXXX`; `.NAME.old-XXXXXXXX`, the earlier output, while it
is replaced), each locked (`flock`) by its writer while it lives: the kernel drops the lock however the writer dies.
`sweep_stale` and `sweep_tree` remove what dead writers left (putting back an earlier output where one died between
two renames), never a live writer's.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cxrstudy.errors import is_mount_point, protection, refusal

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# The other refusals of a rename into place: a mount point (EBUSY), a file where a folder is, or the reverse.
UNREPLACEABLE = (errno.EBUSY, errno.ENOTDIR, errno.EISDIR, errno.EXDEV)

# A temporary's name: mkstemp / mkdtemp add 8 characters of [a-z0-9_].
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old)-[a-z0-9_]{8}$")


class OutputError(OSError):
    """An output could not be written or put in place: the disk (or quota) is full, its folder is read-only or
    protected, or it cannot be replaced (a mount point, an immutable file). `filename` is the output, `errno` says
    which, `strerror` says why in words a user can act on."""


def _output_error(err: BaseException, target: Path | None) -> OutputError | None:
    """A storage failure (a full disk, an unwritable folder, a rename refused) as an `OutputError` naming `target`
    (a nested writer's keeps its reason); None for any other error."""
    if target is None or not isinstance(err, OSError) or err.errno not in DISK_FULL + UNWRITABLE + UNREPLACEABLE:
        return None
    why = err.strerror if isinstance(err, OutputError) else os.strerror(err.errno) if err.errno in DISK_FULL \
        else refusal(err.errno, target)
    return OutputError(err.errno, why, str(target))


@contextmanager
def _naming(target: Path) -> Iterator[None]:
    """A storage failure in the block becomes an `OutputError` naming `target`: a failed flush or fsync names no
    file, and a nested writer names its temporary."""
    try:
        yield
    except OSError as err:
        named = _output_error(err, target)
        if named is None:
            raise
        raise named from err


def check_writable(*targets: Path) -> None:
    """Raise `OutputError` naming the first of `targets` that could not be written or replaced, before any work: its
    folder (or the nearest existing one above it, left as it was) must take a new file, and an existing target must
    be no mount point, neither immutable nor append-only, and (as another user than root) a folder it may rename."""
    for target in map(Path, targets):
        folder = target.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        with _naming(target):
            fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=folder)
            os.close(fd)
            os.unlink(name)
        if not (target.exists() or target.is_symlink()):
            continue
        if is_mount_point(target):
            raise OutputError(errno.EBUSY, refusal(errno.EBUSY, target), str(target))
        reason = protection(target)
        if reason:
            raise OutputError(errno.EPERM, f"{os.strerror(errno.EPERM)}: {reason}", str(target))
        if os.geteuid() != 0 and target.is_dir() and not target.is_symlink() and not os.access(target, os.W_OK):
            raise OutputError(errno.EACCES, f"{os.strerror(errno.EACCES)}: an output folder is replaced whole, which "
                                            "needs write permission on it", str(target))


def _prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lock(fd: int, wait: bool) -> bool | None:
    """Lock `fd` exclusively: True when locked, False when another process holds it (`wait` false), None when its
    file system has no locks (some network file systems)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _new_temporary(target: Path, directory: bool) -> tuple[Path, int]:
    """A new temporary beside `target` and a descriptor holding its lock. A sweep that took it in the moment between
    creating and locking it is seen (the name is gone), and another is made."""
    while True:
        if directory:
            name = tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
        _lock(fd, wait=True)
        if os.path.lexists(name):  # random and created exclusively: still there, it is this one
            return Path(name), fd
        os.close(fd)


def _public(path: Path, mode: int) -> None:
    """mkdtemp/mkstemp create private (0700/0600) temporaries: give the output the permissions a plain write would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_one(path: Path, kind: str, target: Path, unlockable: bool) -> None:
    """Remove one temporary (or, an earlier output whose target is gone, put it back) unless its writer lives.
    `unlockable`: whether to sweep where the file system has no locks."""
    try:
        fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if not path.is_symlink():
            return  # gone meanwhile: its writer renamed it into place
        fd = None  # a dangling link: nobody holds it
    except OSError:
        return  # cannot look: leave it
    try:
        free = True if fd is None else _lock(fd, wait=False)
        if free is False or (free is None and not unlockable):
            return
        if kind == "old" and not (target.exists() or target.is_symlink()):
            os.replace(path, target)  # its writer died between the two renames: the earlier output comes back
        else:
            _remove(path)
    finally:
        if fd is not None:
            os.close(fd)


def sweep_stale(target: Path) -> None:
    """Remove the temporaries that dead writers of `target` left beside it, putting back an earlier output that one
    of them had moved aside; a live writer's are kept."""
    target = Path(target)
    if target.parent.is_dir():
        for entry in target.parent.iterdir():
            found = _TEMPORARY.match(entry.name)
            if found and found["target"] == target.name:
                _sweep_one(entry, found["kind"], target, unlockable=True)


def sweep_tree(*folders: Path) -> None:
    """`sweep_stale` for every output anywhere under `folders` (hidden folders other than temporaries are not
    entered, links not followed): what a killed stage left goes even when its next run never writes (DVC restores
    it from its run cache). Where the file system has no locks, a live writer cannot be told apart: nothing is swept."""
    for folder in map(Path, folders):
        for where, dirs, files in os.walk(folder):
            for name in (*dirs, *files):
                found = _TEMPORARY.match(name)
                if found:
                    _sweep_one(Path(where) / name, found["kind"], Path(where) / found["target"], unlockable=False)
            dirs[:] = [d for d in dirs if not d.startswith(".")]


@dataclass
class _Staged:
    """One output of an `all_or_nothing` block: its temporary, and while it is placed, the earlier output."""

    target: Path
    tmp: Path
    fd: int  # holds the lock on `tmp`
    kind: str  # "dir", "file" (written through `handle`) or "path" (written by name)
    handle: IO[Any] | None = None
    old: Path | None = None  # the earlier output while it is replaced
    old_fd: int | None = None  # holds the lock on `old`
    old_linked: bool = False  # `old` is a second name of the earlier file, which stayed in place until replaced
    placed: bool = False

    def finish(self) -> None:
        """What was written reaches the disk: a full disk fails here, before any rename."""
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        else:
            _fsync(self.tmp)

    def place(self) -> None:
        """Move the earlier output aside (a file gets a second name and stays in place), rename the temporary in."""
        target = self.target
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.old-{self.tmp.name[-8:]}"
            try:
                self.old_fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
                _lock(self.old_fd, wait=False)
            except OSError:
                self.old_fd = None
            if self.kind != "dir" and not target.is_dir():
                try:
                    os.link(target, old, follow_symlinks=False)
                    self.old_linked = True
                except OSError:
                    pass
            if not self.old_linked:
                os.rename(target, old)
            self.old = old
        os.replace(self.tmp, target)
        self.placed = True

    def undo(self) -> None:
        """Put the earlier output back; the new one goes back to the temporary's name, removed with it."""
        if self.placed and not self.old_linked:
            os.rename(self.target, self.tmp)
        if self.old is not None:
            if self.old_linked and not self.placed:
                self.old.unlink()
            else:
                os.replace(self.old, self.target)
            self.old = None

    def close(self, success: bool) -> None:
        try:
            if self.handle is not None:
                self.handle.close()  # flushes what a failed block left buffered: on a full disk that fails again
            else:
                os.close(self.fd)
        except OSError:
            if success:
                raise
        if not success:
            _remove(self.tmp)
        if self.old is not None:  # replaced: the earlier output goes
            _remove(self.old)
        if self.old_fd is not None:
            os.close(self.old_fd)


class Outputs:
    """The outputs of one `all_or_nothing` block. Each call stages a target (its dead writers' temporaries swept,
    `check_writable` first) and returns what to write it through."""

    def __init__(self) -> None:
        self._staged: list[_Staged] = []

    def _stage(self, target: Path, kind: str, mode: str = "w") -> _Staged:
        target = Path(target)
        if any(s.target == target for s in self._staged):
            raise ValueError(f"{target}: staged twice in one all_or_nothing block")
        with _naming(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(target)
            check_writable(target)
            tmp, fd = _new_temporary(target, directory=kind == "dir")
            staged = _Staged(target, tmp, fd, kind)
            self._staged.append(staged)
            _public(tmp, 0o777 if kind == "dir" else 0o666)
            if kind == "file":
                staged.handle = os.fdopen(fd, mode)
        return staged

    def dir(self, target: Path) -> Path:
        """An empty temporary folder that replaces `target` whole."""
        return self._stage(target, "dir").tmp

    def file(self, target: Path, mode: str = "w") -> IO[Any]:
        """A temporary file open for writing (`mode` "w" or "wb") that replaces `target`; the block closes it."""
        handle = self._stage(target, "file", mode).handle
        assert handle is not None
        return handle

    def path(self, target: Path) -> Path:
        """An empty temporary file that replaces `target`, for a writer that takes a file name."""
        return self._stage(target, "path").tmp

    def owner(self, filename: object) -> Path | None:
        """The output whose temporary holds `filename` (an error's), if any."""
        if not isinstance(filename, str | os.PathLike):
            return None
        path = Path(os.path.abspath(filename))
        for staged in self._staged:
            tmp = staged.tmp.absolute()
            if path == tmp or tmp in path.parents:
                return staged.target
        return None

    def commit(self) -> None:
        """Sync every temporary, then rename each into place; on a failure undo the renames done and raise
        `OutputError` naming the output that failed."""
        for staged in self._staged:
            with _naming(staged.target):
                staged.finish()
        done: list[_Staged] = []
        try:
            for staged in self._staged:
                done.append(staged)
                with _naming(staged.target):
                    staged.place()
        except BaseException:
            for staged in reversed(done):
                try:
                    staged.undo()
                except OSError:  # left as .NAME.old-*: a sweep puts it back where the target is missing
                    staged.old = None
            raise
        for parent in dict.fromkeys(s.target.parent for s in self._staged):
            _fsync(parent)

    def close(self, success: bool) -> None:
        for staged in self._staged:
            staged.close(success)


@contextmanager
def all_or_nothing() -> Iterator[Outputs]:
    """Stage outputs (`Outputs.dir`, `.file`, `.path`); when the block ends without an exception they replace their
    targets all together, otherwise none does. Either way no temporary is left."""
    outputs = Outputs()
    success = False
    try:
        try:
            yield outputs
        except OSError as err:  # a full disk while writing a temporary: named by its output
            named = _output_error(err, outputs.owner(err.filename))
            if named is None:
                raise
            raise named from err
        outputs.commit()
        success = True
    finally:
        outputs.close(success)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target` whole."""
    with _naming(target), all_or_nothing() as out:
        yield out.dir(target)


@contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `target` for writing; on success it is flushed, synced and renamed over it."""
    with _naming(target), all_or_nothing() as out:
        yield out.file(target, mode)


def sync(*handles: Any) -> None:
    """Flush and fsync open handles (`all_or_nothing` syncs every output before any rename; this fails earlier)."""
    for handle in handles:
        handle.flush()
        os.fsync(handle.fileno())


def write_json(target: Path, payload: object) -> None:
    """Write `payload` as stable, indented JSON (sorted keys), atomically."""
    with atomic_file(target) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
