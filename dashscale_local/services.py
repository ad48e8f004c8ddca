"""Managed services: a private Redis and PostgreSQL per app, as Dash Enterprise gives
apps managed Redis and Postgres (``REDIS_URL``, ``DATABASE_URL``).

``dashscale start --service redis [--service postgres]`` (or ``services = redis`` in
``dashscale.ini``) runs each server under the app's own supervisord:

- bound to 127.0.0.1 only, on a free port (the previous run's port when still free),
  never in the replicas' port blocks;
- with authentication: Redis ``requirepass``, PostgreSQL SCRAM passwords (user and
  database ``app``), random passwords kept in ``.dashscale/services/<name>/password``
  (0600), so other local users cannot use the server even though it listens on TCP;
- with its data under ``.dashscale/services/<name>/data`` surviving restarts of
  ``dashscale start``: Redis with AOF (``appendfsync everysec``) plus RDB snapshots,
  PostgreSQL initialised once with ``initdb``;
- started before every replica, which start only once the services answer (Redis
  ``AUTH`` + ``PING``; PostgreSQL a startup packet, as ``pg_isready``);
- restarted by supervisord if it dies (``autorestart``); clients reconnect;
- stopped last and cleanly: supervisord stops programs in priority order, services
  have the lowest; Redis gets SIGTERM with ``shutdown-on-sigterm save`` (the same as
  ``SHUTDOWN SAVE``), PostgreSQL SIGINT (fast shutdown: a checkpoint, no data loss).

PostgreSQL refuses to run as root. When dashscale runs as root (containers, CI), the
server runs as the ``postgres`` system user (``setpriv`` in its launcher), which cannot
enter the 0700 root-owned run directory. Its data directory then lives in
``<postgres home>/dashscale/<project>-<hash>/`` (normally /var/lib/postgresql/…, mode
0700, owned by ``postgres``, inside a 0700 ``postgres``-owned parent), and
``.dashscale/services/postgres/data`` is a symlink to it. Deleting ``.dashscale/`` does
not delete it; the directory holds a ``dashscale-project`` file naming the project.
As any other user, the server runs as that user with its data in ``.dashscale/``.
"""
import glob
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time

import psutil

from . import rundir
from .errors import RuntimeFailure, UsageError
from .output import last_lines

HOST = "127.0.0.1"
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"
STOP_WAIT = 30  # supervisord stopwaitsecs for a service (a checkpoint can take a while)
STATS_TTL = 2.0


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _port_free(port):
    return not rundir.port_in_use(port, HOST)


def choose_port(previous, avoid):
    """The previous run's port if it is still free (stable URLs), else a free one."""
    if previous and previous not in avoid and _port_free(previous):
        return previous
    return rundir.free_listen_port(avoid, HOST)


def dir_bytes(path):
    """Disk usage of a directory tree, as du counts it (symlinks followed at the top)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def tree_memory(pid):
    """Σ PSS over a process and its descendants (Σ RSS when PSS is unavailable)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", 0) or info.rss
        except psutil.Error:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total


def _stop_pid(pid, sig, names, timeout=30.0):
    """Stop a leftover server of ours (from a run whose supervisord was killed)."""
    try:
        proc = psutil.Process(pid)
        if not any(n in proc.name() for n in names):
            return False
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        return False
    return True


def stop_process(proc, timeout=30.0):
    """A recorded service process left by a dead run: its clean stop (PostgreSQL: SIGINT,
    fast shutdown; Redis: SIGTERM, which saves), then SIGKILL."""
    try:
        sig = signal.SIGINT if "postgres" in proc.name() else signal.SIGTERM
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        try:
            proc.kill()
        except psutil.Error:
            pass
    except psutil.Error:
        pass


class Service:
    """One managed server. Subclasses say how to find, initialise, run and ping it."""

    name = ""
    env_var = ""
    package = ""            # the Debian package that provides it
    stopsignal = "TERM"
    process_names = ()

    def __init__(self, run_dir, project_dir):
        self.run_dir = run_dir
        self.project_dir = project_dir
        self.dir = os.path.join(run_dir, "services", self.name)
        self.data_dir = os.path.join(self.dir, "data")
        self.port = None
        self.password = None
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.version = None
        # as supervisord reports it
        self.state = "STOPPED"
        self.pid = None
        self.restarts = 0
        self.ready = False
        self.ready_after = None
        self.last_exit = None
        self._stats = (0.0, 0, 0)  # (time, memory, data bytes)

    # -- preparation (before supervisord starts) --------------------------------
    def locate(self):
        """Find the binaries or raise UsageError naming the package to install."""
        raise NotImplementedError

    def prepare(self, avoid_ports):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(os.path.join(self.run_dir, "services"), 0o700)
        os.chmod(self.dir, 0o700)
        self.password = self._password()
        self.stop_stale()
        previous = _read(os.path.join(self.dir, "port"))
        self.port = choose_port(int(previous) if previous and previous.isdigit() else None,
                                avoid_ports)
        _write_private(os.path.join(self.dir, "port"), f"{self.port}\n")
        return self.initialise()

    def _password(self):
        path = os.path.join(self.dir, "password")
        value = _read(path)
        if not value:
            value = secrets.token_urlsafe(24)  # URL-safe: goes into the URL unquoted
            _write_private(path, value + "\n")
        os.chmod(path, 0o600)
        return value

    def initialise(self):
        """Write config / create data; a message when something was created once."""
        return None

    def stop_stale(self):
        pass

    def command(self):
        raise NotImplementedError

    @property
    def workdir(self):
        return self.dir

    def url(self, secret=True):
        raise NotImplementedError

    def probe(self, timeout=1.0):
        raise NotImplementedError

    # -- status ------------------------------------------------------------------
    def stats(self):
        """(memory, data bytes): memory now (a few processes); the data size, a walk of
        the directory, at most every STATS_TTL seconds."""
        memory = tree_memory(self.pid) if self.pid and self.state in ("STARTING", "RUNNING") \
            else 0
        now = time.monotonic()
        when, _memory, data = self._stats
        if now - when > STATS_TTL or not data:
            data = dir_bytes(os.path.realpath(self.data_dir))
            self._stats = (now, memory, data)
        return memory, data

    def as_json(self):
        memory, data = self.stats()
        return {"name": self.name, "state": self.state, "pid": self.pid, "host": HOST,
                "port": self.port, "env": self.env_var, "url": self.url(secret=False),
                "ready": self.ready, "memory_bytes": memory, "data_dir": self.data_dir,
                "data_path": os.path.realpath(self.data_dir), "data_bytes": data,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "user": self.user, "version": self.version}


class Redis(Service):
    name = "redis"
    env_var = "REDIS_URL"
    package = "redis-server"
    stopsignal = "TERM"  # with shutdown-on-sigterm save: the same as SHUTDOWN SAVE
    process_names = ("redis-server", "redis")

    def locate(self):
        self.binary = shutil.which("redis-server") or \
            next((p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
                  if os.access(p, os.X_OK)), None)
        if not self.binary:
            raise UsageError("service redis: redis-server is not installed: install the "
                             "Debian package redis-server (apt-get install redis-server)")
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            m = re.search(r"v=(\d+)\.(\d+)\.(\S+)", out)
            self.version = ".".join(m.groups()) if m else None
        except (OSError, subprocess.SubprocessError):
            self.version = None

    @property
    def conf_path(self):
        return os.path.join(self.dir, "redis.conf")

    @property
    def pidfile(self):
        return os.path.join(self.dir, "redis.pid")

    def stop_stale(self):
        pid = _read(self.pidfile)
        if pid and pid.isdigit():
            _stop_pid(int(pid), signal.SIGTERM, self.process_names)

    def initialise(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        major = int(self.version.split(".")[0]) if self.version else 7
        lines = [
            "# Rendered by dashscale at every start: a Redis private to this app.",
            f"bind {HOST}",
            "protected-mode yes",
            f"port {self.port}",
            f"requirepass {self.password}",
            "daemonize no",
            "supervised no",
            f'pidfile "{self.pidfile}"',
            'logfile ""',
            "always-show-logo no",
            f'dir "{self.data_dir}"',
            "appendonly yes",
            "appendfsync everysec",
            "save 3600 1 300 100 60 10000",
        ]
        if major >= 7:
            lines.append("shutdown-on-sigterm save")
        _write_private(self.conf_path, "\n".join(lines) + "\n")

    def command(self):
        return f"{self.binary} {self.conf_path}"

    def url(self, secret=True):
        password = self.password if secret else "***"
        return f"redis://:{password}@{HOST}:{self.port}/0"

    def probe(self, timeout=1.0):
        """AUTH + PING answer +PONG (a Redis still loading its AOF answers -LOADING)."""
        def bulk(*args):
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a.encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            return out
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                s.sendall(bulk("AUTH", self.password) + bulk("PING"))
                data = b""
                while data.count(b"\r\n") < 2:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return False
        return data.split(b"\r\n")[1:2] == [b"+PONG"]


class Postgres(Service):
    name = "postgres"
    env_var = "DATABASE_URL"
    package = "postgresql"
    stopsignal = "INT"  # fast shutdown
    process_names = ("postgres", "postmaster")
    db_user = "app"
    database = "app"

    def __init__(self, run_dir, project_dir):
        super().__init__(run_dir, project_dir)
        self.as_root = os.geteuid() == 0
        self.run_as = None

    def locate(self):
        wanted = _read(os.path.join(self.data_dir, "PG_VERSION"))
        dirs = sorted(glob.glob(POSTGRES_GLOB), key=_version_key, reverse=True)
        dirs = [d for d in dirs if os.access(os.path.join(d, "postgres"), os.X_OK)
                and os.access(os.path.join(d, "initdb"), os.X_OK)]
        on_path = shutil.which("postgres")
        if on_path and shutil.which("initdb"):
            dirs.append(os.path.dirname(on_path))
        if not dirs:
            raise UsageError("service postgres: the PostgreSQL server is not installed "
                             f"(no postgres and initdb in {POSTGRES_GLOB} or on PATH): install "
                             "the Debian package postgresql (apt-get install postgresql)")
        if wanted:
            match = [d for d in dirs if _version_of(d) == wanted]
            if not match:
                raise UsageError(f"service postgres: {self.data_dir} was initialised by "
                                 f"PostgreSQL {wanted}, which is not installed: install the "
                                 f"Debian package postgresql-{wanted} (or pg_upgrade the data)")
            dirs = match
        self.bin_dir = dirs[0]
        self.version = _version_of(self.bin_dir)
        if self.as_root:
            try:
                self.run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise UsageError("service postgres: PostgreSQL does not run as root and there "
                                 "is no 'postgres' system user: install the Debian package "
                                 "postgresql (it creates the user)")
            self.user = "postgres"
            self.setpriv = shutil.which("setpriv") or shutil.which("runuser")
            if not self.setpriv:
                raise UsageError("service postgres: need setpriv (Debian package util-linux) "
                                 "to run PostgreSQL as the postgres user")

    def _as_postgres(self, argv):
        if not self.as_root:
            return list(argv)
        if os.path.basename(self.setpriv) == "setpriv":
            return [self.setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups",
                    "--", *argv]
        return [self.setpriv, "-u", "postgres", "--", *argv]

    def _root_data_target(self):
        """A 0700 postgres-owned directory the postgres user can reach (see module doc)."""
        base = os.path.join(self.run_as.pw_dir, "dashscale")
        project = os.path.dirname(self.run_dir)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(project)).strip("-") or "app"
        digest = hashlib.sha256(os.path.realpath(self.run_dir).encode()).hexdigest()[:12]
        return base, os.path.join(base, f"{slug[:40]}-{digest}")

    def _chown(self, path):
        os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def stop_stale(self):
        pid = (_read(os.path.join(self.data_dir, "postmaster.pid")) or "").split("\n")[0]
        if pid.isdigit():
            _stop_pid(int(pid), signal.SIGINT, self.process_names)

    def initialise(self):
        if self.as_root:
            base, target = self._root_data_target()
            if os.path.isdir(self.data_dir) and not os.path.islink(self.data_dir):
                raise UsageError("service postgres: PostgreSQL cannot run as root and the "
                                 "postgres user cannot reach this data directory inside the "
                                 "0700 run directory; move it away or delete it",
                                 file=self.data_dir)
            for d in (base, target):
                os.makedirs(d, mode=0o700, exist_ok=True)
                self._chown(d)
                os.chmod(d, 0o700)
            if os.path.realpath(self.data_dir) != target:
                if os.path.islink(self.data_dir):
                    os.unlink(self.data_dir)
                os.symlink(target, self.data_dir)
            _write_private(os.path.join(base, os.path.basename(target) + ".dashscale-project"),
                           f"{os.path.dirname(self.run_dir)}\n")
        else:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        pgdata = os.path.realpath(self.data_dir)
        if os.path.exists(os.path.join(pgdata, "PG_VERSION")):
            return None
        t0 = time.monotonic()
        # initdb once: superuser `app` with our password, SCRAM for every connection.
        pwfile = os.path.join(os.path.dirname(pgdata), os.path.basename(pgdata) + ".pw") \
            if self.as_root else os.path.join(self.dir, "initdb.pw")
        _write_private(pwfile, self.password + "\n")
        if self.as_root:
            self._chown(pwfile)
        try:
            self._run([os.path.join(self.bin_dir, "initdb"), "-D", pgdata, "-U", self.db_user,
                       "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                       "--no-locale", "--no-instructions"], "initdb")
        finally:
            os.unlink(pwfile)
        # The app's database, created in single-user mode (no server, no socket needed).
        self._run([os.path.join(self.bin_dir, "postgres"), "--single", "-D", pgdata,
                   "postgres"], "create database", stdin=f"CREATE DATABASE {self.database}\n")
        return (f"postgres: initdb {pgdata} (user and database '{self.db_user}', "
                f"runs as {self.user}) in {time.monotonic() - t0:.2f}s")

    def _run(self, argv, what, stdin=None):
        cwd = os.path.dirname(os.path.realpath(self.data_dir))
        try:
            result = subprocess.run(self._as_postgres(argv), input=stdin, capture_output=True,
                                    text=True, cwd=cwd, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeFailure(f"service postgres: {what} failed: {exc}")
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise RuntimeFailure(f"service postgres: {what} failed (exit {result.returncode}): "
                                 + " / ".join(tail))

    @property
    def workdir(self):
        # As root the server runs as postgres, which cannot enter the run directory.
        return os.path.dirname(os.path.realpath(self.data_dir)) if self.as_root else self.dir

    def command(self):
        argv = self._as_postgres([
            os.path.join(self.bin_dir, "postgres"), "-D", os.path.realpath(self.data_dir),
            "-c", f"listen_addresses={HOST}", "-c", f"port={self.port}",
            "-c", "unix_socket_directories=", "-c", "logging_collector=off",
            "-c", "log_destination=stderr"])
        return " ".join(shlex.quote(a) for a in argv)

    def url(self, secret=True):
        password = self.password if secret else "***"
        return f"postgresql://{self.db_user}:{password}@{HOST}:{self.port}/{self.database}"

    def probe(self, timeout=1.0):
        """pg_isready's test: a startup packet; any answer but 'starting up' = accepting."""
        params = b"user\0%s\0database\0%s\0\0" % (self.db_user.encode(), self.database.encode())
        packet = struct.pack("!ii", 8 + len(params), 196608) + params
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                s.sendall(packet)
                data = s.recv(4096)
        except OSError:
            return False
        if data[:1] == b"R":
            return True  # authentication request: accepting connections
        if data[:1] == b"E":
            return b"C57P03\0" not in data  # cannot_connect_now: starting up / shutting down
        return False


def _version_of(bin_dir):
    # /usr/lib/postgresql/15/bin → "15"; else ask the binary
    parts = bin_dir.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-1] == "bin" and re.fullmatch(r"\d+(\.\d+)?", parts[-2]):
        return parts[-2]
    try:
        out = subprocess.run([os.path.join(bin_dir, "postgres"), "--version"],
                             capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        return m.group(1) if m else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version_key(bin_dir):
    v = _version_of(bin_dir) or "0"
    return tuple(int(x) for x in v.split("."))


KNOWN = {"redis": Redis, "postgres": Postgres}
ALIASES = {"postgresql": "postgres", "pg": "postgres", "redis-server": "redis"}


def parse_names(text, source="services"):
    """'redis, postgres' → ['redis', 'postgres'] (known names, aliases resolved)."""
    names = []
    for item in re.split(r"[\s,]+", text or ""):
        if not item:
            continue
        key = ALIASES.get(item.lower(), item.lower())
        if key not in KNOWN:
            raise UsageError(f"unknown service '{item}' (known: {', '.join(KNOWN)})", file=source)
        if key not in names:
            names.append(key)
    return names


class Services:
    """The managed services of one run (possibly none)."""

    def __init__(self, names, run_dir, project_dir):
        self.items = [KNOWN[n](run_dir, project_dir) for n in names]
        self.run_dir = run_dir

    def __bool__(self):
        return bool(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def names(self):
        return [s.name for s in self.items]

    @classmethod
    def from_settings(cls, settings, run_dir, project_dir):
        return cls(settings.services, run_dir, project_dir)  # names checked by config

    def locate(self):
        for s in self.items:
            s.locate()

    def prepare(self, avoid_ports=(), out=None):
        """Binaries, passwords, ports, data directories (initdb once). Before supervisord."""
        avoid = set(avoid_ports)
        for s in self.items:
            s.locate()
        for s in self.items:
            try:
                message = s.prepare(avoid)
            except OSError as exc:
                raise UsageError(f"service {s.name}: {exc.strerror or exc}",
                                 file=exc.filename or s.dir)
            avoid.add(s.port)
            if message and out is not None:
                out.system(message)

    def env(self):
        return {s.env_var: s.url() for s in self.items}

    def write_programs(self, sup):
        for s in self.items:
            sup.write_service(s.name, s.command(), s.stopsignal, STOP_WAIT, s.workdir)

    def start(self, sup, out, timeout=60.0):
        """Start every service and wait until each answers (blocking: run in a thread)."""
        if not self.items:
            return
        t0 = time.monotonic()
        sup.start_many(self.names)
        pending = list(self.items)
        deadline = t0 + timeout
        last_check = 0.0
        while pending:
            for s in list(pending):
                if s.probe(timeout=0.5):
                    s.ready = True
                    s.ready_after = time.monotonic() - t0
                    pending.remove(s)
                    out.system(f"{s.name} {s.version or ''} ready on {HOST}:{s.port} "
                               f"({s.ready_after:.2f}s) → ${s.env_var}".replace("  ", " "))
            if not pending:
                break
            now = time.monotonic()
            if now - last_check > 0.25:
                last_check = now
                infos = sup.all_info()
                for s in pending:
                    info = infos.get(s.name, {})
                    # An exit while starting (bad data, port taken) is not fixed by
                    # supervisord's retries: report it now, with the server's own words.
                    if info.get("statename") in ("BACKOFF", "FATAL", "EXITED", "STOPPED"):
                        self._report(s, sup, out, info.get("spawnerr") or
                                     f"exited: {info.get('description', '')}")
            if now > deadline:
                self._report(pending[0], sup, out, f"did not answer within {timeout:g}s")
            time.sleep(0.02)

    def _report(self, s, sup, out, why):
        out.system(f"service {s.name} failed to start ({why}); last lines of "
                   f"{sup.log_path(s.name)}:")
        for line in last_lines(sup.log_path(s.name), 12):
            out.system(f"    {line}")
        raise RuntimeFailure(f"service {s.name} failed to start ({why}); see "
                             f"{sup.log_path(s.name)}")

    def update(self, infos, out):
        """Follow supervisord's view (called by the runner's monitor loop)."""
        changed = False
        for s in self.items:
            info = infos.get(s.name)
            if info is None:
                continue
            state, pid = info["statename"], info["pid"] or None
            if state in ("EXITED", "BACKOFF", "FATAL") and s.state in ("STARTING", "RUNNING"):
                s.last_exit = {"code": info.get("exitstatus"),
                               "reason": info.get("description") or "",
                               "time": info.get("stop") or time.time()}
                s.ready = False
                out.system(f"{s.name} exited ({info.get('description') or state}); "
                           + ("supervisord gave up" if state == "FATAL"
                              else "supervisord restarts it"))
            if pid and pid != s.pid:
                if s.pid is not None:
                    s.restarts += 1
                    out.system(f"{s.name} restarted (pid {pid}); clients reconnect")
                s.pid = pid
                changed = True
            if state == "RUNNING" and s.state != "RUNNING":
                s.ready = True
            s.state = state
        return changed

    def status(self):
        return [s.as_json() for s in self.items]

    def identities(self):
        from .rundir import identity
        return {s.name: identity(s.pid) for s in self.items if s.pid}

    def stop_leftovers(self, timeout=20.0):
        """After supervisord is gone: a service it could not stop gets its clean stop
        signal, then SIGKILL. Returns the pids found."""
        found = []
        for s in self.items:
            if not s.pid:
                continue
            try:
                proc = psutil.Process(s.pid)
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            found.append(s.pid)
            _stop_pid(s.pid, getattr(signal, "SIG" + s.stopsignal), s.process_names, timeout)
        return found
