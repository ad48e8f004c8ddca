"""`dashscale init` as a user meets it: a missing Procfile points to it (the real
command), and one run of `start` on what it wrote."""
import subprocess
import sys

import pytest

from tests.unit.test_init import FLAT, init, tree


def test_procfile_not_found_points_to_init(tmp_path):
    for args in (["start"], ["check"], ["export", "k8s"]):
        res = subprocess.run([sys.executable, "-m", "dashscale_local.cli", *args],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (args, res.stderr)
        assert "Procfile not found — run `dashscale init`" in res.stderr, (args, res.stderr)


@pytest.mark.slow
def test_init_then_start_serves_the_app(dashscale, tmp_path):
    tree(tmp_path, {"app.py": FLAT, "requirements.txt": "dash\ngunicorn\n"})
    init(tmp_path)
    run = dashscale(None, directory=tmp_path, formation="web=2")
    status, headers, body = run.get("/")
    assert status == 200 and b"_dash-config" in body
    assert headers["X-Dashscale-Replica"] in ("web.1", "web.2")
    status, _headers, body = run.get("/_dash-layout")
    assert status == 200 and b"hello from a flat app" in body
