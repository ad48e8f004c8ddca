"""One ControlAPI behind both doors (the control socket and the dashboard): every request
is checked against one schema. Hypothesis sends arbitrary JSON and bytes to both routes
of one real running formation and checks: never a 5xx, nothing changes on a 4xx, the
saved formation always loads. Then one example per defect of issue 15."""
import http.client
import json
import os
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dashscale_local import rundir
from dashscale_local.formation import resolve_formation
from dashscale_local.project import Project
from dashscale_local.testing import Run

pytestmark = pytest.mark.slow

PROCFILE = ("web: gunicorn echo_app:app --workers 1\n"
            "worker: python -c 'import time; time.sleep(1e6)'\n")
CAPS = {"max_per_type": 2, "pod_limit": 3}  # small caps keep valid scales cheap
GOOD = {"Content-Type": "application/json", "X-Dashscale-Request": "1"}
EXAMPLES = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def run(module_app_dir):
    with open(module_app_dir / "dashscale.ini", "w") as f:
        f.write(f"[dashscale]\nmax_replicas_per_type = {CAPS['max_per_type']}\n"
                f"pod_limit = {CAPS['pod_limit']}\n")
    run = Run(module_app_dir, PROCFILE, "web=1,worker=1")
    try:
        yield run.start()
    finally:
        leftovers = run.stop()
        assert not leftovers, f"processes left behind after stop: {run.leftover_info}"


# -- the two doors, raw ------------------------------------------------------------------
def via_socket(run, method, route, data=b""):
    """(status, decoded JSON) of one request on the control socket, body sent as is."""
    conn = http.client.HTTPConnection("localhost", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(60)
    try:
        conn.sock.connect(rundir.control_socket(run.run_dir))
        conn.request(method, "/" + route, body=data or None,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def via_dashboard(run, method, route, data=b"", headers=GOOD):
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=60)
    try:
        conn.request(method, "/_dashscale/api/" + route, body=data or None,
                     headers=headers if method == "POST" else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


DOORS = {"socket": via_socket, "dashboard": via_dashboard}


def formation_file(run):
    path = os.path.join(run.run_dir, "formation")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def snapshot(run):
    st_ = run.status()
    return st_["formation"], sorted(r["name"] for r in st_["replicas"]), formation_file(run)


def assert_saved_formation_loads(run):
    """What `start` would read: the saved file through the same parser and caps."""
    project = Project(run.procfile)
    resolve_formation(project.type_names, project.saved_formation(), **CAPS)


# -- arbitrary requests ------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-3, 4) | st.integers() | st.floats()
           | st.text(max_size=6))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)
# Valid requests often enough that scales and restarts really happen.
names = st.sampled_from(["web", "worker", "all", "nope", "WEB", ""]) | st.text(max_size=6)
counts = st.integers(0, 2) | st.integers(-2, 3) \
    | st.sampled_from([True, False, 2.0, 2.5, "1", None, 10**30]) | json_values
targets = st.sampled_from(["worker", "worker.1", "web.9", "nope", "", "all", None]) \
    | json_values
extra = st.just({}) | st.dictionaries(st.sampled_from(["now", "formation", "target", "x"]),
                                      json_values, max_size=1)
formations = st.dictionaries(st.sampled_from(["web", "worker", "all"]), st.integers(0, 2),
                             min_size=1, max_size=2) \
    | st.dictionaries(names, counts, max_size=2) | json_values
scale_bodies = st.builds(lambda f, e: {"formation": f, **e}, formations, extra)
restart_bodies = st.fixed_dictionaries({}, optional={
    "target": targets, "rolling": st.booleans() | json_values, "x": json_values})


since_queries = (st.text(max_size=6) | st.floats().map(str)).map(
    lambda t: "status?since=" + quote(t))


def encode(body):
    return json.dumps(body).encode()


requests = st.one_of(
    st.tuples(st.just("POST"), st.just("scale"), scale_bodies.map(encode)),
    st.tuples(st.just("POST"), st.just("restart"), restart_bodies.map(encode)),
    st.tuples(st.just("POST"), st.sampled_from(["scale", "restart"]),
              json_values.map(encode) | st.binary(max_size=24)
              | st.sampled_from([b"[", b"{\"formation\": {\"web\": NaN}}", b"\xff\xfe{}",
                                 b"[" * 5000 + b"]" * 5000])),
    st.tuples(st.just("GET"), since_queries, st.just(b"")),
)


def expected_formation(before, route, data):
    if route != "scale":
        return before
    return resolve_formation(["web", "worker"], before, json.loads(data)["formation"], **CAPS)


@EXAMPLES
@given(door=st.sampled_from(sorted(DOORS)), request=requests)
def test_any_request_is_answered_below_500_and_a_refusal_changes_nothing(run, door, request):
    method, route, data = request
    before = snapshot(run)
    status, payload = DOORS[door](run, method, route, data)
    assert status < 500, (door, request, status, payload)
    event(f"{route.partition('?')[0]} {status}")
    after = snapshot(run)
    if status >= 400:
        assert after == before, (door, request, status, payload)
        error = payload["error"]
        assert error and "\n" not in error and "Traceback" not in error, payload
    elif method == "POST":
        assert after[0] == expected_formation(before[0], route, data), (request, payload)
    assert_saved_formation_loads(run)


# -- the defects of issue 15, one by one ------------------------------------------------
@pytest.mark.parametrize("door", sorted(DOORS))
@pytest.mark.parametrize("body,field", [
    ({"formation": {"web": -1}}, 'formation["web"]: -1'),
    ({"formation": {"web": 2.5}}, 'formation["web"]: 2.5'),
    ({"formation": {"web": True}}, 'formation["web"]: true'),
    ({"formation": {"web": 2.0}}, 'formation["web"]: 2.0'),
    ({"formation": {"web": "abc"}}, 'formation["web"]: "abc"'),
    ({"formation": {"web": 3}}, "cap of 2"),
    ({"formation": {"web": 2, "worker": 2}}, "pod limit of 3"),
    ({"formation": {"nope": 1}}, "unknown process type 'nope'"),
    ({"formation": [1]}, "formation must be an object"),
    ({"formation": {"web": 1}, "now": True}, 'unknown field "now"'),
    ([1, 2], "body must be a JSON object"),
    ("web=2", "body must be a JSON object"),
])
def test_bad_scale_is_400_on_both_doors_and_nothing_saved(run, door, body, field):
    before = snapshot(run)
    status, payload = DOORS[door](run, "POST", "scale", encode(body))
    assert status == 400 and field in payload["error"], payload
    assert snapshot(run) == before
    assert_saved_formation_loads(run)


def test_both_doors_give_the_same_answer(run):
    for body in ({"formation": {"web": "abc"}}, {"target": "nope"}, {"rolling": "yes"}):
        route = "scale" if "formation" in body else "restart"
        answers = {door: send(run, "POST", route, encode(body)) for door, send in DOORS.items()}
        assert answers["socket"] == answers["dashboard"] and answers["socket"][0] == 400


@pytest.mark.parametrize("body,field", [
    ({"target": "nope"}, 'no replica or process type named "nope"'),
    ({"target": 5}, "target: no replica or process type named 5"),
    ({"target": ""}, 'named ""'),
    ({"target": "web", "rolling": "yes"}, 'rolling: "yes" is not true or false'),
    ({"target": "web", "force": True}, 'unknown field "force"'),
])
def test_bad_restart_is_400_and_restarts_nothing(run, body, field):
    pids = {r["name"]: r["pid"] for r in run.status()["replicas"]}
    status, payload = via_socket(run, "POST", "restart", encode(body))
    assert status == 400 and field in payload["error"], payload
    assert {r["name"]: r["pid"] for r in run.status()["replicas"]} == pids


def test_routes_methods_queries_and_stop(run):
    assert via_socket(run, "GET", "status?since=abc")[0] == 400
    assert via_socket(run, "GET", "status?since=nan")[0] == 400
    assert via_socket(run, "GET", "status?x=1")[0] == 400
    status, data = via_socket(run, "GET", "status?since=0")
    assert status == 200 and isinstance(data["memory_history"], list)
    assert via_socket(run, "GET", "scale")[0] == 405
    assert via_socket(run, "POST", "nope")[0] == 404
    assert via_dashboard(run, "POST", "stop", b"{}")[0] == 404  # no stop from a web page
    status, payload = via_socket(run, "POST", "stop", encode({"now": True}))
    assert status == 400 and 'unknown field "now"' in payload["error"]
    assert via_socket(run, "POST", "stop", b"[]")[0] == 400
    assert run.process.poll() is None  # a refused stop stops nothing
    assert via_socket(run, "POST", "scale", b"{" + b" " * (70 * 1024) + b"}")[0] == 413
    # A loopback run: no token, and status shows the plain dashboard URL.
    assert not os.path.exists(rundir.token_path(run.run_dir))
    assert run.status()["dashboard_url"] == f"{run.url}/_dashscale/"
    assert "dashboard_url" not in via_dashboard(run, "GET", "status")[1]


def test_cli_shows_the_refusal_as_usage_error(run):
    before = snapshot(run)
    for args, words in ((["web=3"], "cap of 2"), (["nope=1"], "unknown process type 'nope'"),
                        (["web=abc"], "invalid count")):
        result = run.cli("scale", *args)
        assert result.returncode == 2, result
        assert result.stderr.startswith("dashscale: ") and words in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert snapshot(run) == before
    result = run.cli("scale", "worker=0")
    assert result.returncode == 0 and "worker=0" in result.stdout, result
    assert "worker=0" in formation_file(run)
    assert run.cli("scale", "worker=1").returncode == 0


def test_rolling_restart_of_every_type(run):
    """Found by the property test: a rolling restart of all replicas of two types
    answered 500 (KeyError), as the roll of the first type had replaced its names."""
    before = run.status()
    status, payload = via_socket(run, "POST", "restart", encode({"rolling": True}))
    assert status == 200, payload
    assert sorted(payload["restarted"]) == sorted(r["name"] for r in before["replicas"])
    after = run.status()
    assert after["formation"] == before["formation"]
    old_pids = {r["pid"] for r in before["replicas"]}
    assert not old_pids & {r["pid"] for r in after["replicas"]}
