"""The exceptions the command line turns into a clear message and a non-zero exit."""


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
