"""Release steps: one-shot commands of a deploy, not replicas.

- Procfile ``release:`` (Heroku): runs once, to completion, before the web replicas
  start and before every deploy (roll) of code, command or ``.env``, never on a scale;
  a failure blocks the change.
- ``project.toml`` ``predeploy`` / ``postdeploy`` (Dash Enterprise 5, where predeploy
  runs before the new containers start and postdeploy after the processes start,
  before traffic): predeploy runs with ``release``; postdeploy once the new replicas
  are up, and its failure is reported but undoes nothing (the new replicas stay).
  Accepted at the top level or under ``[scripts]`` or ``[deploy]``; the value is a
  command, or a script file in the app directory (run with ``sh``).

A step is not a process type: it has no replicas, no port block, no memory limit and
no place in the formation (``-m release=1`` is refused). It runs with the environment
the replicas get (launch.process_env, without PORT), on a disk of its own as theirs
(podfs.Pods.step_dir: the deploy it precedes, ``../mount`` beside it). Output goes
to the terminal as ``release | …`` (``predeploy | …``) and to
``.dashscale/logs/<step>.log`` (``dashscale logs release``). honcho and foreman instead
stop everything when a ``release`` process exits; here it is a step, as on Heroku and
Dash Enterprise.
"""
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from .errors import UsageError

RELEASE_TYPE = "release"
PROJECT_TOML = "project.toml"
TABLES = (None, "scripts", "deploy")
READER_GRACE = 5.0  # s for the last output of a step that has exited


@dataclass(frozen=True)
class Step:
    name: str       # "release", "predeploy" or "postdeploy"
    command: str
    source: str     # "Procfile:3" or "project.toml"
    phase: str      # "before" (the new replicas start) or "after" (they serve)

    def as_json(self):
        return {"name": self.name, "command": self.command, "source": self.source,
                "phase": self.phase}


def process_types(procfile):
    """The Procfile's process types that run as replicas: all but ``release``."""
    names = [name for name in procfile.types if name != RELEASE_TYPE]
    if not names:
        raise UsageError("only a release step: no process type to run (add one, e.g. "
                         "'web: gunicorn app:server')", file=procfile.path)
    return names


def before(steps):
    """The steps that run before the new replicas start (release, predeploy)."""
    return [s for s in steps if s.phase == "before"]


def after(steps):
    """The steps that run once the new replicas serve (postdeploy)."""
    return [s for s in steps if s.phase == "after"]


def steps(procfile, directory):
    """The project's release steps, in the order they run."""
    found = []
    ptype = procfile.types.get(RELEASE_TYPE)
    if ptype is not None:
        found.append(Step(RELEASE_TYPE, ptype.command,
                          f"{os.path.basename(procfile.path)}:{ptype.line}", "before"))
    scripts = _project_toml(directory)
    for name, phase in (("predeploy", "before"), ("postdeploy", "after")):
        if name in scripts:
            found.append(Step(name, _command(scripts[name], directory), PROJECT_TOML, phase))
    return found


def _project_toml(directory):
    import tomllib
    path = os.path.join(directory, PROJECT_TOML)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot parse: {exc}", file=path)
    scripts = {}
    for table in TABLES:
        section = data if table is None else data.get(table, {})
        if not isinstance(section, dict):
            continue
        for name in ("predeploy", "postdeploy"):
            value = section.get(name)
            if value is None or name in scripts:
                continue
            if not isinstance(value, str) or not value.strip():
                where = f"{table}.{name}" if table else name
                raise UsageError(f"{where} must be a command (a string), got {value!r}",
                                 file=path)
            scripts[name] = value.strip()
    return scripts


def _command(value, directory):
    """A script file in the app directory runs with sh; anything else is a command."""
    candidate = os.path.join(directory, value)
    if os.path.isfile(candidate) and not os.access(candidate, os.X_OK):
        return f"sh {shlex.quote(value)}"
    return value


@dataclass
class Outcome:
    step: Step
    code: int
    seconds: float
    finished: float  # time.time()

    @property
    def ok(self):
        return self.code == 0

    def as_json(self):
        return {"name": self.step.name, "command": self.step.command,
                "source": self.step.source, "exit_code": self.code,
                "ok": self.ok, "seconds": round(self.seconds, 3), "time": self.finished}

    def describe(self):
        if self.ok:
            return f"{self.step.name} succeeded in {self.seconds:.1f}s"
        how = f"was killed by signal {-self.code}" if self.code < 0 else f"exited {self.code}"
        return f"{self.step.name} ({self.step.source}: {self.step.command}) {how}"


def run(step, env, cwd, line, log_path=None, started=None):
    """Run ``step`` to completion; every output line goes to ``line(name, text)`` and the
    log; ``started(proc)`` is called with the process once it runs (to stop it: stop()).
    Blocking (call it from a thread)."""
    t0 = time.monotonic()
    log = open(log_path, "ab") if log_path else None
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", step.command], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, process_group=0)
        if started:
            started(proc)
        reader = threading.Thread(target=_copy, args=(proc.stdout, step.name, line, log),
                                  daemon=True)
        reader.start()
        # Exited but not reaped, so its group id is still ours: what it left running in
        # the group (holding the output pipe, say) goes with it, as a release dyno's.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        stop(proc, signal.SIGKILL)
        code = proc.wait()
        reader.join(READER_GRACE)  # the rest of its output
    finally:
        if log:
            log.close()
    return Outcome(step, code, time.monotonic() - t0, time.time())


def _copy(stream, name, line, log):
    with stream:
        for raw in stream:
            if log and not log.closed:
                log.write(raw)
                log.flush()
            line(name, raw.decode("utf-8", "replace").rstrip("\r\n"))


def stop(proc, sig=signal.SIGTERM):
    """Signal a running step's whole process group (its own: process_group=0)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
