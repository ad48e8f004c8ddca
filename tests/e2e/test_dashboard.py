"""The Scale tab at /_dashscale/: the API through the real proxy
(status, history, scale with cross-site protection), and the page end to end in a real
headless Chromium driven by selenium."""
import http.client
import json
import os
import shutil
import tempfile
import time

import psutil
import pytest

from dashscale_local.testing import wait_for

PROCFILE = "web: gunicorn echo_app:app --workers 1\n"
GOOD = {"Content-Type": "application/json", "X-Dashscale-Request": "1"}


# -- the API through the proxy ----------------------------------------------------------
def request(run, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=120)
    try:
        hdrs = {"Host": f"127.0.0.1:{run.port}"}
        hdrs.update(headers or {})
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_routes_and_headers(dashscale):
    run = dashscale(PROCFILE, formation="web=1", args=["--memory-limit", "256MiB"])
    status, headers, _ = request(run, "GET", "/_dashscale")
    assert status == 308 and headers["location"] == "/_dashscale/"
    status, headers, page = request(run, "GET", "/_dashscale/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert b"/_dashscale/dashboard.js" in page and b"<script>" not in page   # no inline JS
    for path, ctype in (("/_dashscale/dashboard.js", "text/javascript"),
                        ("/_dashscale/dashboard.css", "text/css")):
        status, headers, data = request(run, "GET", path)
        assert status == 200 and headers["content-type"].startswith(ctype) and data
    assert request(run, "GET", "/_dashscale/nope")[0] == 404
    assert request(run, "POST", "/_dashscale/api/status", {}, GOOD)[0] == 405
    assert request(run, "GET", "/_dashscale/api/scale")[0] == 405
    # The app keeps every other path.
    status, headers, body = request(run, "GET", "/_dashscalex")
    assert status == 200 and headers["x-dashscale-replica"] == "web.1"

    status, headers, body = request(run, "GET", "/_dashscale/api/status")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    data = json.loads(body)
    assert data["formation"] == {"web": 1}
    [rep] = data["replicas"]
    assert rep["name"] == "web.1" and rep["memory_limit_bytes"] == 256 * 2**20
    assert {"inflight", "served"} <= set(rep["proxy"])
    assert data["dashboard"]["max_per_type"] >= 1 and "memory_history" not in data

    # Memory history: one sample a second, incremental with ?since=.
    def history():
        d = json.loads(request(run, "GET", "/_dashscale/api/status?since=0")[2])
        return d["memory_history"] if len(d["memory_history"]) >= 3 else None
    samples = wait_for(history, 10, interval=0.2, message="3 memory samples")
    assert all(s["web.1"] > 1024 * 1024 for _, s in samples[1:])    # a real PSS figure
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:])]
    assert all(0.5 < g < 2.0 for g in gaps), gaps
    last = samples[-1][0]
    newer = json.loads(request(run, "GET", f"/_dashscale/api/status?since={last}")[2])
    assert all(t > last for t, _ in newer["memory_history"])
    assert request(run, "GET", "/_dashscale/api/status?since=abc")[0] == 400

    # A DNS-rebinding page talks to us under its own host name: refused, even for GET.
    status, _, body = request(run, "GET", "/_dashscale/api/status",
                              headers={"Host": f"evil.example:{run.port}"})
    assert status == 403 and b"host" in body.lower()
    assert request(run, "GET", "/_dashscale/", headers={"Host": "evil.example"})[0] == 403
    assert request(run, "GET", "/_dashscale/api/status",
                   headers={"Host": f"localhost:{run.port}"})[0] == 200


@pytest.mark.slow
def test_scale_endpoint_refuses_cross_site_and_scales(dashscale):
    run = dashscale(PROCFILE, formation="web=1")
    spec = {"formation": {"web": 2}}
    origin = f"http://127.0.0.1:{run.port}"
    refused = [
        ({"Content-Type": "application/json"}, 403),                        # no custom header
        ({**GOOD, "Origin": "http://evil.example"}, 403),                    # foreign origin
        ({**GOOD, "Origin": origin, "Sec-Fetch-Site": "cross-site"}, 403),
        ({**GOOD, "Host": f"evil.example:{run.port}", "Origin": f"http://evil.example:{run.port}"},
         403),                                                              # DNS rebinding
        ({"X-Dashscale-Request": "1", "Content-Type": "text/plain"}, 415),   # simple request
        ({"X-Dashscale-Request": "1",
          "Content-Type": "application/x-www-form-urlencoded"}, 415),
    ]
    for headers, want in refused:
        status, _, body = request(run, "POST", "/_dashscale/api/scale", spec, headers)
        assert status == want, (headers, status, body)
        assert "error" in json.loads(body)
    assert run.status()["formation"] == {"web": 1}
    assert len(run.status()["replicas"]) == 1

    for bad in ({"formation": {"web": -1}}, {"formation": {"web": "2"}}, {"formation": {}},
                {"formation": {"nope": 1}}, [1]):
        status, _, body = request(run, "POST", "/_dashscale/api/scale", bad, GOOD)
        assert status == 400, (bad, body)
    assert request(run, "POST", "/_dashscale/api/scale", b"{not json", GOOD)[0] == 400

    status, headers, body = request(run, "POST", "/_dashscale/api/scale", spec,
                                    {**GOOD, "Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    assert json.loads(body) == {"formation": {"web": 2}}
    st = run.wait_ready(count=2)
    assert [r["name"] for r in st["replicas"]] == ["web.1", "web.2"]
    assert any(e["kind"] == "scale" for e in st["events"])

    # The dashboard is the runner's, not the app's: it answers with no replica at all.
    status, _, body = request(run, "POST", "/_dashscale/api/scale", {"formation": {"web": 0}}, GOOD)
    assert status == 200, body
    wait_for(lambda: not run.status()["replicas"], 30, message="web=0")
    assert request(run, "GET", "/")[0] == 503
    assert request(run, "GET", "/_dashscale/")[0] == 200
    assert json.loads(request(run, "GET", "/_dashscale/api/status")[2])["formation"] == {"web": 0}

    status, _, body = request(run, "POST", "/_dashscale/api/restart", {"target": "nope"}, GOOD)
    assert status == 400 and "nope" in json.loads(body)["error"]


# -- the page in a real headless Chromium -----------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _chromium_missing():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return "Debian's chromium and chromium-driver are not installed " \
               "(apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


@pytest.fixture
def browser(tmp_path_factory):
    """A headless Chromium with a fresh profile; quit (and checked gone) at teardown."""
    reason = _chromium_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")          # selenium-manager must not download
    profile = tempfile.mkdtemp(prefix="dashscale-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                "--window-size=1400,1300"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(log)), options=options)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            left = []
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    if any(profile in part for part in proc.info["cmdline"] or ()):
                        left.append(proc)
                        proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=10)
            shutil.rmtree(profile, ignore_errors=True)
            assert not left, f"chromium processes left after quit: {[p.pid for p in left]}"


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_in_chromium(dashscale, browser, tmp_path):
    from selenium.webdriver.common.by import By

    run = dashscale(PROCFILE, formation="web=1", args=["--memory-limit", "256MiB"])
    browser.get(run.url + "/_dashscale")               # the redirect, then the page
    assert browser.current_url == run.url + "/_dashscale/"

    def find(css):
        return browser.find_elements(By.CSS_SELECTOR, css)

    def text(css):
        els = find(css)
        return els[0].text if els else ""

    # Shows the replicas and the process types, live.
    wait_for(lambda: "RUNNING" in text('tr[data-replica="web.1"] .state')
             or "STARTING" in text('tr[data-replica="web.1"] .state'), 15,
             message="web.1 row in the page")
    row = text('tr[data-replica="web.1"]')
    assert str(run.replica("web.1")["pid"]) in row and "/ 256 MiB" in row
    assert text("#live") == "live"
    assert find('.type-row[data-type="web"]')
    assert find('input.replica-count[data-type="web"]')[0].get_attribute("value") == "1"
    assert "of max 256 MiB" in text("#total-text")

    # Change the count in the page: web 1 → 2 starts a new replica.
    browser.find_element(By.CSS_SELECTOR, '.type-row[data-type="web"] button.step:nth-of-type(2)').click()
    assert find('input.replica-count[data-type="web"]')[0].get_attribute("value") == "2"
    browser.find_element(By.CSS_SELECTOR, 'button.apply[data-type="web"]').click()
    run.wait_ready(count=2, timeout=30)
    assert run.status()["formation"] == {"web": 2}
    wait_for(lambda: "formation is now web=2" in text("#scale-message"), 30,
             message="the page to confirm the scale")
    wait_for(lambda: find('tr[data-replica="web.2"]'), 10, message="web.2 row in the page")
    wait_for(lambda: "scale" in text("#events"), 10, message="the scale event")

    # The memory plot has data points for the replicas.
    def points(name):
        els = find(f'#plot polyline[data-replica="{name}"]')
        return int(els[0].get_attribute("data-points")) if els else 0
    wait_for(lambda: points("web.1") >= 3 and points("web.2") >= 1, 15,
             message="memory plot points")
    coords = find('#plot polyline[data-replica="web.1"]')[0].get_attribute("points").split()
    assert len(coords) >= 3 and all("," in c for c in coords)
    assert "web.1" in text("#legend")

    # The last `check --replicas` (tests/e2e/test_replica_check.py runs the real one).
    from dashscale_local import replica_check
    assert text("#replica-check") == "not run yet"
    replica_check.save(run.run_dir, {
        "agree": False, "time": time.time(), "notes": [],
        "replicas": [{"name": "web.1"}, {"name": "web.2"}],
        "divergences": [{"replica": "web.2", "what": "layout", "id": "graph-9c1d",
                         "detail": "id 'graph-3f2a' on web.1, 'graph-9c1d' on web.2",
                         "cause": "component ids drawn per process"}]})
    wait_for(lambda: text("#replica-check").startswith("1 divergence (web.1, web.2)"), 10,
             message="the replica check in the page")
    assert "web.2 · layout: id 'graph-3f2a' on web.1" in text("#replica-check-list")

    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors                           # no JS errors, no CSP violations


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_in_chromium_beyond_loopback(dashscale, browser):
    """--host 0.0.0.0 (the browser still talks to 127.0.0.1): the bare page cannot scale;
    the page opened with the printed token can, through the cookie it set."""
    from selenium.webdriver.common.by import By

    run = dashscale(PROCFILE, formation="web=1", args=["--host", "0.0.0.0"])
    token = run.status()["dashboard_url"].partition("?token=")[2]
    assert token

    def scale_up(count):
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'button.apply[data-type="web"]'),
                 15, message="the web row in the page")
        field = browser.find_element(By.CSS_SELECTOR, 'input.replica-count[data-type="web"]')
        field.clear()
        field.send_keys(str(count))
        browser.find_element(By.CSS_SELECTOR, 'button.apply[data-type="web"]').click()

    def message():
        return browser.find_element(By.CSS_SELECTOR, "#scale-message").text

    browser.get(run.url + "/_dashscale/")
    scale_up(2)
    wait_for(lambda: "token" in message(), 15, message="the page to show the refusal")
    assert run.status()["formation"] == {"web": 1}

    browser.get(f"{run.url}/_dashscale/?token={token}")
    assert browser.current_url == run.url + "/_dashscale/"   # the token left the URL
    scale_up(2)
    wait_for(lambda: "formation is now web=2" in message(), 30, message="the scale")
    assert run.status()["formation"] == {"web": 2}
