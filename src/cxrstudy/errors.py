"""The exceptions the command line turns into a clear message and a non-zero exit, what a message may show of an
address (`shown_address`), and why the system refused to write or replace an output (`refusal`)."""

import errno
import fcntl
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

_FS_IOC_GETFLAGS, _IMMUTABLE, _APPEND_ONLY = 0x80086601, 0x10, 0x20  # Linux file attributes (lsattr)


class InputError(Exception):
    """Bad input from the user: a parameter, a file, a row. The message names it and says what is accepted."""


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss, say); the message names the epoch, step and batch."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; the last epoch's checkpoint is on disk and a re-run resumes from it.

    A `BaseException`, like `KeyboardInterrupt`: no `except Exception` (a failed monitoring push, say) may swallow it.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def shown_address(value: str, keep_name: bool = False) -> str:
    """What a message may show of an address: its scheme, host and port, and with `keep_name` the last part of its
    path (a file name). Whatever else it holds (user:password@, a token in the path, the query, the fragment) could be
    a secret: it is left out, marked as such (with `keep_name`, only the path's omission is marked)."""
    text = value.strip()
    try:
        parts = urlsplit(text if "://" in text else f"//{text}")
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<address not shown>"
    shown = f"{parts.scheme}://" if parts.scheme else ""
    shown += f"[{host}]" if ":" in host else host
    shown += port
    segments = [seg for seg in parts.path.split("/") if seg]
    if keep_name:
        return shown + (("/<…>/" if len(segments) > 1 else "/") + segments[-1] if segments else "")
    if segments or parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        shown += "/<rest not shown>"
    return shown


def protection(path: Path) -> str | None:
    """'PATH is immutable (...)' or '... append-only (...)' from its Linux attributes (`lsattr`); None otherwise."""
    buffer = bytearray(8)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buffer)
        finally:
            os.close(fd)
    except OSError:
        return None
    flags = int.from_bytes(buffer[:4], sys.byteorder)
    kind = "immutable" if flags & _IMMUTABLE else "append-only" if flags & _APPEND_ONLY else None
    return None if kind is None else f"{path} is {kind} (lsattr -d shows it; chattr -{kind[0]} undoes it)"


def is_mount_point(path: Path) -> bool:
    """Whether `path` is a mount point (a container volume; a bind mount on the same file system, which
    `os.path.ismount` misses): it cannot be renamed (EBUSY)."""
    if os.path.ismount(path):
        return True
    try:
        table = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    points = {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in table}
    return os.path.realpath(path) in points


def refusal(code: int, target: Path) -> str:
    """The system's refusal `code` (an errno) to write or replace `target`, in words that say what to do."""
    text = os.strerror(code)
    if code == errno.EBUSY and target.exists() and is_mount_point(target):
        return (f"{text}: it is a mount point (a container volume, say), and an output is replaced whole by a rename; "
                "mount the folder above it instead")
    if code in (errno.EPERM, errno.EACCES):
        for place in (target, target.parent):
            reason = protection(place) if place.exists() else None
            if reason:
                return f"{text}: {reason}"
    return text
