"""Zero-downtime CHECKS, in the Dokku format Dash Enterprise uses.

A ``CHECKS`` file next to the Procfile gates every new web replica (start, scale-up,
roll): it takes traffic only once every check passes. Format (Dokku):

    WAIT=5       # seconds before each attempt
    TIMEOUT=30   # seconds per check request
    ATTEMPTS=5   # attempts before the replica is failed
    /            My App        # GET / must answer 2xx/3xx and contain "My App"
    /health                    # GET /health must answer 2xx/3xx

Blank lines and ``#`` comments are skipped. Without a CHECKS file a replica is ready
when it answers HTTP on its port (what dashscale did before). Parsing is pure
(``parse_checks``); ``run_checks`` does the requests.
"""
import asyncio
import os
import re
from dataclasses import dataclass, field

from .errors import UsageError

FILE_NAME = "CHECKS"
# Dokku's defaults when a CHECKS file does not set them.
DEFAULTS = {"WAIT": 5.0, "TIMEOUT": 30.0, "ATTEMPTS": 5}
SETTING = re.compile(r"^([A-Z_]+)=(\S*)$")
MAX_BODY = 1 << 20  # read at most 1 MiB of a check's response


@dataclass(frozen=True)
class Check:
    path: str
    expected: str  # "" = any 2xx/3xx answer
    line: int


@dataclass(frozen=True)
class Checks:
    file: str
    wait: float = DEFAULTS["WAIT"]
    timeout: float = DEFAULTS["TIMEOUT"]
    attempts: int = DEFAULTS["ATTEMPTS"]
    checks: tuple = field(default_factory=tuple)


def parse_checks(text, path=FILE_NAME):
    """Parse a CHECKS file; UsageError with file:line on anything invalid."""
    values = dict(DEFAULTS)
    checks = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        m = SETTING.match(line)
        if m:
            values[m.group(1)] = _setting(m.group(1), m.group(2), path, number)
            continue
        target, _, expected = line.partition(" ")
        if not target.startswith("/") or target.startswith("//"):
            raise UsageError(f"a check must start with a path like /health, got {target!r}",
                             file=path, line=number)
        if any(c.isspace() or ord(c) < 0x20 for c in target):
            raise UsageError(f"invalid check path {target!r}", file=path, line=number)
        checks.append(Check(target, expected.strip(), number))
    return Checks(path, values["WAIT"], values["TIMEOUT"], values["ATTEMPTS"], tuple(checks))


def _setting(name, value, path, line):
    if name not in DEFAULTS:
        raise UsageError(f"unknown setting {name} (have: WAIT, TIMEOUT, ATTEMPTS)",
                         file=path, line=line)
    try:
        number = float(value) if name != "ATTEMPTS" else int(value)
    except ValueError:
        number = None
    if number is None or number < 0 or (name == "ATTEMPTS" and number < 1) or \
            (name == "TIMEOUT" and number == 0):
        want = "a whole number ≥ 1" if name == "ATTEMPTS" else \
            "a number of seconds > 0" if name == "TIMEOUT" else "a number of seconds ≥ 0"
        raise UsageError(f"{name}={value!r}: want {want}", file=path, line=line)
    return number


def load_checks(directory):
    """The project's Checks, or None when there is no CHECKS file."""
    path = os.path.join(directory, FILE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read: {exc}", file=path)
    return parse_checks(text, path)


def verdict(check, status, body):
    """None when the response passes ``check``, else why not (one line)."""
    if status is None:
        return f"GET {check.path}: no answer ({body})"
    if not 200 <= status < 400:
        return f"GET {check.path}: HTTP {status}, want 2xx/3xx{_got(body)}"
    if check.expected and check.expected not in body:
        return f"GET {check.path}: {check.expected!r} not in the response{_got(body)}"
    return None


def _got(body):
    text = " ".join(body.split())
    return f" (got {text[:80]!r}{'…' if len(text) > 80 else ''})" if text else " (empty body)"


async def fetch(host, port, path, timeout, host_header=None):
    """(status, body text) of GET path, or (None, reason) when nothing answered."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return None, type(exc).__name__ if not str(exc) else str(exc)
    try:
        head = (f"GET {path} HTTP/1.1\r\nHost: {host_header or f'{host}:{port}'}\r\n"
                "User-Agent: dashscale-checks\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1"))
        data = await asyncio.wait_for(_read_all(reader), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return None, f"timed out after {timeout:g}s" if isinstance(exc, asyncio.TimeoutError) \
            else str(exc)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return None, "not an HTTP response"
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(parts[1]), body.decode("utf-8", "replace")


async def _read_all(reader):
    data = b""
    while len(data) < MAX_BODY:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    return data


async def run_checks(checks, port, prefix="", host="127.0.0.1", sleep=asyncio.sleep,
                     alive=lambda: True):
    """Run ``checks`` against one replica, Dokku style: up to ATTEMPTS attempts, each
    after WAIT seconds; an attempt passes when every check does. Returns None on
    success, else the last failure (one line). ``alive()`` False stops early."""
    failure = "no attempt ran"
    for attempt in range(1, checks.attempts + 1):
        await sleep(checks.wait)
        if not alive():
            return "the replica exited during its checks"
        failure = None
        for check in checks.checks:
            path = prefix.rstrip("/") + check.path if prefix else check.path
            status, body = await fetch(host, port, path, checks.timeout)
            failure = verdict(check, status, body)
            if failure:
                failure = f"{os.path.basename(checks.file)}:{check.line}: {failure} " \
                          f"(attempt {attempt}/{checks.attempts})"
                break
        if failure is None:
            return None
    return failure
