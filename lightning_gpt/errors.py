"""The exceptions users see: a message that names the thing and says what to do, without a traceback.

The CLI prints these as one line; everything else is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user: a path, a column, a flag, a checkpoint or a cache that cannot be used."""


class TrainingStopped(RuntimeError):
    """Training ended early on purpose (a SIGTERM, a non-finite loss): the message says what was kept and how to go
    on; `exit_code` is what the process exits with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
