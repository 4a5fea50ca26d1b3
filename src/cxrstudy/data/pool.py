"""Worker processes of the data stages (the phantom's rendering, preprocessing): started safely, and never outliving
the stage.

forkserver, not fork: forking a process that already used OpenCV's or torch's threads can deadlock. A stage killed
with SIGKILL (the out-of-memory killer, a preempted job) cannot stop its workers, so each worker asks the kernel to
kill it when its parent goes (Linux's PR_SET_PDEATHSIG): the forkserver notices its stage's end at once and exits,
and its workers follow, instead of finishing an archive for nobody.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

WORKER_CONTEXT = multiprocessing.get_context("forkserver")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Make the kernel send this process SIGKILL when its parent exits (Linux; elsewhere nothing). If the parent is
    already gone, exit now."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process while the block starts worker processes, which inherit that (through the
    forkserver's exec too): Ctrl-C, sent to the whole process group, then stops the stage once, here, instead of
    printing a traceback from every worker (or a bogus ImportError from one caught importing NumPy)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
