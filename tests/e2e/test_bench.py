"""`dashscale bench` on real replicas: the sample app and a Dash Pages app (the protocol
and the bench on an in-process server: tests/unit/test_bench.py)."""
import json
import os
import shutil

import pytest

from tests import REPO, TESTS
from tests.unit.test_bench import DESIGN_KEYS

PAGES_APP = os.path.join(TESTS, "apps", "pages_app")
SAMPLE_PROCFILE = "web: gunicorn sample_app.app:server --workers 1\n"


@pytest.fixture
def sample_app_dir(app_dir):
    """The sample app beside the test apps: it is in the repo, not installed."""
    shutil.copytree(os.path.join(REPO, "sample_app"), app_dir / "sample_app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return app_dir


@pytest.mark.slow
@pytest.mark.usefixtures("sample_app_dir")
def test_bench_sample_app_on_two_replicas(dashscale):
    run = dashscale(SAMPLE_PROCFILE, formation="web=2",
                    env={"SAMPLE_CALLBACK_SECONDS": "0.5"})
    res = run.cli("bench", "--json", "-n", "3")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert DESIGN_KEYS <= set(data)
    assert data["clicks"] == 3 and data["users"] == 1 and data["callbacks_per_click"] == 4
    assert data["errors"] == 0 and data["skipped"] == []
    assert set(data["replicas"]) == {"web.1", "web.2"}
    assert sum(data["replicas"].values()) == 12 and min(data["replicas"].values()) >= 4
    assert data["total_workers"] == 2
    # ideal = ceil(4 × 1 / 2) × ~0.5 s; a 2-core CI machine gets generous bounds
    assert 0.95 <= data["ideal_s"] <= 1.6
    assert 0.9 * data["ideal_s"] <= data["click_p50_s"] <= 1.5 * data["ideal_s"]
    assert data["click_p50_s"] <= data["click_p95_s"] <= data["click_max_s"]


@pytest.mark.slow
@pytest.mark.usefixtures("sample_app_dir")
def test_bench_scaling_table_plot_and_restore(dashscale, tmp_path):
    run = dashscale(SAMPLE_PROCFILE, formation="web=2",
                    env={"SAMPLE_CALLBACK_SECONDS": "0.3"})
    plot = tmp_path / "out" / "scaling.html"
    res = run.cli("bench", "--scaling", "2,1", "-n", "2", "--plot", str(plot))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.split()[:2] == ["replicas", "workers"])
    table = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[:2] for row in table] == [["2", "2"], ["1", "1"]]
    p50 = {row[0]: float(row[2].rstrip("s")) for row in table}
    assert p50["1"] > 1.5 * p50["2"]  # 4 callbacks on 1 worker vs on 2
    assert plot.exists() and "plotly" in plot.read_text()[:200000].lower()
    assert "restored web=2" in res.stderr
    assert run.status()["formation"]["web"] == 2
    run.wait_ready(2)




@pytest.mark.slow
def test_bench_a_dash_pages_page_on_two_replicas(dashscale, tmp_path):
    """`bench URL/report` on a Dash Pages app: the page is rendered first (the router on
    a replica), then its Refresh button drives two slow callbacks and their chain."""
    directory = tmp_path / "pages-app"
    shutil.copytree(PAGES_APP, directory)
    run = dashscale("web: gunicorn app:server --workers 1\n", formation="web=2",
                    directory=directory, env={"PAGES_CALLBACK_SECONDS": "0.3"})
    res = run.cli("bench", run.url + "/report", "--json", "-n", "3")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert DESIGN_KEYS <= set(data)
    assert data["page"] == "/report" and data["input"] == "refresh.n_clicks"
    assert data["rendered_by"][0] == "_pages_content.children, _pages_store.data"
    assert data["callbacks"] == ["sales.children", "costs.children", "summary.children"]
    assert data["callbacks_per_click"] == 3 and data["errors"] == 0 and data["skipped"] == []
    assert set(data["replicas"]) == {"web.1", "web.2"} and sum(data["replicas"].values()) == 9
    assert data["click_p50_s"] >= 0.3 and data["ratio"] is not None
    # the home page's only button is its "learn more"; the report's is not on it
    res = run.cli("bench", run.url + "/", "--input", "refresh.n_clicks", "-n", "1")
    assert res.returncode == 2 and "no component 'refresh' on the page /" in res.stderr
    res = run.cli("bench", run.url, "--json", "-n", "1")
    assert res.returncode == 0 and json.loads(res.stdout)["input"] == "learn-more.n_clicks"
