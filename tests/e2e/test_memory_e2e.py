"""End to end: the memory guard on real replicas (supervisord + gunicorn + the proxy).

The guard's speed goal (≤0.5 s) is the benchmark's (benchmarks/bench_memory_guard.py);
here the bounds are generous and the point is the behaviour: who is killed, how it is
reported, who is left alone, what restarts it and when.
"""
import http.client
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client

import psutil
import pytest

from dashscale_local.memory import ProcBackend
from dashscale_local.testing import processes_with_marker, wait_for

pytestmark = pytest.mark.slow

MiB = 1024 ** 2
ECHO = "web: gunicorn echo_app:app --workers 1\n"
PRELOAD = ("web: gunicorn echo_app:app --workers 1\n"
           "big: gunicorn preload_app:app --preload --workers 4\n")


# ─── helpers ──────────────────────────────────────────────────────────────────────────
def direct_get(port, path, timeout=10):
    """GET straight from a replica's port (not through the proxy): targets one replica."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return resp.status, resp.read()


def hog(run, name, mib=30, max_steps=20):
    """Make ``name``'s worker allocate ``mib`` more per request until the replica dies.
    A lone web replica is fed through the proxy, as users reach it (a replica killed
    before the proxy ever routed to it counts as "too small to start")."""
    port = run.replica(name)["port"]
    web = [r for r in run.status()["replicas"] if r["type"] == "web"]
    via_proxy = len(web) == 1 and web[0]["name"] == name
    for _ in range(max_steps):
        try:
            if via_proxy:
                run.get(f"/alloc?mib={mib}", timeout=10)
            else:
                direct_get(port, f"/alloc?mib={mib}")
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            return  # killed (mid-request, mid-response or refused)
        if run.replica(name)["state"] == "OOMKILLED":
            return
        time.sleep(0.3)  # the guard sweeps every 0.25 s: it sees each level (the warning)
    raise AssertionError(f"{name} still alive after {max_steps * mib} MiB")


def wait_state(run, name, state, timeout=10):
    return wait_for(lambda: (r := run.replica(name))["state"] == state and r, timeout,
                    message=f"{name} {state}")


def tree(pid):
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def tree_pss(pid):
    backend = ProcBackend()
    return sum((backend.exact(p.pid) or (0, 0))[0] for p in tree(pid))


def tree_rss(pid):
    return sum(p.memory_info().rss for p in tree(pid))


def replica_processes(run, name):
    """Live processes of this run whose environment names the replica."""
    found = []
    for proc in processes_with_marker(run.run_id):
        try:
            if proc.environ().get("DASHSCALE_REPLICA") == name and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            pass
    return found


def supervisord_state(run, name):
    from supervisor.xmlrpc import SupervisorTransport
    transport = SupervisorTransport(None, None,
                                    "unix://" + os.path.join(run.run_dir, "supervisor.sock"))
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    return proxy, proxy.supervisor.getProcessInfo(name)["statename"]


def events(run, kind):
    return [e for e in run.status()["events"] if e["kind"] == kind]


def wait_memory_measured(run, timeout=10):
    wait_for(lambda: all(r["memory_bytes"] > 0 for r in run.status()["replicas"]
                         if r["state"] in ("STARTING", "RUNNING")), timeout,
             message="memory measured")


# ─── kill, report, isolate, stop policy ──────────────────────────────────────────────
def test_hog_is_oomkilled_reported_and_isolated(dashscale):
    run = dashscale(ECHO, formation="web=3", args=["--memory-limit", "150MiB"])
    wait_memory_measured(run)
    before = {r["name"]: r for r in run.status()["replicas"]}
    trees = {name: tree(r["pid"]) for name, r in before.items()}
    assert all(len(t) == 2 for t in trees.values())  # master + 1 worker each

    t0 = time.monotonic()
    hog(run, "web.2")
    r = wait_state(run, "web.2", "OOMKILLED", timeout=10)
    assert time.monotonic() - t0 < 10

    # reported as Kubernetes reports an OOM kill
    assert r["oom_kills"] == 1 and r["restarts"] == 0 and not r["ready"]
    assert r["memory_bytes"] == 0
    ex = r["last_exit"]
    assert ex["code"] == 137 and ex["reason"] == "OOMKilled"
    assert ex["limit_bytes"] == 150 * MiB == r["memory_limit_bytes"]
    assert ex["memory_bytes"] >= 150 * MiB and ex["peak_bytes"] >= 150 * MiB
    assert ex["metric"] == "pss" and abs(ex["time"] - time.time()) < 30
    assert r["peak_memory_bytes"] >= 150 * MiB
    assert any("web.2" in e["message"] for e in events(run, "oomkill"))

    # every process of its tree is gone, the others are the very same processes
    wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in trees["web.2"]),
             5, message="web.2's processes gone")
    assert replica_processes(run, "web.2") == []
    for name in ("web.1", "web.3"):
        now = run.replica(name)
        assert now["pid"] == before[name]["pid"] and now["state"] == "RUNNING"
        assert now["restarts"] == 0 and now["oom_kills"] == 0
        assert all(p.is_running() for p in trees[name])
        assert {p.pid for p in tree(now["pid"])} == {p.pid for p in trees[name]}

    # the proxy routes around it: every request succeeds, none reaches web.2
    seen = []
    for _ in range(8):
        status, headers, _ = run.get("/")
        assert status == 200
        seen.append(headers["X-Dashscale-Replica"])
    assert set(seen) == {"web.1", "web.3"}

    # what the user sees: the 80 % warning, then the OOM kill, prominently
    out = run.output()
    assert "WARNING web.2 uses" in out and "over 80%" in out
    assert "!!! web.2 OOMKilled" in out and "exit 137" in out
    assert "dashscale restart web.2" in out
    text = run.cli("status")
    assert text.returncode == 0, text.stderr
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith("web.2 "))
    assert "OOMKILLED" in line and "/ 150 MiB" in line
    assert "web.2 OOMKilled at" in text.stdout and "`dashscale restart web.2`" in text.stdout
    assert "max 450 MiB" in text.stdout

    # stop policy: it stays down; supervisord does not restart it behind the guard's back
    time.sleep(3)
    r = run.replica("web.2")
    assert r["state"] == "OOMKILLED" and r["restarts"] == 0 and r["pid"] == before["web.2"]["pid"]
    assert replica_processes(run, "web.2") == []
    assert supervisord_state(run, "web.2")[1] == "STOPPED"

    # until `dashscale restart web.2`
    result = run.cli("restart", "web.2")
    assert result.returncode == 0, result.stderr
    r = wait_for(lambda: (x := run.replica("web.2"))["ready"] and x, 30, message="web.2 back")
    assert r["state"] in ("STARTING", "RUNNING") and r["pid"] != before["web.2"]["pid"]
    assert r["restarts"] == 1 and r["oom_kills"] == 1  # the history stays
    assert r["last_exit"]["reason"] == "OOMKilled"
    assert r["peak_memory_bytes"] < 150 * MiB  # a new process, a new peak
    seen = {run.get("/")[1]["X-Dashscale-Replica"] for _ in range(6)}
    assert seen == {"web.1", "web.2", "web.3"}
    for name in ("web.1", "web.3"):
        assert run.replica(name)["pid"] == before[name]["pid"]


def test_oomkilled_replica_started_behind_the_guard_is_stopped_again(dashscale):
    """Whatever starts an OOMKILLED replica outside dashscale (supervisord's autorestart
    if the stop request lost the race with the kill; here: supervisorctl), it is stopped
    again and stays OOMKILLED."""
    run = dashscale(ECHO, formation="web=2", args=["--memory-limit", "120MiB"])
    hog(run, "web.1")
    wait_state(run, "web.1", "OOMKILLED")
    proxy, state = wait_for(lambda: (x := supervisord_state(run, "web.1"))[1] == "STOPPED" and x,
                            5, message="supervisord STOPPED")
    proxy.supervisor.startProcess("web.1", False)
    wait_for(lambda: "started again behind the guard's back" in run.output(), 10,
             message="respawn noticed")
    wait_for(lambda: supervisord_state(run, "web.1")[1] == "STOPPED", 10, message="stopped")
    wait_for(lambda: replica_processes(run, "web.1") == [], 10, message="no web.1 processes")
    r = run.replica("web.1")
    assert r["state"] == "OOMKILLED" and r["restarts"] == 0 and r["oom_kills"] == 1
    assert all(run.get("/")[1]["X-Dashscale-Replica"] == "web.2" for _ in range(4))


# ─── restart policy: CrashLoopBackOff, scaled down through dashscale.ini ─────────────
def test_restart_policy_crashloop_backoff(dashscale, app_dir):
    (app_dir / "dashscale.ini").write_text(
        "[dashscale]\n"
        "memory_limit = web=150MiB\n"     # limits from the project file
        "backoff_initial = 1\n"           # Kubernetes: 10 s …
        "backoff_max = 2\n"               # … doubling to 300 s …
        "backoff_reset = 6\n")            # … reset after 10 min healthy
    run = dashscale(ECHO, formation="web=2", args=["--on-limit", "restart"])
    st = run.status()
    assert [r["memory_limit_bytes"] for r in st["replicas"]] == [150 * MiB] * 2
    assert st["memory"]["max_bytes"] == 300 * MiB and st["memory"]["on_limit"] == "restart"
    other = run.replica("web.2")["pid"]

    def oom_and_back(n):
        """The n-th OOM kill of web.1; returns (delay announced, measured kill→restart gap)."""
        pid = run.replica("web.1")["pid"]
        hog(run, "web.1")
        r = wait_for(lambda: (x := run.replica("web.1"))["oom_kills"] == n and x, 10,
                     message=f"OOM kill #{n}")
        delay = r["last_exit"]["restart_delay_s"]
        assert r["last_exit"]["restart_at"] == pytest.approx(r["last_exit"]["time"] + delay,
                                                             abs=1.0)
        r = wait_for(lambda: (x := run.replica("web.1"))["ready"] and x["pid"] != pid and x,
                     delay + 20, message=f"restart #{n}")
        assert r["restarts"] == n and r["state"] in ("STARTING", "RUNNING")
        kill_t = [e["time"] for e in events(run, "oomkill") if "web.1" in e["message"]][-1]
        restart_t = [e["time"] for e in events(run, "restart") if "web.1" in e["message"]][-1]
        return delay, restart_t - kill_t

    delay1, gap1 = oom_and_back(1)
    delay2, gap2 = oom_and_back(2)   # at once: doubled
    delay3, gap3 = oom_and_back(3)   # doubled again, but capped
    assert (delay1, delay2, delay3) == (1, 2, 2)
    for delay, gap in ((delay1, gap1), (delay2, gap2), (delay3, gap3)):
        assert delay - 0.05 <= gap <= delay + 3, (delay, gap)
    time.sleep(6.5)                  # healthy for longer than backoff_reset: back to initial
    delay4, gap4 = oom_and_back(4)
    assert delay4 == 1 and 0.95 <= gap4 <= 4
    assert [e["message"] for e in events(run, "backoff")] == [
        f"web.1 restarts in {d}s (back-off)" for d in (1, 2, 2, 1)]
    assert "(CrashLoopBackOff)" in run.output()
    r = run.replica("web.2")
    assert r["pid"] == other and r["restarts"] == 0 and r["oom_kills"] == 0


def test_restart_of_backing_off_replica_is_immediate(dashscale, app_dir):
    (app_dir / "dashscale.ini").write_text("[dashscale]\nbackoff_initial = 3\n")
    run = dashscale(ECHO, formation="web=1",
                    args=["--memory-limit", "120MiB", "--on-limit", "restart"])
    hog(run, "web.1")
    r = wait_state(run, "web.1", "OOMKILLED")
    assert r["last_exit"]["restart_delay_s"] == 3
    text = run.cli("status").stdout
    assert "restarts at" in text and "(back-off 3s)" in text
    assert run.cli("restart", "web.1").returncode == 0
    r = wait_for(lambda: (x := run.replica("web.1"))["ready"] and x, 30, message="restarted")
    assert r["restarts"] == 1
    time.sleep(4)
    assert run.replica("web.1")["restarts"] == 1  # the back-off timer was cancelled


# ─── the metric: PSS counts copy-on-write sharing once, RSS once per process ─────────
def test_preload_shared_memory_not_killed_with_pss(dashscale):
    run = dashscale(PRELOAD, args=["--memory-limit", "web=200MiB,big=400MiB"])
    st = run.status()
    limits = {r["name"]: r["memory_limit_bytes"] for r in st["replicas"]}
    assert limits == {"web.1": 200 * MiB, "big.1": 400 * MiB}
    assert st["memory"]["max_bytes"] == 600 * MiB and st["memory"]["metric"] == "pss"
    big = run.replica("big.1")
    wait_for(lambda: len(tree(big["pid"])) == 5, 20, message="4 workers")
    time.sleep(3)  # the guard has swept a dozen times since
    big = run.replica("big.1")
    assert big["state"] == "RUNNING" and big["oom_kills"] == 0
    rss, pss = tree_rss(big["pid"]), tree_pss(big["pid"])
    assert rss > 900 * MiB         # Σ RSS counts the 200 MiB block five times: over the limit
    assert 200 * MiB < pss < 320 * MiB  # Σ PSS once, as the pod's cgroup would
    assert "big.1 uses" not in run.output()  # not even the 80 % warning
    text = run.cli("status").stdout
    assert "/ 400 MiB" in text and "/ 200 MiB" in text and "max 600 MiB" in text


def test_preload_shared_memory_killed_with_rss(dashscale):
    run = dashscale(PRELOAD, args=["--memory-limit", "web=200MiB,big=400MiB",
                                   "--memory-metric", "rss"], wait=False)
    r = wait_for(lambda: (x := run.replica("big.1"))["state"] == "OOMKILLED" and x, 30,
                 message="big.1 OOMKilled by rss")
    assert r["last_exit"]["metric"] == "rss" and r["last_exit"]["memory_bytes"] >= 400 * MiB
    assert run.status()["memory"]["metric"] == "rss"
    run.wait_ready(count=1)
    assert run.replica("web.1")["state"] in ("STARTING", "RUNNING")
    wait_for(lambda: replica_processes(run, "big.1") == [], 5, message="big.1 gone")


# ─── the figures in status ───────────────────────────────────────────────────────────
def test_status_memory_is_sum_of_pss_over_the_tree(dashscale):
    run = dashscale("web: gunicorn echo_app:app --workers 3\n", formation="web=2",
                    args=["--memory-limit", "1GiB"])
    wait_for(lambda: all(len(tree(r["pid"])) == 4 for r in run.status()["replicas"]), 20,
             message="3 workers each")
    time.sleep(1)
    for r in run.status()["replicas"]:
        direct_get(r["port"], "/alloc?mib=40")  # one worker of each grows by 40 MiB
    time.sleep(1.5)
    st = run.status()
    for r in st["replicas"]:
        ours = tree_pss(r["pid"])
        assert r["memory_bytes"] == pytest.approx(ours, rel=0.1, abs=4 * MiB), r["name"]
        assert r["memory_bytes"] < tree_rss(r["pid"])  # Σ PSS < Σ RSS: shared pages
        assert r["peak_memory_bytes"] >= r["memory_bytes"] > 40 * MiB
        assert r["memory_limit_bytes"] == 1024 * MiB
    assert st["memory"]["total_bytes"] == sum(r["memory_bytes"] for r in st["replicas"])
    assert st["memory"]["max_bytes"] == 2 * 1024 * MiB


# ─── bad input ───────────────────────────────────────────────────────────────────────
def start_cli(app_dir, *args, procfile=ECHO):
    (app_dir / "Procfile").write_text(procfile)
    return subprocess.run([sys.executable, "-m", "dashscale_local.cli", "start",
                           "-f", str(app_dir / "Procfile"), *args],
                          capture_output=True, text=True, timeout=60, cwd=app_dir)


@pytest.mark.parametrize("value, fragment", [
    ("10XB", "invalid size '10XB': unknown unit 'XB'"),
    ("web=", "web: empty size in 'web='"),
    ("wbe=1GiB", "unknown process type 'wbe' (Procfile has: web)"),
    ("32MiB", "limit 32 MiB is below the minimum of 64 MiB"),
    ("512", "'512' has no unit, so it is bytes"),
    ("", "empty size"),
])
def test_bad_memory_limit_exits_2_with_one_line(app_dir, value, fragment):
    result = start_cli(app_dir, "--memory-limit", value)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dashscale: --memory-limit: ") and fragment in lines[0]
    assert not (app_dir / ".dashscale" / "supervisord.pid").exists()


@pytest.mark.parametrize("ini, fragment", [
    ("memory_limit = web=10XB", "dashscale.ini: memory_limit: invalid size '10XB'"),
    ("memory_metric = vss", "dashscale.ini: memory_metric: 'vss' is not one of pss, rss, uss"),
    ("on_limit = retry", "dashscale.ini: on_limit: 'retry' is not one of stop, restart"),
    ("memory_interval = 0", "dashscale.ini: memory_interval: '0' must be a number"),
    ("backoff_initial = soon", "dashscale.ini: backoff_initial: not a number: 'soon'"),
    ("monitor_idle_interval = -1", "dashscale.ini: monitor_idle_interval: '-1' must be a number"),
    ("memory_idle_interval = 0.1", "memory_idle_interval: 0.1 must be >= memory_interval (0.25)"),
    ("memory_max_growth = fast", "dashscale.ini: memory_max_growth: invalid size 'fast'"),
])
def test_bad_memory_settings_in_project_file(app_dir, ini, fragment):
    (app_dir / "dashscale.ini").write_text(f"[dashscale]\n{ini}\n")
    result = start_cli(app_dir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_limit_too_small_for_the_app_is_a_usage_error(dashscale):
    """A limit above the static minimum but too small for this app: every web replica is
    OOMKilled while starting → exit 2, naming the option and the limit."""
    run = dashscale("web: gunicorn preload_app:app --preload --workers 1\n", formation="web=2",
                    args=["--memory-limit", "100MiB"], wait=False)
    assert run.process.wait(60) == 2, run.output()[-2000:]
    out = run.output()
    assert "OOMKilled while starting" in out
    assert "dashscale: --memory-limit: every web replica was OOMKilled while starting: the " \
           "limit 100 MiB is too small for this app" in out
