#!/usr/bin/env python3
"""Soak: mixed load through the proxy for N minutes while replicas are OOM-killed, the
formation is scaled and the Procfile is edited (rolling restarts); one command, prints a
table:

  python benchmarks/soak.py [--minutes 10] [--clients 6] [--json PATH] [--keep]

Setup: a temporary project with tests/apps/echo_app.py, `web: VERSION=1 gunicorn
echo_app:app --workers 2`, formation web=2, a low per-replica memory limit with
on_limit=restart and a short back-off (dashscale.ini), started like the tests do
(dashscale_local.testing.Run: every process carries a marker, so orphans are found).

Load (--clients threads, one connection per request): 70 % GET / (the body must name the
replica in X-Dashscale-Replica), 20 % POST /echo with a 1–64 KiB random body (echoed
intact), 10 % GET /slow?s=0.2–1.0.

Chaos, one action at a time, each once the formation is steady (every replica ready):
  oom    — /alloc straight to one replica's port until the guard OOM-kills it; it
           restarts after the back-off (CrashLoopBackOff) and is back in rotation;
  scale  — `dashscale scale web=3`, later back to web=2 (the removed one drains);
  edit   — the Procfile's VERSION flips (1 ↔ 2): a rolling restart of every web replica.
The last 10 % of the run is load only.

Failures are classified: a 502 naming a replica, sent before that replica's OOM kill was
seen and answered after the kill started, is *expected* (in flight on the OOM-killed
replica: Kubernetes loses those too). Everything else is *unexpected*, with its reason.

Resources: the runner's RSS and open file descriptors (and supervisord's) every second;
growth = median of the last quarter − median of the first quarter. Orphans: processes
carrying the run's marker after `dashscale stop` (must be 0).
"""
import argparse
import hashlib
import http.client
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from dashscale_local.testing import Run, wait_for  # noqa: E402

ECHO_APP = ROOT / "tests" / "apps" / "echo_app.py"
MiB = 1 << 20
PROCFILE = "web: VERSION={v} gunicorn echo_app:app --workers 2 --timeout 60\n"
INI = """[dashscale]
memory_limit = {limit}
on_limit = restart
backoff_initial = 1
backoff_max = 2
backoff_reset = 30
"""


# ─── load ─────────────────────────────────────────────────────────────────────────────
class Client(threading.Thread):
    """One client: a request at a time, each on a new connection; records every outcome
    as a dict (kind, t0, t1, ok, status, replica, why)."""

    def __init__(self, port, seed, pause=0.01):
        super().__init__(daemon=True)
        self.port, self.pause = port, pause
        self.rng = random.Random(seed)
        self.records = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.records.append(self.one())
            if self.pause:
                self.halt.wait(self.pause)

    def one(self):
        roll = self.rng.random()
        body = None
        if roll < 0.7:
            kind, method, path = "get", "GET", "/"
        elif roll < 0.9:
            kind, method, path = "echo", "POST", "/echo"
            body = self.rng.randbytes(self.rng.randint(1024, 64 * 1024))
        else:
            kind, method = "slow", "GET"
            path = f"/slow?s={self.rng.uniform(0.2, 1.0):.2f}"
        rec = {"kind": kind, "t0": time.monotonic(), "ok": False, "status": None,
               "replica": None, "why": None}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Content-Type": "application/octet-stream"} if body else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            rec["status"] = resp.status
            rec["replica"] = replica = resp.getheader("X-Dashscale-Replica")
            if resp.status != 200:
                rec["why"] = f"{resp.status} " + data.decode("utf-8", "replace") \
                    .strip().replace("\n", ": ")[:160]
            elif not replica:
                rec["why"] = "200 without X-Dashscale-Replica"
            elif kind == "get" and not data.decode().startswith(replica + " "):
                rec["why"] = f"body {data[:40]!r} does not match replica {replica}"
            elif kind == "echo":
                seen = json.loads(data)
                if seen["length"] != len(body) or \
                        hashlib.sha1(seen["body"].encode("latin-1")).digest() != \
                        hashlib.sha1(body).digest():
                    rec["why"] = f"echo corrupted ({seen['length']} of {len(body)} bytes)"
                else:
                    rec["ok"] = True
            elif kind == "slow" and not data.endswith(b"slept"):
                rec["why"] = f"slow body {data[:40]!r}"
            else:
                rec["ok"] = True
        except Exception as exc:  # reset, timeout, bad JSON: recorded, never raised
            rec["why"] = f"{type(exc).__name__}: {exc}"[:160]
        finally:
            conn.close()
        rec["t1"] = time.monotonic()
        return rec


# ─── resources ────────────────────────────────────────────────────────────────────────
class Monitor(threading.Thread):
    """Every ``interval`` s: RSS and open fds of the runner and of supervisord."""

    def __init__(self, runner_pid, supervisord_pid, interval=1.0):
        super().__init__(daemon=True)
        self.procs = {"runner": psutil.Process(runner_pid),
                      "supervisord": psutil.Process(supervisord_pid)}
        self.interval = interval
        self.samples = []  # (t, {name: (rss, fds)})
        self.halt = threading.Event()

    def sample(self):
        row = {}
        for name, proc in self.procs.items():
            try:
                with proc.oneshot():
                    row[name] = (proc.memory_info().rss, proc.num_fds())
            except psutil.Error:
                pass
        self.samples.append((time.monotonic(), row))
        return row

    def run(self):
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)


def quarters(samples, name, index):
    values = [row[name][index] for _, row in samples if name in row]
    if len(values) < 8:
        return None
    q = len(values) // 4
    first, last = values[:q], values[-q:]
    return {"first_quarter_median": statistics.median(first),
            "last_quarter_median": statistics.median(last),
            "growth": statistics.median(last) - statistics.median(first),
            "min": min(values), "max": max(values)}


# ─── chaos ────────────────────────────────────────────────────────────────────────────
class Chaos:
    def __init__(self, run, project, log):
        self.run, self.project, self.log = run, project, log
        self.version = 1
        self.web = 2
        self.ooms = []      # {"replica", "t_start", "t_seen", "pid"}
        self.actions = []   # (t, what, seconds, ok, detail)

    def steady(self, timeout=90):
        """Until the formation is what we asked and every replica is ready."""
        def ok():
            st = self.run.status()
            reps = st["replicas"]
            return len(reps) == self.web and all(r["ready"] for r in reps) and st
        return wait_for(ok, timeout, interval=0.1, message="steady formation")

    def do(self, what):
        t0 = time.monotonic()
        detail, ok = "", True
        try:
            self.steady()
            detail = getattr(self, what)()
            self.steady()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
        took = time.monotonic() - t0
        self.actions.append((t0, what, took, ok, detail))
        self.log(f"{what:<6} {'ok ' if ok else 'FAILED'} {took:5.1f}s  {detail}")
        return ok

    def oom(self):
        st = self.run.status()
        r = random.choice([r for r in st["replicas"] if r["ready"]])
        name, port, pid = r["name"], r["port"], r["pid"]
        entry = {"replica": name, "t_start": time.monotonic(), "t_seen": None, "pid": pid}
        self.ooms.append(entry)
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/alloc?mib=25",
                                            timeout=10) as resp:
                    resp.read()
            except Exception:
                pass  # killed mid-request, or refused: the status tells
            rep = next((x for x in self.run.status()["replicas"] if x["name"] == name), None)
            if rep is None or rep["state"] == "OOMKILLED" or rep["pid"] != pid:
                break
            time.sleep(0.3)  # the guard sweeps every 0.25 s
        entry["t_seen"] = time.monotonic()
        rep = next((x for x in self.run.status()["replicas"] if x["name"] == name), {})
        if not rep.get("oom_kills"):
            raise RuntimeError(f"{name} was not OOM-killed (state {rep.get('state')})")
        return f"{name} OOMKilled (kill #{rep['oom_kills']}), restarted"

    def scale(self):
        want = 3 if self.web == 2 else 2
        result = self.run.cli("scale", f"web={want}", timeout=180)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())  # the formation stays as it was
        self.web = want
        return result.stdout.strip()

    def edit(self):
        self.version = 2 if self.version == 1 else 1
        mark = len(self.run.output())
        (self.project / "Procfile").write_text(PROCFILE.format(v=self.version))
        wait_for(lambda: "reload applied" in self.run.output()[mark:], 120, interval=0.1,
                 message="reload applied")
        text = self.run.output()[mark:]
        line = [x for x in text.splitlines() if "reload applied" in x][-1]
        want = {"VERSION": str(self.version)}
        for _ in range(2 * self.web):
            got = json.loads(self.run.get("/env?keys=VERSION")[2])
            if got != want:
                raise RuntimeError(f"a replica still runs {got} after the reload")
        return line.split("| ", 1)[-1]


# ─── classification ───────────────────────────────────────────────────────────────────
def classify(rec, ooms):
    why = rec["why"] or ""
    m = re.search(r"502 Bad Gateway: (\S+) ", why)
    if m:
        name = m.group(1)
        for o in ooms:
            if o["replica"] == name and rec["t0"] <= o["t_seen"] and rec["t1"] >= o["t_start"]:
                return "expected", f"502 in flight on {name} when it was OOM-killed"
    return "unexpected", re.sub(r"\d+(\.\d+)?s\b", "Ns", why)


# ─── main ─────────────────────────────────────────────────────────────────────────────
def measure_baseline(run):
    """PSS of a replica tree now (to put the limit a little above it)."""
    from dashscale_local.memory import ProcBackend
    backend = ProcBackend()
    best = 0
    for r in run.status()["replicas"]:
        root = psutil.Process(r["pid"])
        total = sum((backend.exact(p.pid) or (0, 0))[0] for p in [root] + root.children(True))
        best = max(best, total)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--pause", type=float, default=0.01, help="seconds between a client's requests")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)

    def log(text):
        if not args.quiet:
            print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)

    T0 = time.monotonic()
    project = Path(tempfile.mkdtemp(prefix="dashscale-soak-"))
    shutil.copy(ECHO_APP, project / "echo_app.py")
    (project / "Procfile").write_text(PROCFILE.format(v=1))
    (project / "dashscale.ini").write_text(INI.format(limit="8GiB"))
    run = Run(project, None, "web=2")
    results = {"minutes": args.minutes, "clients": args.clients}
    clients, monitor = [], None
    try:
        # A first start only to measure a replica, then the real one with its limit.
        run.start(timeout=120)
        baseline = measure_baseline(run)
        run.stop()
        limit = max(96 * MiB, int(baseline * 1.5) + 48 * MiB)
        (project / "dashscale.ini").write_text(INI.format(limit=f"{limit // MiB}MiB"))
        results["replica_baseline_bytes"], results["memory_limit_bytes"] = baseline, limit
        log(f"replica ≈ {baseline / MiB:.0f} MiB PSS; limit {limit / MiB:.0f} MiB per replica")
        run = Run(project, None, "web=2")
        run.start(timeout=120)
        # fully set up (file watching starts once the replicas are up) before the
        # "idle start" sample of the runner's fds
        st = wait_for(lambda: (s := run.status())["watching"] and s, 30, message="watching")
        monitor = Monitor(run.process.pid, st["supervisord_pid"])
        monitor.start()
        chaos = Chaos(run, project, log)
        clients = [Client(run.port, seed=i, pause=args.pause) for i in range(args.clients)]
        t_load = time.monotonic()
        for c in clients:
            c.start()
        duration = args.minutes * 60
        chaos_until = t_load + 0.9 * duration
        gap = max(2.0, min(15.0, duration / 12))
        plan = ["oom", "scale", "edit", "oom", "scale", "edit"]
        i = 0
        time.sleep(min(gap, 5))
        while time.monotonic() < chaos_until - 5:
            chaos.do(plan[i % len(plan)])
            i += 1
            wait = min(gap, chaos_until - time.monotonic())
            if wait > 0:
                time.sleep(wait)
        if chaos.web != 2:  # back to the starting formation for the quiet tail
            chaos.do("scale")
        rest = t_load + duration - time.monotonic()
        if rest > 0:
            log(f"load only for {rest:.0f}s")
            time.sleep(rest)
        for c in clients:
            c.halt.set()
        for c in clients:
            c.join(90)
        t_end = time.monotonic()
        time.sleep(1.5)
        quiet_end = monitor.sample()
        monitor.halt.set()
        monitor.join(5)
    finally:
        for c in clients:
            c.halt.set()
        if monitor:
            monitor.halt.set()
        runner = run.process
        orphans = run.stop()
        orphan_info = list(run.leftover_info)
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)

    records = [r for c in clients for r in c.records]
    failures = [r for r in records if not r["ok"]]
    classes = {"expected": {}, "unexpected": {}}
    for r in failures:
        cls, why = classify(r, chaos.ooms)
        classes[cls][why] = classes[cls].get(why, 0) + 1
    per_oom = {}  # failures in flight on each OOM kill: at most one per client
    for r in failures:
        for i, o in enumerate(chaos.ooms):
            if classify(r, [o])[0] == "expected":
                per_oom[i] = per_oom.get(i, 0) + 1
                break
    by_kind = {}
    for r in records:
        k = by_kind.setdefault(r["kind"], {"sent": 0, "failed": 0, "lat": []})
        k["sent"] += 1
        k["failed"] += not r["ok"]
        if r["ok"]:
            k["lat"].append(r["t1"] - r["t0"])
    actions = {}
    for _, what, took, ok, _ in chaos.actions:
        a = actions.setdefault(what, {"done": 0, "failed": 0, "seconds": []})
        a["done" if ok else "failed"] += 1
        a["seconds"].append(round(took, 2))
    results.update({
        "seconds": round(t_end - t_load, 1),
        "requests": len(records),
        "requests_per_s": round(len(records) / max(t_end - t_load, 1e-9), 1),
        "failed": len(failures),
        "expected_failures": sum(classes["expected"].values()),
        "unexpected_failures": sum(classes["unexpected"].values()),
        "failure_reasons": classes,
        "max_expected_per_oom": max(per_oom.values(), default=0),
        "by_kind": {k: {"sent": v["sent"], "failed": v["failed"],
                        "p50_s": round(statistics.median(v["lat"]), 4) if v["lat"] else None,
                        "p95_s": round(sorted(v["lat"])[int(0.95 * (len(v["lat"]) - 1))], 4)
                        if v["lat"] else None}
                    for k, v in sorted(by_kind.items())},
        "chaos": actions,
        "chaos_log": [{"t": round(t - t_load, 1), "action": w, "seconds": round(s, 2),
                       "ok": ok, "detail": d} for t, w, s, ok, d in chaos.actions],
        "oom_kills": actions.get("oom", {}).get("done", 0),
        "runner_rss": quarters(monitor.samples, "runner", 0),
        "runner_fds": quarters(monitor.samples, "runner", 1),
        "supervisord_rss": quarters(monitor.samples, "supervisord", 0),
        "supervisord_fds": quarters(monitor.samples, "supervisord", 1),
        "runner_fds_start_end": [monitor.samples[0][1]["runner"][1],
                                 quiet_end.get("runner", (0, None))[1]],
        "samples": len(monitor.samples),
        "runner_exit": runner.returncode if runner else None,
        "failures": [{"t0": round(r["t0"] - t_load, 3), "t1": round(r["t1"] - t_load, 3),
                      "kind": r["kind"], "class": classify(r, chaos.ooms)[0], "why": r["why"]}
                     for r in failures[:200]],
        "ooms": [{"replica": o["replica"], "t_start": round(o["t_start"] - t_load, 3),
                  "t_seen": round(o["t_seen"] - t_load, 3) if o["t_seen"] else None}
                 for o in chaos.ooms],
        "orphans": len(orphans),
        "orphan_info": orphan_info,
    })
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    ok = (results["unexpected_failures"] == 0 and results["orphans"] == 0
          and all(a["failed"] == 0 for a in actions.values()))
    return 0 if ok else 1


def print_table(r):
    mib = lambda b: f"{b / MiB:.1f} MiB"  # noqa: E731
    rows = [("duration", f"{r['seconds']:.0f} s with {r['clients']} clients"),
            ("requests sent", f"{r['requests']} ({r['requests_per_s']}/s)"),
            ("failed", f"{r['failed']}: {r['expected_failures']} expected, "
                       f"{r['unexpected_failures']} unexpected")]
    for cls in ("expected", "unexpected"):
        for why, n in sorted(r["failure_reasons"][cls].items(), key=lambda x: -x[1]):
            rows.append((f"  {cls}", f"{n} × {why}"))
    for kind, k in r["by_kind"].items():
        rows.append((f"  {kind}", f"{k['sent']} sent, {k['failed']} failed, "
                                  f"p50 {k['p50_s']} s, p95 {k['p95_s']} s"))
    for what, a in sorted(r["chaos"].items()):
        rows.append((f"chaos {what}", f"{a['done']} done, {a['failed']} failed, "
                                      f"median {statistics.median(a['seconds']):.1f} s"))
    rows.append(("lost per OOM kill (max)", f"{r['max_expected_per_oom']} requests "
                                            f"(≤ {r['clients']} clients)"))
    for key, fmt in (("runner_rss", mib), ("runner_fds", str), ("supervisord_rss", mib),
                     ("supervisord_fds", str)):
        q = r[key]
        if q:
            rows.append((key.replace("_", " "),
                         f"first quarter {fmt(q['first_quarter_median'])}, last quarter "
                         f"{fmt(q['last_quarter_median'])} (growth {fmt(q['growth'])}; "
                         f"min {fmt(q['min'])}, max {fmt(q['max'])})"))
    rows.append(("runner fds idle start → end", " → ".join(map(str, r["runner_fds_start_end"]))))
    rows.append(("runner exit code", str(r["runner_exit"])))
    rows.append(("orphans after stop", str(r["orphans"])))
    width = max(len(a) for a, _ in rows)
    print()
    print(f"{'what'.ljust(width)} | figure")
    print(f"{'-' * width}-|-{'-' * 60}")
    for a, b in rows:
        print(f"{a.ljust(width)} | {b}")


if __name__ == "__main__":
    sys.exit(main())
