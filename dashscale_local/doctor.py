"""`dashscale check`: a Procfile doctor.

Prints the Procfile as dashscale understood it (like ``foreman check``) and findings,
each with a file and line, about what will hurt on Dash Enterprise or Kubernetes. Exit
codes: 0 without errors (warnings are fine); 2 when an error was found or the input
cannot be read; 1 when ``--measure`` failed at run time.

code                      level    when
========================  =======  ========================================================
procfile-skipped-line     warning  a line foreman/honcho would silently skip
no-web                    warning  no ``web`` type (Dash Enterprise routes only ``web``)
web-not-wsgi              warning  ``web`` does not run a WSGI server (``python app.py`` runs
                                   Dash's single-threaded development server)
app-module-missing        error    the gunicorn APP_MODULE / ``python FILE`` / ``-m MOD``
                                   cannot be found
app-attr-missing          error    the gunicorn ``module:attr`` names an attribute the module
                                   never defines (when the source tells for sure), with the fix
run-server-removed        error    ``app.run_server(`` with Dash ≥ 3 in the replicas'
                          warning  environment (removed: ``app.run``): an error when the
                                   Procfile command reaches the call, else a warning
dev-server-at-import      error    ``app.run(`` / ``app.run_server(`` at module level (not
                                   under ``if __name__ == "__main__":``) in the module
                                   gunicorn imports: each worker starts Dash's development
                                   server at import and never serves
gunicorn-args             warning  gunicorn would reject its arguments
gunicorn-workers          warning  workers outside 2–4 (Dash Enterprise's recommendation);
                                   from ``-w/--workers``, GUNICORN_CMD_ARGS, gunicorn.conf.py
                                   or WEB_CONCURRENCY in ``.env``; none of these = 1 worker
preload-shared-pool       warning  ``--preload`` (or ``preload_app = True``) and the app
                                   module, or a local module it imports, creates a database
                                   engine/pool or redis client at import time: connections
                                   opened before the fork are shared between workers
bind-all-interfaces       warning  binds 0.0.0.0 / [::] / ``:PORT``: reachable beyond loopback
bind-fixed-port           warning  gunicorn binds a fixed port, not ``$PORT``: a second
                                   replica cannot bind it
per-process-secret        warning  the web app sets a Flask ``secret_key``/``SECRET_KEY`` from
                                   ``os.urandom``, ``secrets.token_*`` or ``uuid4`` at import:
                                   each process signs sessions with its own key, so a session
                                   is lost when the next request reaches another replica
memory-projection         warning  ``--measure``: a replica's projected memory is over 80 %
                                   of its limit (or the web formation over 80 % of this
                                   machine's RAM)
measure-failed            error    ``--measure``: the replica did not come up
========================  =======  ========================================================

Exit codes: 0 without errors (warnings are fine); 2 when an error was found or the input
cannot be read (bad Procfile, missing app module: bad input, as everywhere in dashscale);
1 when ``--measure`` failed at run time (the replica did not start or answer).

``--measure`` starts one ``web`` replica exactly as ``start`` runs it (same command with
``--bind 127.0.0.1:$PORT``, same environment, a free port, its own session, not under
supervisord, so it works while the formation is running too), sends a few warm-up
requests, waits until the tree's PSS is steady, measures the gunicorn master and each
worker (PSS, as the memory guard), stops the replica (its whole process group), and
projects ``master + workers × per-worker`` per replica and × replicas for the formation
against the memory limit. Idle memory is a floor: requests allocate more.
=======
Every finding (code, level, when), the exit codes and how ``--measure`` projects memory:
docs/doctor.md.
"""
import ast
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.machinery import PathFinder

import click

from . import appsource
from .clickutil import handle_errors, procfile_option, python_option, python_setting
from .commands import gunicorn_args, is_compound
from .errors import UsageError
from .sizes import format_size
from .supervisor import launcher_script

RECOMMENDED_WORKERS = (2, 4)
PORT_MARKER = "59999"
WARN_FRACTION = 0.8
WSGI_SERVERS = {"gunicorn", "uwsgi", "waitress-serve", "uvicorn", "hypercorn", "daphne",
                "granian", "bjoern", "mod_wsgi-express", "gevent"}
PYTHON_SERVER_MODULES = {"gunicorn", "waitress", "uvicorn", "hypercorn", "daphne",
                         "granian"}
WRAPPERS = {"exec", "env", "nice", "ionice", "newrelic-admin", "ddtrace-run",
            "opentelemetry-instrument", "run-program", "dumb-init", "tini", "--"}
# Calls that open (or pool) connections; at import time under --preload they are made
# in the gunicorn master and inherited by every forked worker.
POOL_CALLS = [
    ("sqlalchemy.create_engine", "a SQLAlchemy engine (create_engine)"),
    ("sqlalchemy.ext.asyncio.create_async_engine",
     "a SQLAlchemy engine (create_async_engine)"),
    ("psycopg2.pool.SimpleConnectionPool", "a psycopg2 pool (SimpleConnectionPool)"),
    ("psycopg2.pool.ThreadedConnectionPool", "a psycopg2 pool (ThreadedConnectionPool)"),
    ("psycopg2.pool.AbstractConnectionPool", "a psycopg2 pool"),
    ("psycopg_pool.ConnectionPool", "a psycopg pool (ConnectionPool)"),
    ("psycopg_pool.AsyncConnectionPool", "a psycopg pool (AsyncConnectionPool)"),
    ("psycopg_pool.NullConnectionPool", "a psycopg pool (NullConnectionPool)"),
    ("psycopg2.connect", "a psycopg2 connection"),
    ("psycopg.connect", "a psycopg connection"),
    ("redis.ConnectionPool", "a redis ConnectionPool"),
    ("redis.BlockingConnectionPool", "a redis ConnectionPool (BlockingConnectionPool)"),
    ("redis.Redis", "a redis client (Redis)"),
    ("redis.StrictRedis", "a redis client (StrictRedis)"),
    ("redis.from_url", "a redis client (redis.from_url)"),
    ("redis.Redis.from_url", "a redis client (Redis.from_url)"),
    ("redis.StrictRedis.from_url", "a redis client (StrictRedis.from_url)"),
    ("pymongo.MongoClient", "a MongoDB client (MongoClient)"),
]
# Bare names matched when the import cannot be traced (e.g. `from db import *`).
POOL_BARE = {"create_engine", "create_async_engine", "SimpleConnectionPool",
             "ThreadedConnectionPool", "ConnectionPool", "AsyncConnectionPool",
             "StrictRedis", "MongoClient"}
MAX_SCANNED_MODULES = 50


@dataclass
class Finding:
    level: str  # "error" | "warning"
    code: str
    file: str
    line: object  # int or None
    message: str

    def as_json(self):
        d = asdict(self)
        d.pop("level")
        return {"file": d["file"], "line": d["line"], "message": d["message"],
                "code": d["code"]}

    def __str__(self):
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.level}: {self.message}"


class Report:
    def __init__(self, procfile_path):
        self.procfile_path = procfile_path  # as the user gave it (used in messages)
        self.processes = {}
        self.release = []  # release steps (release.Step.as_json), not processes
        self.findings = []
        self.measure = None
        self.python = None  # the replicas' Python environment (pyenv.PythonEnv)

    def add(self, level, code, file, line, message):
        self.findings.append(Finding(level, code, file, line, message))

    @property
    def errors(self):
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self):
        return [f for f in self.findings if f.level == "warning"]

    def as_json(self):
        data = {"processes": self.processes,
                "release": self.release,
                "warnings": [f.as_json() for f in self.warnings],
                "errors": [f.as_json() for f in self.errors]}
        if self.python is not None:
            data["python"] = self.python.as_json()
        if self.measure is not None:
            data["measure"] = self.measure
        return data


# ─── helpers ──────────────────────────────────────────────────────────────────────────
VAR = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\})")


def expand_vars(text, env):
    """``$X`` / ``${X}`` / ``${X:-default}`` from ``env``; unknown ones stay as they are."""
    def sub(m):
        name = m.group(1) or m.group(2)
        if name in env:
            return env[name]
        return m.group(3) if m.group(3) is not None else m.group(0)
    return VAR.sub(sub, text)


def env_line(path, key):
    """Line of ``key=`` in an env file (None when not found)."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if re.match(rf"\s*(export\s+)?{re.escape(key)}\s*=", line):
                    return number
    except OSError:
        pass
    return None


def _split(command):
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _program_argv(command):
    """argv without leading VAR=value assignments and wrappers (exec, newrelic-admin…)."""
    argv = _split(command)
    while argv and ("=" in argv[0] and not argv[0].startswith("-")
                    or os.path.basename(argv[0]) in WRAPPERS):
        argv = argv[1:]
    return argv


class _ParseError(Exception):
    pass


def _gunicorn_parser():
    from gunicorn.config import Config

    parser = Config(usage="%(prog)s [OPTIONS] [APP_MODULE]", prog="gunicorn").parser()

    def error(message):
        raise _ParseError(message)
    parser.error = error
    parser.exit = lambda status=0, message=None: error(message or "exit")
    return parser


def _literal_settings(path):
    """Top-level ``name = literal`` assignments of a gunicorn config file:
    {name: (value or ..., line)}; ``...`` when the value is not a literal."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                value = ...
            found[node.targets[0].id] = (value, node.lineno)
    return found


# ─── the doctor ───────────────────────────────────────────────────────────────────────
class Doctor:
    def __init__(self, project, shown_procfile, python=sys.executable):
        """python: the interpreter that runs the replicas (its Dash version counts)."""
        self.project = project
        self.python = python
        self.directory = project.directory
        self.report = Report(shown_procfile)
        self.shown_dir = os.path.dirname(shown_procfile)
        self.env = dict(project.env)

    def shown(self, path):
        """A path as the user would write it: relative to the Procfile as given."""
        path = os.path.abspath(path)
        rel = os.path.relpath(path, self.directory)
        if rel.startswith(os.pardir):
            return path
        return os.path.join(self.shown_dir, rel) if self.shown_dir else rel

    def add(self, level, code, file, line, message):
        self.report.add(level, code, file, line, message)

    def run(self):
        procfile = self.project.procfile
        self.report.processes = {t: procfile.types[t].command for t in self.project.type_names}
        self.report.release = [step.as_json() for step in self.project.release_steps]
        pf = self.report.procfile_path
        for w in procfile.warnings:
            self.add("warning", "procfile-skipped-line", pf, w.line, w.message)
        if "web" not in procfile.types:
            self.add("warning", "no-web", pf, None,
                     "no 'web' process type: Dash Enterprise (and dashscale's proxy) routes "
                     "requests only to 'web'")
        self.report.python = self.project.python_env
        for line, message in self.project.missing_programs():
            self.add("error", "command-not-installed", pf, line, message)
        for name in self.project.type_names:
            self.check_type(procfile.types[name])
        if "release" in procfile.types:  # a one-shot step: its script must exist
            release = procfile.types["release"]
            self.check_python_target(release, _program_argv(release.command))
        self.report.findings.sort(key=lambda f: (f.level != "error", f.file != pf,
                                                 f.file, f.line or 0))
        return self.report

    # -- one process type -----------------------------------------------------
    def check_type(self, ptype):
        pf = self.report.procfile_path
        command = ptype.command
        gargs = gunicorn_args(command)
        argv = _program_argv(command)
        if gargs is None and argv and os.path.basename(argv[0]) == "gunicorn":
            gargs = argv[1:]  # behind a wrapper (newrelic-admin run-program gunicorn …)
        if gargs is None and argv[:1] and os.path.basename(argv[0]).startswith("python") \
                and argv[1:3] == ["-m", "gunicorn"]:
            gargs = argv[3:]
        if gargs is not None:
            self.check_gunicorn(ptype, gargs)
            return
        if ptype.name == "web" and not self.runs_wsgi_server(command, argv):
            self.add("warning", "web-not-wsgi", pf, ptype.line,
                     f"web runs {_shown_cmd(command)!r}, not a WSGI server: `python app.py` "
                     "runs Dash's development server (single-threaded, not for production), "
                     "not what Dash Enterprise runs; use e.g. "
                     "'gunicorn app:server --workers 2'")
        self.check_python_target(ptype, argv)
        if re.search(r"(?<![\d.])0\.0\.0\.0(?![\d.])|\[::\]", command):
            self.add("warning", "bind-all-interfaces", pf, ptype.line,
                     f"{ptype.name} listens on all interfaces (0.0.0.0): reachable from other "
                     "machines, beyond loopback; locally 127.0.0.1 is enough")

    @staticmethod
    def runs_wsgi_server(command, argv):
        if not argv:
            return False
        prog = os.path.basename(argv[0])
        if prog in WSGI_SERVERS:
            return True
        if prog.startswith("python") and len(argv) > 2 and argv[1] == "-m":
            return argv[2].split(".")[0] in PYTHON_SERVER_MODULES
        if is_compound(command):  # `cd x && gunicorn …`: look for a server anywhere
            return any(os.path.basename(w) in WSGI_SERVERS for w in _split(command))
        return False

    def check_python_target(self, ptype, argv):
        """`python app.py` / `python -m mod`: the file or module must exist."""
        if not argv or not os.path.basename(argv[0]).startswith("python"):
            return
        rest = argv[1:]
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            rest = rest[2:] if rest[0] in ("-W", "-X", "--check-hash-based-pycs") else rest[1:]
        if not rest or rest[0] == "-c":
            return
        pf = self.report.procfile_path
        if rest[0] == "-m":
            found = self.find_module(rest[1], [self.directory]) if len(rest) > 1 else ""
            if found is None:
                self.add("error", "app-module-missing", pf, ptype.line,
                         f"{ptype.name}: module {rest[1]!r} not found (in "
                         f"{self.shown(self.directory) or '.'} or installed packages)")
            elif found and found != "installed":
                self.check_run_server(ptype, found, f"python -m {rest[1]}")
            return
        script = expand_vars(rest[0], self.env)
        path = os.path.join(self.directory, script)
        if "$" not in script and not os.path.exists(path):
            self.add("error", "app-module-missing", pf, ptype.line,
                     f"{ptype.name}: {script} not found")
        elif script.endswith(".py") and os.path.isfile(path):
            self.check_secrets(ptype, path, [os.path.dirname(path)])
            self.check_run_server(ptype, path, f"python {script}")

    # -- gunicorn -------------------------------------------------------------
    def check_gunicorn(self, ptype, args):
        pf = self.report.procfile_path
        # dashscale sets PORT for every replica (a .env PORT is overridden); a marker
        # value tells a bind on $PORT from a fixed one.
        env = {**self.env, "PORT": PORT_MARKER}
        try:
            ns = _gunicorn_parser().parse_args([expand_vars(a, env) for a in args])
        except _ParseError as exc:
            self.add("warning", "gunicorn-args", pf, ptype.line,
                     f"{ptype.name}: gunicorn would reject its arguments: {exc}")
            return
        env_file = self.project.env_files[-1]
        cmd_ns, cmd_line = None, None
        if "GUNICORN_CMD_ARGS" in self.env:
            cmd_line = (self.shown(env_file), env_line(env_file, "GUNICORN_CMD_ARGS"))
            try:
                cmd_ns = _gunicorn_parser().parse_args(_split(self.env["GUNICORN_CMD_ARGS"]))
            except _ParseError as exc:
                self.add("warning", "gunicorn-args", *cmd_line,
                         f"GUNICORN_CMD_ARGS: gunicorn would reject it: {exc}")
        conf_path = ns.config or (cmd_ns.config if cmd_ns else None) or "gunicorn.conf.py"
        conf = {}
        if not conf_path.startswith("python:"):
            conf_path = os.path.join(self.directory, conf_path)
            conf = _literal_settings(conf_path)
        # Precedence as gunicorn: command line > GUNICORN_CMD_ARGS > config file.
        here = (pf, ptype.line)

        def setting(attr, conf_name):
            if getattr(ns, attr, None) is not None:  # (wsgi_app has no option)
                return getattr(ns, attr), here, "the command line"
            if cmd_ns is not None and getattr(cmd_ns, attr, None) is not None:
                return getattr(cmd_ns, attr), cmd_line, "GUNICORN_CMD_ARGS"
            if conf_name in conf:
                value, line = conf[conf_name]
                return value, (self.shown(conf_path), line), os.path.basename(conf_path)
            return None, here, None

        chdir = setting("chdir", "chdir")[0]
        root = os.path.join(self.directory, chdir) if isinstance(chdir, str) else self.directory
        pythonpath = setting("pythonpath", "pythonpath")[0]
        roots = [root] + [os.path.join(self.directory, p)
                          for p in (pythonpath.split(",") if isinstance(pythonpath, str) else [])]

        # APP_MODULE
        app = ns.args[0] if ns.args else setting("wsgi_app", "wsgi_app")[0]
        module_file = None
        if not isinstance(app, str):
            if not (ns.paste or ns.raw_paste_global_conf):
                self.add("error", "app-module-missing", *here,
                         f"{ptype.name}: gunicorn has no APP_MODULE (e.g. 'app:server')")
        else:
            module = app.split(":", 1)[0]
            found = self.find_module(module, roots)
            if found is None:
                self.add("error", "app-module-missing", *here,
                         f"{ptype.name}: app module {module!r} not found (no "
                         f"{module.replace('.', '/')}.py in {self.shown(root) or '.'}, "
                         "not installed)")
            elif found != "installed":
                module_file = found
                self.check_app_attr(ptype, app, module_file)
                self.check_run_server(ptype, module_file, None, module)
        self.check_secrets(ptype, module_file, roots)

        # workers
        workers, where, source = setting("workers", "workers")
        if workers is None and "WEB_CONCURRENCY" in self.env:
            raw = self.env["WEB_CONCURRENCY"]
            where = (self.shown(env_file), env_line(env_file, "WEB_CONCURRENCY"))
            source = "WEB_CONCURRENCY"
            workers = int(raw) if raw.strip().isdigit() else ...
        if workers is None:
            self.add("warning", "gunicorn-workers", *here,
                     f"{ptype.name}: gunicorn runs 1 worker by default (no --workers, no "
                     "WEB_CONCURRENCY): one slow callback blocks every other request to the "
                     "replica; Dash Enterprise recommends --workers 2 to 4")
        elif isinstance(workers, int) and not \
                RECOMMENDED_WORKERS[0] <= workers <= RECOMMENDED_WORKERS[1]:
            why = ("one slow callback blocks every other request to the replica"
                   if workers < RECOMMENDED_WORKERS[0] else
                   "each worker holds its own copy of the app's memory; scale with replicas "
                   "instead")
            self.add("warning", "gunicorn-workers", *where,
                     f"{ptype.name}: {workers} gunicorn worker{'s' if workers != 1 else ''} "
                     f"(from {source}): {why}; Dash Enterprise recommends 2 to 4")

        # bind
        binds, bind_where, _ = setting("bind", "bind")
        if isinstance(binds, str):
            binds = [binds]
        for bind in binds if isinstance(binds, list) else []:
            if bind.startswith("unix:") or bind.startswith("fd://"):
                continue
            host = bind.rsplit(":", 1)[0] if ":" in bind else bind
            fixed = not bind.endswith(":" + PORT_MARKER)
            bind = bind.replace(PORT_MARKER, "$PORT")
            if host in ("0.0.0.0", "[::]", "::", ""):
                self.add("warning", "bind-all-interfaces", *bind_where,
                         f"{ptype.name}: binds {bind}: reachable from other machines, beyond "
                         "loopback; drop --bind and dashscale binds 127.0.0.1:$PORT (export "
                         "k8s binds 0.0.0.0 in the cluster, where it is needed)")
            if bind_where != cmd_line and fixed:
                self.add("warning", "bind-fixed-port", *bind_where,
                         f"{ptype.name}: binds the fixed address {bind} instead of $PORT: a "
                         "second replica cannot bind it; use --bind 127.0.0.1:$PORT or no "
                         "--bind")

        # --preload with shared pools
        preload, preload_where, preload_source = setting("preload_app", "preload_app")
        if preload is True and module_file is not None:
            for file, line, what, via in self.scan_pools(module_file, roots):
                via_text = f" (imported by {via})" if via else ""
                self.add("warning", "preload-shared-pool", file, line,
                         f"{ptype.name} uses --preload (from {preload_source}) and "
                         f"{what} is created at import time{via_text}: connections opened "
                         "before gunicorn forks are shared between workers (Dash "
                         "Enterprise's warning); create it after the fork (lazily, or in a "
                         "post_fork hook) or drop --preload")

    # -- the app's source -----------------------------------------------------
    def check_app_attr(self, ptype, app, module_file):
        """gunicorn ``module:attr``: the module must bind ``attr`` when imported."""
        module, _, spec = app.partition(":")
        attr = re.match(r"\s*([A-Za-z_]\w*)", spec or "application")
        tree = appsource.parse(module_file)
        if attr is None or tree is None:
            return
        attr = attr.group(1)
        names = appsource.module_names(tree)
        package_dir = os.path.dirname(module_file)
        if names is None or attr in names or (
                module_file.endswith("__init__.py") and self.find_module(attr, [package_dir])):
            return  # bound, unknowable, or a submodule of the package
        dash_app = appsource.dash_assignment(tree)
        if dash_app:
            var, line = dash_app
            fix = (f"add '{attr} = {var}.server' after '{var} = Dash(...)' "
                   f"({self.shown(module_file)}:{line})")
        else:
            fix = f"define '{attr}' at module level (for a Dash app: '{attr} = app.server')"
        self.add("error", "app-attr-missing", self.report.procfile_path, ptype.line,
                 f"{ptype.name}: {module!r} defines no {attr!r} (gunicorn needs a WSGI "
                 f"callable): {fix}")

    def check_run_server(self, ptype, path, run_as_main, module=None):
        """Calls that start Dash's development server. In the module gunicorn imports
        (``module``), one at module level starts it in every worker: an error.
        ``x.run_server(`` was removed in Dash 3 (the Dash of the replicas' environment
        counts; before 3 it works): an error when the Procfile command reaches it, else
        a warning. ``run_as_main``: the command that runs ``path`` as __main__
        (``python app.py``), None when it is imported."""
        tree = appsource.parse(path)
        calls = appsource.dev_server_calls(tree) if tree is not None else []
        version = appsource.dash_version(self.python) \
            if any(c[2] == "run_server" for c in calls) else None
        for line, receiver, method, where in calls:
            imported = where == "module" and run_as_main is None
            if method == "run_server" and version and version[0] >= 3:
                self.add("error" if imported or (where != "function" and run_as_main)
                         else "warning", "run-server-removed", self.shown(path), line,
                         self._removed(ptype, receiver, where, run_as_main, module, version))
            elif imported:
                self.add("error", "dev-server-at-import", self.shown(path), line,
                         appsource.dev_server_at_import(receiver, method, module))

    @staticmethod
    def _removed(ptype, receiver, where, run_as_main, module, version):
        text = (f"'{receiver}.run_server(' was removed in Dash 3 (the replicas' "
                f"environment has Dash {'.'.join(map(str, version))})")
        if where == "module" and run_as_main is None:
            return (f"{text}: gunicorn ({ptype.name}) fails to import {module}; use "
                    f"'{receiver}.run(' under `if __name__ == \"__main__\":`")
        if where != "function" and run_as_main:
            return f"{text}: `{run_as_main}` ({ptype.name}) reaches it; use '{receiver}.run('"
        return f"{text}: use '{receiver}.run('"

    # -- modules --------------------------------------------------------------
    def find_module(self, module, roots):
        """Path of ``module``'s source under ``roots``, "installed" when importable from
        the replicas' Python environment, None when not found."""
        parts = module.split(".")
        if not all(p.isidentifier() for p in parts):
            return "installed"  # not a plain dotted name (gunicorn accepts some oddities)
        for root in roots:
            base = os.path.join(root, *parts)
            for candidate in (base + ".py", os.path.join(base, "__init__.py")):
                if os.path.isfile(candidate):
                    return candidate
            if os.path.isdir(base) and len(parts) == 1:
                return "installed"  # namespace package
        try:
            if PathFinder.find_spec(parts[0], self.project.python_env.sys_path()) is not None:
                return "installed"
        except (ImportError, ValueError):
            pass
        return None

    def scan_pools(self, module_file, roots, limit=MAX_SCANNED_MODULES):
        """(file, line, what, imported_by) for connection pools made at import time in
        ``module_file`` and the local modules it imports at module level."""
        return [(self.shown(path), line, what, via)
                for path, via, scanner in self.scan_import_time(module_file, roots,
                                                                _ImportTimeScanner, limit)
                for line, what in scanner.pools]

    def check_secrets(self, ptype, module_file, roots):
        """per-process-secret: the web app's session key drawn at import."""
        if ptype.name != "web" or not module_file:
            return
        for path, via, scanner in self.scan_import_time(module_file, roots, _SecretScanner):
            for line, what, fallback in scanner.secrets:
                via_text = f" (imported by {via})" if via else ""
                when = " when the variable is not set" if fallback else ""
                self.add("warning", "per-process-secret", self.shown(path), line,
                         f"the session secret key is {what}{via_text}{when}: each process "
                         "draws its own, so a session signed by one replica (or gunicorn "
                         "worker) is rejected by the next; read it from an environment "
                         "variable set in .env / Dash Enterprise's app settings, e.g. "
                         "server.secret_key = os.environ['SECRET_KEY']")

    def scan_import_time(self, module_file, roots, scanner_class, limit=MAX_SCANNED_MODULES):
        """(path, imported_by, scanner) for ``module_file`` and the local modules it
        imports at module level, each walked by a ``scanner_class``."""
        results, seen, queue = [], set(), [(module_file, None)]
        while queue and len(seen) < limit:
            path, via = queue.pop(0)
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
                continue
            scanner = scanner_class(path, roots)
            scanner.scan(tree.body)
            results.append((path, via, scanner))
            for imported in scanner.local_imports:
                queue.append((imported, self.shown(path)))
        return results


class _ImportTimeScanner:
    """Walks the statements that run when a module is imported (module and class bodies,
    if/try/with/for blocks; not function bodies) for pool-creating calls and local
    imports."""

    def __init__(self, path, roots):
        self.path = path
        self.roots = roots
        self.aliases = {}  # local name -> dotted origin
        self.pools = []
        self.local_imports = []

    def scan(self, statements):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.split(".")[0]] = \
                        a.name if a.asname else a.name.split(".")[0]
                    self._local(a.name, 0)
                continue
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{mod}.{a.name}" if mod else a.name
                    self._local(f"{mod}.{a.name}" if mod else a.name, node.level,
                                fallback=mod if mod or node.level else None)
                continue
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    continue
                self._calls(child)
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, field, None)
                if isinstance(block, list):
                    self.scan([s for s in block if isinstance(s, ast.stmt)] +
                              [s for h in block if isinstance(h, ast.ExceptHandler)
                               for s in h.body])
            for case in getattr(node, "cases", []) or []:
                self.scan(case.body)

    def _calls(self, expr):
        stack = [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.Call):
                what = self._pool_call(node.func)
                if what:
                    self.pools.append((node.lineno, what))
            stack.extend(ast.iter_child_nodes(node))

    def _dotted(self, func):
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None, None
        parts.append(func.id)
        parts.reverse()
        origin = self.aliases.get(parts[0])
        resolved = ".".join([origin] + parts[1:]) if origin else None
        return ".".join(parts), resolved

    def _pool_call(self, func):
        written, resolved = self._dotted(func)
        if written is None:
            return None
        if resolved:
            for name, what in POOL_CALLS:
                # `from sqlalchemy import create_engine` -> sqlalchemy.create_engine;
                # `from redis import Redis` -> redis.Redis; also submodules re-exported
                # (psycopg2.pool.SimpleConnectionPool as psycopg2.pool.X).
                if resolved == name or (resolved.split(".")[0] == name.split(".")[0]
                                        and resolved.endswith("." + name.split(".")[-1])
                                        and name.split(".")[-1] not in ("connect",)):
                    return what
            return None
        if written in POOL_BARE:  # a name we cannot trace (star import, builtins)
            return next((w for n, w in POOL_CALLS if n.endswith("." + written)), None)
        return None

    def _local(self, dotted, level, fallback=None):
        """Queue the file of a local module imported here, if it is one."""
        if level:
            base = os.path.dirname(self.path)
            for _ in range(level - 1):
                base = os.path.dirname(base)
            roots = [base]
        else:
            roots = self.roots
        candidates = [dotted] + ([fallback] if fallback else [])
        for name in candidates:
            parts = [p for p in name.split(".") if p]
            if not parts:
                continue
            for root in roots:
                base = os.path.join(root, *parts)
                for candidate in (base + ".py", os.path.join(base, "__init__.py")):
                    if os.path.isfile(candidate):
                        self.local_imports.append(candidate)
                        return


RANDOM_CALLS = ("os.urandom", "secrets.token_bytes", "secrets.token_hex",
                "secrets.token_urlsafe", "uuid.uuid4", "uuid.uuid1")
ENV_READS = ("os.environ.get", "os.getenv", "os.environ.setdefault")


class _SecretScanner(_ImportTimeScanner):
    """Import-time assignments of a Flask session key from a per-process random value:
    ``x.secret_key = …``, ``x.config["SECRET_KEY"] = …``, ``x.config.update(SECRET_KEY=…)``
    (or a dict), ``SECRET_KEY = …`` (a config module), also through a module-level name
    that holds such a value. ``secrets`` holds (line, what, only-as-env-fallback)."""

    def __init__(self, path, roots):
        super().__init__(path, roots)
        self.secrets = []
        self.random_names = {}  # module-level name -> the call that drew it

    def scan(self, statements):
        for node in statements:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                self._assignment(node, targets, node.value)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                self._config_update(node.value)
            super().scan([node])

    def _assignment(self, node, targets, value):
        drawn = self._random(value)
        for target in targets:
            if isinstance(target, ast.Name) and drawn and target.id != "SECRET_KEY":
                self.random_names[target.id] = drawn
            elif drawn and _is_key_slot(target):
                self.secrets.append((node.lineno, *drawn))

    def _config_update(self, call):
        if not (isinstance(call.func, ast.Attribute)
                and call.func.attr in ("update", "from_mapping")):
            return
        values = [k.value for k in call.keywords if k.arg == "SECRET_KEY"]
        for arg in call.args:
            if isinstance(arg, ast.Dict):
                values += [v for k, v in zip(arg.keys, arg.values)
                           if isinstance(k, ast.Constant) and k.value == "SECRET_KEY"]
        for value in values:
            drawn = self._random(value)
            if drawn:
                self.secrets.append((call.lineno, *drawn))

    def _random(self, expr, fallback=False):
        """(what, fallback) when ``expr`` draws a per-process random value, else None."""
        if isinstance(expr, ast.Name) and expr.id in self.random_names:
            what, was_fallback = self.random_names[expr.id]
            return f"{what} (via {expr.id})", was_fallback or fallback
        if isinstance(expr, (ast.Lambda, ast.FunctionDef)):
            return None
        if isinstance(expr, ast.Call):
            written, resolved = self._dotted(expr.func)
            name = resolved or written
            if name in RANDOM_CALLS or name in ("uuid4", "urandom"):  # (a star import)
                return f"drawn by {name}() at import", fallback
            if name in ENV_READS:
                for arg in expr.args[1:]:
                    found = self._random(arg, True)
                    if found:
                        return found
                return None
        for child in ast.iter_child_nodes(expr):
            found = self._random(child, fallback)
            if found:
                return found
        return None


def _is_key_slot(target):
    if isinstance(target, ast.Attribute):
        return target.attr == "secret_key"
    if isinstance(target, ast.Subscript):
        key = target.slice
        return isinstance(key, ast.Constant) and key.value == "SECRET_KEY"
    return isinstance(target, ast.Name) and target.id == "SECRET_KEY"


def _shown_cmd(command, width=50):
    return command if len(command) <= width else command[:width - 1] + "…"


# ─── --measure ────────────────────────────────────────────────────────────────────────
def _http_ready(port, path="/", timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "dashscale-check"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _tree(pid):
    import psutil
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def _memory(backend, proc):
    import psutil
    exact = backend.exact(proc.pid)
    if exact and exact[0] is not None:
        return exact[0]
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def _kill_tree(proc, timeout=10.0):
    """TERM the replica's process group (graceful, as supervisord's stopasgroup), then
    KILL the group and anything of its tree that escaped it."""
    import psutil
    members = _tree(proc.pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            for p in members:
                try:
                    p.kill()
                except psutil.Error:
                    pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        gone, alive = psutil.wait_procs(members, timeout=wait)
        if not alive:
            return


def measure_replica(project, settings, counts, ptype_name="web", ready_timeout=None,
            steady_timeout=15.0):
    """Start one replica of ``ptype_name``, measure it, stop it. Returns the measure dict;
    raises RuntimeError(message) when it does not come up."""
    from .launch import process_env
    from .memory import make_backend
    from .testing import free_port

    ptype = project.procfile.types[ptype_name]
    ready_timeout = ready_timeout or settings.ready_timeout
    port = free_port()
    name = f"{ptype_name}.1"
    with tempfile.TemporaryDirectory(prefix="dashscale-check-") as tmp:
        # gunicorn's control socket in XDG_RUNTIME_DIR: private
        env = process_env(project, settings.app_name, name, tmp, port)
        log_path = os.path.join(tmp, "replica.log")
        started = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["/bin/sh", "-c", launcher_script(name, ptype.command, {})],
                                    cwd=project.directory, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            return _measure_running(proc, port, log_path, project, counts, ptype_name,
                                    ready_timeout, steady_timeout, started, make_backend())
        finally:
            _kill_tree(proc)


def _log_tail(path, lines=3):
    try:
        with open(path, "rb") as f:
            text = f.read()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)


def _exit_line(project, ptype_name, code, log_path):
    """``app failed to load (exit 4): <the cause>`` from the replica's output."""
    from .failure import LOG_BYTES, explain, this_run
    from .output import last_lines

    sig = signal.Signals(-code).name if code < 0 else None
    lines = this_run(last_lines(log_path, 5000, LOG_BYTES))
    return explain(lines, None if sig else code, sig, project.procfile.types[ptype_name].command)


def _measure_running(proc, port, log_path, project, counts, ptype_name, ready_timeout,
                     steady_timeout, started, backend):
    deadline = started + ready_timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(f"{ptype_name}.1 did not answer HTTP: "
                               + _exit_line(project, ptype_name, code, log_path))
        try:
            _http_ready(port)
            break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ptype_name}.1 did not answer HTTP on port {port} within "
                               f"{ready_timeout:g}s: {_log_tail(log_path)}")
        time.sleep(0.1)
    ready_s = time.monotonic() - started
    # Warm up: every worker should have served something (Dash builds its layout and
    # dependency list lazily); sync workers take one connection each.
    for path in ["/", "/_dash-layout", "/_dash-dependencies"] * 4:
        try:
            _http_ready(port, path, timeout=30)
        except OSError:
            pass
    # Wait until the tree's memory is steady: ±2 % (at least 1 MiB) over 1.5 s.
    samples, steady = [], False
    end = time.monotonic() + steady_timeout
    while True:
        tree = _tree(proc.pid)
        per = {p.pid: _memory(backend, p) for p in tree}
        samples.append((frozenset(per), sum(per.values()), tree, per))
        window = samples[-6:]
        if len(window) == 6 and len({w[0] for w in window}) == 1:
            totals = [w[1] for w in window]
            if max(totals) - min(totals) <= max(0.02 * max(totals), 2**20):
                steady = True
                break
        if time.monotonic() > end or proc.poll() is not None:
            break
        time.sleep(0.25)
    if proc.poll() is not None:
        raise RuntimeError(f"{ptype_name}.1 exited (code {proc.returncode}) while being "
                           f"measured: {_log_tail(log_path)}")
    _, total, tree, per = samples[-1]
    # The master: the top process, or a shell's only child (compound commands).
    master = tree[0]
    children = {p.pid: [c for c in tree if _ppid(c) == p.pid] for p in tree}
    while len(children[master.pid]) == 1 and _name(master) in ("sh", "bash", "dash"):
        master = children[master.pid][0]
    workers = children.get(master.pid, [])
    if workers:
        master_bytes = total - sum(per[w.pid] for w in workers)
        per_worker = sum(per[w.pid] for w in workers) // len(workers)
        n_workers = len(workers)
    else:  # a single process (not a pre-fork server)
        master_bytes, per_worker, n_workers = 0, total, 1
    limit = project.memory_limits[ptype_name]
    replicas = counts.get(ptype_name, 1)
    replica_bytes = master_bytes + n_workers * per_worker
    fits = max(0, int((WARN_FRACTION * limit - master_bytes) // per_worker)) \
        if per_worker else None
    return {"type": ptype_name, "port": port, "metric": "pss" if backend.exact_source else
            "rss", "steady": steady, "ready_s": round(ready_s, 2),
            "workers": n_workers, "master_bytes": master_bytes,
            "per_worker_bytes": per_worker, "replica_bytes": replica_bytes,
            "limit_bytes": limit, "fraction": round(replica_bytes / limit, 4),
            "replicas": replicas, "formation_bytes": replicas * replica_bytes,
            "max_bytes": replicas * limit, "workers_within_80_percent": fits}


def _name(proc):
    try:
        return proc.name()
    except Exception:
        return None


def _ppid(proc):
    try:
        return proc.ppid()
    except Exception:
        return None


def add_measure_findings(report, project, m):
    import psutil
    pf = report.procfile_path
    line = project.procfile.types[m["type"]].line
    t = m["type"]
    if m["fraction"] > WARN_FRACTION:
        report.add("warning", "memory-projection", pf, line,
                   f"{t}: {m['workers']} worker(s) × {format_size(m['per_worker_bytes'])} + "
                   f"master {format_size(m['master_bytes'])} = "
                   f"{format_size(m['replica_bytes'])} per replica at idle, "
                   f"{m['fraction']:.0%} of its {format_size(m['limit_bytes'])} limit (over "
                   f"{WARN_FRACTION:.0%}): it will be OOM-killed under load; raise "
                   f"--memory-limit or run at most {m['workers_within_80_percent']} workers")
    host = psutil.virtual_memory().total
    if m["formation_bytes"] > WARN_FRACTION * host:
        report.add("warning", "memory-projection", pf, line,
                   f"{t}: {m['replicas']} replicas × {format_size(m['replica_bytes'])} = "
                   f"{format_size(m['formation_bytes'])}, over {WARN_FRACTION:.0%} of this "
                   f"machine's {format_size(host)} RAM")


# ─── CLI ──────────────────────────────────────────────────────────────────────────────
def print_text(report):
    procs = report.processes
    if procs:
        click.echo(f"valid Procfile detected ({', '.join(procs)})")
        width = max(len(n) for n in procs)
        for name, command in procs.items():
            click.echo(f"  {name.ljust(width)}  {command}")
    if report.python is not None:
        click.echo(f"python: {report.python.describe()}")
    for step in report.release:
        click.echo(f"release step {step['name']} ({step['source']}, runs {step['phase']} "
                   f"the new replicas start): {step['command']}")
    m = report.measure
    if m and "skipped" in m:
        click.echo(f"--measure skipped: {m['skipped']}")
    if m and "replica_bytes" in m:
        click.echo(f"measured {m['type']}.1 ({m['metric']}{'' if m['steady'] else ', not steady'}"
                   f"): master {format_size(m['master_bytes'])} + {m['workers']} × "
                   f"{format_size(m['per_worker_bytes'])} per worker = "
                   f"{format_size(m['replica_bytes'])} per replica "
                   f"({m['fraction']:.0%} of {format_size(m['limit_bytes'])}); "
                   f"{m['replicas']} replica(s): {format_size(m['formation_bytes'])} of max "
                   f"{format_size(m['max_bytes'])}")
    for f in report.findings:
        click.echo(str(f))
    e, w = len(report.errors), len(report.warnings)
    click.echo(f"{e} error{'s' if e != 1 else ''}, {w} warning{'s' if w != 1 else ''}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable (stable keys).")
@click.option("--measure", is_flag=True,
              help="Start one web replica, measure its memory per worker and project the "
                   "formation against the limit.")
@click.option("-e", "--env", "env_files", multiple=True, help="Env file(s) (default: .env).")
@click.option("-m", "-c", "--formation", "formation", multiple=True,
              help="Formation for --measure's projection (default: the persisted one).")
@click.option("--memory-limit", default=None, help="Limit for --measure's projection.")
@click.option("--replicas", "replicas", is_flag=True,
              help="Live: compare what the running web replicas serve (layout, callbacks, "
                   "session cookies); exit 1 when they differ.")
@click.option("--page", "pages", multiple=True, metavar="PATH",
              help="With --replicas: a page to render and compare on each replica "
                   "(repeatable; `/` and the pages the app links to are always compared).")
@procfile_option
@python_option
@handle_errors
def check(procfile, as_json, measure, env_files, formation, memory_limit, replicas, python,
          pages):
    """Check the Procfile and the app: errors and warnings with file and line.
    Exit 0 without errors, 2 with errors, 1 when --measure failed to run the app.
    With --replicas: 0 when the running replicas agree, 1 when they do not."""
    from .config import load_settings
    from .project import Project

    if replicas:
        if measure or formation or memory_limit:
            raise UsageError("--replicas compares the running replicas: it takes no "
                             "--measure, -m or --memory-limit")
        from .replica_check import run
        sys.exit(run(os.path.abspath(procfile), as_json, click.echo, pages))
    if pages:
        raise UsageError("--page goes with --replicas (the pages compared between the "
                         f"running replicas), got --page {pages[0]} without it")

    shown = procfile
    report = Report(shown)
    try:
        path = os.path.abspath(procfile)
        settings = load_settings(os.path.dirname(path), {"memory_limit": memory_limit,
                                                         **python_setting(python)})
        project = Project(path, env_files, memory_limit, settings)
        counts = project.formation(formation, settings) if measure else {}
    except UsageError as exc:
        if not as_json:
            raise
        report.add("error", "bad-input", exc.file or shown, exc.line, exc.message)
        click.echo(json.dumps(report.as_json(), indent=2))
        sys.exit(2)
    # Messages name files as the user gave the Procfile; the Procfile's own warnings
    # carry its absolute path, so the doctor re-labels them.
    report = Doctor(project, shown, python=project.python_env.python).run()
    exit_code = 2 if report.errors else 0
    if measure:
        if report.errors:
            report.measure = {"skipped": "errors found"}
        elif "web" not in project.procfile.types:
            report.measure = {"skipped": "no web process type"}
        else:
            try:
                report.measure = measure_replica(project, settings, counts)
                add_measure_findings(report, project, report.measure)
            except RuntimeError as exc:
                report.measure = {"error": str(exc)}
                report.add("error", "measure-failed", shown,
                           project.procfile.types["web"].line, f"--measure: {exc}")
                exit_code = 1
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        print_text(report)
    sys.exit(exit_code)
