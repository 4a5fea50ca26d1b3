"""Worker processes of the data stages (the phantom's rendering, preprocessing): started safely, and never outliving
the stage.

forkserver, not fork: forking a process that already used OpenCV's or torch's threads can deadlock. A stage killed
with SIGKILL (the out-of-memory killer, a preempted job) cannot stop its workers, and they do not notice on their own:
their parent is the forkserver, which stays up while they hold the pipe that tells it the stage is alive. So each
worker watches the stage's process itself (a pidfd on Linux, else a poll of its pid) and exits the moment it ends,
instead of finishing an archive for nobody; the forkserver and the resource tracker then follow.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

WORKER_CONTEXT = multiprocessing.get_context("forkserver")
POLL_S = 0.5  # where there is no pidfd: how often a worker looks whether its stage is still there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now holds the number: ours is gone
        return False
    return True


def die_with(stage: int) -> None:
    """Exit this worker process as soon as the process `stage` (the stage that started it) has ended, however it
    ended: a daemon thread waits on a pidfd for it (Linux 5.3+), or polls its pid every `POLL_S` seconds."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(stage)
        except (AttributeError, OSError):
            while _alive(stage):
                time.sleep(POLL_S)
        else:
            select.select([fd], [], [])
        os._exit(1)

    if not _alive(stage):
        os._exit(1)
    threading.Thread(target=watch, name="die-with-stage", daemon=True).start()


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
