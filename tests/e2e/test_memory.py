"""MemoryGuard against real process trees (tests/helpers/hog.py); no mocks, no sleeps as
synchronisation: every wait polls a condition against a deadline."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dashscale_local.memory import MemoryGuard
from tests import TESTS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

HOG = Path(TESTS) / "helpers" / "hog.py"
MiB = 1 << 20


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def gone(pid):
    """True if pid no longer exists or is a zombie (holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return data[data.rfind(b")") + 2:][:1] in (b"Z", b"X")


def state(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2:][:1].decode()


class Hog:
    def __init__(self, args):
        self.proc = subprocess.Popen([sys.executable, str(HOG), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, start_new_session=True)
        self.pid = self.proc.pid
        self.pids = [self.pid]
        self._buf = b""

    def event(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError("hog: no output in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"hog exited ({self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def cmd(self, line):
        self.send(line)
        ev = self.event()
        assert ev["event"] == "ok", ev
        return ev

    def all_gone(self):
        return all(gone(p) for p in self.pids)

    def cleanup(self):
        if self.proc.poll() is None:  # still our unreaped child: the pgid cannot be reused
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids[1:]:  # e.g. a setsid grandchild, outside the group
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"hog.py" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def hog(request):
    hogs = []

    def spawn(*args):
        h = Hog([str(a) for a in args])
        hogs.append(h)
        ev = h.event()
        assert ev["event"] == "ready", ev
        h.pids = ev["pids"]
        return h

    def cleanup():
        for h in hogs:
            h.cleanup()

    request.addfinalizer(cleanup)
    return spawn


class Recorder:
    def __init__(self):
        self.kills, self.warnings = [], []

    def on_kill(self, name, info):
        self.kills.append((name, info))

    def on_warning(self, name, info):
        self.warnings.append((name, info))


@pytest.fixture
def make_guard(request):
    guards = []

    def make(start=True, **kw):
        rec = Recorder()
        kw.setdefault("interval", 0.05)
        kw.setdefault("on_kill", rec.on_kill)
        kw.setdefault("on_warning", rec.on_warning)
        g = MemoryGuard(**kw)
        g.rec = rec
        guards.append(g)
        if start:
            g.start()
        return g

    def cleanup():
        for g in guards:
            g.stop()

    request.addfinalizer(cleanup)
    return make


def sweeps_pass(g, n=5, timeout=10.0):
    s0 = g.stats()["sweeps"]
    wait_until(lambda: g.stats()["sweeps"] >= s0 + n, timeout, f"{n} sweeps")


def first_reading(g, name):
    wait_until(lambda: (g.snapshot().get(name) or {}).get("exact_age_s") is not None,
               what=f"first reading of {name}")
    return g.snapshot()[name]


# ─── enforcement ─────────────────────────────────────────────────────────────────────────
def test_over_limit_tree_is_killed_whole(hog, make_guard):
    g = make_guard()
    h = hog("--children", 3, "--alloc", 120)
    g.watch("web.1", h.pid, 100 * MiB)
    wait_until(lambda: g.rec.kills, what="kill")
    name, info = g.rec.kills[0]
    assert name == "web.1"
    assert info["pid"] == h.pid and info["metric"] == "pss"
    assert info["peak_bytes"] >= info["limit_bytes"] == 100 * MiB
    assert info["memory_bytes"] >= 100 * MiB
    assert sorted(info["pids"]) == sorted(h.pids)
    assert abs(info["time"] - time.time()) < 10 and info["reaction_s"] < 1
    wait_until(h.all_gone, 5, "every process of the tree gone")
    assert h.proc.wait(5) == -signal.SIGKILL
    assert "web.1" not in g.snapshot()  # unwatched after the kill
    assert g.is_alive()


def test_under_limit_is_untouched(hog, make_guard):
    g = make_guard()
    h = hog("--children", 2, "--alloc", 30)
    assert h.event()["event"] == "allocated"
    g.watch("web.1", h.pid, 200 * MiB)
    snap = first_reading(g, "web.1")
    assert 30 * MiB <= snap["memory_bytes"] < 200 * MiB
    assert snap["processes"] == 3 and snap["limit_bytes"] == 200 * MiB
    sweeps_pass(g, 10)
    assert not g.rec.kills and not g.rec.warnings
    assert not any(gone(p) for p in h.pids)


@pytest.mark.parametrize("setsid", [False, True], ids=["same-group", "setsid"])
def test_grandchild_memory_is_counted_and_killed(hog, make_guard, setsid):
    g = make_guard()
    h = hog("--grandchild", 120, *(["--setsid"] if setsid else []))
    grandchild = h.pids[-1]
    assert (os.getpgid(grandchild) != h.pid) == setsid
    g.watch("web.1", h.pid, 100 * MiB)
    wait_until(lambda: g.rec.kills, what="kill")
    assert grandchild in g.rec.kills[0][1]["pids"]
    wait_until(h.all_gone, 5, "tree gone, grandchild included")


def test_preload_tree_pss_not_killed_but_rss_is(hog, make_guard):
    # master fills 200 MiB, forks 4 workers that read it: ~1 GiB of Σ RSS, ~220 MiB of Σ PSS
    h = hog("--preload", 200, "--children", 4)
    pss = make_guard(metric="pss")
    pss.watch("web.1", h.pid, 400 * MiB)
    snap = first_reading(pss, "web.1")
    assert snap["processes"] == 5
    assert 200 * MiB <= snap["memory_bytes"] < 300 * MiB
    assert snap["rss_bytes"] > 900 * MiB
    sweeps_pass(pss, 10)
    assert not pss.rec.kills and not any(gone(p) for p in h.pids)

    rss = make_guard(metric="rss")
    rss.watch("web.1", h.pid, 400 * MiB)
    wait_until(lambda: rss.rec.kills, what="rss kill")
    assert rss.rec.kills[0][1]["metric"] == "rss"
    assert rss.rec.kills[0][1]["memory_bytes"] > 900 * MiB
    assert rss.stats()["exact_reads"] == 0  # rss needs no smaps
    wait_until(h.all_gone, 5, "tree gone")


def test_uss_counts_private_pages_only(hog, make_guard):
    h = hog("--preload", 100, "--children", 4, "--alloc", 50)
    assert h.event()["event"] == "allocated"
    guards = {m: make_guard(metric=m) for m in ("pss", "uss", "rss")}
    for g in guards.values():
        g.watch("web.1", h.pid, 4096 * MiB)
    val = {m: first_reading(g, "web.1")["memory_bytes"] for m, g in guards.items()}
    # private: the master's 50 MiB (+ a few MiB of interpreter per process); the shared
    # 100 MiB preload is nobody's private memory
    assert 50 * MiB <= val["uss"] < 100 * MiB
    assert val["uss"] + 90 * MiB < val["pss"] < val["rss"]
    assert all(g.snapshot()["web.1"]["metric"] == m for m, g in guards.items())


def test_copy_on_write_breaks_are_caught_although_rss_does_not_grow(hog, make_guard):
    """Workers write the shared pages: Σ RSS stays put, Σ PSS grows ×5. The fault-counter
    term of the bound must trigger an exact reading (no periodic re-read to rescue it)."""
    h = hog("--preload", 100, "--children", 4, "--dirty-on-usr1")
    g = make_guard(exact_max_age=3600, refresh=None)
    g.watch("web.1", h.pid, 300 * MiB)
    snap = first_reading(g, "web.1")
    assert snap["memory_bytes"] < 200 * MiB and snap["rss_bytes"] > 400 * MiB
    rss_before = snap["rss_bytes"]
    sweeps_pass(g, 3)
    assert not g.rec.kills
    for child in h.pids[1:]:
        os.kill(child, signal.SIGUSR1)
    wait_until(lambda: g.rec.kills, what="kill after copy-on-write breaks")
    info = g.rec.kills[0][1]
    assert info["memory_bytes"] >= 300 * MiB
    assert g.snapshot() == {}
    assert rss_before > 0


def test_far_from_limit_costs_no_smaps_reads(hog, make_guard):
    h = hog("--children", 4)
    g = make_guard(refresh=None)
    g.watch("web.1", h.pid, 8192 * MiB)
    first_reading(g, "web.1")
    sweeps_pass(g, 2)
    reads = g.stats()["exact_reads"]
    assert reads == 5  # the first reading: one per process
    sweeps_pass(g, 20)
    assert g.stats()["exact_reads"] == reads


# ─── callbacks ───────────────────────────────────────────────────────────────────────────
def test_warning_at_80_percent_once_and_rearmed_below_70(hog, make_guard):
    g = make_guard()
    h = hog("--commands")
    g.watch("web.1", h.pid, 100 * MiB)
    first_reading(g, "web.1")
    h.cmd("alloc 75")  # + ~10 MiB of interpreter: 85 %
    wait_until(lambda: g.rec.warnings, what="warning")
    name, info = g.rec.warnings[0]
    assert name == "web.1" and 0.8 <= info["fraction"] < 1.0
    assert info["limit_bytes"] == 100 * MiB and info["metric"] == "pss"
    h.cmd("alloc 2")
    sweeps_pass(g, 5)
    assert len(g.rec.warnings) == 1  # once
    h.cmd("free")
    wait_until(lambda: not g.snapshot()["web.1"]["warned"], what="re-armed")
    h.cmd("alloc 75")
    wait_until(lambda: len(g.rec.warnings) == 2, what="second warning")
    assert not g.rec.kills and not gone(h.pid)


def test_before_kill_sees_a_frozen_tree_and_is_bounded(hog, make_guard):
    release = threading.Event()
    seen = {}

    def before_kill(name):
        seen["t"] = time.monotonic()
        stopped = set()
        while time.monotonic() - seen["t"] < 0.08 and stopped != set(h.pids):
            stopped |= {p for p in h.pids if state(p) == "T"}
        seen["stopped"] = stopped
        release.wait(10)  # far longer than the 0.1 s allowed

    g = make_guard(before_kill=before_kill)
    try:
        h = hog("--children", 2, "--alloc", 120)
        g.watch("web.1", h.pid, 100 * MiB)
        wait_until(lambda: g.rec.kills, what="kill")
        assert seen["stopped"] == set(h.pids)  # SIGSTOPped before the callback
        assert not release.is_set()  # killed while before_kill was still running
        wait_until(h.all_gone, 5, "tree gone")
        assert time.monotonic() - seen["t"] < 5
    finally:
        release.set()


def test_callback_exceptions_do_not_stop_the_guard(hog, make_guard):
    def boom(name, info):
        raise RuntimeError("callback failure")

    g = make_guard(on_kill=boom, on_warning=boom)
    h1 = hog("--alloc", 120)
    g.watch("a", h1.pid, 100 * MiB)
    wait_until(h1.all_gone, 10, "first hog killed")
    h2 = hog("--alloc", 120)
    g.watch("b", h2.pid, 100 * MiB)
    wait_until(h2.all_gone, 10, "second hog killed")
    assert g.is_alive() and g.stats()["kills"] == 2


# ─── watching ────────────────────────────────────────────────────────────────────────────
def test_unwatch_stops_enforcement(hog, make_guard):
    g = make_guard()
    h = hog("--commands")
    g.watch("web.1", h.pid, 100 * MiB)
    first_reading(g, "web.1")
    g.unwatch("web.1")
    assert "web.1" not in g.snapshot()
    h.cmd("alloc 150")
    sweeps_pass(g, 10)
    assert not g.rec.kills and not gone(h.pid)
    g.unwatch("web.1")  # unknown name: no-op


def test_vanished_pid_does_not_crash_the_thread(hog, make_guard):
    g = make_guard()
    h1 = hog("--children", 2)
    g.watch("a", h1.pid, 100 * MiB)
    first_reading(g, "a")
    os.killpg(h1.pid, signal.SIGKILL)
    h1.proc.wait(5)
    wait_until(lambda: "a" not in g.snapshot(), what="vanished replica dropped")
    assert not g.rec.kills and g.stats()["errors"] == 0
    # the thread still works
    h2 = hog("--alloc", 120)
    g.watch("b", h2.pid, 100 * MiB)
    wait_until(h2.all_gone, 10, "second hog killed")
    assert g.is_alive()


def test_watch_rejects_missing_pid_and_bad_arguments():
    p = subprocess.Popen(["true"])
    p.wait()
    g = MemoryGuard()
    with pytest.raises(ProcessLookupError):
        g.watch("x", p.pid, MiB)
    with pytest.raises(ValueError):
        g.watch("x", os.getpid(), 0)
    with pytest.raises(ValueError):
        MemoryGuard(metric="vms")
    with pytest.raises(ValueError):
        MemoryGuard(interval=0)


def test_pid_reuse_is_never_killed(hog, make_guard):
    """The process at the pid is not the one we were asked to watch (its start time
    differs): the guard drops it instead of killing. Sweeps run by hand (no thread)."""
    h = hog("--alloc", 120)
    assert h.event()["event"] == "allocated"
    g = make_guard(start=False)
    # 1. reused between watch() and the first sweep
    g.watch("web.1", h.pid, 100 * MiB)
    g._replicas["web.1"].start -= 1
    g.sweep()
    assert "web.1" not in g.snapshot()
    # 2. reused after the tree was discovered
    g.watch("web.1", h.pid, 1000 * MiB)
    g.sweep()
    assert g.snapshot()["web.1"]["processes"] == 1
    rep = g._replicas["web.1"]
    for m in rep.members.values():
        m.start -= 1
    rep.limit = 100 * MiB
    g.sweep()
    assert "web.1" not in g.snapshot()
    assert not g.rec.kills and not gone(h.pid)


def test_stop_is_immediate(make_guard):
    g = make_guard(interval=60)
    g.watch("self", os.getpid(), 1 << 40)
    wait_until(lambda: g.stats()["sweeps"] >= 1, what="first sweep")
    t = time.monotonic()
    g.stop()
    assert not g.is_alive() and time.monotonic() - t < 1


# ─── fallbacks ───────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("backend,source", [("proc-smaps", "smaps"), ("psutil", "psutil")])
def test_fallback_backends_measure_the_same_and_kill(hog, make_guard, backend, source):
    h = hog("--preload", 100, "--children", 2, "--commands")
    ref = make_guard()
    alt = make_guard(backend=backend)
    ref.watch("web.1", h.pid, 1000 * MiB)
    alt.watch("web.1", h.pid, 200 * MiB)
    a, b = first_reading(ref, "web.1"), first_reading(alt, "web.1")
    assert b["metric"] == "pss" and b["source"] == source and b["processes"] == 3
    assert abs(a["memory_bytes"] - b["memory_bytes"]) < 10 * MiB
    h.send("alloc 120")  # no reply expected: it may be killed first
    wait_until(lambda: alt.rec.kills, what="kill by the fallback backend")
    wait_until(h.all_gone, 5, "tree gone")


# ─── the displayed figure, and the PSS fallback ──────────────────────────────────────────
FORK_LATER = r"""
import os, sys, time
block = b"\x01" * (100 << 20)           # shared copy-on-write with the children forked below
print("ready", flush=True)
sys.stdin.readline()
for _ in range(3):
    if os.fork() == 0:
        time.sleep(600); os._exit(0)
print("forked", flush=True)
time.sleep(600)
"""


def _tree_pss(pid):
    from dashscale_local.memory import ProcBackend
    backend = ProcBackend()
    pids = [pid] + [int(p) for p in os.listdir("/proc") if p.isdigit()
                    and _ppid(int(p)) == pid]
    return sum((backend.exact(p) or (0, 0))[0] for p in pids), len(pids)


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2:].split()[1])


def test_workers_forked_after_a_reading_are_not_counted_at_full_rss(make_guard):
    """Far from the limit (no tree reading for a while), processes that join share the
    master's pages: memory_bytes must follow Σ PSS, not add their RSS (4× here)."""
    proc = subprocess.Popen([sys.executable, "-c", FORK_LATER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        g = make_guard(refresh=None)
        g.watch("web.1", proc.pid, 8192 * MiB)
        first_reading(g, "web.1")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "forked"
        wait_until(lambda: g.snapshot()["web.1"]["processes"] == 4, what="children adopted")
        t = time.monotonic()
        pss, n = _tree_pss(proc.pid)
        assert n == 4 and 100 * MiB < pss < 150 * MiB
        # the tree is re-read within regroup_age (2 s) of the change
        wait_until(lambda: abs(g.snapshot()["web.1"]["memory_bytes"] - pss) < 10 * MiB, 5,
                   "memory_bytes ≈ Σ PSS")
        assert time.monotonic() - t < 3
        snap = g.snapshot()["web.1"]
        assert snap["rss_bytes"] > 400 * MiB and snap["peak_bytes"] >= snap["memory_bytes"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_pss_unavailable_falls_back_to_rss(hog, make_guard):
    from dashscale_local.memory import ProcBackend

    class NoPss(ProcBackend):  # as on a system without PSS (macOS, psutil without pss)
        def exact(self, pid):
            e = super().exact(pid)
            return None if e is None else (None, e[1])

    g = make_guard(backend=NoPss())
    assert g.metric == "rss" and g.source == "stat"
    h = hog("--children", 2, "--alloc", 30)
    assert h.event()["event"] == "allocated"
    g.watch("web.1", h.pid, 500 * MiB)
    snap = first_reading(g, "web.1")
    assert snap["metric"] == "rss" and snap["memory_bytes"] == snap["rss_bytes"] > 30 * MiB
    uss = make_guard(backend=NoPss(), metric="uss")
    assert uss.metric == "uss"  # only the unavailable metric falls back


# ─── cadence: idle replicas are swept less often, near the limit as often as before ────
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_idle_replica_far_from_the_limit_is_swept_at_the_idle_interval(hog, make_guard):
    clock = FakeClock()
    g = make_guard(start=False, clock=clock, interval=0.25, idle_interval=1.0)
    far, near = hog("--alloc", 20), hog("--alloc", 20)
    assert far.event()["event"] == near.event()["event"] == "allocated"
    g.watch("far", far.pid, 8192 * MiB)
    g.watch("near", near.pid, 40 * MiB)  # ~20 MiB used of 40: ~5 ms away at 4 GiB/s
    g.sweep()
    assert g._replicas["far"].due == clock.t + 1.0
    assert g._replicas["near"].due - clock.t < 0.26
    sweeps = g._replicas["far"].swept
    clock.t += 0.3  # "near" is due, "far" is not (not within one interval either)
    g.sweep()
    assert g._replicas["far"].swept == sweeps and g._replicas["near"].swept[0] == clock.t
    clock.t += 0.5  # "far" is due within one interval: it goes along with "near"
    g.sweep()
    assert g._replicas["far"].swept[0] == clock.t


def test_growth_towards_the_limit_makes_sweeps_fast(make_guard):
    """A replica whose bound grows fast enough to reach its limit within the idle
    interval is swept at the fast interval although it is still far from it."""
    proc = subprocess.Popen([sys.executable, str(HOG), "--commands"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        clock = FakeClock()
        # assumed growth 100 MiB/s: ~590 MiB of headroom is ~6 s away, so idle is slow
        g = make_guard(start=False, clock=clock, interval=0.25, idle_interval=1.0,
                       max_growth=100 * MiB)
        g.watch("web.1", proc.pid, 600 * MiB)
        g.sweep()
        assert g._replicas["web.1"].due == clock.t + 1.0
        proc.stdin.write(b"alloc 300\n")  # +300 MiB in its 1 s between two sweeps
        proc.stdin.flush()
        wait_until(lambda: g.backend.stat(proc.pid).rss > 300 * MiB, what="allocation")
        clock.t += 1.0
        g.sweep()
        # 300 MiB/s, assumed 600 MiB/s from now on: the ~290 MiB left take ~0.5 s
        assert 0.25 < g._replicas["web.1"].due - clock.t < 0.8
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_idle_guard_still_kills_a_sudden_allocation(make_guard):
    """With a long idle interval, a replica that jumps over its limit is still killed:
    its headroom at the assumed growth keeps its sweeps fast."""
    proc = subprocess.Popen([sys.executable, str(HOG), "--commands"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        g = make_guard(interval=0.05, idle_interval=5.0)
        g.watch("web.1", proc.pid, 100 * MiB)
        first_reading(g, "web.1")
        proc.stdin.write(b"alloc 300\n")
        proc.stdin.flush()
        wait_until(lambda: g.rec.kills, what="the OOM kill")
        assert g.rec.kills[0][0] == "web.1" and proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_tree_readings_slow_down_unless_someone_looks(hog, make_guard):
    clock = FakeClock()
    g = make_guard(start=False, clock=clock, refresh=10.0, idle_refresh=60.0,
                   idle_interval=1.0)
    h = hog("--alloc", 10)
    assert h.event()["event"] == "allocated"
    g.watch("web.1", h.pid, 8192 * MiB)
    g.sweep()
    reads = g.stats()["exact_reads"]
    clock.t += 11
    g.sweep()
    assert g.stats()["exact_reads"] == reads  # nobody looks: not re-read after 10 s
    g.keep_fresh(30)
    clock.t += 1
    g.sweep()
    assert g.stats()["exact_reads"] > reads  # a dashboard polls: 10 s
