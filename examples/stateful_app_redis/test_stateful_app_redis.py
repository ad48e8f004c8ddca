"""The Redis-backed variant of ../stateful_app: the same calls give the same answers
with three replicas as with one, because the state lives in the app's managed Redis
(dashscale.ini: services = redis; each formation gets its own, empty, Redis)."""
import shutil

import pytest

from dashscale_local.pytest_plugin import Call

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("redis-server"),
                                 reason="Debian package redis-server not installed")]

SEQUENCE = [
    Call("loaded.children", "load.n_clicks", state={"dataset.value": "tips"}),
    Call("summary.children", "loaded.children"),
    Call("added.children", "add.n_clicks"),
    Call("added.children", "add.n_clicks"),
    Call("summary.children", "added.children"),
]


def test_same_answers_with_three_replicas_as_with_one(dashscale_app):
    report = dashscale_app.assert_replica_safe(SEQUENCE, replicas=3)
    assert len(set(report.spread)) >= 2   # the calls really went to different replicas


def test_every_replica_has_the_same_redis(dashscale_app):
    app = dashscale_app(formation="web=2")
    [redis] = app.status()["services"]
    assert redis["name"] == "redis" and redis["env"] == "REDIS_URL"
    assert app.call_callback("summary.children", {"loaded.children": None}).value(
        "summary.children") == "no dataset loaded"
