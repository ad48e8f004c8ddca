"""One started formation for a test (DashscaleApp): its URL and status, HTTP through the
proxy, callbacks, live changes (scale, restart, kill a replica), waiting, and its orderly
stop that reports any process left behind."""
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import threading

from .. import control, dash_client, rundir
from ..testing import GiveUp, wait_for
from .callbacks import CallbackClient

REPLICA_HEADER = dash_client.REPLICA_HEADER
_LIVE = set()       # handles not yet stopped: killed at exit if a teardown never ran
_LIVE_LOCK = threading.Lock()


class Response:
    """An HTTP answer through the proxy."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def replica(self):
        return _header(self.headers, REPLICA_HEADER)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} from {self.replica}>"


def _header(headers, name):
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is not None:
        value = getter(name)
        if value is not None:
            return value
    try:
        items = headers.items()
    except AttributeError:
        items = headers
    for key, value in items:
        if key.lower() == name.lower():
            return value
    return None


class DashscaleApp:
    """A started formation: `url`, status, live changes, replica kills, callbacks."""

    def __init__(self, run, source, cleanup_dir=None):
        self.run = run                  # the underlying dashscale_local.testing.Run
        self.source = source            # the app's own directory
        self.directory = run.directory  # the private run directory (symlinks to source)
        self._cleanup_dir = cleanup_dir
        self._client = None
        self.stopped = False
        self._term_sent = False
        self.leftovers = []

    # -- where and what
    @property
    def url(self):
        return self.run.url

    @property
    def run_id(self):
        return self.run.run_id

    def __repr__(self):
        return f"<DashscaleApp {self.url} from {self.source}>"

    def status(self):
        """`dashscale status --json` as a dict."""
        return self.run.status()

    def replicas(self, type_=None):
        return [r for r in self.status()["replicas"] if type_ is None or r["type"] == type_]

    def replica(self, name):
        return self.run.replica(name)

    @property
    def events(self):
        """Recent events [{time, kind, message}]: oomkill, crash, fatal, restart, scale..."""
        return self.run.events()

    def events_of(self, kind, replica=None):
        return [e for e in self.events if e["kind"] == kind
                and (replica is None or _mentions(e["message"], replica))]

    def output(self):
        """What `dashscale start` printed (replica logs included, prefixed by name)."""
        return self.run.output()

    def logs(self, replica):
        path = os.path.join(self.run.run_dir, "logs", f"{replica}.log")
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def cli(self, *args, **kwargs):
        """Run a `dashscale` command against this run: run.cli("status", "--json")."""
        return self.run.cli(*args, **kwargs)

    # -- HTTP
    def get(self, path="/", **kwargs):
        return Response(*self.run.get(path, **kwargs))

    @staticmethod
    def replica_of(response):
        """Which replica served a response: a CallbackResult, a `get()` Response, a
        (status, headers, body) tuple, anything with `.headers` (requests, urllib,
        http.client) or a headers mapping."""
        replica = getattr(response, "replica", None)
        if isinstance(replica, str):
            return replica
        if isinstance(response, tuple) and len(response) == 3:
            return _header(response[1], REPLICA_HEADER)
        headers = getattr(response, "headers", None)
        if headers is not None:
            return _header(headers, REPLICA_HEADER)
        return _header(response, REPLICA_HEADER)

    # -- callbacks
    @property
    def client(self):
        """The handle's CallbackClient (one browser tab through the proxy)."""
        if self._client is None:
            self._client = CallbackClient(self.url)
        return self._client

    def call_callback(self, output, inputs=None, state=None, check=True, apply=True):
        """Call a callback through the proxy; see CallbackClient.call."""
        return self.client.call(output, inputs, state, check=check, apply=apply)

    def new_client(self, **kwargs):
        """Another, independent browser tab."""
        return CallbackClient(self.url, **kwargs)

    # -- live changes
    def scale(self, formation=None, wait=True, timeout=60, **counts):
        """scale("web=3"), scale({"web": 3}) or scale(web=3); waits until it serves."""
        from ..formation import parse_formation
        spec = dict(counts)
        if isinstance(formation, str):
            spec.update(parse_formation(formation, source="scale"))
        elif formation:
            spec.update(formation)
        result = control.call(self._socket(), "POST", "/scale", {"formation": spec},
                              timeout=timeout + 30)["formation"]
        if wait:
            self.wait_ready(timeout=timeout, formation=result)
        return result

    def restart(self, target=None, rolling=False, wait=True, timeout=60):
        """Restart everything, a type ("web") or one replica ("web.2"); returns the names.
        With wait, returns once every restarted replica runs a new process and serves."""
        before = {r["name"]: r["pid"] for r in self.replicas()}
        names = control.call(self._socket(), "POST", "/restart",
                             {"target": target, "rolling": rolling},
                             timeout=timeout + 30)["restarted"]
        if wait:
            self._wait_replaced({n: before.get(n) for n in names}, timeout)
        return names

    def kill(self, replica, sig=signal.SIGKILL, wait=False, timeout=60):
        """Send SIGKILL (or ``sig``) to a replica's whole process group, as a node or
        kernel would; supervisord then restarts it. Returns the killed pid; with
        wait, returns once its successor serves."""
        pid = self.run.kill_replica(replica, sig)
        if wait:
            self._wait_replaced({replica: pid}, timeout)
        return pid

    # -- waiting
    def wait_ready(self, timeout=60, formation=None):
        """Until every replica (of the given formation) is up and, for web, answers."""
        def ready():
            st = self.status()
            reps = st["replicas"]
            want = formation or st.get("formation") or {}
            for type_, count in want.items():
                if sum(1 for r in reps if r["type"] == type_) != count:
                    return False
            return st if reps and all(r["ready"] for r in reps) else False
        return self._wait(ready, timeout, "replicas ready")

    def wait_for_state(self, replica, state, timeout=30):
        """Until `replica` is in `state` (e.g. "OOMKILLED"); returns its status entry."""
        states = {state} if isinstance(state, str) else set(state)
        return self._wait(lambda: (lambda r: r if r["state"] in states else None)(
            self.replica(replica)), timeout, f"{replica} in state {'/'.join(states)}")

    def wait_for_event(self, kind, replica=None, timeout=30):
        """Until an event of `kind` (about `replica`) is reported; returns it."""
        return self._wait(lambda: (self.events_of(kind, replica) or [None])[-1], timeout,
                          f"a {kind} event" + (f" for {replica}" if replica else ""))

    def _wait_replaced(self, old_pids, timeout):
        def done():
            for name, pid in old_pids.items():
                r = self.replica(name)
                if r["pid"] in (None, pid) or not r["ready"]:
                    return False
            return True
        self._wait(done, timeout, "restarted replicas serving: " + ", ".join(old_pids))

    def _wait(self, predicate, timeout, message):
        def check():
            if self.run.process.poll() is not None:
                raise GiveUp(f"dashscale exited with {self.run.process.returncode} while "
                             f"waiting for {message}:\n{self.output()[-3000:]}")
            return predicate()
        try:
            return wait_for(check, timeout, interval=0.05, message=message)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- dashscale output ---\n{self.output()[-3000:]}")

    def _socket(self):
        return rundir.control_socket(self.run.run_dir)

    # -- the end
    def _signal_stop(self):
        """SIGTERM to the runner: the same orderly stop as Ctrl-C or `dashscale stop`
        (which only asks the runner to stop), without a CLI process per run."""
        process = self.run.process
        if self._term_sent or process is None:
            return   # never twice: a second SIGTERM means "kill at once" to the runner
        self._term_sent = True
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self):
        """Stop everything; returns descriptions of processes that had to be killed
        because they outlived the stop (empty when all is well). Idempotent."""
        if self.stopped:
            return self.leftovers
        self.stopped = True
        try:
            if self._client is not None:
                self._client.close()
            self._signal_stop()
            if self.run.process is not None:
                try:
                    self.run.process.wait(30)
                except subprocess.TimeoutExpired:
                    pass   # run.stop() escalates: `dashscale stop`, then SIGKILL
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            try:
                self.run.stop()
            except Exception:
                self.run.kill_leftovers()
                raise
            finally:
                self.leftovers = list(self.run.leftover_info)
                if self._cleanup_dir:
                    shutil.rmtree(self._cleanup_dir, ignore_errors=True)
        return self.leftovers


def _mentions(message, replica):
    """Does an event message name this replica (web.1, not web.10)?"""
    return re.search(rf"(?<![\w.]){re.escape(replica)}(?![\w.]*\d)", message) is not None


def keep_track(app):
    """Remember a started app until it stops: killed at exit if a teardown never ran."""
    with _LIVE_LOCK:
        _LIVE.add(app)


def _kill_live():
    """At exit (an interrupted session): kill whatever an unstopped run left."""
    with _LIVE_LOCK:
        apps = list(_LIVE)
    for app in apps:
        try:
            app.run.kill_leftovers()
        except Exception:
            pass


atexit.register(_kill_live)
