"""The pytest plugin (dashscale_local.pytest_plugin) without processes: the replica-state
report, `replica_of`, event matching (inner pytest sessions on the examples/ apps:
tests/e2e/test_plugin.py)."""
from dashscale_local import pytest_plugin as plugin
from dashscale_local.pytest_plugin import Call, Step, compare_steps
from dashscale_local.pytest_plugin.app import _mentions
from dashscale_local.pytest_plugin.replica_safe import _with_web


def step(i, output, replica, value, error=None, status=200):
    return Step(i, Call(output, f"{output.split('.')[0]}.n_clicks"), replica, status,
                {output: value}, error)


def test_report_names_steps_and_replicas():
    base = [step(1, "a.children", "web.1", 1), step(2, "b.children", "web.1", 2)]
    trial = [step(1, "a.children", "web.2", 1), step(2, "b.children", "web.1", 1)]
    report = compare_steps(base, trial, replicas=2)
    assert not report.ok and [d.index for d in report.divergences] == [2]
    text = str(report)
    assert "1 of 2 callbacks answered differently with 2 replicas" in text
    assert "step 2: b.children (click b.n_clicks)" in text
    assert "1 replica  (web.1): {'b.children': 2}" in text
    assert "2 replicas (web.1): {'b.children': 1}" in text
    assert "#1 a.children on web.2" in text
    assert report.spread == {"web.2": 1, "web.1": 1}


def test_report_without_spread_is_inconclusive_not_ok():
    base = [step(1, "a.children", "web.1", 1), step(2, "a.children", "web.1", 2)]
    report = compare_steps(base, list(base), replicas=2)
    assert not report.ok and not report.divergences
    assert str(report).startswith("inconclusive: the 2-replica run served all 2 calls from web.1")


def test_a_sequence_failing_on_one_replica_is_reported_as_such():
    base = [step(1, "a.children", "web.1", None, error="HTTP 500"),
            step(2, "a.children", "web.1", 2)]
    trial = [step(1, "a.children", "web.1", None, error="HTTP 500"),
             step(2, "a.children", "web.2", 2)]
    report = compare_steps(base, trial, replicas=2)
    assert not report.ok and "fails even with one replica: step 1" in str(report)


def test_identical_answers_pass():
    base = [step(1, "a.children", "web.1", 1), step(2, "a.children", "web.1", 2)]
    trial = [step(1, "a.children", "web.2", 1), step(2, "a.children", "web.1", 2)]
    report = compare_steps(base, trial, replicas=2)
    assert report.ok, str(report)
    assert "answered the same with 2 replicas" in str(report)


def test_replica_of_reads_every_response_shape():
    class WithHeaders:
        headers = {"x-dashscale-replica": "web.3"}
    replica_of = plugin.DashscaleApp.replica_of
    assert replica_of(plugin.Response(200, {"X-Dashscale-Replica": "web.2"}, b"")) == "web.2"
    assert replica_of((200, {"X-Dashscale-Replica": "web.1"}, b"")) == "web.1"
    assert replica_of(WithHeaders()) == "web.3"
    assert replica_of([("X-DASHSCALE-REPLICA", "web.4")]) == "web.4"
    assert replica_of(plugin.CallbackResult("o", 200, "web.5", {}, None, 0.1)) == "web.5"
    assert replica_of({}) is None


def test_events_match_whole_replica_names():
    assert _mentions("web.1 OOMKilled at 300 MiB", "web.1")
    assert _mentions("restarted web.2, web.1", "web.1")
    assert not _mentions("web.10 OOMKilled", "web.1")
    assert not _mentions("myweb.1 restarted", "web.1")


def test_with_web_keeps_other_types():
    assert _with_web(None, 2) == "web=2"
    assert _with_web("web=4,worker=1", 1) == "web=1,worker=1"
