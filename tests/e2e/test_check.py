"""`dashscale check --measure` on a real replica of the echo app (the corpus of Procfiles
and apps with their findings: tests/unit/test_check.py)."""
import json
import re
import os
import subprocess
import sys
import uuid

import pytest

from dashscale_local.testing import MARKER, processes_with_marker
from tests.unit.test_check import shape


# ─── --measure ────────────────────────────────────────────────────────────────────────
def cli(directory, *args, marker):
    env = dict(os.environ, **{MARKER: marker})
    return subprocess.run([sys.executable, "-m", "dashscale_local.cli", *args, "-f",
                           os.path.join(str(directory), "Procfile")], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_measure_projects_memory_of_a_real_replica(app_dir):
    (app_dir / "Procfile").write_text("web: gunicorn echo_app:app --workers 2\n")
    marker = uuid.uuid4().hex
    try:
        result = cli(app_dir, "check", "--measure", "--json", "-m", "web=3",
                     "--memory-limit", "64MiB", marker=marker)
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads(result.stdout)
        m = data["measure"]
        assert m["workers"] == 2 and m["replicas"] == 3
        assert m["metric"] in ("pss", "rss")
        assert 1 << 20 < m["per_worker_bytes"] < 500 << 20
        assert 1 << 20 < m["master_bytes"] < 500 << 20
        assert m["replica_bytes"] == m["master_bytes"] + 2 * m["per_worker_bytes"]
        assert m["formation_bytes"] == 3 * m["replica_bytes"]
        assert m["limit_bytes"] == 64 << 20 and m["max_bytes"] == 3 * (64 << 20)
        assert m["fraction"] == pytest.approx(m["replica_bytes"] / m["limit_bytes"], abs=1e-3)
        projection = [w for w in data["warnings"] if w["code"] == "memory-projection"
                      and "limit" in w["message"]]
        assert bool(projection) == (m["fraction"] > 0.8)
        # The replica is gone again.
        assert not processes_with_marker(marker)
    finally:
        for proc in processes_with_marker(marker):
            proc.kill()


@pytest.mark.slow
def test_measure_failure_quotes_the_cause(tmp_path):
    # The static check cannot see a dependency that is not installed; the run does.
    directory = shape(tmp_path, "import_error", "web: gunicorn app:server --workers 2\n")
    marker = uuid.uuid4().hex
    try:
        result = cli(directory, "check", "--measure", "--json", marker=marker)
        assert result.returncode == 1, result.stdout + result.stderr
        data = json.loads(result.stdout)
        [error] = data["errors"]
        assert error["code"] == "measure-failed" and error["line"] == 1
        # gunicorn ≥24 with 2 workers failing at once can die of a second HaltServer
        # while stopping: its real exit status is then 1 (seen once in a few runs).
        assert re.fullmatch(
            r"--measure: web\.1 did not answer HTTP: worker failed to boot \(exit [31]\): "
            r"ModuleNotFoundError: No module named 'plotly_theme_kit_missing'",
            error["message"]), error["message"]
        assert not processes_with_marker(marker)
    finally:
        for proc in processes_with_marker(marker):
            proc.kill()
