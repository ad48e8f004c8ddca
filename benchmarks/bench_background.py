#!/usr/bin/env python3
"""More web replicas vs background callbacks + worker replicas, measured.

  python benchmarks/bench_background.py [--clicks 3] [--callback-seconds 2] [--json]

The sample app (copied into a temp directory) under `dashscale start` (free ports,
dashscale_local.testing.Run). One click fires the app's four callbacks of
SAMPLE_CALLBACK_SECONDS each, as the browser does (four concurrent POSTs):

1. `web=1`, `gunicorn --workers 1`, the "Update graphs" button: the four queue (≈4×).
2. `web=4`: the same button, one callback per replica (≈1×).
3. Procfile.celery with `--service redis`, `web=1,worker=1` (`celery … --concurrency=4`),
   the "Update graphs in the background" button: the web replica queues four Celery jobs
   and answers the renderer's polls (every 250 ms); the worker runs them side by side,
   with Celery's prefork pool (4 processes) and with its threads pool (1 process).

Each configuration: one warm-up click (not counted), then --clicks clicks; p50 of the
click latency, Σ PSS of the replicas (the memory Dash Enterprise counts against the
app) and, apart, the managed Redis's memory. Results: benchmarks/results/bench_background.json.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashscale_local.testing import Run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_background.json"


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def dash_end_id(base):
    """The page load's signed end_id (background handles are bound to it)."""
    with urllib.request.urlopen(base + "/", timeout=60) as resp:
        html = resp.read().decode()
    m = re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1)).get("end_id")


def callback_body(button, output, n_clicks, background):
    return {"output": f"{output}.figure", "outputs": {"id": output, "property": "figure"},
            "inputs": [{"id": button, "property": "n_clicks", "value": n_clicks}],
            "changedPropIds": [f"{button}.n_clicks"],
            "state": [{"id": output, "property": "id", "value": output}] if background else []}


def run_callback(base, end_id, button, output, n_clicks, background, interval=0.25,
                 timeout=120):
    """One callback as the renderer runs it; returns (figure title, polls)."""
    body = callback_body(button, output, n_clicks, background)
    url = base + "/_dash-update-component"
    if end_id:
        url += "?endId=" + urllib.parse.quote(end_id, safe="")
    status, _headers, raw = post(url, body)
    data = json.loads(raw)
    polls = 0
    if background:
        handles = "&cacheKey=%s&job=%s" % (urllib.parse.quote(data["cacheKey"], safe=""),
                                           urllib.parse.quote(data["job"], safe=""))
        # as the renderer polls: the same body with every input and state value null
        poll_body = dict(body, inputs=[dict(i, value=None) for i in body["inputs"]],
                         state=[dict(i, value=None) for i in body["state"]])
        deadline = time.monotonic() + timeout
        while "response" not in data:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{output}: no result after {timeout}s")
            time.sleep(interval)
            polls += 1
            status, _headers, raw = post(url + handles, poll_body)
            data = json.loads(raw)
    figure = data["response"][output]["figure"]
    return figure["layout"]["title"]["text"], polls


def click(base, end_id, button, prefix, n_clicks, background):
    """The four callbacks of one click, concurrently; returns (seconds, titles)."""
    results, errors = {}, []

    def one(i):
        try:
            results[i] = run_callback(base, end_id, button, f"{prefix}-{i}", n_clicks,
                                      background)
        except Exception as exc:  # reported below
            errors.append(exc)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, [results[i][0] for i in sorted(results)]


def measure(run, label, button, prefix, background, clicks):
    end_id = dash_end_id(run.url)
    click(run.url, end_id, button, prefix, 1, background)  # warm-up
    times, titles = [], []
    for n in range(2, clicks + 2):
        seconds, titles = click(run.url, end_id, button, prefix, n, background)
        times.append(seconds)
    time.sleep(1.0)  # memory guard + service stats refresh
    st = run.status()
    return {"config": label, "click_p50_s": round(statistics.median(times), 3),
            "click_max_s": round(max(times), 3),
            "replicas_memory_bytes": st["memory"]["total_bytes"],
            "replicas": {r["name"]: r["memory_bytes"] for r in st["replicas"]},
            "services_memory_bytes": sum(s["memory_bytes"] for s in st.get("services", [])),
            "ran_in": sorted({t.split(" · ")[1].split(" ")[0] for t in titles}),
            "clicks": clicks}


def mib(n):
    return f"{n / 2**20:.0f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--callback-seconds", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = {"SAMPLE_CALLBACK_SECONDS": str(args.callback_seconds)}
    tmp = tempfile.mkdtemp(prefix="dashscale-bench-bg-")
    rows, runs = [], []
    fg = "web: gunicorn sample_app.app:server --workers 1\n"
    bg = (ROOT / "Procfile.celery").read_text()
    prefork = re.sub(r" --pool[ =]\S+", "", bg)
    threads = prefork.replace(" worker ", " worker --pool threads ", 1)
    try:
        shutil.copytree(ROOT / "sample_app", Path(tmp) / "sample_app",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for label, procfile, formation, extra, button, prefix, background in [
                ("web=1", fg, "web=1", [], "btn", "graph", False),
                ("web=4", fg, "web=4", [], "btn", "graph", False),
                ("web=1,worker=1 (celery prefork ×4) + redis", prefork, "web=1,worker=1",
                 ["--service", "redis"], "bg-btn", "bg-graph", True),
                ("web=1,worker=1 (celery threads ×4) + redis", threads, "web=1,worker=1",
                 ["--service", "redis"], "bg-btn", "bg-graph", True)]:
            run = Run(tmp, procfile, formation, extra, env)
            runs.append(run)
            run.start(timeout=120)
            rows.append(measure(run, label, button, prefix, background, args.clicks))
            print(f"{label}: p50 {rows[-1]['click_p50_s']:.2f} s", flush=True)
            run.stop()
    finally:
        for run in runs:
            run.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| formation | click p50 | click max | replicas Σ PSS | services (apart) | ran in |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['click_p50_s']:.2f} s | {r['click_max_s']:.2f} s | "
              f"{mib(r['replicas_memory_bytes'])} | "
              f"{mib(r['services_memory_bytes']) if r['services_memory_bytes'] else '-'} | "
              f"{', '.join(r['ran_in'])} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "callback_seconds": args.callback_seconds, "rows": rows}
    RESULTS.write_text(json.dumps(payload, indent=2))
    if args.json:
        print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
