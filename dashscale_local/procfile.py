"""Parse a Procfile the way foreman and honcho do, but say what was skipped.

foreman/honcho match ``^([A-Za-z0-9_-]+):\\s*(.+)$`` per line and silently
ignore everything else, so a typo like ``web gunicorn app:server`` simply
makes a process type vanish.  We accept exactly the same lines, but warn
about every ignored line that is not blank or a ``#`` comment.
"""

import os
import re
from dataclasses import dataclass, field

from .errors import UsageError

# Same pattern as foreman and honcho: a Procfile they accept, we accept.
LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
NAME = re.compile(r"^[A-Za-z0-9_-]+$")

# supervisord program names end up in socket paths and k8s names; keep them sane.
MAX_NAME_LENGTH = 63
# ``all`` means "every type" in formations (``-m all=2``), so it can't be a type.
RESERVED_NAMES = {"all"}
SHOWN_CHARS = 40
# folders never searched for a Procfile further down
NOT_PROJECTS = {"node_modules", "site-packages", "__pycache__", "venv", "env", "build", "dist",
                "tests", "test"}


@dataclass(frozen=True)
class ProcessType:
    name: str
    command: str
    line: int


@dataclass
class ProcfileWarning:
    file: str
    line: int
    message: str

    def __str__(self):
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Procfile:
    path: str
    types: dict[str, ProcessType] = field(default_factory=dict)  # in file order
    warnings: list[ProcfileWarning] = field(default_factory=list)

    @property
    def names(self):
        return list(self.types)

    @property
    def commands(self):
        """``{"web": "gunicorn …"}`` — the shape ``check --json`` reports."""
        return {t.name: t.command for t in self.types.values()}


def _shown(line):
    line = line.strip()
    return line if len(line) <= SHOWN_CHARS else line[: SHOWN_CHARS - 1] + "…"


def _why_skipped(raw):
    """Explain why a non-blank, non-comment line is not a process type."""
    if raw[0].isspace():
        return "indented line ignored (foreman and honcho skip it)"
    name, colon, _ = raw.partition(":")
    if colon and NAME.match(name.rstrip()):
        return "space before ':', line ignored"
    if colon and name and not re.search(r"\s", name):
        return (f"invalid process type name {_shown(name)!r}, line ignored "
                "(use letters, digits, '_' and '-')")
    return "not a 'name: command' line, ignored"


def parse_procfile(text, path="Procfile"):
    """Parse Procfile ``text``; ``path`` is only used in messages.

    Errors (UsageError with file and line): a duplicate type name, a name
    longer than 63 characters or the reserved name ``all``, a type with an
    empty command (``web:`` — foreman skips it silently, but the author
    clearly meant a process type, so a warning would be too easy to miss),
    and a file without any process type.

    Warnings: any other line that is not blank or a ``#`` comment, since
    foreman/honcho would silently ignore it.
    """
    procfile = Procfile(path=path)
    text = text.removeprefix("\ufeff")  # BOM written by some Windows editors
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip()  # also drops the \r of CRLF files
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = LINE.match(raw)
        if m is None:
            if raw.endswith(":") and NAME.match(raw[:-1]):
                raise UsageError(f"process type {raw[:-1]!r} has an empty command",
                                 path, number)
            procfile.warnings.append(ProcfileWarning(
                path, number, f"{_why_skipped(raw)}: {_shown(raw)!r}"))
            continue
        name, command = m.group(1), m.group(2).strip()
        if name in procfile.types:
            first = procfile.types[name].line
            raise UsageError(f"duplicate process type {name!r} (first on line {first})",
                             path, number)
        if len(name) > MAX_NAME_LENGTH:
            raise UsageError(f"process type name {_shown(name)!r} is longer than "
                             f"{MAX_NAME_LENGTH} characters", path, number)
        if name in RESERVED_NAMES:
            raise UsageError(f"process type name {name!r} is reserved "
                             "('all=N' scales every type)", path, number)
        procfile.types[name] = ProcessType(name, command, number)
    if not procfile.types:
        raise UsageError("no process types found (expected lines like "
                         "'web: gunicorn app:server')", path)
    return procfile


def procfiles_below(directory, depth=2):
    """Procfiles one or two folders below ``directory`` (sorted paths), hidden folders,
    virtualenvs and the like left out: the project a user may have meant."""
    found, level = [], [directory]
    for _ in range(depth):
        below = []
        for folder in level:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue
            for name in names:
                sub = os.path.join(folder, name)
                if name.startswith(".") or name in NOT_PROJECTS or not os.path.isdir(sub) \
                        or os.path.exists(os.path.join(sub, "pyvenv.cfg")):
                    continue
                below.append(sub)
                if os.path.isfile(os.path.join(sub, "Procfile")):
                    found.append(os.path.join(sub, "Procfile"))
        level = below
    return found


def shown_path(path):
    """``path`` relative to the working directory when it is below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def procfiles_hint(directory):
    """'found: sub/Procfile — run dashscale from there or pass -f sub/Procfile' for
    the Procfiles below ``directory``, '' when there are none."""
    found = [shown_path(p) for p in procfiles_below(directory)]
    if not found:
        return ""
    listed = ", ".join(found[:3]) + (" …" if len(found) > 3 else "")
    there = "there" if len(found) == 1 else "one of those folders"
    return f"found: {listed} — run dashscale from {there} or pass -f {found[0]}"


def load_procfile(path):
    """Read and parse the Procfile at ``path``; any I/O problem is a UsageError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        hint = procfiles_hint(os.path.dirname(os.path.abspath(path)))
        raise UsageError("Procfile not found — " + (hint or "run `dashscale init` to write "
                                                    "one for the Dash app here"),
                         file=path) from None
    except IsADirectoryError:
        raise UsageError("is a directory, not a Procfile", file=path) from None
    except OSError as e:
        raise UsageError(f"cannot read Procfile: {e.strerror}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(f"not valid UTF-8 (byte 0x{data[e.start]:02x})", path, line) from None
    return parse_procfile(text, path)
