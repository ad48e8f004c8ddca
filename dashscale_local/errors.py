"""Errors the CLI turns into exit codes: UsageError → 2, RuntimeFailure → 1."""


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
