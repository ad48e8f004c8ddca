"""When the runner's monitor polls supervisord next: fast while anything starts, stops
or changes, slow when idle, and at once when a supervised process exits (one pidfd
per process, readable when it exits; Linux >= 5.3, else always fast). The interval
itself is cadence.busy_interval; see docs/idle.md.
"""
import asyncio
import os
import time

from .cadence import busy_interval

MONITOR_FAST = 0.2  # s between polls while busy; idle: monitor_idle_interval


class ExitWatcher:
    """The monitor's cadence and its pidfds; ``start()`` on the loop, ``close()`` when
    the monitor ends."""

    def __init__(self, idle_interval):
        self.idle_interval = idle_interval
        self.activity = None   # when the monitor last saw a change (see poll_interval)
        self.watched = False   # a pidfd per supervised process wakes the monitor
        self._pidfds = {}
        self._wake = self._loop = None

    def start(self):
        self.activity = time.monotonic()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def close(self):
        self.watch(())

    def poll_interval(self):
        """Seconds until the next poll of supervisord: MONITOR_FAST while anything starts,
        stops or changes (and for 2 s after), else ``idle_interval`` — a replica's exit
        wakes the monitor at once through its pidfd (without pidfds, always fast)."""
        idle = self.idle_interval if self.watched else MONITOR_FAST
        return busy_interval(time.monotonic(), self.activity, MONITOR_FAST, idle)

    def busy(self):
        """Something changed or is changing: poll fast for a while."""
        self.activity = time.monotonic()

    def poke(self):
        """The runner started or stopped something: poll now, then fast, so the new
        process is watched (pidfd) and a quick failure is seen before any retry."""
        self.busy()
        if self._wake is not None:
            self._wake.set()

    async def sleep(self, seconds):
        """Until the next poll, or until a watched process exits."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            return
        self._wake.clear()
        self.busy()  # an exit: poll fast until supervisord has seen it

    def watch(self, pids):
        """Keep one pidfd per supervised process (replicas, services), readable when it
        exits; ``watched`` is False where pidfds are unavailable (not Linux >= 5.3)."""
        for pid in [p for p in self._pidfds if p not in pids]:
            self._exited(pid, wake=False)
        self.watched = self._open(pids)

    def _open(self, pids):
        for pid in pids:
            if pid in self._pidfds:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # gone already: poll fast until supervisord says so
                self.busy()
                continue
            except (AttributeError, OSError):
                return False
            self._pidfds[pid] = fd
            self._loop.add_reader(fd, self._exited, pid)
        return True

    def _exited(self, pid, wake=True):
        fd = self._pidfds.pop(pid)
        self._loop.remove_reader(fd)
        os.close(fd)
        if wake:
            self._wake.set()
