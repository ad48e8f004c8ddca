"""--app-name (serve under /NAME/ as Dash Enterprise does) and --spread (CPU pinning)."""
import json
import os
import shutil
import urllib.error
import urllib.request

import psutil
import pytest

from dashscale_local.testing import wait_for
from tests import REPO

pytestmark = pytest.mark.slow


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_sample_app_under_a_prefix(dashscale, app_dir):
    shutil.copytree(os.path.join(REPO, "sample_app"), app_dir / "sample_app")
    run = dashscale("web: gunicorn sample_app.app:server --workers 1\n", formation="web=2",
                    args=["--app-name", "sales-report"], env={"SAMPLE_CALLBACK_SECONDS": "0"})
    st = run.status()
    assert st["proxy"]["url"] == run.url + "/sales-report/"
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(run.url + "/", timeout=10)
    assert err.value.code == 302 and err.value.headers["Location"] == "/sales-report/"
    status, _, page = run.get("/sales-report/")
    assert status == 200 and b'"requests_pathname_prefix":"\\u002fsales-report\\u002f"' in page
    layout = json.loads(run.get("/sales-report/_dash-layout")[2])
    assert "btn" in json.dumps(layout)
    body = json.dumps({"output": "graph-1.figure", "outputs": {"id": "graph-1", "property": "figure"},
                       "inputs": [{"id": "btn", "property": "n_clicks", "value": 1}],
                       "changedPropIds": ["btn.n_clicks"], "state": []}).encode()
    replicas = set()
    for _ in range(2):
        status, headers, data = run.get("/sales-report/_dash-update-component", data=body,
                                        headers={"Content-Type": "application/json"})
        assert status == 200 and json.loads(data)["response"]["graph-1"]["figure"]["data"]
        replicas.add(headers["X-Dashscale-Replica"])
    assert replicas == {"web.1", "web.2"}


@pytest.mark.skipif(len(psutil.Process().cpu_affinity()) < 2, reason="needs 2 CPUs")
def test_spread_pins_replicas_to_distinct_cpus(dashscale):
    run = dashscale(formation="web=2", args=["--spread"])
    cpus = sorted(psutil.Process().cpu_affinity())

    def pinned():
        reps = run.status()["replicas"]
        return reps if all(r["cpus"] for r in reps) else None
    reps = wait_for(pinned, 10, message="cpus in status")
    sets = [r["cpus"] for r in reps]
    assert not set(sets[0]) & set(sets[1]) and sorted(sets[0] + sets[1]) == cpus
    for r in reps:
        root = psutil.Process(r["pid"])
        for proc in [root] + root.children(recursive=True):
            assert proc.cpu_affinity() == r["cpus"]
