"""The exceptions the command line turns into a clear message and a non-zero exit, and what a message may show of an
address (`shown_address`)."""

from urllib.parse import urlsplit


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
