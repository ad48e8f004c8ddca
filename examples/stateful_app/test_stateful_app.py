"""The stateful example keeps data in module-level variables: fine with one replica,
wrong with two. The replica check catches it and names the callbacks and replicas."""
import pytest

from dashscale_local.pytest_plugin import Call, ReplicaStateError

pytestmark = pytest.mark.slow

SEQUENCE = [
    Call("loaded.children", "load.n_clicks", state={"dataset.value": "tips"}),
    Call("summary.children", "loaded.children"),
    Call("added.children", "add.n_clicks"),
    Call("added.children", "add.n_clicks"),
    Call("summary.children", "added.children"),
]


@pytest.mark.xfail(raises=ReplicaStateError, strict=True,
                   reason="module-level state: this is what a user sees for this app")
def test_same_answers_with_three_replicas_as_with_one(dashscale_app):
    dashscale_app.assert_replica_safe(SEQUENCE, replicas=3)


def test_the_check_names_the_diverging_callbacks_and_replicas(dashscale_app):
    report = dashscale_app.check_replica_safe(SEQUENCE, replicas=2)
    assert not report.ok
    assert set(report.spread) == {"web.1", "web.2"}
    first = report.divergences[0]
    # `load` wrote its global on one replica; `summary`, on the other, reads none
    assert first.index == 2 and first.call.output == "summary.children"
    assert first.baseline.outputs == {"summary.children": "tips: 244 rows (0 added)"}
    assert first.trial.outputs == {"summary.children": "no dataset loaded"}
    assert first.trial.replica != report.trial[0].replica
    text = str(report)
    assert "step 2: summary.children" in text
    shown = f"2 replicas ({first.trial.replica}): {{'summary.children': 'no dataset loaded'}}"
    assert shown in text
