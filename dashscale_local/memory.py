"""Per-replica memory measurement and OOM-kill emulation (the "memory guard").

A :class:`MemoryGuard` is a daemon thread that measures each watched replica over its
whole process tree (gunicorn master, workers, and anything they spawn; Σ PSS by default,
reading smaps only when a decision needs it) and, when a replica reaches its limit,
freezes and kills the tree the way the Kubernetes OOM killer kills a pod. The runner
calls ``watch()`` when a replica starts, ``unwatch()`` when it stops, and reacts to
``on_kill``.

The API, the metrics, the cost model, the cadence, the fallbacks and how a kill is
enforced: docs/memory.md.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from .cadence import guard_interval

log = logging.getLogger(__name__)

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
METRICS = ("pss", "rss", "uss")
_GONE = (ProcessLookupError, FileNotFoundError)
_thread_time = getattr(time, "thread_time", time.process_time)
DRIFT_BYTES, DRIFT_FRACTION = 1 << 20, 0.05  # display re-reads: see _refresh_display


def _fmt(n):
    return f"{n / 1048576:.1f} MiB"


# ─── backends: how to list pids, stat a process, and take an exact reading ────────────────
class _Stat(tuple):
    """(state, ppid, pgrp, start, faults, rss_bytes); faults is None when unknown."""

    __slots__ = ()
    state = property(lambda s: s[0])
    ppid = property(lambda s: s[1])
    pgrp = property(lambda s: s[2])
    start = property(lambda s: s[3])
    faults = property(lambda s: s[4])
    rss = property(lambda s: s[5])


class ProcBackend:
    """Linux /proc. ``rollup=False`` forces the smaps-summing fallback."""

    name = "proc"

    def __init__(self, rollup=True):
        self.rollup = rollup and os.path.exists("/proc/self/smaps_rollup")
        has_smaps = os.path.exists("/proc/self/smaps")
        self.exact_source = "smaps_rollup" if self.rollup else ("smaps" if has_smaps else None)

    @staticmethod
    def pids():
        return {int(n) for n in os.listdir("/proc") if n.isdigit()}

    @staticmethod
    def stat(pid):
        """The process's _Stat, or None if it is gone."""
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        except _GONE:
            return None
        try:
            data = os.read(fd, 4096)
        except OSError:  # ESRCH: exited between open and read
            return None
        finally:
            os.close(fd)
        f = data[data.rfind(b")") + 2:].split()
        if len(f) < 22:
            return None
        # fields 3.. of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt
        # majflt cmajflt utime stime cutime cstime prio nice threads itreal starttime vsize rss
        return _Stat((f[0].decode(), int(f[1]), int(f[2]), int(f[19]),
                      int(f[7]) + int(f[9]), int(f[21]) * PAGE))

    def exact(self, pid):
        """(pss, uss) in bytes, or None if the process is gone or unreadable."""
        if self.exact_source is None:
            return None
        path = f"/proc/{pid}/smaps_rollup" if self.rollup else f"/proc/{pid}/smaps"
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read()
        except (OSError, ValueError):
            return None
        pss = uss = 0
        seen = False
        for line in data.split(b"\n"):
            if line.startswith(b"Pss:"):
                pss += int(line.split()[1])
                seen = True
            elif line.startswith(b"Private_"):  # Private_Clean, Private_Dirty, Private_Hugetlb
                uss += int(line.split()[1])
        if not seen:  # kernel thread / zombie / exited while reading
            return None
        return pss * 1024, uss * 1024


class PsutilBackend:
    """Portable fallback (no /proc): slower, no fault counters, PSS only on Linux."""

    name = "psutil"
    exact_source = "psutil"

    def __init__(self):
        import psutil  # noqa: F401 (fail early if missing)

        self._psutil = psutil

    def pids(self):
        return set(self._psutil.pids())

    def stat(self, pid):
        ps = self._psutil
        try:
            p = ps.Process(pid)
            with p.oneshot():
                st = {ps.STATUS_ZOMBIE: "Z", ps.STATUS_STOPPED: "T"}.get(p.status(), "R")
                return _Stat((st, p.ppid(), os.getpgid(pid),
                              p.create_time(), None, p.memory_info().rss))
        except (ps.Error, OSError):
            return None

    def exact(self, pid):
        ps = self._psutil
        try:
            m = ps.Process(pid).memory_full_info()
        except (ps.Error, OSError):
            return None
        return getattr(m, "pss", None), getattr(m, "uss", None)


def make_backend(kind="auto"):
    """``auto`` (proc if /proc works, else psutil), ``proc``, ``proc-smaps``, ``psutil``."""
    if kind == "auto":
        kind = "proc" if os.path.exists(f"/proc/{os.getpid()}/stat") else "psutil"
    if kind == "proc":
        return ProcBackend()
    if kind == "proc-smaps":
        return ProcBackend(rollup=False)
    if kind == "psutil":
        return PsutilBackend()
    raise ValueError(f"unknown memory backend {kind!r}")


# ─── state ──────────────────────────────────────────────────────────────────────────────
class _Member:
    __slots__ = ("start", "rss", "faults", "base_rss", "base_faults", "base_val",
                 "disp_val", "disp_rss", "disp_t")

    def __init__(self, start):
        self.start = start
        self.rss = 0
        self.faults = None
        self.base_rss = None  # RSS / faults / metric value at the last exact reading,
        self.base_faults = None  # None if the process joined after it
        self.base_val = None
        self.disp_val = None  # metric / RSS / time of this process's latest own reading:
        self.disp_rss = None  # only for the displayed figure (never for a decision)
        self.disp_t = None


class _Replica:
    def __init__(self, name, pid, start, pgid, limit):
        self.name, self.pid, self.start, self.limit = name, pid, start, limit
        self.pgid = pgid  # == pid if the top process leads its group, else None (no killpg)
        self.members = {}  # pid -> _Member
        self.fresh = True  # tree not discovered yet
        self.exact = None  # last exact reading (metric value over the tree)
        self.exact_t = None
        self.carry = 0  # bound growth of members that exited since the reading
        self.rss_total = 0
        self.bound = 0
        self.memory = 0
        self.peak = 0
        self.warned = False
        self.regrouped = False  # members joined or left since the last tree reading
        self.due = None  # clock time of its next sweep (None: at the next one)
        self.swept = None  # (clock, bound) at its previous sweep: the growth rate


class MemoryGuard(threading.Thread):
    """The memory guard thread: see the module docstring and docs/memory.md."""

    def __init__(self, interval=0.25, metric="pss", on_kill=None, on_warning=None,
                 before_kill=None, clock=time.monotonic, *, warn_fraction=0.8,
                 rearm_fraction=0.7, before_kill_timeout=0.1, exact_max_age=5.0,
                 refresh=10.0, backend="auto", display_reads=2, display_min_age=1.0,
                 regroup_age=2.0, idle_interval=None, max_growth=4 << 30, idle_refresh=None):
        super().__init__(name="dashscale-memory-guard", daemon=True)
        if metric not in METRICS:
            raise ValueError(f"memory metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if not interval > 0:
            raise ValueError("interval must be > 0")
        self.interval = float(interval)
        self.idle_interval = max(self.interval, float(idle_interval or interval))
        self.max_growth = max_growth
        self.requested_metric = metric
        self.on_kill, self.on_warning, self.before_kill = on_kill, on_warning, before_kill
        self.clock = clock
        self.warn_fraction, self.rearm_fraction = warn_fraction, rearm_fraction
        self.before_kill_timeout = before_kill_timeout
        self.exact_max_age, self.refresh = exact_max_age, refresh
        self.idle_refresh = idle_refresh  # refresh while nobody looks (see keep_fresh)
        self._fresh_until = None
        self.display_reads, self.display_min_age = display_reads, display_min_age
        self.regroup_age = regroup_age
        self._display_budget = display_reads
        self.backend = backend if not isinstance(backend, str) else make_backend(backend)
        self.metric, self.source = self._effective_metric(metric)
        self._factor = 2 if self.metric == "uss" else 1
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._wake = threading.Event()  # watch() and stop() cut the wait short
        self._replicas = {}  # name -> _Replica (guarded by _lock)
        # guard-thread-only state:
        self._info = None  # pid -> (start, ppid, pgrp) for every live pid seen
        self._owner = {}  # member pid -> _Replica
        self._active = set()  # replicas handled by the previous sweep
        self._sweeps = self._exact_reads = self._kills = self._errors = 0
        self._refresh = refresh
        self._cpu = 0.0

    def _effective_metric(self, metric):
        if metric == "rss":
            return "rss", "stat" if self.backend.name == "proc" else "psutil"
        probe = self.backend.exact(os.getpid())
        idx = 0 if metric == "pss" else 1
        if probe is None or probe[idx] is None:
            log.warning("memory metric %s is not available here (%s); using rss (an upper "
                        "bound: a shared page counts once per process using it)", metric,
                        sys.platform)
            return "rss", "stat" if self.backend.name == "proc" else "psutil"
        return metric, self.backend.exact_source

    # ─── public API ─────────────────────────────────────────────────────────────────────
    def watch(self, name, pid, limit_bytes):
        limit_bytes = int(limit_bytes)
        if limit_bytes <= 0:
            raise ValueError(f"memory limit must be > 0, not {limit_bytes}")
        st = self.backend.stat(pid)
        if st is None or st.state in ("Z", "X"):
            raise ProcessLookupError(f"no process {pid} to watch for {name}")
        if st.pgrp != pid:
            log.warning("%s: pid %d is not its process group's leader (pgid %d): the guard "
                        "will kill its processes one by one, not the group", name, pid, st.pgrp)
        rep = _Replica(name, pid, st.start, pid if st.pgrp == pid else None, limit_bytes)
        with self._lock:
            self._replicas[name] = rep
        self._wake.set()  # its first reading now, not at the next scheduled sweep

    def keep_fresh(self, seconds):
        """Someone looks at the figures (a dashboard polls): re-read them every
        ``refresh`` s, not ``idle_refresh`` s, for the next ``seconds``."""
        self._fresh_until = self.clock() + seconds

    def unwatch(self, name):
        with self._lock:
            self._replicas.pop(name, None)

    def snapshot(self):
        now = self.clock()
        with self._lock:
            reps = list(self._replicas.values())
        return {r.name: {
            "pid": r.pid, "memory_bytes": int(r.memory), "peak_bytes": int(r.peak),
            "limit_bytes": r.limit, "metric": self.metric, "source": self.source,
            "processes": len(r.members), "rss_bytes": int(r.rss_total),
            "exact_age_s": None if r.exact_t is None else round(now - r.exact_t, 3),
            "warned": r.warned,
        } for r in reps}

    def stats(self):
        return {"sweeps": self._sweeps, "cpu_s": self._cpu, "exact_reads": self._exact_reads,
                "kills": self._kills, "errors": self._errors}

    def stop(self, timeout=5.0):
        self._stop_event.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    # ─── the loop ───────────────────────────────────────────────────────────────────────
    def run(self):
        while not self._stop_event.is_set():
            c0 = _thread_time()
            wait = 0.0
            try:
                self.sweep()
            except Exception:  # never die: log and carry on (not in a tight loop)
                self._errors += 1
                log.exception("memory guard: sweep failed")
                wait = self.interval
            self._cpu += _thread_time() - c0
            self._sweeps += 1
            self._wake.wait(max(wait, self._until_due()))
            self._wake.clear()

    def _until_due(self):
        """Seconds until the next replica is due (``idle_interval`` when none is watched)."""
        with self._lock:
            dues = [r.due for r in self._replicas.values()]
        if not dues:
            return self.idle_interval
        if None in dues:
            return 0
        return max(0.0, min(dues) - self.clock())

    def sweep(self):
        """One measurement/enforcement pass over the replicas that are due (those due
        within ``interval`` go along, so their sweeps stay in phase)."""
        t0 = self.clock()
        with self._lock:
            reps = list(self._replicas.values())
        if not reps:
            self._info, self._owner, self._active = None, {}, set()
            return
        looked_at = self._fresh_until is not None and t0 <= self._fresh_until
        # nobody looks: the carried-forward figure (see snapshot()) is display enough
        self._refresh = self.refresh if looked_at or self.idle_refresh is None \
            else self.idle_refresh
        self._display_budget = self.display_reads
        current = set(reps)
        for gone in self._active - current:  # unwatched since the last sweep
            for pid in gone.members:
                if self._owner.get(pid) is gone:
                    del self._owner[pid]
        self._active = current
        self._discover(reps)
        for rep in reps:
            if rep.due is not None and rep.due > t0 + self.interval:
                continue
            try:
                self._measure(rep, t0)
            except Exception:
                self._errors += 1
                log.exception("memory guard: measuring %s failed", rep.name)
            self._schedule(rep, t0)

    def _schedule(self, rep, t0):
        """Its next sweep: sooner the nearer (and the faster it grows towards) its limit."""
        rate = 0.0
        if rep.swept is not None and t0 > rep.swept[0]:
            rate = (rep.bound - rep.swept[1]) / (t0 - rep.swept[0])
        rep.swept = (t0, rep.bound)
        rep.due = t0 + guard_interval(rep.limit - rep.bound, rate, self.interval,
                                      self.idle_interval, self.max_growth)

    # ─── discovery ──────────────────────────────────────────────────────────────────────
    def _discover(self, reps):
        """Refresh the pid table and add new processes to the trees they belong to."""
        pids = self.backend.pids()
        if self._info is None:
            self._info = {}
            new = pids
        else:
            for pid in self._info.keys() - pids:
                del self._info[pid]
            new = pids - self._info.keys()
        fresh_stats = []
        for pid in new:
            st = self.backend.stat(pid)
            if st is not None:
                self._info[pid] = (st.start, st.ppid, st.pgrp)
                fresh_stats.append((st.start, pid, st))
        if any(r.fresh for r in reps):
            self._discover_fresh([r for r in reps if r.fresh])
        if not fresh_stats:
            return
        by_pgid = {r.pgid: r for r in reps if r.pgid is not None and not r.fresh}
        fresh_stats.sort()  # parents before children
        for start, pid, st in fresh_stats:
            if pid in self._owner or st.state in ("Z", "X"):
                continue
            rep = self._owner.get(st.ppid) or by_pgid.get(st.pgrp)
            if rep is not None and rep in self._active:
                self._adopt(rep, pid, start)

    def _discover_fresh(self, fresh):
        children = {}
        for pid, (start, ppid, pgrp) in self._info.items():
            children.setdefault(ppid, []).append(pid)
        for rep in fresh:
            rep.fresh = False
            info = self._info.get(rep.pid)
            if info is None or info[0] != rep.start:
                log.info("%s: pid %d exited before the first sweep", rep.name, rep.pid)
                self._drop(rep)
                continue
            todo = [rep.pid]
            if rep.pgid is not None:
                todo += [p for p, i in self._info.items() if i[2] == rep.pgid]
            while todo:
                pid = todo.pop()
                if pid in rep.members:
                    continue
                owner = self._owner.get(pid)
                if owner is not None and owner is not rep and owner in self._active:
                    continue  # a tree nested in another watched one stays with its own replica
                self._adopt(rep, pid, self._info[pid][0])
                todo += children.get(pid, ())

    def _adopt(self, rep, pid, start):
        rep.members[pid] = _Member(start)
        self._owner[pid] = rep
        rep.regrouped = True

    def _remove(self, rep, pid):
        m = rep.members.pop(pid)
        if self._owner.get(pid) is rep:
            del self._owner[pid]
        rep.carry += self._growth(m)
        rep.regrouped = True

    def _drop(self, rep):
        for pid in rep.members:
            if self._owner.get(pid) is rep:
                del self._owner[pid]
        with self._lock:
            if self._replicas.get(rep.name) is rep:
                del self._replicas[rep.name]
        self._active.discard(rep)

    def _growth(self, m):
        """Upper bound of how much m can have added to the tree's metric since the reading."""
        if m.base_rss is None or m.faults is None or m.base_faults is None:
            return m.rss
        return (max(0, m.rss - m.base_rss)
                + max(0, m.faults - m.base_faults) * PAGE * self._factor)

    # ─── measurement and decisions ──────────────────────────────────────────────────────
    def _measure(self, rep, t0):
        stat = self.backend.stat
        total = 0
        for pid, m in list(rep.members.items()):
            st = stat(pid)
            if st is None or st.start != m.start or st.state in ("Z", "X"):
                self._remove(rep, pid)
                continue
            m.rss, m.faults = st.rss, st.faults
            total += st.rss
        if not rep.members:
            log.info("%s: all processes of pid %d exited; no longer watched", rep.name, rep.pid)
            self._drop(rep)
            return
        rep.rss_total = total
        limit = rep.limit
        warn_at = limit * self.warn_fraction
        now = self.clock()
        if self.metric == "rss":
            value = rep.bound = rep.memory = total
            rep.exact, rep.exact_t = total, now
        else:
            if rep.exact is None:
                rep.bound = total
            else:
                grow = rep.carry + sum(self._growth(m) for m in rep.members.values())
                rep.bound = min(total, rep.exact + grow)
            age = None if rep.exact_t is None else now - rep.exact_t
            need = (rep.exact is None or rep.bound >= limit
                    or (not rep.warned and rep.bound >= warn_at)
                    or (total >= warn_at and age >= self.exact_max_age)
                    or (self._refresh is not None and age >= self._refresh)
                    or (rep.regrouped and age >= self.regroup_age))
            if need:
                value = self._read_exact(rep)
                rep.exact_t = self.clock()
            else:
                value = None
                self._refresh_display(rep, now)
                est = 0
                for m in rep.members.values():
                    if m.disp_val is None:
                        est += m.rss
                    else:
                        est += min(m.rss, max(0, m.disp_val + m.rss - m.disp_rss))
                rep.memory = est
        if value is None:
            if rep.warned and rep.bound < limit * self.rearm_fraction:
                rep.warned = False
            return
        rep.peak = max(rep.peak, value)
        if value >= limit:
            self._kill(rep, value, t0)
        elif value >= warn_at:
            if not rep.warned:
                rep.warned = True
                # the runner reports through on_warning; log loudly only for bare use
                log.log(logging.INFO if self.on_warning else logging.WARNING,
                        "%s: memory %s is %.0f%% of its limit %s", rep.name, _fmt(value),
                        100.0 * value / limit, _fmt(limit))
                self._call(self.on_warning, rep.name, {
                    "pid": rep.pid, "memory_bytes": value, "limit_bytes": limit,
                    "peak_bytes": rep.peak, "metric": self.metric, "time": time.time(),
                    "fraction": value / limit})
        elif value < limit * self.rearm_fraction:
            rep.warned = False

    def _read_exact(self, rep):
        """Exact metric over the tree; resets the bound (stat was read just before: sound)."""
        idx = 0 if self.metric == "pss" else 1
        total = 0
        for pid, m in rep.members.items():
            e = self.backend.exact(pid)
            self._exact_reads += 1
            v = m.rss if e is None or e[idx] is None else e[idx]
            m.base_val, m.base_rss, m.base_faults = v, m.rss, m.faults
            m.disp_val, m.disp_rss, m.disp_t = v, m.rss, self.clock()
            total += v
        rep.exact = rep.memory = rep.bound = total
        rep.carry = 0
        rep.regrouped = False
        return total

    def _refresh_display(self, rep, now):
        """Keep the displayed figure close to the metric between exact readings: read a
        process that joined since (a worker booted: counting it at full RSS would count
        the pages it shares with the master again) and, within a small budget per sweep
        and at most once a second per process, one whose RSS moved by more than
        max(1 MiB, 5 %) since its reading (RSS moves by whole shared pages; the metric
        by a share of them). Decisions never use these readings."""
        idx = 0 if self.metric == "pss" else 1
        for pid, m in rep.members.items():
            if m.disp_val is not None:
                if self._display_budget <= 0 or now - m.disp_t < self.display_min_age:
                    continue
                if abs(m.rss - m.disp_rss) <= max(DRIFT_BYTES, DRIFT_FRACTION * m.disp_rss):
                    continue
                self._display_budget -= 1
            e = self.backend.exact(pid)
            self._exact_reads += 1
            m.disp_val = m.rss if e is None or e[idx] is None else e[idx]
            m.disp_rss, m.disp_t = m.rss, now

    # ─── enforcement ────────────────────────────────────────────────────────────────────
    def _verified(self, rep):
        """[(pid, pgrp)] of the members that are still the processes we recorded."""
        out = []
        for pid, m in list(rep.members.items()):
            st = self.backend.stat(pid)
            if st is not None and st.start == m.start and st.state not in ("Z", "X"):
                out.append((pid, st.pgrp))
        return out

    def _signal(self, rep, sig):
        """Signal the group (if we may) and every verified member outside it."""
        victims = self._verified(rep)
        use_group = rep.pgid is not None and any(pg == rep.pgid for _, pg in victims)
        sent = []
        if use_group:
            try:
                os.killpg(rep.pgid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as e:
                log.error("%s: cannot signal process group %d: %s", rep.name, rep.pgid, e)
        for pid, pgrp in victims:
            sent.append(pid)
            if use_group and pgrp == rep.pgid:
                continue
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as e:
                log.error("%s: cannot signal pid %d: %s", rep.name, pid, e)
        return sent

    def _wait_stopped(self, rep, timeout):
        deadline = self.clock() + timeout
        pending = list(rep.members)
        while pending:
            pending = [p for p in pending
                       if (st := self.backend.stat(p)) is not None and st.state not in "TtZX"]
            if not pending or self.clock() >= deadline:
                return
            time.sleep(0.001)

    def _kill(self, rep, value, t0):
        with self._lock:
            if self._replicas.get(rep.name) is not rep:
                return  # unwatched meanwhile
        top = self.backend.stat(rep.pid)
        if top is None or top.start != rep.start:
            # the top process is gone (or its pid now names another process): only the
            # verified members are signalled, by pid (never the group unless a verified
            # member is still in it, which keeps the pgid from being reused)
            log.info("%s: top pid %d gone; killing its remaining processes", rep.name, rep.pid)
        if not self._signal(rep, signal.SIGSTOP):  # freeze: no more growth, no more forks
            log.info("%s: exited before it could be killed", rep.name)
            self._drop(rep)
            return
        self._discover(list(self._active))  # anything forked since the sweep started
        self._signal(rep, signal.SIGSTOP)
        self._wait_stopped(rep, 0.02)  # signal delivery is asynchronous (busy CPUs)
        if self.before_kill is not None:
            done = threading.Event()

            def call():
                try:
                    self.before_kill(rep.name)
                except Exception:
                    log.exception("memory guard: before_kill(%s) failed", rep.name)
                finally:
                    done.set()

            threading.Thread(target=call, name="dashscale-before-kill", daemon=True).start()
            if not done.wait(self.before_kill_timeout):
                log.warning("%s: before_kill took more than %.2fs; killing anyway", rep.name,
                            self.before_kill_timeout)
        pids = self._signal(rep, signal.SIGKILL)
        reaction = self.clock() - t0
        self._kills += 1
        self._drop(rep)
        log.log(logging.INFO if self.on_kill else logging.WARNING,
                "OOMKILLED %s: %s %s >= limit %s (peak %s); SIGKILL to %d process(es)", rep.name,
                self.metric, _fmt(value), _fmt(rep.limit), _fmt(rep.peak), len(pids))
        self._call(self.on_kill, rep.name, {
            "pid": rep.pid, "memory_bytes": value, "peak_bytes": rep.peak,
            "limit_bytes": rep.limit, "metric": self.metric, "time": time.time(),
            "reaction_s": reaction, "pids": sorted(pids)})

    @staticmethod
    def _call(fn, *args):
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("memory guard: callback %r failed", fn)
