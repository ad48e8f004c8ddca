"""The stateless example passes the replica check: every callback answers the same with
two replicas as with one, although consecutive calls land on different replicas."""
import pytest

from dashscale_local.pytest_plugin import Call

pytestmark = pytest.mark.slow

# A user session: load a dataset, read the summary, add two rows, read it again.
SEQUENCE = [
    Call("selection.data", "load.n_clicks", state={"dataset.value": "tips"}),
    Call("summary.children", "selection.data"),
    Call("added.data", "add.n_clicks"),
    Call("added.data", "add.n_clicks"),
    Call("summary.children", "added.data"),
]


def test_same_answers_with_two_replicas_as_with_one(dashscale_app):
    # Uses the Procfile next to this file; starts web=1 and web=2 side by side.
    report = dashscale_app.assert_replica_safe(SEQUENCE, replicas=2)
    assert set(report.spread) == {"web.1", "web.2"}   # round-robin really spread them
    assert report.trial[-1].outputs == {"summary.children": "tips: 246 rows (2 added)"}


def test_callbacks_through_the_proxy(dashscale_app):
    run = dashscale_app(formation="web=2")
    loaded = run.call_callback("selection.data", "load.n_clicks",
                               state={"dataset.value": "gapminder"})
    summary = run.call_callback("summary.children", "selection.data")
    assert summary.value("summary.children") == "gapminder: 1704 rows (0 added)"
    assert {run.replica_of(loaded), run.replica_of(summary)} == {"web.1", "web.2"}
