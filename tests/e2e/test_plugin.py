"""The pytest plugin (dashscale_local.pytest_plugin), tested as users meet it: inner
pytest sessions (pytester) that use the `dashscale_app` fixture on the examples/ apps."""
import json
import os
from pathlib import Path

import pytest

from dashscale_local.testing import processes_with_marker
from tests import REPO

pytest_plugins = ["pytester"]

EXAMPLES = Path(REPO) / "examples"
STATELESS = str(EXAMPLES / "stateless_app")
STATEFUL = str(EXAMPLES / "stateful_app")
HUNGRY = str(EXAMPLES / "memory_hungry_app")
PROCFILE = "web: gunicorn app:server --workers 1"
INNER_ARGS = ("-p", "no:dash", "-p", "no:cacheprovider", "-rA")

# Written at the top of every inner test file.
HEADER = f"""
import json, os, signal, time
import pytest
from dashscale_local.pytest_plugin import Call, CallbackError, DashscaleApp

STATELESS, STATEFUL, HUNGRY = {STATELESS!r}, {STATEFUL!r}, {HUNGRY!r}
PROCFILE = {PROCFILE!r}

def record(name, run):
    with open(os.path.join({{dir!r}}, name + ".json"), "w") as f:
        json.dump({{{{"run_id": run.run_id, "dir": run.directory, "url": run.url}}}}, f)
"""


def inner(pytester, body, name="test_inner"):
    pytester.makepyfile(**{name: HEADER.format(dir=str(pytester.path)) + body})


def records(pytester):
    return {p.stem: json.loads(p.read_text()) for p in Path(pytester.path).glob("*.json")}


def assert_nothing_left(pytester):
    found = records(pytester)
    assert found, "the inner tests recorded no runs"
    for name, info in found.items():
        assert processes_with_marker(info["run_id"]) == [], f"{name} left processes"
    for app in (STATELESS, STATEFUL, HUNGRY):
        assert not os.path.exists(os.path.join(app, ".dashscale")), "source dir was used"


@pytest.mark.slow
def test_fixture_starts_serves_changes_and_stops(pytester):
    inner(pytester, """
def test_api(dashscale_app):
    run = dashscale_app(cwd=STATELESS, procfile=PROCFILE, formation="web=2")
    record("api", run)
    assert isinstance(run, DashscaleApp) and run.url.startswith("http://127.0.0.1:")
    assert run.directory != STATELESS
    assert [r["name"] for r in run.status()["replicas"]] == ["web.1", "web.2"]
    served = [run.replica_of(run.get("/_dash-layout")) for _ in range(4)]
    assert sorted(set(served)) == ["web.1", "web.2"]
    assert served[0] != served[1]                       # round-robin

    result = run.call_callback("selection.data", "load.n_clicks",
                               state={"dataset.value": "iris"})
    assert result.ok and result.value("selection.data") == {"name": "iris", "rows": 150}
    assert run.replica_of(result) in ("web.1", "web.2")
    summary = run.call_callback("summary.children", "selection.data")  # the tab's values
    assert summary.value("summary.children") == "iris: 150 rows (0 added)"
    with pytest.raises(CallbackError, match="no callback has output"):
        run.call_callback("nope.children")

    run.scale(web=3)
    assert [r["name"] for r in run.replicas()] == ["web.1", "web.2", "web.3"]
    old = run.replica("web.1")["pid"]
    assert run.restart("web.1") == ["web.1"]
    assert run.replica("web.1")["pid"] != old and run.replica("web.1")["ready"]
    killed = run.kill("web.2", wait=True)              # SIGKILL to its process group
    after = run.replica("web.2")
    assert after["pid"] != killed and after["restarts"] == 1
    assert run.events_of("restart", "web.2")
    run.scale("web=1")
    assert [r["name"] for r in run.replicas()] == ["web.1"]
    assert {e["kind"] for e in run.events} >= {"start", "scale", "restart"}
""")
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=1)
    assert_nothing_left(pytester)


@pytest.mark.slow
def test_teardown_stops_everything_even_when_the_test_raises(pytester):
    inner(pytester, """
def test_body_raises(dashscale_app):
    run = dashscale_app(cwd=STATELESS, procfile=PROCFILE, formation="web=2")
    record("raises", run)
    raise RuntimeError("boom in the test body")

def test_process_escapes_the_group(dashscale_app):
    # setsid: the sleep leaves the replica's process group, so stopping the replica
    # does not stop it; the marker in its environment still gives it away.
    run = dashscale_app(cwd=STATELESS, formation="web=1",
                        procfile="web: setsid sleep 120 & exec gunicorn app:server -w 1")
    record("escapes", run)
""")
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(failed=1, passed=1, errors=1)
    out = result.stdout.str()
    assert "RuntimeError: boom in the test body" in out
    assert "dashscale output (" in out                    # the run's output, attached
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_process_escapes_the_group*",
        "*dashscale_app: processes left behind after stop (now killed):*",
        "*sleep 120*"])
    assert "ERROR at teardown of test_body_raises" not in out
    assert_nothing_left(pytester)


@pytest.mark.slow
def test_parallel_sessions_share_nothing(pytester):
    pytest.importorskip("xdist")
    inner(pytester, """
@pytest.mark.parametrize("me,other", [("a", "b"), ("b", "a")])
def test_same_app_twice_at_once(dashscale_app, tmp_path, me, other):
    run = dashscale_app(cwd=STATELESS, procfile=PROCFILE, formation="web=2")
    record(me, run)
    here = os.path.dirname(os.path.abspath(__file__))
    open(os.path.join(here, me + ".started"), "w").close()
    deadline = time.monotonic() + 60          # both runs are up at the same time
    while not os.path.exists(os.path.join(here, other + ".started")):
        assert time.monotonic() < deadline, "the other worker never started"
        time.sleep(0.05)
    result = run.call_callback("selection.data", "load.n_clicks",
                               state={"dataset.value": "tips" if me == "a" else "iris"})
    assert result.value("selection.data")["rows"] == (244 if me == "a" else 150)
""")
    result = pytester.runpytest_subprocess("-n", "2", *INNER_ARGS)
    result.assert_outcomes(passed=2)
    runs = records(pytester)
    assert runs["a"]["dir"] != runs["b"]["dir"] and runs["a"]["url"] != runs["b"]["url"]
    assert_nothing_left(pytester)


@pytest.mark.slow
def test_state_check_catches_the_stateful_example_only(pytester):
    inner(pytester, """
def sequence(loaded, added):
    load = "selection.data" if loaded == "selection.data" else "loaded.children"
    return [Call(load, "load.n_clicks", state={"dataset.value": "tips"}),
            Call("summary.children", loaded),
            Call(added, "add.n_clicks"),
            Call(added, "add.n_clicks"),
            Call("summary.children", added)]

def test_stateless(dashscale_app):
    report = dashscale_app.assert_replica_safe(sequence("selection.data", "added.data"),
                                               replicas=2, cwd=STATELESS, procfile=PROCFILE)
    assert report.ok and set(report.spread) == {"web.1", "web.2"}

def test_stateful(dashscale_app):
    dashscale_app.assert_replica_safe(sequence("loaded.children", "added.children"),
                                      replicas=2, cwd=STATEFUL, procfile=PROCFILE)
""")
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*ReplicaStateError: 3 of 5 callbacks answered differently with 2 replicas than with 1*",
        "*step 2: summary.children (loaded.children changed)*",
        "*1 replica  (web.1): {'summary.children': 'tips: 244 rows (0 added)'}*",
        "*2 replicas (web.?): {'summary.children': 'no dataset loaded'}*",
        "*earlier calls with 2 replicas: #1 loaded.children on web.?*",
        "*module-level variable*"])
    result.stdout.fnmatch_lines(["PASSED test_inner.py::test_stateless*",
                                 "FAILED test_inner.py::test_stateful*"], consecutive=False)


@pytest.mark.slow
def test_oom_kill_is_reported(pytester):
    inner(pytester, """
def test_oom(dashscale_app):
    run = dashscale_app(cwd=HUNGRY, formation="web=1", memory_limit="200MiB")
    record("oom", run)
    big = run.call_callback("report.children", "build.n_clicks",
                            state={"size.value": 400}, check=False)
    assert not big.ok and big.error
    replica = run.wait_for_state("web.1", "OOMKILLED")
    assert replica["oom_kills"] == 1 and replica["last_exit"]["code"] == 137
    assert "OOMKilled" in run.wait_for_event("oomkill", "web.1")["message"]
    with pytest.raises(CallbackError, match="build_report|report.children"):
        run.call_callback("report.children", "build.n_clicks")   # nothing serves now
""")
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=1)
    assert_nothing_left(pytester)
