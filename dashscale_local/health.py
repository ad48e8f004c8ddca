"""Health in one place: which web replicas are in rotation.

``Health`` owns every signal that puts a replica in or out of the proxy's rotation
(balancer.Pool): the readiness probe of a new process (ready = it answers HTTP, not
supervisord's RUNNING, which is a timer), the proxy's passive signal (a refused or
timed-out connect, a replica that stopped answering: ``Pool.on_connect_failure``), the
active check (a TCP connect to each replica in rotation every ``interval`` s; 3 timeouts
in a row or one refusal evict; while no request comes it backs off, doubling after each
round up to ``idle_interval``, since the runner sees an exit by itself), and the runner's own decisions (a process gone, a
replica draining: out for good, whatever a late probe says).

Its decisions are plain code over an injected clock, without I/O: ``due()`` says which
probes to run now, ``result()`` takes their outcome, ``next_due()`` when to look again
(None: nothing to do — an idle run with the active check off costs no wake-ups).
``HealthDriver`` is the thin asyncio part that runs the probes.

With a CHECKS file (``Health.checks``, checks.py) a new process that answers goes
through its checks first (*checking*) and enters the rotation only once they pass; one
that fails them stays out (*failed*) and ``on_checks_failed`` says why. Only a new
process is checked (start, scale-up, roll, restart), as Dokku checks a deploy.
"""
import asyncio
import time
from dataclasses import dataclass
from typing import Optional

from .cadence import backoff_interval

BOOTING, CHECKING, FAILED = "booting", "checking", "failed"
IN, OUT, DOWN, LEAVING = "in", "out", "down", "leaving"


@dataclass(frozen=True)
class Probe:
    name: str
    pid: int
    port: int
    kind: str        # "http": readiness (any HTTP answer); "tcp": the active check;
                     # "checks": the CHECKS file (checks.run_checks)


@dataclass
class Target:
    name: str
    pid: int
    port: int
    phase: str = BOOTING
    due: Optional[float] = None   # next readiness probe (booting, out)
    delay: float = 0.0            # current re-probe delay (out)
    busy: bool = False            # a probe of it is running
    timeouts: int = 0             # active checks timed out in a row
    routed_at_spawn: int = 0      # requests the proxy had routed to it before this process
    checks: Optional[str] = None  # None (no CHECKS), "pending", "passed", "failed: …"


class Health:
    START_INTERVAL = 0.02                   # between probes of a booting replica
    REPROBE_MIN, REPROBE_MAX = 0.02, 2.0    # back-off after it failed in rotation
    FALL_ON_TIMEOUT = 3

    def __init__(self, pool, *, interval=2.0, idle_interval=None, clock=time.monotonic,
                 host="127.0.0.1", on_change=None, on_checks_failed=None):
        """interval: the active check's period (0: off); idle_interval: the longest it
        backs off to while no request comes (None: no back-off).
        on_change(name, pid, in_rotation): a replica came into rotation (it answered)
        or was taken out by a health signal; not called for down/removing/gone.
        on_checks_failed(name, pid, line): its CHECKS failed (the line of run_checks)."""
        self.pool = pool
        self.interval = self.period = interval
        self.idle_interval = interval if idle_interval is None else idle_interval
        self._routed = None           # requests routed when the last round ran
        self.clock = clock
        self.host = host
        self.on_change = on_change or (lambda name, pid, in_rotation: None)
        self.on_checks_failed = on_checks_failed or (lambda name, pid, line: None)
        self.checks = None            # checks.Checks: gates every new process
        self.prefix = ""              # the app's path prefix (--app-name): checks run under it
        self.targets = {}
        self.next_round = None        # the next active check of the rotation
        self.wake = lambda: None      # set by the driver: the schedule moved earlier
        pool.on_connect_failure = self.connect_failed

    # -- the runner's decisions -------------------------------------------------
    def spawned(self, name, pid, port):
        """A new web process: out of rotation, probed from now until it answers."""
        self.pool.remove(name)
        leaving = name in self.targets and self.targets[name].phase == LEAVING
        backend = self.pool.backends.get(name)
        self.targets[name] = Target(
            name, pid, port, phase=LEAVING if leaving else BOOTING,
            due=None if leaving else self.clock(), delay=self.START_INTERVAL,
            routed_at_spawn=backend.routed if backend else 0,
            checks=None if self.checks is None else "pending")
        self.wake()

    def down(self, name):
        """The process is gone (exited, stopped, OOM-killed): out, no probes."""
        self._park(name, DOWN)

    def removing(self, name):
        """Draining for removal: out for good, whatever a late probe says."""
        self._park(name, LEAVING)

    def gone(self, name):
        self.targets.pop(name, None)
        self.pool.forget(name)
        self._round_schedule()

    def _park(self, name, phase):
        self.pool.remove(name)
        t = self.targets.get(name)
        if t is None and phase == LEAVING:  # no process seen yet: a later one stays out too
            t = self.targets[name] = Target(name, 0, 0)
        if t is not None:
            t.phase = LEAVING if t.phase == LEAVING else phase
            t.due = None
        self._round_schedule()

    # -- the proxy's passive signal (Pool.on_connect_failure) ---------------------
    def connect_failed(self, name):
        """The pool took it out (refused connect, no answer in time): re-probe over
        HTTP at once, then with back-off, until it answers."""
        t = self.targets.get(name)
        if t is None or t.phase != IN:
            return
        t.phase, t.delay, t.due, t.timeouts = OUT, self.REPROBE_MIN, self.clock(), 0
        self._round_schedule()
        self.on_change(name, t.pid, False)
        self.wake()

    # -- the driver ---------------------------------------------------------------
    def due(self):
        """The probes to run now; each is marked running until its result()."""
        now = self.clock()
        probes = []
        for t in self.targets.values():
            if not t.busy and t.due is not None and t.due <= now and \
                    t.phase in (BOOTING, OUT, CHECKING):
                t.busy, t.due = True, None
                probes.append(Probe(t.name, t.pid, t.port,
                                    "checks" if t.phase == CHECKING else "http"))
        if self.next_round is not None and now >= self.next_round:
            self.period = self._next_period()
            self.next_round = now + self.period
            for t in self.targets.values():
                if t.phase == IN and not t.busy:
                    t.busy = True
                    probes.append(Probe(t.name, t.pid, t.port, "tcp"))
        return probes

    def result(self, probe, outcome):
        """http: the status code, or None (no answer); tcp: True, False (refused), None
        (timed out); checks: None (passed) or the failure line."""
        t = self.targets.get(probe.name)
        if t is None or t.pid != probe.pid:
            return  # a probe of a process that is gone
        t.busy = False
        if probe.kind == "tcp":
            self._checked(t, outcome)
        elif probe.kind == "checks":
            self._gated(t, outcome)
        elif t.phase in (BOOTING, OUT):
            self._probed(t, outcome is not None)

    def _probed(self, t, ok):
        now = self.clock()
        if ok and t.phase == BOOTING and t.checks == "pending":
            t.phase, t.due = CHECKING, now  # it answers: now its CHECKS
        elif ok:
            t.phase, t.due, t.timeouts = IN, None, 0
            self.pool.add(t.name, self.host, t.port)
            self._round_schedule()
            self.on_change(t.name, t.pid, True)
        elif t.phase == BOOTING:
            t.due = now + self.START_INTERVAL
        else:
            t.due = now + t.delay
            t.delay = min(t.delay * 2, self.REPROBE_MAX)

    def _gated(self, t, failure):
        if t.phase != CHECKING:
            return  # down or leaving meanwhile
        if failure is None:
            t.checks = "passed"
            self._probed(t, True)
        else:
            t.phase, t.checks = FAILED, f"failed: {failure}"
            self.on_checks_failed(t.name, t.pid, failure)

    def _checked(self, t, outcome):
        if t.phase != IN:
            return
        if outcome is True:
            t.timeouts = 0
        elif outcome is False or t.timeouts + 1 >= self.FALL_ON_TIMEOUT:
            backend = self.pool.backends.get(t.name)
            if backend is not None:  # counted as a failed connect; calls connect_failed
                self.pool.connect_failed(backend, acquired=False)
        else:
            t.timeouts += 1

    def _next_period(self):
        """The base period while requests come (or are in flight); after a round with
        none since the previous one, doubled, up to idle_interval."""
        backends = self.pool.backends.values()
        routed = sum(b.routed for b in backends)
        busy = routed != self._routed or any(b.inflight for b in backends)
        self._routed = routed
        return backoff_interval(self.period, self.interval, self.idle_interval, busy)

    def next_due(self):
        """When due() has work next (clock time), or None."""
        times = [t.due for t in self.targets.values() if t.due is not None and not t.busy]
        if self.next_round is not None:
            times.append(self.next_round)
        return min(times, default=None)

    def _round_schedule(self):
        """The active check runs only while something is in rotation."""
        if self.interval <= 0 or not any(t.phase == IN for t in self.targets.values()):
            self.next_round = None
        elif self.next_round is None:
            self.period = self.interval
            self.next_round = self.clock() + self.interval

    # -- queries ------------------------------------------------------------------
    def in_rotation(self):
        return sorted(name for name, t in self.targets.items() if t.phase == IN)

    def checks_of(self, name):
        """The current process's CHECKS: None (no CHECKS file when it started),
        "pending", "passed" or "failed: <why>"."""
        t = self.targets.get(name)
        return t.checks if t is not None else None

    def checks_budget(self):
        """The longest the checks of one process can take (s), for the waiters."""
        c = self.checks
        return 0.0 if c is None else c.attempts * (c.wait + c.timeout * max(1, len(c.checks)))

    def served_since_spawn(self, name):
        """Did the proxy route a request to the current process? (An OOM kill before
        any request means the app's idle memory is over the limit.)"""
        t, backend = self.targets.get(name), self.pool.backends.get(name)
        return backend is not None and t is not None and backend.routed != t.routed_at_spawn


class HealthDriver:
    """Runs Health's probes on the event loop: one task that sleeps until the next due
    probe (or a wake-up), and one short task per probe."""

    def __init__(self, health, http_timeout=30.0, tcp_timeout=2.0, http=None, tcp=None):
        self.health = health
        self.http_timeout, self.tcp_timeout = http_timeout, tcp_timeout
        self.http, self.tcp = http, tcp
        self.task = None
        self.probes = set()
        self._wake = None

    def start(self):
        if self.http is None:
            self.http = http_probe
        if self.tcp is None:
            from .proxy import tcp_probe
            self.tcp = tcp_probe
        self._wake = asyncio.Event()
        self.health.wake = self._wake.set
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self):
        self.health.wake = lambda: None
        for task in [self.task, *self.probes]:
            if task is not None:
                task.cancel()
        self.task, self.probes = None, set()

    async def _run(self):
        health = self.health
        while True:
            for probe in health.due():
                task = asyncio.ensure_future(self._probe(probe))
                self.probes.add(task)
                task.add_done_callback(self.probes.discard)
            when = health.next_due()
            timeout = None if when is None else max(0.0, when - health.clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _probe(self, probe):
        host, health = self.health.host, self.health
        if probe.kind == "http":
            outcome = await self.http(host, probe.port, self.http_timeout)
        elif probe.kind == "checks":
            from .checks import run_checks
            target = health.targets.get(probe.name)
            outcome = None if health.checks is None else await run_checks(  # deleted: pass
                health.checks, probe.port, health.prefix, host,
                alive=lambda: health.targets.get(probe.name) is target and
                target.phase == CHECKING)
        else:
            outcome = await self.tcp(host, probe.port, self.tcp_timeout)
        self.health.result(probe, outcome)
        self._wake.set()


async def http_probe(host, port, timeout):
    """The status code of `GET /` on the replica, or None if it does not answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        # Any HTTP answer means the app is loaded and serving. A path the app does not
        # route costs it ~1 ms; its index page (a Dash layout render) ~15 ms of CPU,
        # taken from replicas still booting.
        writer.write(b"GET /_dashscale/ready HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: dashscale-probe\r\n"
                     b"Connection: close\r\n\r\n" % (host.encode(), port))
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
            return int(parts[1])
        return None
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
