"""Why a replica could not start, in one line: its real exit code and the line of its
output that says why (the exception's last line, or gunicorn's own message), e.g.
``app failed to load (exit 4): Failed to find attribute 'server' in 'app'.``

Sans-IO: functions of log lines, shared by the runner (`start`, rolls) and `check
--measure`. supervisord reports the exit status of a process that exited within
``startsecs`` as 0 (BACKOFF/FATAL keep no status); its own log keeps the real one
(read by ``Supervisord.exits()`` with ``lifecycle.supervisord_exit``).
"""
import re

from .commands import runs_gunicorn

# gunicorn's arbiter: a worker that cannot boot / load the app halts the master with
# these exit codes; restarting it cannot help (the same import fails again).
GUNICORN_EXIT = {3: "worker failed to boot", 4: "app failed to load"}
LOG_BYTES = 65536  # how much of a replica's log is read for the cause

_GUNICORN_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:]+ [+-]\d{4}\] \[\d+\] \[([A-Z]+)\] ")
# gunicorn's own lines that say nothing about the cause.
_BOILERPLATE = re.compile(
    r"^(Starting gunicorn|Listening at|Using worker|Booting worker|Control socket|"
    r"Worker exiting|Worker \(pid:?\s?\d+\)|Worker with pid|Shutting down|Reason:|"
    r"Exception in worker process|Handling signal|Arbiter|Goodbye|Worker failed to boot)")
# What gunicorn prints (without a traceback) when it cannot find the app in its module.
_GUNICORN_APP_ERRORS = re.compile(
    r"^(Failed to find attribute|Failed to parse|Failed to find application|"
    r"Application object must be callable|Function reference must be)")
_APP_ERROR_AGAIN = re.compile(_GUNICORN_APP_ERRORS.pattern[1:])
# gunicorn halting because a worker could not boot (3) / load the app (4). gunicorn ≥24
# can die of a second HaltServer while stopping (exit 1): its log still says why. With
# --preload the master loads the app itself and dies of AppImportError (exit 1).
_HALT = re.compile(r"(Worker failed to boot|App failed to load)\."
                   r"|^(gunicorn\.errors\.AppImportError): "
                   r"|Worker \(pid:\d+\) exited with code ([34])\b")
_HALT_CODES = {"Worker failed to boot": 3, "App failed to load": 4,
               "gunicorn.errors.AppImportError": 4}
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')


def this_run(lines, pid=None):
    """The lines of one gunicorn run (a log holds earlier runs too): the run of the
    master ``pid``, else the last one."""
    starts = [i for i, line in enumerate(lines) if "] Starting gunicorn " in line]
    mine = [i for i in starts if f"] [{pid}] [" in lines[i]] if pid else []
    first = (mine or starts or [0])[-1]
    after = [i for i in starts if i > first]
    return lines[first:after[0] if after else len(lines)]


def load_failure(lines, code, command):
    """3 or 4 when this gunicorn run stopped because its app could not boot / load,
    else None."""
    if not runs_gunicorn(command):
        return None
    if code in GUNICORN_EXIT:
        return code
    for line in lines:
        m = _HALT.search(line)
        if m:
            return int(m.group(3)) if m.group(3) else _HALT_CODES[m.group(1) or m.group(2)]
    return None


def cause(lines):
    """The line of a failed run's output that says why, or None: gunicorn's message
    about the app module, else the last traceback's exception line, else the last line
    that is not gunicorn's boilerplate."""
    app_error = exception = last = None
    in_traceback, frame = False, None
    for raw in lines:
        line = raw.rstrip()
        m = _GUNICORN_PREFIX.match(line)
        if m:
            in_traceback = False
            text = line[m.end():]
            if m.group(1) not in ("DEBUG", "INFO") and not _BOILERPLATE.match(text):
                last = text
            continue
        if line.startswith("Traceback (most recent call last)"):
            in_traceback, frame = True, None
            continue
        if in_traceback:
            if not line or line[0].isspace():
                frame = _FRAME.match(line) or frame
                continue
            in_traceback = False
            if line.startswith("gunicorn.errors.AppImportError: "):  # --preload
                app_error = line.split(": ", 1)[1]
            elif not line.startswith("gunicorn.errors.HaltServer"):  # gunicorn's, not the app's
                exception = _with_location(line, frame)
            continue
        if not line.strip():
            continue
        if _GUNICORN_APP_ERRORS.match(line):
            # Two workers writing at once can run their messages together on one line.
            again = _APP_ERROR_AGAIN.search(line, 1)
            app_error = line[:again.start()] if again else line
        else:
            last = line
    found = app_error or exception or last
    return found[:300] if found else None


def _with_location(exception, frame):
    """A SyntaxError's line says what, not where: add the file and line."""
    if frame and exception.split(":", 1)[0] in ("SyntaxError", "IndentationError",
                                                   "TabError"):
        return f"{exception} ({frame.group(1)}, line {frame.group(2)})"
    return exception


def reason(load_code, signal, default="could not start"):
    if load_code:
        return GUNICORN_EXIT[load_code]
    return f"killed by {signal}" if signal else default


def describe(what, code, signal, why, log=None):
    """``app failed to load (exit 4): <why> — see <log>``."""
    status = f"exit {code}" if code is not None else (signal or "exit status unknown")
    text = f"{what} ({status})"
    if why:
        text += f": {why}"
    return f"{text} — see {log}" if log else text


def explain(lines, code, signal, command, log=None):
    """One line for a run that ended: what failed, the exit status, the cause."""
    load_code = load_failure(lines, code, command)
    return describe(reason(load_code, signal), code, signal, cause(lines), log)
