"""The one exception type that reaches users.

Anything a user can cause (a bad path, a wrong artifact, an impossible split) raises
:class:`CxradError` with a single line that names the file and the fix. The CLI prints that line
and exits with ``exit_code``; every other exception is a bug and keeps its traceback.
"""


class CxradError(Exception):
    """A user-facing error: one line, no traceback, non-zero exit code."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
