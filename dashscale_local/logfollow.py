"""The runner's log tail: the new lines of each replica's (and service's) log, printed
as ``name | line``; every 0.1 s while lines come or the monitor sees changes, else
every 0.5 s (cadence.busy_interval).
"""
import asyncio
import os
import time

from .cadence import busy_interval
from .output import LogTail

TAIL_FAST, TAIL_IDLE = 0.1, 0.5  # seconds between reads of the logs


class LogFollower:
    """One LogTail per process name; ``log_path(name)`` is where supervisord writes."""

    def __init__(self, out, log_path):
        self.out, self.log_path = out, log_path
        self.tails = {}

    def follow(self, name, tail=None):
        """From ``tail`` (launch's, which has the first lines), else from the log's end."""
        self.tails[name] = tail or LogTail.from_end(self.log_path(name))

    def follow_new(self, name):
        """A log that outlives runs (a service's): only this run's lines."""
        path = self.log_path(name)
        self.tails[name] = LogTail(path, from_start=not os.path.exists(path))
        self.tails[name].read_lines()

    def forget(self, name):
        self.tails.pop(name, None)

    def once(self, name):
        """Print what was added to the log of ``name``; returns how many lines."""
        tail = self.tails.get(name)
        if tail is None:
            tail = self.tails[name] = LogTail(self.log_path(name), from_start=True)
        lines = tail.read_lines()
        for line in lines:
            self.out.line(name, line)
        return len(lines)

    async def run(self, names, activity):
        """Forever: ``names()`` are the processes now, ``activity()`` when the monitor
        last saw a change."""
        last_line = None
        while True:
            for name in names():
                if self.once(name):
                    last_line = time.monotonic()
            now = time.monotonic()
            await asyncio.sleep(min(busy_interval(now, last_line, TAIL_FAST, TAIL_IDLE),
                                    busy_interval(now, activity(), TAIL_FAST, TAIL_IDLE)))
