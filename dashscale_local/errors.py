"""Errors the CLI turns into exit codes: UsageError → 2, RuntimeFailure → 1, and the
one way a command exits on them (exit_with)."""
import sys


class UsageError(Exception):
    """Bad input from the user (bad Procfile, bad size, cap exceeded): exit code 2.

    Rendered as one line: ``FILE:LINE: message`` when a file (and line) is known.
    """

    exit_code = 2

    def __init__(self, message, file=None, line=None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self):
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return where + self.message


class RuntimeFailure(Exception):
    """Something failed while running (a replica never came up, supervisord died): exit 1."""

    exit_code = 1


def exit_with(exc, code=None):
    """`dashscale: <exc>` on stderr, then exit with ``code`` (default: the error's own
    exit code, 2 for UsageError, 1 for RuntimeFailure)."""
    print(f"dashscale: {exc}", file=sys.stderr, flush=True)
    sys.exit(exc.exit_code if code is None else code)
