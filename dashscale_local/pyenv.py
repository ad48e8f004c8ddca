"""Which Python environment the replicas run in, and whether it has the Procfile's
programs.

Order: ``--python PATH`` / ``python =`` in dashscale.ini; an active ``VIRTUAL_ENV``; a
``.venv/`` or ``venv/`` next to the Procfile; dashscale's own environment. The chosen
environment's ``bin`` goes first on the replicas' PATH (and is ``VIRTUAL_ENV`` when it is a
venv), so ``gunicorn`` in a Procfile is the app's gunicorn with the app's packages, whoever
installed dashscale (its own venv, pipx, the app's venv).
"""
import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from . import rundir
from .commands import program_of
from .errors import UsageError

LOCAL_VENVS = (".venv", "venv")
PYTHON_FILE = "python.json"  # in the run directory, for `status`
# Programs whose package has another name (the install hint names the package).
PACKAGES = {"waitress-serve": "waitress", "newrelic-admin": "newrelic",
            "ddtrace-run": "ddtrace", "opentelemetry-instrument": "opentelemetry-distro",
            "huey_consumer": "huey", "mod_wsgi-express": "mod_wsgi"}
@dataclass(frozen=True)
class PythonEnv:
    python: str   # the interpreter, as found (a venv's python is a symlink: not resolved)
    source: str   # the rule: "--python", "…/dashscale.ini: python", "VIRTUAL_ENV", ".venv",
    #               "venv" or "dashscale" (its own environment)
    why: str      # for people: "from --python", ".venv next to the Procfile", …

    @property
    def bin_dir(self):
        return os.path.dirname(self.python)

    @property
    def venv(self):
        """The venv directory (has pyvenv.cfg), or None for a plain interpreter."""
        root = os.path.dirname(self.bin_dir)
        return root if os.path.isfile(os.path.join(root, "pyvenv.cfg")) else None

    @property
    def location(self):
        return self.venv or self.python

    def describe(self):
        return f"{self.location} ({self.why})"

    def as_json(self):
        return {"path": self.python, "venv": self.venv, "source": self.source,
                "why": self.why}

    def apply(self, env):
        """Put this environment first on ``env``'s PATH and set VIRTUAL_ENV for it; the
        bin dirs of other venvs (dashscale's own, an active one) leave PATH."""
        others = {os.path.join(p, "bin") for p in (env.get("VIRTUAL_ENV"), _own_venv()) if p}
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep)
                if p and p != self.bin_dir and p not in others]
        env["PATH"] = os.pathsep.join([self.bin_dir, *path])
        if self.venv:
            env["VIRTUAL_ENV"] = self.venv
        elif "VIRTUAL_ENV" in env:  # emptied, not removed: the launcher only exports
            env["VIRTUAL_ENV"] = ""
        return env

    def which(self, program, cwd):
        """Path of ``program`` as the replica's shell would find it, or None."""
        if "/" in program:
            path = os.path.join(cwd, program)
            return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
        return shutil.which(program, path=self.apply(dict(os.environ))["PATH"])

    def sys_path(self):
        """The environment's sys.path (where its installed packages are), asked of its
        interpreter once (also when it is dashscale's own: this process's sys.path has
        whatever its caller added, e.g. pytest's rootdirs)."""
        return _sys_path_of(self.python)

    def install_hint(self, program):
        return f"{self.python} -m pip install {PACKAGES.get(program, program)}"


@functools.lru_cache(maxsize=None)
def _sys_path_of(python):
    try:
        out = subprocess.run([python, "-c", "import json, sys; print(json.dumps(sys.path))"],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONSAFEPATH": "1"}, cwd="/")
        return [p for p in json.loads(out.stdout) if p]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return sys.path  # cannot ask it: look where dashscale looks


def _own_venv():
    return sys.prefix if sys.prefix != sys.base_prefix else None


def _interpreter(path):
    """The python of a venv dir or a python binary; None when there is none."""
    if os.path.isdir(path):
        for name in ("python", "python3"):
            candidate = os.path.join(path, "bin", name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return None
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def resolve(directory, explicit=None, explicit_source="python", environ=None):
    """The replicas' PythonEnv for a Procfile in ``directory``; a bad explicit path (or a
    VIRTUAL_ENV without a python) is a UsageError naming the setting and value."""
    environ = os.environ if environ is None else environ
    if explicit:
        path = os.path.abspath(os.path.join(directory, os.path.expanduser(explicit)))
        python = _interpreter(path)
        if python is None:
            raise UsageError(f"{explicit_source} = {explicit}: "
                             + ("not a python executable nor a venv (no bin/python in it)"
                                if os.path.exists(path) else "no such file or directory"))
        return PythonEnv(python, explicit_source, f"from {explicit_source}")
    active = environ.get("VIRTUAL_ENV")
    if active:
        python = _interpreter(active)
        if python is None:
            raise UsageError(f"VIRTUAL_ENV = {active}: no bin/python in it (a deleted venv "
                             "still activated? deactivate it or pass --python PATH)")
        return PythonEnv(python, "VIRTUAL_ENV", "the active VIRTUAL_ENV")
    for name in LOCAL_VENVS:
        python = _interpreter(os.path.join(directory, name))
        if python:
            return PythonEnv(python, name, f"{name} next to the Procfile")
    return PythonEnv(sys.executable, "dashscale", "dashscale's own environment")


def missing_programs(procfile, env, cwd):
    """(line, message) for each Procfile type whose program ``env`` does not have."""
    found = []
    for ptype in procfile.types.values():
        program = program_of(ptype.command)
        if program is None or env.which(program, cwd):
            continue
        if "/" in program:
            found.append((ptype.line, f"{ptype.name}: {program!r} not found or not "
                                      f"executable (in {cwd})"))
            continue
        found.append((ptype.line, f"{program!r} is not installed in {env.describe()}: run "
                                  f"{env.install_hint(program)}"))
    return found


def save_python_env(run_dir, env):
    """Record the running formation's environment for `status` (python.json, 0600)."""
    rundir.write_json(os.path.join(run_dir, PYTHON_FILE), env.as_json())


def saved_python_env(run_dir):
    return rundir.read_json(os.path.join(run_dir, PYTHON_FILE))
