"""supervisord as a child process, driven over XML-RPC on a private unix socket.

One program group per replica (a file each under .dashscale/programs/), so a replica
can be added or removed without supervisord touching the others. Each replica runs a
generated launcher script that exports its environment and execs the Procfile command,
so .env values never appear in supervisord's config or on a command line.

The XML-RPC client (xmlrpc.client and supervisor's own transport, ~20 ms of imports) is
imported by the methods that talk to supervisord: `start` spawns it before it needs them,
so supervisord's own start-up overlaps the rest of ours.
"""
import ctypes
import getpass
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from .commands import is_compound, leading_assignment, replica_command, runs_gunicorn
from .config import packaged_text
from .failure import GUNICORN_EXIT
from .output import LogTail, last_lines
from .errors import RuntimeFailure

# supervisor fault codes we expect in normal operation.
BAD_NAME = 10
NOT_RUNNING = 70
ALREADY_STARTED = 60
ALREADY_ADDED = 90
STILL_RUNNING = 91

PR_SET_PDEATHSIG = 1
_ALIVE = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")


def _die_with_parent():
    """In the child: get SIGTERM when the runner dies, so even `kill -9` of the
    runner makes supervisord stop the replicas instead of orphaning them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stale-run cleanup still catches orphans


def launcher_script(name, command, env):
    lines = [f"# dashscale launcher for {name}; generated, do not edit"]
    for key, value in env.items():
        lines.append(f"export {key}={shlex.quote(str(value))}")
    command = replica_command(command)
    if is_compound(command):
        lines.append(command)
    elif leading_assignment(command):
        lines.append(f"exec env {command}")  # `exec VAR=1 cmd` is not valid sh
    else:
        lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _current_umask():
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _tighten(directory):
    """chmod go-rwx every file in ``directory`` (left by an older run)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            mode = os.lstat(path).st_mode
            if mode & 0o077 and not os.path.islink(path):
                os.chmod(path, mode & 0o700)
        except OSError:
            pass


def _disk_full(path, margin=64 * 1024):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def _escape(value):
    return str(value).replace("%", "%%")  # supervisor expands %(name)s in values


class Supervisord:
    """A supervisord child process plus a thread-safe XML-RPC client for it."""

    def __init__(self, run_dir, program_settings):
        self.run_dir = run_dir
        self.socket = os.path.join(run_dir, "supervisor.sock")
        self.conf = os.path.join(run_dir, "supervisord.conf")
        self.programs_dir = os.path.join(run_dir, "programs")
        self.launch_dir = os.path.join(run_dir, "launch")
        self.settings = program_settings  # startsecs, startretries, stopwaitsecs
        self.process = None
        self._local = threading.local()
        # supervisord runs with umask 077 (its logs and pid file are private: replicas
        # print what they like); each replica gets the user's own umask back.
        self.user_umask = _current_umask()
        # This run's exits (the log outlives runs): see exits().
        self._exit_log = LogTail.from_end(os.path.join(run_dir, "logs", "supervisord.log"))
        self._exits = {}

    # -- files ---------------------------------------------------------------
    def write_config(self):
        for d in (self.programs_dir, self.launch_dir, os.path.join(self.run_dir, "logs")):
            os.makedirs(d, mode=0o700, exist_ok=True)
        _tighten(os.path.join(self.run_dir, "logs"))  # logs of runs before umask 077
        text = packaged_text("supervisord.conf.tmpl").format(
            socket=_escape(self.socket), run_dir=_escape(self.run_dir),
            user=_escape(getpass.getuser()))
        _write_private(self.conf, text)

    def log_path(self, name):
        return os.path.join(self.run_dir, "logs", f"{name}.log")

    def exits(self):
        """{name: (code, signal)}: the last exit of each program, from supervisord's log
        (its RPC says exitstatus 0 after a too-quick exit). Read it after a getProcessInfo
        poll: every exit that poll shows is in the log by then."""
        from .lifecycle import supervisord_exit
        for line in self._exit_log.read_lines():
            parsed = supervisord_exit(line)
            if parsed:
                self._exits[parsed[0]] = parsed[1:]
        return self._exits

    def write_program(self, name, type_, command, env, directory, autostart=False, entry=None):
        """``entry``: a script supervisord runs instead of the launcher, which execs the
        launcher in the end (podfs: the replica's own disk)."""
        launcher = os.path.join(self.launch_dir, f"{name}.sh")
        _write_private(launcher, launcher_script(name, command, env))
        text = packaged_text("program.conf.tmpl").format(
            name=name, type=type_, launcher=shlex.quote(_escape(entry or launcher)),
            directory=_escape(directory), run_dir=_escape(self.run_dir),
            umask=f"{self.user_umask:03o}", autostart=str(autostart).lower(),
            exitcodes=",".join(map(str, [0, *GUNICORN_EXIT] if runs_gunicorn(command) else [0])),
            **{k: _escape(v) for k, v in self.settings.items()})
        _write_private(os.path.join(self.programs_dir, f"{name}.conf"), text)

    def write_service(self, name, command, stopsignal, stopwaitsecs, directory, env=None):
        """A managed service (services.py): priority 1, so supervisord stops it after
        every replica; always restarted when it dies; stop signal to the server only."""
        launcher = os.path.join(self.launch_dir, f"{name}.sh")
        _write_private(launcher, launcher_script(name, command, env or {}))
        text = packaged_text("service.conf.tmpl").format(
            name=name, launcher=shlex.quote(_escape(launcher)), directory=_escape(directory),
            run_dir=_escape(self.run_dir), stopsignal=stopsignal, stopwaitsecs=int(stopwaitsecs))
        _write_private(os.path.join(self.programs_dir, f"{name}.conf"), text)

    def remove_program_file(self, name):
        for path in (os.path.join(self.programs_dir, f"{name}.conf"),
                     os.path.join(self.launch_dir, f"{name}.sh")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- process -------------------------------------------------------------
    def start(self):
        out = os.open(os.path.join(self.run_dir, "logs", "supervisord.out"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", self.conf],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.run_dir, preexec_fn=_die_with_parent, umask=0o077,
                # Its own process group: a Ctrl-C in the terminal reaches the runner only,
                # which TERMs every replica at once; supervisord's own shutdown on SIGINT
                # would stop them one group (replica) at a time.
                process_group=0)
        finally:
            os.close(out)

    def poke_when_up(self, timeout=15.0):
        """Connect once, as soon as supervisord listens. Its loop runs autostarted
        programs only when it first wakes, and without an event that is its 1 s tick. A
        thread, so the runner's own imports meanwhile do not delay the replicas."""
        def poke():
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.socket(socket.AF_UNIX) as sock:
                        sock.connect(self.socket)
                    return
                except OSError:  # not there yet, or a dead run's socket
                    time.sleep(0.002)
        threading.Thread(target=poke, name="supervisord-poke", daemon=True).start()

    def wait_up(self, timeout=15.0):
        """Poll until the RPC answers. A ServerProxy whose first call failed keeps
        failing, so each try builds a fresh one."""
        import xmlrpc.client

        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                out = os.path.join(self.run_dir, "logs", "supervisord.out")
                why = [line for line in last_lines(out, 5) if line.strip()][-1:]
                if _disk_full(self.run_dir):
                    why = ["no space left on the disk holding the run directory"]
                raise RuntimeFailure(
                    f"supervisord exited with code {self.process.returncode}"
                    + (f" ({why[0].strip()[:200]})" if why else "") + f"; see {out}")
            self._local.proxy = None
            try:
                if self.rpc().supervisor.getState()["statename"] == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeFailure("supervisord did not answer on its socket in time")
            time.sleep(0.005)  # with autostart, the first connect starts the replicas

    def rpc(self):
        """A ServerProxy for this thread (xmlrpc proxies are not thread-safe)."""
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            transport = SupervisorTransport(None, None, "unix://" + self.socket)
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            self._local.proxy = proxy
        return proxy

    def call(self, method, *args):
        """Call supervisor.<method>; a broken connection gets one fresh retry."""
        import xmlrpc.client

        for attempt in (0, 1):
            try:
                return getattr(self.rpc().supervisor, method)(*args)
            except (OSError, xmlrpc.client.ProtocolError):
                self._local.proxy = None
                if attempt:
                    raise

    # -- replicas ------------------------------------------------------------
    def add(self, names):
        """Make supervisord read the new program files (one config re-read for all of
        them) and create a group for each."""
        import xmlrpc.client

        self.call("reloadConfig")
        for name in names:
            try:
                self.call("addProcessGroup", name)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != ALREADY_ADDED:
                    raise

    def start_replica(self, name):
        import xmlrpc.client

        try:
            self.call("startProcess", name, False)  # no wait: readiness is ours
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != ALREADY_STARTED:
                raise

    def start_many(self, names):
        """Start replicas already in the config, in one round trip (system.multicall)."""
        calls = [{"methodName": "supervisor.startProcess", "params": [n, False]} for n in names]
        results = self.rpc().system.multicall(calls)
        for name, result in zip(names, results):
            if isinstance(result, dict) and result.get("faultCode") not in (None, ALREADY_STARTED):
                raise RuntimeFailure(f"supervisord could not start {name}: "
                                     f"{result.get('faultString')}")

    def stop_replica(self, name, wait=True):
        import xmlrpc.client

        try:
            self.call("stopProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in (NOT_RUNNING, BAD_NAME):
                raise
        if wait:
            self.wait_stopped([name], self.settings["stopwaitsecs"] + 5)

    def wait_stopped(self, names, timeout):
        """Until none of ``names`` runs (supervisord KILLs after stopwaitsecs). We poll
        rather than let stopProcess wait: polling wakes supervisord's loop, which would
        otherwise notice the exit (and answer) only at its next 1 s tick."""
        names = set(names)
        deadline = time.monotonic() + timeout
        while any(i["name"] in names and i["statename"] in _ALIVE
                  for i in self.call("getAllProcessInfo")):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def remove(self, name):
        import xmlrpc.client

        self.stop_replica(name)
        try:
            self.call("removeProcessGroup", name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != BAD_NAME:
                raise
        self.remove_program_file(name)

    def all_info(self):
        return {info["name"]: info for info in self.call("getAllProcessInfo")}

    def shutdown(self, timeout, first=()):
        """Stop every replica (TERM to its group, KILL after stopwaitsecs), then exit.

        supervisord's own shutdown stops one group at a time and waits for each, so
        with a group per replica 10 replicas would take 10 stops in a row: the groups
        in ``first`` (the replicas; not the services, which stop last) get their TERM
        all at once before it."""
        import xmlrpc.client

        if self.process is None or self.process.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        try:
            if first:
                calls = [{"methodName": "supervisor.stopProcess", "params": [n, False]}
                         for n in first]
                self.rpc().system.multicall(calls)  # NOT_RUNNING faults are fine here
                self.wait_stopped(first, timeout)
            self.call("shutdown")
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
