"""The runner's side of the memory guard (memory.py): starts it with the runner's
callbacks, copies its figures into the replicas (for status and the dashboard), turns
its kills into ``OomKilled`` observations and its warnings into a line and an event;
and ``--spread``'s CPU pinning. See docs/memory.md.
"""
import asyncio

import psutil

from . import lifecycle
from .lifecycle import OomKilled
from .sizes import format_size
from .status import order_key


class ReplicaMemory:
    """``replicas``: the runner's dict (name → Replica); ``observe(name, obs)`` steps a
    replica; ``served_since_spawn(name)`` is Health's."""

    def __init__(self, settings, replicas, out, event, observe, served_since_spawn):
        self.settings, self.replicas = settings, replicas
        self.out, self.event, self.observe = out, event, observe
        self.served_since_spawn = served_since_spawn
        self.guard = self.sup = None

    def start(self, sup):
        """On the loop: the guard's thread; its kills and warnings come back to the loop."""
        from .memory import MemoryGuard
        loop, s = asyncio.get_running_loop(), self.settings
        self.sup = sup
        self.guard = MemoryGuard(
            interval=s.memory_interval, idle_interval=s.memory_idle_interval,
            max_growth=s.memory_max_growth, idle_refresh=60.0, metric=s.memory_metric,
            before_kill=self._before_kill,
            on_kill=lambda name, info: loop.call_soon_threadsafe(self._oom_killed, name, info),
            on_warning=lambda name, info: loop.call_soon_threadsafe(self._warning, name, info))
        self.guard.start()

    def stop(self):
        if self.guard:
            self.guard.stop()

    def watch(self, e):
        """The WatchMemory effect."""
        if self.guard:
            try:
                self.guard.watch(e.name, e.pid, e.limit)
            except ProcessLookupError:
                pass  # already gone; the next poll sees its successor

    def unwatch(self, name):
        if self.guard:
            self.guard.unwatch(name)

    def update(self):
        """Copy the guard's figures into the replicas (for status and the dashboard).
        peak_bytes is the peak of the current process (of the killed one while OOMKILLED)."""
        snap = self.guard.snapshot() if self.guard else {}
        for r in self.replicas.values():
            m = snap.get(r.name)
            if m and r.pid == m.get("pid") and r.state in lifecycle.UP:
                if r.peak_pid != r.pid:  # a new process (restart): a new peak
                    r.peak_pid, r.peak_bytes = r.pid, 0
                r.memory_bytes = m["memory_bytes"]
                r.peak_bytes = max(r.peak_bytes, m.get("peak_bytes", 0), r.memory_bytes)
            elif r.state not in lifecycle.UP:
                r.memory_bytes = 0

    def _before_kill(self, name):
        # Runs on a helper thread with the replica's tree frozen (SIGSTOP): tell supervisord
        # this exit is a stop, so it does not restart the replica behind the guard's back;
        # the guard SIGKILLs the group right after. If this loses the race, the monitor
        # sees the respawn of a held replica and stops it (lifecycle's hold-down).
        self.sup.stop_replica(name, wait=False)

    def _oom_killed(self, name, info):
        r = self.replicas.get(name)
        if r is None:
            return
        r.memory_bytes = 0
        r.peak_bytes = max(r.peak_bytes, info.get("peak_bytes") or 0, info.get("memory_bytes", 0))
        self.observe(name, OomKilled.from_guard(info, self.served_since_spawn(name)))

    def _warning(self, name, info):
        r = self.replicas.get(name)
        if r:
            used, limit = info.get("memory_bytes", 0), info.get("limit_bytes", r.memory_limit)
            pct = 100.0 * used / limit if limit else 0
            self.out.system(f"WARNING {name} uses {format_size(used)}, {pct:.0f}% of its "
                            f"{format_size(limit)} memory limit (over 80%; OOMKilled at 100%)")
            self.event("memory", f"{name} passed 80% of its memory limit "
                                 f"({format_size(used)} of {format_size(limit)})")

    def spread(self, r):
        """The Pin effect (--spread): pin each replica's tree to its own CPUs (the local
        analogue of Dash Enterprise scheduling replicas on different nodes when it can)."""
        cpus = sorted(psutil.Process().cpu_affinity() or [])
        if not cpus or not r.pid:
            return
        names = sorted(self.replicas, key=order_key)
        k, n = names.index(r.name), len(names)
        if n <= len(cpus):  # disjoint slices, as even as possible
            r.cpus = cpus[k * len(cpus) // n:(k + 1) * len(cpus) // n]
        else:
            r.cpus = [cpus[k % len(cpus)]]
        try:
            root = psutil.Process(r.pid)
            for proc in [root] + root.children(recursive=True):
                proc.cpu_affinity(r.cpus)
        except (psutil.Error, OSError):
            pass
