"""pytest plugin: run your Dash app as real replicas (supervisord + gunicorn + the
dashscale proxy) from a test, and check that it behaves the same with N replicas as with
one.

Registered through the ``pytest11`` entry point, so installing dashscale is enough:

    def test_scales(dashscale_app):
        run = dashscale_app(procfile="web: gunicorn app:server --workers 1",
                            formation="web=2", memory_limit="512MiB")
        result = run.call_callback("total.children", {"add.n_clicks": 1})
        assert result.value("total.children") == "1"
        assert run.replica_of(result) in ("web.1", "web.2")

    def test_no_process_state(dashscale_app):
        dashscale_app.assert_replica_safe([Call("total.children", "add.n_clicks")] * 4,
                                          replicas=2, procfile="web: gunicorn app:server")

Every run happens in a private directory of symlinks to the app's files (so the app's
own directory gets no `.dashscale/`, and parallel tests of one app never share a run
directory) on free ports. At teardown everything is stopped, and the test fails if any
process the run started is still alive (found by its DASHSCALE_RUN_ID marker, even when
the runner itself died or the test body raised).

Callbacks are called with `dashscale_local.dash_client` — the protocol code
`dashscale bench` uses — so the tests speak Dash exactly as the bench does.
"""
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import pytest

from . import control, dash_client, rundir
from .testing import GiveUp, Run, wait_for

REPLICA_HEADER = dash_client.REPLICA_HEADER
SKIP_ENTRIES = {".dashscale", "__pycache__", ".pytest_cache", "dashscale-output.log"}
_MAX_DIR_LEN = 60   # keep unix socket paths in the run directory under the 108-byte limit
_LIVE = set()       # handles not yet stopped: killed at exit if a teardown never ran
_LIVE_LOCK = threading.Lock()

__all__ = ["Call", "CallbackClient", "CallbackError", "CallbackResult", "DashscaleApp",
           "ReplicaReport", "ReplicaStateError", "assert_replica_safe", "check_replica_safe",
           "run_sequence", "compare_steps"]


# -- calling callbacks ---------------------------------------------------------------

class CallbackError(AssertionError):
    """A callback call failed (HTTP error, connection lost, replica killed)."""


@dataclass
class CallbackResult:
    """One callback call: the decoded update and who served it."""
    callback: str                 # the callback's output key, as the server knows it
    status: Optional[int]         # HTTP status (None: no answer at all)
    replica: Optional[str]        # X-Dashscale-Replica of the answer
    response: Optional[dict]      # decoded update {id: {prop: value}}; None for 204/errors
    error: Optional[str]          # None when ok
    seconds: float
    request: dict = field(repr=False, default_factory=dict)   # the body that was POSTed

    @property
    def ok(self):
        return self.error is None

    @property
    def prevented(self):
        """True when the callback raised PreventUpdate (HTTP 204)."""
        return self.status == 204

    @property
    def outputs(self):
        """The update flattened: {"id.prop": value} (empty for 204 or errors)."""
        flat = {}
        for id_, props in (self.response or {}).items():
            if isinstance(props, dict):
                for prop, value in props.items():
                    flat[f"{id_}.{prop}"] = value
        return flat

    def value(self, prop_id):
        """The new value of one output, e.g. result.value("total.children")."""
        outputs = self.outputs
        if prop_id not in outputs:
            raise KeyError(f"{prop_id} is not in the update of {self.callback} "
                           f"(has: {', '.join(outputs) or 'nothing'})")
        return outputs[prop_id]


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class CallbackClient:
    """A browser tab against a Dash app, for tests: fetches the layout and callbacks once,
    keeps the component values (layout values, then every update it receives, as the
    renderer does), and calls one callback at a time by its output.

    ``inputs`` is either a dict {"id.prop": value} of new values (those that are Inputs
    are sent as changed), or a prop id / list of prop ids that changed: "btn.n_clicks"
    is a click (n_clicks + 1 and its timestamp, as dash_client clicks), any other prop
    is re-sent with its current value (e.g. a dcc.Store another callback just set).
    ``state`` sets State (or other) values without marking them changed.
    """

    def __init__(self, url, timeout=60.0, headers=None):
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self.headers = headers
        self._app = None
        self._session = None

    @property
    def app(self):
        """The app as dash_client parsed it (DashApp), fetched on first use."""
        if self._app is None:
            self._app = dash_client.DashApp.fetch(self.url, timeout=self.timeout,
                                                  headers=self.headers)
        return self._app

    @property
    def session(self):
        if self._session is None:
            self._session = dash_client.Session(self.app, max_connections=1,
                                                timeout=self.timeout, headers=self.headers)
        return self._session

    @property
    def values(self):
        """The tab's current component values {"id.prop": value}."""
        return self.session.values

    def reset(self):
        """Forget every update: back to the layout's values (a fresh tab)."""
        self.close()

    def callback(self, output):
        """The callback (dash_client.Callback) whose output is ``output``: its exact
        output key, one of its outputs ("id.prop"), or a list of all its outputs."""
        callbacks = self.app.callbacks
        if isinstance(output, str):
            exact = [cb for cb in callbacks if cb.output == output]
            if exact:
                return exact[0]
            matches = [cb for cb in callbacks if output in cb.output_keys]
        else:
            wanted = set(output)
            matches = [cb for cb in callbacks if set(cb.output_keys) == wanted]
        if len(matches) == 1:
            return matches[0]
        known = "; ".join(cb.output for cb in callbacks) or "none"
        if not matches:
            raise CallbackError(f"no callback has output {output!r} (callbacks: {known})")
        raise CallbackError(f"several callbacks output {output!r}: pass the exact output "
                            f"key (one of: {'; '.join(cb.output for cb in matches)})")

    def call(self, output, inputs=None, state=None, check=True, apply=True):
        """Call one callback; returns a CallbackResult. Raises CallbackError when the
        call failed and ``check`` is true; ``apply`` feeds the update back into the
        tab's values (so the next call sees it, as in a browser)."""
        app = self.app
        cb = self.callback(output)
        if not cb.drivable:
            raise CallbackError(f"cannot call {cb.name}: {cb.reason}")
        session = self.session
        values = session.values
        known = set(cb.input_keys) | {dash_client.prop_id(d["id"], d["property"])
                                      for d in cb.state}
        if isinstance(inputs, dict):
            changes = dict(inputs)
        else:
            changes = {}
            for key in _as_list(inputs):
                if key.endswith(".n_clicks"):   # a click, as the renderer sends it
                    changes.update(app.click_changes(key, values))
                else:                            # re-sent as it is, marked changed
                    changes[key] = values.get(key)
        for key in list(changes) + list(state or {}):
            if key not in known and not key.endswith(".n_clicks_timestamp"):
                raise CallbackError(f"{key} is neither an Input nor a State of {cb.name} "
                                    f"(inputs: {', '.join(cb.input_keys)})")
        values.update(changes)
        values.update(state or {})
        changed = [k for k in changes if k in cb.input_keys]
        body = app.build_request(cb, values, changed)
        raw = session.post(body)
        result = CallbackResult(cb.output, raw.status, raw.replica, raw.response, raw.error,
                                raw.seconds, body)
        if raw.response and apply:
            session._apply(cb, raw.response)
        if check and not result.ok:
            raise CallbackError(f"callback {cb.name} failed"
                                + (f" on {result.replica}" if result.replica else "")
                                + f": {result.error}")
        return result

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None


# -- one running formation -------------------------------------------------------------

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
        from .formation import parse_formation
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


# -- the fixture -----------------------------------------------------------------------

class DashscaleAppFactory:
    """The `dashscale_app` fixture: call it to start a formation; every formation is
    stopped at teardown."""

    def __init__(self, default_cwd, make_dir):
        self.default_cwd = default_cwd
        self._make_dir = make_dir
        self.apps = []

    def __call__(self, cwd=None, procfile=None, formation=None, memory_limit=None,
                 env=None, on_limit=None, args=(), wait=True, timeout=60, shared_fs=False):
        """Start `dashscale start` for the app in ``cwd`` (default: the test file's
        directory) and return a DashscaleApp.

        procfile: Procfile text (default: cwd's Procfile); formation: "web=2,worker=1";
        memory_limit: "512MiB" or "web=1GiB,worker=256MiB"; on_limit: "stop" (default,
        as Dash Enterprise) or "restart"; env: extra environment for the replicas;
        shared_fs: run every replica in one directory (`--shared-fs`) instead of each
        in its own disk (the default, as Dash Enterprise pods); args: more `dashscale
        start` options."""
        source = os.path.abspath(str(cwd or self.default_cwd))
        if not os.path.isdir(source):
            raise ValueError(f"dashscale_app: no such directory: {source}")
        if procfile is None and not os.path.exists(os.path.join(source, "Procfile")):
            raise ValueError(f"dashscale_app: no Procfile in {source}; pass "
                             "procfile='web: gunicorn app:server'")
        if procfile is not None and not procfile.endswith("\n"):
            procfile += "\n"
        options = list(args)
        if memory_limit:
            options += ["--memory-limit", str(memory_limit)]
        if on_limit:
            options += ["--on-limit", on_limit]
        if shared_fs:
            options.append("--shared-fs")
        directory, cleanup = self._make_dir()
        _shadow(source, directory, skip_procfile=procfile is not None)
        for attempt in range(3):
            run = Run(directory, procfile, formation, options, env)
            app = DashscaleApp(run, source, cleanup)
            with _LIVE_LOCK:
                _LIVE.add(app)
            self.apps.append(app)
            run.start(wait=False)
            if not wait:
                return app
            try:
                run.wait_ready(timeout=timeout)
                return app
            except AssertionError:
                clash = run.process.poll() == 2 and "in use" in run.output()
                if not clash or attempt == 2:
                    raise
                app._cleanup_dir = None   # the next attempt runs in the same directory
                app.stop()   # another test took our port between the check and the bind

    def assert_replica_safe(self, sequence, replicas=2, normalize=None, ignore=(), **start):
        return assert_replica_safe(self, sequence, replicas, normalize, ignore, **start)

    def check_replica_safe(self, sequence, replicas=2, normalize=None, ignore=(), **start):
        return check_replica_safe(self, sequence, replicas, normalize, ignore, **start)

    def stop_all(self):
        """Stop every formation; returns {app: [leftover process descriptions]}."""
        leftovers, errors = {}, []
        for app in self.apps:   # all stop at once, then wait for each
            if not app.stopped:
                app._signal_stop()
        for app in self.apps:
            try:
                found = app.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{app}: {type(exc).__name__}: {exc}")
                found = app.leftovers
            if found:
                leftovers[app] = found
        return leftovers, errors


def _shadow(source, directory, skip_procfile):
    """Fill ``directory`` with symlinks to ``source``'s entries: the app runs from there,
    with its own .dashscale/, and the source directory stays untouched."""
    for entry in os.listdir(source):
        if entry in SKIP_ENTRIES or (skip_procfile and entry == "Procfile"):
            continue
        target = os.path.join(directory, entry)
        if not os.path.lexists(target):
            os.symlink(os.path.join(source, entry), target)


def _make_dir_factory(tmp_path_factory):
    def make():
        path = str(tmp_path_factory.mktemp("dsapp", numbered=True))
        if len(path) <= _MAX_DIR_LEN:
            return path, None
        short = tempfile.mkdtemp(prefix="dsapp-")   # long basetemp: socket paths too long
        return short, short
    return make


@pytest.fixture
def dashscale_app(request, tmp_path_factory):
    """Factory: ``dashscale_app(cwd=None, procfile=None, formation=None,
    memory_limit=None, env=None)`` → a started DashscaleApp. Also
    ``dashscale_app.assert_replica_safe(sequence, replicas=2, **start)``.

    Everything is stopped at teardown; the test fails if any process is left behind."""
    factory = DashscaleAppFactory(os.path.dirname(str(request.path)),
                                  _make_dir_factory(tmp_path_factory))
    request.node.stash[_FACTORY_KEY] = factory
    yield factory
    leftovers, errors = factory.stop_all()
    problems = []
    for app, found in leftovers.items():
        problems.append(f"{app.source} (run {app.run_id[:8]}): " + "; ".join(found))
    if problems:
        pytest.fail("dashscale_app: processes left behind after stop (now killed):\n  "
                    + "\n  ".join(problems), pytrace=False)
    if errors:
        pytest.fail("dashscale_app: stopping failed:\n  " + "\n  ".join(errors),
                    pytrace=False)


_FACTORY_KEY = pytest.StashKey()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a test using dashscale_app fails, attach the end of each run's output."""
    outcome = yield
    report = outcome.get_result()
    factory = item.stash.get(_FACTORY_KEY, None)
    if factory is None or not report.failed or call.when != "call":
        return
    for app in factory.apps:
        try:
            text = app.output()[-4000:]
        except OSError:
            continue
        report.sections.append((f"dashscale output ({app.source})", text))


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


# -- the replica-state check -----------------------------------------------------------

@dataclass
class Call:
    """One step of a sequence: call the callback with this output (see
    CallbackClient.call for ``inputs`` and ``state``)."""
    output: Union[str, List[str]]
    inputs: Any = None
    state: Optional[Dict[str, Any]] = None

    def describe(self):
        if isinstance(self.inputs, dict):
            what = ", ".join(f"{k}={v!r}" for k, v in self.inputs.items())
        elif self.inputs:
            what = ", ".join(f"click {k}" if k.endswith(".n_clicks") else f"{k} changed"
                             for k in _as_list(self.inputs))
        else:
            what = ""
        if self.state:
            what += (", " if what else "") + ", ".join(f"{k}={v!r}" for k, v in self.state.items())
        out = self.output if isinstance(self.output, str) else ", ".join(self.output)
        return f"{out}" + (f" ({what})" if what else "")


def _as_call(step):
    if isinstance(step, Call):
        return step
    if isinstance(step, str):
        return Call(step)
    if isinstance(step, dict):
        return Call(step["output"], step.get("inputs"), step.get("state"))
    return Call(*step)


@dataclass
class Step:
    index: int            # 1-based
    call: Call
    replica: Optional[str]
    status: Optional[int]
    outputs: Any          # normalised outputs ({"id.prop": value} unless normalize says)
    error: Optional[str]

    def comparable(self):
        if self.error is not None:
            return ("error", self.status)
        return ("ok", self.status, self.outputs)


def run_sequence(client_or_app, sequence, normalize=None, ignore=()):
    """Drive ``sequence`` (Calls, in order, one at a time) through a fresh browser tab;
    returns [Step]. ``ignore`` drops outputs ("id.prop") from the comparison;
    ``normalize(outputs) -> comparable`` replaces values that legitimately differ."""
    client = client_or_app.new_client() if isinstance(client_or_app, DashscaleApp) \
        else client_or_app
    steps = []
    try:
        for i, raw in enumerate(sequence, 1):
            call = _as_call(raw)
            result = client.call(call.output, call.inputs, call.state, check=False)
            outputs = {k: v for k, v in result.outputs.items() if k not in set(ignore)}
            if normalize is not None:
                outputs = normalize(outputs)
            steps.append(Step(i, call, result.replica, result.status, outputs, result.error))
    finally:
        if client is not client_or_app:
            client.close()
    return steps


@dataclass
class Divergence:
    index: int
    call: Call
    baseline: Step
    trial: Step


class ReplicaReport:
    """The outcome of the check: ``ok``, ``divergences``, ``spread`` and a readable
    ``str()`` naming the callbacks and replicas involved."""

    def __init__(self, replicas, baseline, trial, divergences, problem=None):
        self.replicas = replicas
        self.baseline = baseline
        self.trial = trial
        self.divergences = divergences
        self.problem = problem       # the check could not decide (no spread, errors)

    @property
    def ok(self):
        return not self.divergences and self.problem is None

    @property
    def spread(self):
        """{replica: calls served} in the N-replica run."""
        counts = {}
        for step in self.trial:
            counts[step.replica] = counts.get(step.replica, 0) + 1
        return counts

    def __str__(self):
        if self.problem and not self.divergences:
            return self.problem
        if not self.divergences:
            spread = ", ".join(f"{k}: {v}" for k, v in sorted(self.spread.items(), key=str))
            return (f"{len(self.trial)} callbacks answered the same with {self.replicas} "
                    f"replicas ({spread}) as with one")
        n = len(self.divergences)
        lines = [f"{n} of {len(self.trial)} callbacks answered differently with "
                 f"{self.replicas} replicas than with 1 (state kept inside a process?):"]
        for d in self.divergences[:10]:
            lines.append(f"  step {d.index}: {d.call.describe()}")
            lines.append(f"      1 replica  ({d.baseline.replica}): {_show(d.baseline)}")
            lines.append(f"      {self.replicas} replicas ({d.trial.replica}): {_show(d.trial)}")
            before = [f"#{s.index} {_short(s.call)} on {s.replica}"
                      for s in self.trial[:d.index - 1]]
            if before:
                lines.append("      earlier calls with " f"{self.replicas} replicas: "
                             + ", ".join(before[-6:]))
        if n > 10:
            lines.append(f"  ... and {n - 10} more")
        first = self.divergences[0]
        lines.append(
            f"The first divergence is step {first.index}, served by {first.trial.replica}; "
            "later steps may only follow from it. An app that keeps data in a module-level "
            "variable (a global dict, list, DataFrame or counter) sees only what this "
            "replica's process wrote: keep per-user state in the browser (dcc.Store) or "
            "in a shared store (Redis, a database, files on shared storage).")
        if self.problem:
            lines.append(self.problem)
        return "\n".join(lines)

    def __repr__(self):
        return f"<ReplicaReport ok={self.ok} divergences={len(self.divergences)}>"


def _short(call):
    return call.output if isinstance(call.output, str) else ",".join(call.output)


def _show(step, limit=160):
    if step.error is not None:
        text = f"ERROR {step.error}"
    elif step.status == 204:
        text = "no update (PreventUpdate)"
    else:
        text = repr(step.outputs)
    return text if len(text) <= limit else text[:limit] + "…"


class ReplicaStateError(AssertionError):
    """The app answered differently with N replicas than with one."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


def compare_steps(baseline, trial, replicas):
    """Compare two runs of one sequence → ReplicaReport."""
    divergences = [Divergence(b.index, b.call, b, t) for b, t in zip(baseline, trial)
                   if b.comparable() != t.comparable()]
    problem = None
    failed = [s for s in baseline if s.error is not None]
    if failed:
        s = failed[0]
        problem = (f"the sequence fails even with one replica: step {s.index} "
                   f"{s.call.describe()}: {s.error}")
    else:
        used = {s.replica for s in trial}
        want = min(replicas, len(trial))
        if len(used) < want:
            problem = (f"inconclusive: the {replicas}-replica run served all {len(trial)} "
                       f"calls from {', '.join(sorted(map(str, used)))}; the proxy did not "
                       "spread them (another client using the same run?)")
    return ReplicaReport(replicas, baseline, trial, divergences, problem)


def _with_web(formation, count):
    from .formation import parse_formation
    counts = parse_formation(formation, source="formation") if formation else {}
    counts["web"] = count
    return ",".join(f"{k}={v}" for k, v in counts.items())


def check_replica_safe(dashscale_app, sequence, replicas=2, normalize=None, ignore=(),
                       **start):
    """Start the app twice, side by side — web=1 and web=``replicas`` (both fresh) —
    drive ``sequence`` through each proxy from a fresh tab, and compare the answers
    step by step. Round-robin sends consecutive calls to consecutive replicas, so state
    one callback leaves in a process is missing when the next lands on another one.

    ``dashscale_app`` is the fixture (or any callable with its signature); ``start``
    holds its keywords (cwd, procfile, formation, memory_limit, env...).
    Returns a ReplicaReport; both formations are stopped before it returns."""
    if replicas < 2:
        raise ValueError("replicas must be at least 2")
    sequence = [_as_call(s) for s in sequence]
    if len(sequence) < 2:
        raise ValueError("a sequence of at least 2 callbacks is needed to compare")
    formation = start.pop("formation", None)
    timeout = start.pop("timeout", 60)
    one = dashscale_app(formation=_with_web(formation, 1), wait=False, **start)
    many = dashscale_app(formation=_with_web(formation, replicas), wait=False, **start)
    try:
        one.run.wait_ready(timeout=timeout)
        many.run.wait_ready(timeout=timeout)
        baseline = run_sequence(one, sequence, normalize, ignore)
        trial = run_sequence(many, sequence, normalize, ignore)
    finally:
        one._signal_stop()
        many._signal_stop()
        leftovers = one.stop() + many.stop()
    if leftovers:
        raise AssertionError("processes left behind after stop: " + "; ".join(leftovers))
    return compare_steps(baseline, trial, replicas)


def assert_replica_safe(dashscale_app, sequence, replicas=2, normalize=None, ignore=(),
                        **start):
    """check_replica_safe, raising ReplicaStateError (an AssertionError) unless the app
    answered every step the same with ``replicas`` replicas as with one."""
    report = check_replica_safe(dashscale_app, sequence, replicas, normalize, ignore, **start)
    if not report.ok:
        raise ReplicaStateError(report)
    return report
