"""Run a dashscale formation from a test: start it, wait until it serves, stop it, and
prove that nothing it started is left behind.

Every process of a run carries a marker in its environment (DASHSCALE_RUN_ID), so
leftovers are found by that marker even when the runner and supervisord are gone.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import psutil

from . import control, rundir
from .ports import free_listen_port, listen_port_range, port_free
from .proctree import kill_all

MARKER = "DASHSCALE_RUN_ID"


def free_port():
    return free_listen_port()


def free_port_block(types=1, per_type=10, tries=200):
    """A base port whose replica ports (100 per type, +1 per replica) are all free."""
    start, stop = listen_port_range()
    for _ in range(tries):
        base = random.randrange(start, stop - 100 * types)
        ports = [base + 100 * t + i for t in range(types) for i in range(per_type)]
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port block found")


def processes_with_marker(run_id):
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(MARKER) == run_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


class GiveUp(AssertionError):
    """Raised by a ``wait_for`` predicate to stop waiting at once (e.g. the process
    being waited for has exited); every other exception is retried until the deadline."""


def wait_for(predicate, timeout, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; raise on the deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # keep polling; report the last failure
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


class Run:
    """One `dashscale start` in a directory, driven from a test."""

    def __init__(self, directory, procfile_text=None, formation=None, args=(), env=None):
        self.directory = str(directory)
        if procfile_text is not None:
            with open(os.path.join(self.directory, "Procfile"), "w") as f:
                f.write(procfile_text)
        self.procfile = os.path.join(self.directory, "Procfile")
        self.run_dir = rundir.run_dir_for(self.procfile)
        self.port = free_port()
        self.base_port = free_port_block(types=3)
        self.run_id = uuid.uuid4().hex
        self.formation = formation
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.process = None
        self.leftover_info = []  # "pid name cmdline" of what the last stop had to kill
        self.output_path = os.path.join(self.directory, "dashscale-output.log")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self, *args):
        return [sys.executable, "-m", "dashscale_local.cli", *args]

    def env(self):
        env = dict(os.environ)
        env.update(self.extra_env)
        env[MARKER] = self.run_id
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("FORCE_COLOR", None)
        return env

    def start(self, wait=True, timeout=60):
        args = ["start", "-f", self.procfile, "--port", str(self.port),
                "--base-port", str(self.base_port), *self.args]
        if self.formation:
            args += ["-m", self.formation]
        self._out = open(self.output_path, "ab")
        self.process = subprocess.Popen(self.command(*args), cwd=self.directory, env=self.env(),
                                        stdin=subprocess.DEVNULL, stdout=self._out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready(timeout=timeout)
        return self

    def output(self):
        with open(self.output_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def cli(self, *args, timeout=120, check=False):
        return subprocess.run(self.command(*args[:1], "--procfile", self.procfile, *args[1:]),
                              cwd=self.directory, env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=check)

    def status(self):
        return control.call(rundir.control_socket(self.run_dir), "GET", "/status")

    def wait_ready(self, count=None, timeout=60):
        """Until ``count`` web replicas (default: all replicas) are ready, or fail."""
        def ready():
            if self.process.poll() is not None:
                raise GiveUp(f"dashscale exited with {self.process.returncode}:\n"
                             + self.output()[-3000:])
            try:
                st = self.status()
            except Exception:
                return False
            reps = st["replicas"]
            want = count if count is not None else len(reps)
            have = sum(1 for r in reps if r["ready"] and (count is None or r["type"] == "web"))
            return st if have >= want and reps else False
        try:
            return wait_for(ready, timeout, message="replicas ready")
        except GiveUp:
            raise
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- dashscale output ---\n{self.output()[-3000:]}")

    def get(self, path="/", timeout=30, headers=None, data=None, method=None):
        req = urllib.request.Request(self.url + path, headers=headers or {}, data=data,
                                     method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()

    def stop(self, timeout=30):
        """Stop through the CLI, then make sure of it; returns leftover processes."""
        if self.process is not None and self.process.poll() is None:
            self.cli("stop", timeout=timeout + 30)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        leftovers = self.kill_leftovers()
        if getattr(self, "_out", None):
            self._out.close()
        return leftovers

    def kill_leftovers(self):
        """SIGKILL anything still carrying this run's marker; return what was found
        (pids; ``leftover_info`` describes them)."""
        procs = processes_with_marker(self.run_id)
        self.leftover_info = [describe_process(p) for p in procs]
        return kill_all(procs, timeout=10)

    def replica(self, name):
        for r in self.status()["replicas"]:
            if r["name"] == name:
                return r
        raise KeyError(name)

    def events(self):
        """The runner's recent events: [{time, kind, message}] (oomkill, crash, ...)."""
        return self.status().get("events", [])

    def kill_replica(self, name, sig=signal.SIGKILL):
        """Send ``sig`` to the replica's whole process group (gunicorn master and
        workers), as the kernel's OOM killer or a node failure would; returns the pid."""
        pid = self.replica(name)["pid"]
        if not pid:
            raise RuntimeError(f"{name} has no running process")
        pgid = os.getpgid(pid)
        if pgid == os.getpgrp():  # never our own group
            os.kill(pid, sig)
        else:
            os.killpg(pgid, sig)
        return pid


def describe_process(proc):
    try:
        cmdline = " ".join(proc.cmdline())[:200]
    except (psutil.Error, OSError):
        cmdline = "?"
    return f"pid {proc.pid}: {cmdline}"


def json_status(result):
    return json.loads(result.stdout)
