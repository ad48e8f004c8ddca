#!/usr/bin/env python3
"""Idle cost beside the OOM reaction time, one command:

  python benchmarks/bench_idle.py [--window 60] [--replicas 10] [--trials 5] [--settle 5]
                                  [--no-honcho] [--json]

1. Idle cost: `dashscale start -m web=10` on the sample app (defaults), until every
   replica answers, then ``--settle`` s, then the CPU time (user + system, psutil
   cpu_times) of the runner and of supervisord over ``--window`` s, as % of one core.
   Goal: runner + supervisord <= 1 %.
2. Anchor, same run: `honcho start -c web=10` on the same Procfile, its own CPU % over
   the same window once every replica answers.
3. OOM reaction in the same dashscale run, after the idle window: a `hog` process type
   (tests/helpers/hog.py, limit 200 MiB, formation 0) is scaled to 1; once the guard
   measures it and after a phase that varies by trial, SIGUSR1 makes it allocate 300 MiB
   in one step. The hog logs a CLOCK_MONOTONIC timestamp and its RSS before each MiB
   (as in bench_memory_guard.py): reaction = from the start of the MiB during which RSS
   passed the limit to the process gone (pidfd readable). Goal: max <= 0.5 s.
"""
import argparse
import http.client
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory_guard import parse_mark  # noqa: E402
from bench_startup import env_with_marker, stop  # noqa: E402
from dashscale_local.testing import Run, free_port_block  # noqa: E402

HOG = ROOT / "tests" / "helpers" / "hog.py"
MiB = 1 << 20
LIMIT_MIB = 200
GOAL_IDLE, GOAL_REACTION = 1.0, 0.5


def project(tmp):
    shutil.copytree(ROOT / "sample_app", tmp / "sample_app")
    (tmp / "Procfile").write_text(
        "web: gunicorn sample_app.app:server --workers 1\n"
        f"hog: {sys.executable} {HOG} --wait-usr1 --alloc 300 --mark {tmp / 'hog.mark'}\n")
    return tmp


def cpu_percent(pids, window):
    """{pid: % of one core} over ``window`` s (user + system time of each process)."""
    procs = {pid: psutil.Process(pid) for pid in pids}
    t0 = time.monotonic()
    before = {pid: sum(p.cpu_times()[:2]) for pid, p in procs.items()}
    time.sleep(window)
    wall = time.monotonic() - t0
    return {pid: 100 * (sum(p.cpu_times()[:2]) - before[pid]) / wall for pid, p in procs.items()}


def answering(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/_idle_probe")
        conn.getresponse().read()
        conn.close()
        return True
    except (OSError, http.client.HTTPException):
        return False


def wait(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ─── dashscale: idle window, then OOM trials ────────────────────────────────────────────
def bench_dashscale(tmp, a):
    run = Run(project(tmp / "ds"), formation=f"web={a.replicas},hog=0",
              args=["--memory-limit", f"web=8GiB,hog={LIMIT_MIB}MiB"])
    try:
        st = run.start(timeout=120).status()
        time.sleep(a.settle)
        pids = {"runner": st["runner_pid"], "supervisord": st["supervisord_pid"]}
        print(f"dashscale: {a.replicas} replicas ready; measuring {a.window:g} s…",
              file=sys.stderr)
        cpu = cpu_percent(pids.values(), a.window)
        out = {name: cpu[pid] for name, pid in pids.items()}
        out["reaction"] = oom_trials(run, tmp / "ds" / "hog.mark", a.trials)
        return out
    finally:
        run.stop()


def hog_state(run):
    return run.replica("hog.1")


def oom_trials(run, mark, trials):
    """``trials`` OOM kills of the hog replica: from crossing to gone, and (the guard's
    own figure) from the start of the sweep that saw it to SIGKILL."""
    out = []
    for i in range(trials):
        mark.unlink(missing_ok=True)
        if i == 0:
            run.cli("scale", "hog=1", check=True)
        else:
            run.cli("restart", "hog.1", check=True)
        wait(lambda: (r := hog_state(run))["state"] == "RUNNING" and r["memory_bytes"] > 0
             and mark.exists(), 30, "the hog to be measured")
        pid = hog_state(run)["pid"]
        time.sleep(1.0 + (i * 0.618034 % 1.0))  # idle a while, at a phase varying by trial
        fd = os.pidfd_open(pid)
        try:
            os.kill(pid, signal.SIGUSR1)
            if not select.select([fd], [], [], 10)[0]:
                raise RuntimeError("the hog was not killed within 10 s")
            gone = time.monotonic()
        finally:
            os.close(fd)
        _, cross, _ = parse_mark(mark, LIMIT_MIB * MiB)
        if cross is None:
            raise RuntimeError("the hog's mark file shows no crossing")
        wait(lambda: hog_state(run)["state"] == "OOMKILLED", 10, "OOMKILLED in status")
        out.append({"reaction_s": gone - cross,
                    "sweep_to_sigkill_s": hog_state(run)["last_exit"]["reaction_s"]})
    return out


# ─── honcho: the anchor ─────────────────────────────────────────────────────────────────
def bench_honcho(tmp, a):
    d = tmp / "honcho"
    project(d)
    base = free_port_block()
    marker = f"bench-idle-honcho-{time.time()}"
    env = env_with_marker(marker)
    honcho = shutil.which("honcho", path=os.path.dirname(sys.executable)) or "honcho"
    proc = subprocess.Popen([honcho, "start", "-c", f"web={a.replicas},hog=0", "-p", str(base),
                             "web"], cwd=d, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ports = range(base, base + a.replicas)
        wait(lambda: all(answering(p) for p in ports), 120, "honcho's replicas")
        time.sleep(a.settle)
        print(f"honcho: measuring {a.window:g} s…", file=sys.stderr)
        return cpu_percent([proc.pid], a.window)[proc.pid]
    finally:
        stop(proc, marker)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60.0, help="seconds of idle measured")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring")
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--trials", type=int, default=5, help="OOM kills measured")
    ap.add_argument("--no-honcho", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("this benchmark needs Linux (/proc, pidfd)")
        return 2
    with tempfile.TemporaryDirectory(prefix="dashscale-bench-idle-") as d:
        tmp = Path(d)
        res = bench_dashscale(tmp, a)
        res["honcho"] = None if a.no_honcho else bench_honcho(tmp, a)
    react = [x["reaction_s"] for x in res["reaction"]]
    res["reaction_p50_s"], res["reaction_max_s"] = statistics.median(react), max(react)
    total = res["runner"] + res["supervisord"]
    anchor = "honcho skipped" if res["honcho"] is None else f"honcho {res['honcho']:.2f} %"
    ok = total <= GOAL_IDLE and res["reaction_max_s"] <= GOAL_REACTION
    print(f"idle {a.replicas} replicas, {a.window:g} s: runner {res['runner']:.2f} % + "
          f"supervisord {res['supervisord']:.2f} % = {total:.2f} % of a core "
          f"(goal <= {GOAL_IDLE:g} %; {anchor}) | OOM reaction p50 "
          f"{res['reaction_p50_s'] * 1000:.0f} ms, max {res['reaction_max_s'] * 1000:.0f} ms "
          f"over {len(react)} kills (goal <= {GOAL_REACTION * 1000:.0f} ms) | "
          + ("ok" if ok else "MISS"))
    if a.json:
        print(json.dumps(res, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
