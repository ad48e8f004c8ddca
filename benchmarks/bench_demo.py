#!/usr/bin/env python3
"""The load demo, measured: one command, prints a table (Markdown, for the README).

  python benchmarks/bench_demo.py [--clicks 5] [--callback-seconds 2] [--only replicas|users] [--json]

The sample app (sample_app/, copied into a temp directory) runs under `dashscale start`
(dashscale_local.testing.Run: free proxy port and replica ports). Its button triggers 4
callbacks that each sleep 2 s.

1. Procfile `gunicorn sample_app.app:server --workers 1`, 1 user, web = 1, 2, 4 replicas
   (started at 4, scaled down through the control API, waiting until the
   formation is ready and idle): click latency
   through the bench library (dashscale_local.bench / dash_client) AND through a plain
   client (raw http.client POSTs of hand-written bodies, one thread per callback, a new
   connection per request), so the bench's own overhead is visible. Each client makes one
   warm-up click first (not counted: the first callback in a fresh worker pays for lazy
   imports).
2. Procfile with `--workers 4`, web=4, 4 users clicking at once: 16 callbacks on 16
   workers.

ideal = ceil(callbacks × users / total workers) × callback time (the fastest single
callback either client saw). Targets: 4 replicas ≤ 1.05× ideal; 1 replica ≥ 7.5 s;
4 users on 4 × 4 workers ≤ 1.1× ideal (click p50 after the warm-up). Exit 1 when a
target is missed. Results also go to benchmarks/results/bench_demo.json.
"""
import argparse
import http.client
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashscale_local import bench as B  # noqa: E402
from dashscale_local import control, rundir  # noqa: E402
from dashscale_local.testing import Run, processes_with_marker  # noqa: E402

import psutil  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_demo.json"
REPLICA_HEADER = "X-Dashscale-Replica"
USERS_ROW = "web=4 ×4 workers, 4 users"


# -- the plain client: no dash_client, no bench; the bodies are written by hand ----------

def plain_bodies(n_clicks):
    return [json.dumps({
        "output": f"graph-{i}.figure",
        "outputs": {"id": f"graph-{i}", "property": "figure"},
        "inputs": [{"id": "btn", "property": "n_clicks", "value": n_clicks}],
        "changedPropIds": ["btn.n_clicks"],
    }).encode() for i in range(1, 5)]


def plain_click(port, n_clicks, timeout=120):
    """One click: 4 POSTs at once, one thread and one fresh connection each."""
    out = [None] * 4

    def post(i, body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/_dash-update-component", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            out[i] = (resp.status, time.perf_counter() - t0, resp.getheader(REPLICA_HEADER))
        except OSError as exc:
            out[i] = (None, time.perf_counter() - t0, repr(exc))
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=post, args=(i, b))
               for i, b in enumerate(plain_bodies(n_clicks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, out


def plain_run(port, users, clicks):
    """users × clicks plain clicks (after one warm-up click each, not counted)."""
    clicks_s, calls, lock = [], [], threading.Lock()
    barrier = threading.Barrier(users)

    def user():
        plain_click(port, 1)
        barrier.wait()
        for n in range(clicks):
            seconds, out = plain_click(port, n + 2)
            with lock:
                clicks_s.append(seconds)
                calls.extend(out)

    threads = [threading.Thread(target=user) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = sum(1 for status, _s, _r in calls if status != 200)
    return {"click_p50_s": statistics.median(clicks_s), "click_max_s": max(clicks_s),
            "fastest_callback_s": min(s for status, s, _r in calls if status == 200),
            "errors": errors, "clicks": len(clicks_s)}


# -- one configuration ---------------------------------------------------------------

def measure(run, users, clicks, label):
    sock = rundir.control_socket(run.run_dir)
    status = control.call(sock, "GET", "/status")
    workers = B.web_workers(status)[0]
    app = B.load_app(run.url)
    raw = B.run_bench(app, users=users, clicks=clicks, warmup=True,
                      progress_label=f"{label} ")
    bench = B.summarize(raw, workers)
    warm = [r.seconds for r in raw.warmup]
    plain = plain_run(run.port, users, clicks)
    cb_time = min(bench["callback_s"], plain["fastest_callback_s"])
    ideal = math.ceil(bench["callbacks_per_click"] * users / workers) * cb_time
    row = {
        "config": label, "web_replicas": len([r for r in status["replicas"]
                                              if r["type"] == "web"]),
        "users": users, "total_workers": workers, "clicks": bench["clicks"],
        "callback_s": round(cb_time, 3), "ideal_s": round(ideal, 3),
        "first_click_s": round(max(warm), 3) if warm else None,
        "bench_p50_s": bench["click_p50_s"], "bench_max_s": bench["click_max_s"],
        "plain_p50_s": round(plain["click_p50_s"], 4),
        "plain_max_s": round(plain["click_max_s"], 4),
        "bench_ratio": round(bench["click_p50_s"] / ideal, 3),
        "bench_max_ratio": round(bench["click_max_s"] / ideal, 3),
        "plain_ratio": round(plain["click_p50_s"] / ideal, 3),
        "bench_minus_plain_ms": round(1000 * (bench["click_p50_s"] - plain["click_p50_s"]), 1),
        "client_overhead_ms": bench["client_overhead_ms"],
        "errors": bench["errors"] + plain["errors"],
        "replicas": bench["replicas"], "bench_reported_ideal_s": bench["ideal_s"],
    }
    print(f"  {label}: bench p50 {row['bench_p50_s']:.3f}s, plain p50 "
          f"{row['plain_p50_s']:.3f}s, ideal {row['ideal_s']:.3f}s, spread {row['replicas']}",
          flush=True)
    return row


def settle(run, quiet_percent=10.0, timeout=90.0):
    """Until the run's processes are idle: a replica is 'ready' when its gunicorn master
    accepts, while its workers may still be importing the app (CPU the measurement
    would otherwise share)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        booted = True
        for r in run.status()["replicas"]:
            want = B.gunicorn_concurrency(r.get("command"))  # workers (threads: 1 here)
            try:
                booted &= len(psutil.Process(r["pid"]).children()) >= want
            except (psutil.Error, TypeError, ValueError):
                booted = False
        procs = processes_with_marker(run.run_id)
        for p in procs:
            try:
                p.cpu_percent(None)
            except psutil.Error:
                pass
        time.sleep(0.5)
        total = 0.0
        for p in procs:
            try:
                total += p.cpu_percent(None)
            except psutil.Error:
                pass
        if booted and total < quiet_percent:
            return
    print(f"  (warning: the app's processes did not settle in {timeout:g}s)", flush=True)


def start(directory, workers, formation, callback_seconds):
    procfile = f"web: gunicorn sample_app.app:server --workers {workers}\n"
    run = Run(directory, procfile, formation, env={"SAMPLE_CALLBACK_SECONDS":
                                                   str(callback_seconds)})
    run.start(timeout=120)
    settle(run)
    return run


def copy_sample(directory):
    shutil.copytree(ROOT / "sample_app", Path(directory) / "sample_app",
                    ignore=shutil.ignore_patterns("__pycache__"))


def check(rows, callback_seconds):
    by = {r["config"]: r for r in rows}
    slow_floor = 3.75 * callback_seconds  # 7.5 s for 2 s callbacks
    out = []
    if "web=1" in by:
        out.append(("1 replica ≥ %.1f s" % slow_floor, by["web=1"]["bench_p50_s"] >= slow_floor))
    if "web=4" in by:
        out.append(("4 replicas ≤ 1.05× ideal", by["web=4"]["bench_ratio"] <= 1.05))
    if USERS_ROW in by:
        out.append(("4 users on 4×4 workers ≤ 1.1× ideal", by[USERS_ROW]["bench_ratio"] <= 1.10))
    out.append(("no errors", all(r["errors"] == 0 for r in rows)))
    return out


def table(rows):
    head = ["formation", "users", "workers", "ideal", "bench p50", "ratio", "bench max",
            "plain p50", "ratio", "bench − plain", "first click"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["config"], str(r["users"]), str(r["total_workers"]), f"{r['ideal_s']:.2f} s",
            f"{r['bench_p50_s']:.2f} s", f"{r['bench_ratio']:.3f}", f"{r['bench_max_s']:.2f} s",
            f"{r['plain_p50_s']:.2f} s", f"{r['plain_ratio']:.3f}",
            f"{r['bench_minus_plain_ms']:+.0f} ms",
            f"{r['first_click_s']:.2f} s" if r["first_click_s"] else "-"]) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=5, help="counted clicks per user (5)")
    ap.add_argument("--callback-seconds", type=float, default=2.0,
                    help="SAMPLE_CALLBACK_SECONDS for the app (2)")
    ap.add_argument("--only", choices=["replicas", "users"],
                    help="only part 1 (1/2/4 replicas) or part 2 (4 users on 4×4 workers)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    rows, runs = [], []
    tmp = tempfile.mkdtemp(prefix="dashscale-bench-demo-")
    try:
        one, four = Path(tmp, "workers1"), Path(tmp, "workers4")
        for d in (one, four):
            d.mkdir()
            copy_sample(d)
        print(f"sample app: 4 callbacks × {args.callback_seconds:g} s; {args.clicks} clicks "
              f"per user after a warm-up click; {os.cpu_count()} CPUs", flush=True)
        if args.only in (None, "replicas"):
            # 4 → 2 → 1: scaling down never needs a port another program took meanwhile
            run = start(one, 1, "web=4", args.callback_seconds)
            runs.append(run)
            sock = rundir.control_socket(run.run_dir)
            for n in (4, 2, 1):
                control.call(sock, "POST", "/scale", {"formation": {"web": n}})
                B.wait_web_ready(sock, n)
                settle(run)
                rows.insert(0, measure(run, 1, args.clicks, f"web={n}"))
            run.stop()
        if args.only in (None, "users"):
            run = start(four, 4, "web=4", args.callback_seconds)
            runs.append(run)
            rows.append(measure(run, 4, args.clicks, USERS_ROW))
    finally:
        for run in runs:
            left = run.stop()
            if left:
                print(f"warning: killed leftover processes {left}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print()
    print(table(rows))
    print(f"\nload average at the end: {load[0]:.2f} (1 min) on {os.cpu_count()} CPUs"
          + (" — the machine was busy: figures are pessimistic" if load[0] > os.cpu_count()
             else ""))
    results = check(rows, args.callback_seconds)
    print()
    for name, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "loadavg_end": load,
               "callback_seconds": args.callback_seconds, "clicks": args.clicks,
               "rows": rows, "targets": [{"target": n, "ok": ok} for n, ok in results]}
    RESULTS.write_text(json.dumps(payload, indent=2))
    if args.json:
        print(json.dumps(payload, indent=2))
    return 0 if all(ok for _n, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
