"""Saving an upload beside the app and reading it in the next callback: the replica
check catches it, because each replica has its own disk (as a Dash Enterprise pod);
with --shared-fs (every replica in one directory) it would pass."""
import base64

import pytest

from dashscale_local.pytest_plugin import Call, ReplicaStateError

pytestmark = pytest.mark.slow

CSV = "city,people\nOslo,700000\nBergen,290000\n"
SEQUENCE = [
    Call("saved.children", {"upload.contents": "data:text/csv;base64,"
                            + base64.b64encode(CSV.encode()).decode(),
                            "upload.filename": "cities.csv"}),
    Call("rows.children", "saved.children"),
]


def test_fails_the_replica_check_by_default_and_passes_with_shared_fs(dashscale_app):
    with pytest.raises(ReplicaStateError, match="step 2: rows.children"):
        dashscale_app.assert_replica_safe(SEQUENCE, replicas=2)
    # --shared-fs: every replica in one directory, as dashscale ran before (and hid it)
    dashscale_app.assert_replica_safe(SEQUENCE, replicas=2, shared_fs=True)


def test_the_check_names_the_read_that_missed_the_file(dashscale_app):
    report = dashscale_app.check_replica_safe(SEQUENCE, replicas=2)
    assert not report.ok
    first = report.divergences[0]
    assert first.call.output == "rows.children"
    assert first.baseline.outputs == {"rows.children": "cities.csv: 2 rows"}
    assert first.trial.outputs == {"rows.children": "cities.csv: not found"}

