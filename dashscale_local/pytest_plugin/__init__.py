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

This module is what pytest loads (the fixture, its factory and the report hook); the
rest is split by role: `app.py` (a started formation), `callbacks.py` (calling
callbacks), `replica_safe.py` (the N-replicas-versus-one check). Everything users
import stays importable from here.
"""
import os
import tempfile

import pytest

from ..testing import Run
# Re-exported: `from dashscale_local.pytest_plugin import Call, ...` is the public path.
from .app import REPLICA_HEADER, DashscaleApp, Response, keep_track  # noqa: F401
from .callbacks import CallbackClient, CallbackError, CallbackResult  # noqa: F401
from .replica_safe import (Call, Divergence, ReplicaReport, ReplicaStateError,  # noqa: F401
                           Step, assert_replica_safe, check_replica_safe, compare_steps,
                           run_sequence)

SKIP_ENTRIES = {".dashscale", "__pycache__", ".pytest_cache", "dashscale-output.log"}
_MAX_DIR_LEN = 60   # keep unix socket paths in the run directory under the 108-byte limit

__all__ = ["Call", "CallbackClient", "CallbackError", "CallbackResult", "DashscaleApp",
           "ReplicaReport", "ReplicaStateError", "assert_replica_safe", "check_replica_safe",
           "run_sequence", "compare_steps"]


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
            keep_track(app)
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
