"""Chaos: real replicas under steady load while things go wrong — a replica killed with
kill -9, supervisord killed, the runner killed, a replica hung (SIGSTOP), the run
directory on a read-only or full disk, several `scale` commands at once.

What each test proves is the promise of issue 10: only requests in flight on the
replica that died fail (counted and bounded), the replica comes back into rotation,
and nothing is left behind (the `dashscale` fixture fails a test on any leftover).

Covered elsewhere, not repeated here: kill -9 of the runner + supervisord then
`stop`/`start` (test_core.py::test_recovery_after_kill_9,
::test_start_after_kill_9_cleans_up_first), drain on scale-down
(test_live.py::test_scale_down_drains_in_flight_request), rolling restarts and Procfile
edits under load (test_live.py::test_rolling_restart_under_load_loses_nothing,
::test_procfile_edits_add_change_remove_types_without_failed_requests), OOM kills
(test_memory_e2e.py).
"""
import http.client
import os
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest

from dashscale_local.testing import Run, processes_with_marker, wait_for

pytestmark = pytest.mark.slow

ECHO = "web: gunicorn echo_app:app --workers 1\n"


class Load(threading.Thread):
    """One client of steady load: requests through the proxy, one connection each,
    every outcome recorded as (start, end, status or exception, replica, body)."""

    def __init__(self, port, path="/slow?s=0.2", pause=0.02, timeout=30):
        super().__init__(daemon=True)
        self.port, self.path, self.pause, self.timeout = port, path, pause, timeout
        self.records = []
        self._halt = threading.Event()

    def one(self):
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            body = resp.read()
            return (t0, time.monotonic(), resp.status, resp.getheader("X-Dashscale-Replica"), body)
        except Exception as exc:  # reset, timeout: recorded, never raised
            return (t0, time.monotonic(), repr(exc), None, b"")
        finally:
            conn.close()

    def run(self):
        while not self._halt.is_set():
            self.records.append(self.one())
            self._halt.wait(self.pause)

    def stop(self):
        self._halt.set()
        self.join(60)
        return self


def start_load(run, clients=4, **kw):
    loads = [Load(run.port, **kw) for _ in range(clients)]
    for load in loads:
        load.start()
    return loads


def stop_load(loads):
    records = []
    for load in loads:
        records += load.stop().records
    return sorted(records)


def ok(rec):
    return rec[2] == 200


def served_by(run, name, since, timeout=30):
    """Until a request through the proxy (started after ``since``) is served by ``name``."""
    def seen():
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            return resp.getheader("X-Dashscale-Replica") == name
        finally:
            conn.close()
    return wait_for(seen, timeout, interval=0.02, message=f"{name} serving again")


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ─── kill -9 of a replica under load ──────────────────────────────────────────────────
@pytest.mark.parametrize("target", ["master", "group"])
def test_kill_9_replica_under_load_only_in_flight_requests_fail(dashscale, target):
    """kill -9 of web.1's gunicorn master (its worker is orphaned and must go too), or of
    its whole process group (as the OOM killer does): the only failed requests are the
    ones in flight on web.1 at that moment — each a 502 naming web.1, started before its
    processes were gone — every later request succeeds, and supervisord brings web.1 back into rotation."""
    clients = 4
    run = dashscale(ECHO, formation="web=2")
    before = run.replica("web.1")
    old_tree = [before["pid"]] + [c.pid for c in psutil.Process(before["pid"]).children(True)]
    loads = start_load(run, clients=clients)
    try:
        wait_for(lambda: sum(len(l.records) for l in loads) >= 20, 30, message="load running")
        wait_for(lambda: run.replica("web.1")["proxy"]["inflight"] >= 1, 10,
                 interval=0.01, message="a request in flight on web.1")
        t_kill = time.monotonic()
        if target == "master":
            os.kill(before["pid"], signal.SIGKILL)
        else:
            os.killpg(before["pid"], signal.SIGKILL)
        # kill() returns before the processes are gone: until the last one holding the
        # listening socket has exited, a connect can still land in its backlog and then
        # be reset (the proxy never resends a request that reached a replica). Requests
        # started once the old tree is gone must all succeed.
        wait_for(lambda: not any(alive(p) for p in old_tree), 10, interval=0.002,
                 message="web.1's old processes gone")
        t_gone = time.monotonic()

        def back():
            r = run.replica("web.1")
            return r if r["pid"] not in (None, before["pid"]) and r["ready"] else None
        after = wait_for(back, 60, message="web.1 restarted and ready")
        served_by(run, "web.1", t_kill)
        t_back = time.monotonic()
        time.sleep(1.0)  # some load after the replica is back in rotation
    finally:
        records = stop_load(loads)
    failed = [r for r in records if not ok(r)]
    # Bounded: at most what could be in flight on web.1 (one per client) at the kill.
    assert len(failed) <= clients, failed
    for rec in failed:
        assert rec[0] < t_gone, ("a request started after web.1 was gone failed", rec, t_gone)
        assert rec[2] == 502 and b"web.1" in rec[4], rec
    later = [r for r in records if r[0] > t_gone]
    assert later and all(ok(r) for r in later)
    assert any(r[3] == "web.1" for r in records if r[0] > t_back - 1)
    assert after["restarts"] == 1
    assert run.replica("web.2")["pid"] == run.status()["replicas"][1]["pid"]
    # The old tree (the orphaned worker too) is gone.
    wait_for(lambda: not any(alive(p) for p in old_tree), 30, message="old web.1 tree gone")
    print(f"\nkill -9 {target}: {len(records)} requests, {len(failed)} failed (in flight on "
          f"web.1), back in rotation after {t_back - t_kill:.2f}s")


# ─── kill -9 of supervisord alone, of the runner alone ────────────────────────────────
def test_kill_9_supervisord_alone_runner_stops_everything(dashscale):
    """supervisord dies under the runner: the runner notices, kills every replica, says
    so and exits 1 (a failure, not a clean stop); nothing is left behind."""
    run = dashscale(ECHO, formation="web=2")
    st = run.status()
    loads = start_load(run, clients=2, path="/")
    try:
        wait_for(lambda: sum(len(l.records) for l in loads) >= 10, 30, message="load running")
        os.kill(st["supervisord_pid"], signal.SIGKILL)
        code = run.process.wait(60)
    finally:
        stop_load(loads)
    assert code == 1, run.output()[-2000:]
    assert "supervisord died" in run.output()
    wait_for(lambda: processes_with_marker(run.run_id) == [], 30, message="nothing left")


def test_kill_9_runner_alone_replicas_follow(dashscale):
    """The runner dies with no one to clean up: supervisord gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG) and stops every replica by itself — no orphans even before any
    later `stop`/`start`."""
    run = dashscale(ECHO, formation="web=2")
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(10)
    wait_for(lambda: processes_with_marker(run.run_id) == [], 40,
             message="supervisord and replicas gone after the runner's kill -9")
    result = run.cli("stop")  # finds the dead run's record and says so
    assert result.returncode == 0, result.stdout + result.stderr


# ─── a hung replica ───────────────────────────────────────────────────────────────────
HUNG_INI = """[dashscale]
proxy_read_timeout = 2
proxy_connect_timeout = 1
proxy_health_interval = 0.5
"""


def test_sigstop_replica_is_taken_out_and_back(dashscale, app_dir):
    """SIGSTOP web.1 (hung: the kernel still accepts its TCP connections): the requests
    already sent to it get 504 after proxy_read_timeout, the first timeout takes it out of
    rotation, and every later request succeeds on web.2. SIGCONT: it answers the runner's
    probe and is back in rotation."""
    (app_dir / "dashscale.ini").write_text(HUNG_INI)
    clients = 4
    run = dashscale(ECHO, formation="web=2")
    pid = run.replica("web.1")["pid"]
    loads = start_load(run, clients=clients, path="/")
    stopped = False
    try:
        wait_for(lambda: sum(len(l.records) for l in loads) >= 20, 30, message="load running")
        os.killpg(pid, signal.SIGSTOP)
        stopped = True
        t_stop = time.monotonic()
        wait_for(lambda: not run.replica("web.1")["proxy"]["in_rotation"], 15,
                 message="web.1 out of rotation")
        t_out = time.monotonic()
        time.sleep(3.0)  # load meanwhile: all of it on web.2
        os.killpg(pid, signal.SIGCONT)
        stopped = False
        t_cont = time.monotonic()
        wait_for(lambda: run.replica("web.1")["proxy"]["in_rotation"], 40,
                 message="web.1 back in rotation")
        served_by(run, "web.1", t_cont)
        t_back = time.monotonic()
    finally:
        if stopped:
            os.killpg(pid, signal.SIGCONT)
        records = stop_load(loads)
    failed = [r for r in records if not ok(r)]
    assert t_out - t_stop < 2 + 1.5, "the first read timeout takes web.1 out"
    assert len(failed) <= clients, failed  # each client loses at most its one request
    for rec in failed:
        assert rec[2] == 504 and b"web.1" in rec[4], rec
        assert rec[0] < t_out, rec  # only requests sent before it was out
        assert rec[1] >= t_stop + 2 - 0.3, rec  # after proxy_read_timeout
    assert all(ok(r) for r in records if r[0] >= t_out)
    assert sum(1 for r in records if t_out <= r[0] < t_cont) > 10
    assert run.replica("web.1")["pid"] == pid  # the same process: hung, not dead
    print(f"\nSIGSTOP: {len(failed)} requests failed (504, in flight on web.1), out of "
          f"rotation after {t_out - t_stop:.2f}s, back {t_back - t_cont:.2f}s after SIGCONT")


# ─── the run directory's disk ─────────────────────────────────────────────────────────
def _mount_tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): "
                    f"{result.stderr.strip()}")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_run_directory_on_read_only_or_full_disk(app_dir, disk):
    """.dashscale/ on a read-only (tmpfs -o ro) or a full tmpfs: exit 2, one line naming
    the run directory and the reason, and nothing started."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    (app_dir / "Procfile").write_text(ECHO)
    mnt = app_dir / ".dashscale"
    run = Run(app_dir, None, None)
    _mount_tmpfs(mnt, "size=64k,ro" if disk == "read-only" else "size=16k")
    try:
        if disk == "read-only":
            reason = "Read-only file system"
        else:
            reason = "No space left on device"
            fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
            try:  # fill it to the last byte
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        run.start(wait=False)
        assert run.process.wait(60) == 2, run.output()
        out = run.output().strip()
        assert out.count("\n") == 0, out  # one line
        assert str(mnt) in out and reason in out, out
        assert processes_with_marker(run.run_id) == []
    finally:
        leftovers = run.stop() if run.process else []
        _umount(mnt)
    assert leftovers == []


# ─── concurrent scale commands ────────────────────────────────────────────────────────
def test_concurrent_scale_commands_are_consistent(dashscale, app_dir):
    """Several `dashscale scale` processes at once (from several threads): each succeeds,
    the final formation is one of those requested, and the replicas running — in the
    runner, in supervisord and as processes — are exactly that formation: no orphan, no
    stray program group, the saved formation agrees."""
    run = dashscale(ECHO, formation="web=1")
    rounds = [(3, 1, 4, 2), (2, 4, 1, 3)]
    for wanted in rounds:
        results = {}
        barrier = threading.Barrier(len(wanted))

        def scale(n):
            barrier.wait()
            results[n] = run.cli("scale", f"web={n}", timeout=180)

        threads = [threading.Thread(target=scale, args=(n,)) for n in wanted]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
        for n, result in results.items():
            assert result.returncode == 0, (n, result.stderr)
            assert result.stdout.strip() == f"formation: web={n}"
        st = run.status()
        final = st["formation"]["web"]
        assert final in wanted
        names = {f"web.{i}" for i in range(1, final + 1)}
        assert {r["name"] for r in st["replicas"]} == names
        wait_for(lambda: all(r["ready"] for r in run.status()["replicas"]), 60,
                 message="every replica ready")
        assert (app_dir / ".dashscale" / "formation").read_text() == f"web={final}\n"
        # supervisord has exactly these program groups, all running
        import xmlrpc.client
        from supervisor.xmlrpc import SupervisorTransport
        transport = SupervisorTransport(None, None, "unix://" + os.path.join(run.run_dir,
                                                                             "supervisor.sock"))
        rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        infos = rpc.supervisor.getAllProcessInfo()
        assert {i["name"] for i in infos} == names
        wait_for(lambda: all(i["statename"] == "RUNNING"  # STARTING for startsecs
                             for i in rpc.supervisor.getAllProcessInfo()), 15,
                 message="supervisord: every program RUNNING")
        # live processes: runner + supervisord + (master + worker) per replica, nothing else
        def settled():
            procs = [p for p in processes_with_marker(run.run_id) if alive(p.pid)]
            replicas = {}
            for p in procs:
                name = p.environ().get("DASHSCALE_REPLICA")
                if name:
                    replicas.setdefault(name, []).append(p.pid)
            return (set(replicas) == names and all(len(v) == 2 for v in replicas.values())
                    and len(procs) == 2 + 2 * final) and procs
        wait_for(settled, 30, message=f"exactly web=1..{final} running, no orphans")
        seen = {served_by_any(run) for _ in range(3 * final)}
        assert seen == names


def served_by_any(run):
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader("X-Dashscale-Replica")
    finally:
        conn.close()
