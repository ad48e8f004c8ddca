"""Which replica gets the next request: the rotation of ready web replicas.

The runner adds a replica when it answers HTTP and removes it the moment it is stopped,
killed or fails a connect; the proxy picks from what is left. Picking is O(replicas) at
most and allocation-free, since it runs once per request.

Policies
--------
* ``round-robin`` (default): strict rotation, as nginx's default upstream balancing.
* ``least-outstanding``: the replica with the fewest requests in flight (counted from the
  moment it is picked, connect included), ties broken in rotation order. It suits sync
  gunicorn workers running slow callbacks: a fast request is not queued behind a 2 s
  callback while another replica idles (see benchmarks/bench_proxy.py ``balance``).

Health
------
``connect_failed`` is the passive check (a refused or timed-out connect takes the
replica out of rotation at once and hands it to ``on_connect_failure`` — the runner,
which re-probes it with back-off and ``add``s it back). Without such an owner (the
standalone proxy, tests), the proxy's ``HealthChecker`` re-probes ``failed`` backends
itself. A replica the owner ``remove``d (stopped, killed, draining) is never put back by
the health checks.

Counters per backend (``stats()``, shown by ``status`` under ``replicas[i]["proxy"]``):
``inflight``; ``served`` (a complete response relayed, whatever its status); ``errors``
(proxy-level failures: refused/timed-out connect, reset, invalid or truncated response,
read timeout); ``aborted`` (the client went away first); ``status_5xx`` (responses the
app itself answered with 5xx, also counted in ``served``); ``connect_failures``; a
latency histogram (pick → end of response, seconds) over ``LATENCY_BUCKETS`` (+Inf last)
with ``latency_sum_s``.
"""
import asyncio
from bisect import bisect_left

# Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Backend:
    __slots__ = ("name", "label", "host", "port", "inflight", "routed", "served", "errors",
                 "aborted", "status_5xx", "connect_failures", "in_rotation", "draining", "failed",
                 "probe_timeouts", "retry_at", "retry_delay", "histogram", "latency_sum",
                 "_idle")

    def __init__(self, name, host, port):
        self.name = name
        self.label = name.encode()  # X-Dashscale-Replica value
        self.host = host
        self.port = port
        self.inflight = 0
        self.served = 0
        self.routed = 0      # requests ever handed to this replica
        self.errors = 0
        self.aborted = 0
        self.status_5xx = 0
        self.connect_failures = 0
        self.in_rotation = True
        self.draining = False
        self.failed = False        # out of rotation because a health check failed
        self.probe_timeouts = 0    # consecutive active-probe timeouts
        self.retry_at = 0.0        # standalone re-probe schedule (HealthChecker)
        self.retry_delay = 0.0
        self.histogram = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self._idle = None  # Future set when inflight drops to 0 while draining

    @property
    def health(self):
        if self.in_rotation:
            return "ok"
        if self.draining:
            return "draining"
        return "failed" if self.failed else "out"

    def stats(self):
        return {"inflight": self.inflight, "served": self.served, "errors": self.errors,
                "aborted": self.aborted, "status_5xx": self.status_5xx,
                "connect_failures": self.connect_failures,
                "in_rotation": self.in_rotation, "draining": self.draining,
                "health": self.health,
                "latency_buckets": list(LATENCY_BUCKETS), "latency_counts": list(self.histogram),
                "latency_sum_s": round(self.latency_sum, 6)}


class Pool:
    """Backends by name; ``rotation`` is the ordered list the proxy picks from."""

    POLICIES = ("round-robin", "least-outstanding")

    def __init__(self, policy="round-robin"):
        if policy not in self.POLICIES:
            raise ValueError(policy)
        self.policy = policy
        self.backends = {}
        self.rotation = []
        self._next = 0
        self.on_connect_failure = None  # callback(name): the runner re-probes it

    # -- membership (runner side) --------------------------------------------
    def add(self, name, host, port):
        """Put a replica (back) in rotation."""
        backend = self.backends.get(name)
        if backend is None or (backend.host, backend.port) != (host, port):
            old = backend
            backend = self.backends[name] = Backend(name, host, port)
            if old is not None:
                for key in ("served", "errors", "aborted", "status_5xx", "connect_failures",
                            "histogram", "latency_sum"):
                    setattr(backend, key, getattr(old, key))
        backend.in_rotation, backend.draining, backend.failed = True, False, False
        backend.probe_timeouts = 0
        self._rebuild()
        return backend

    def remove(self, name):
        """Out of rotation at once; requests in flight finish on their own."""
        backend = self.backends.get(name)
        if backend is not None:
            backend.failed = False  # the owner decides now; health checks leave it alone
            if backend.in_rotation:
                backend.in_rotation = False
                self._rebuild()

    def forget(self, name):
        self.remove(name)
        self.backends.pop(name, None)

    async def drain(self, name, grace):
        """Take a replica out of rotation and wait (≤ grace s) for its in-flight requests."""
        backend = self.backends.get(name)
        if backend is None:
            return True
        self.remove(name)
        backend.draining = True
        if backend.inflight <= 0:
            return True
        backend._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(backend._idle), grace)
            return True
        except asyncio.TimeoutError:
            return False

    def _rebuild(self):
        self.rotation = [b for b in self.backends.values() if b.in_rotation]
        self.rotation.sort(key=lambda b: (b.name.split(".")[0], _index(b.name)))

    # -- per request (proxy side) --------------------------------------------
    def pick(self, tried=()):
        rotation = self.rotation
        n = len(rotation)
        if n == 0:
            return None
        if self.policy == "least-outstanding":
            best = None
            start = self._next % n
            for i in range(n):
                b = rotation[(start + i) % n]
                if tried and b in tried:
                    continue
                if best is None or b.inflight < best.inflight:
                    best = b
                    if b.inflight == 0:
                        break
            self._next = (start + 1) % n
            return best
        for _ in range(n):
            b = rotation[self._next % n]
            self._next = (self._next + 1) % n
            if not tried or b not in tried:
                return b
        return None

    def acquire(self, backend):
        backend.inflight += 1
        backend.routed += 1

    def release(self, backend, ok, seconds, status=200):
        """End of a request on ``backend``: ok True (response relayed), False (a proxy-level
        failure of the replica), None (the client went away: nobody's fault)."""
        backend.inflight -= 1
        if ok is not False and status >= 500:  # the replica's answer, read whole or not
            backend.status_5xx += 1
        if ok:
            backend.served += 1
        elif ok is None:
            backend.aborted += 1
        else:
            backend.errors += 1
        if ok is not None:
            backend.histogram[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            backend.latency_sum += seconds
        if backend.inflight <= 0 and backend._idle is not None and not backend._idle.done():
            backend._idle.set_result(True)

    def connect_failed(self, backend, acquired=True):
        """Passive health: a refused (or timed-out) connect takes the replica out until it
        is re-probed. Nothing reached it, so the request may go to another replica."""
        if acquired:
            backend.inflight -= 1
            if backend.inflight <= 0 and backend._idle is not None and not backend._idle.done():
                backend._idle.set_result(True)
        backend.errors += 1
        backend.connect_failures += 1
        self._take_out(backend)

    def unresponsive(self, backend):
        """Passive health: the replica took a request but sent nothing for
        ``proxy_read_timeout`` (hung: SIGSTOP, a deadlock). Its TCP handshakes still
        succeed (the kernel queues them), so only this takes it out of rotation — as
        nginx's ``max_fails=1`` counts a timeout. The owner re-probes it over HTTP: a
        replica that was merely slow is back as soon as it answers."""
        self._take_out(backend)

    def _take_out(self, backend):
        """Out of rotation as failed; the owner (runner) re-probes it."""
        if backend.in_rotation:
            backend.in_rotation = False
            backend.failed = True
            self._rebuild()
            if self.on_connect_failure is not None:
                self.on_connect_failure(backend.name)

    def stats(self):
        return {name: b.stats() for name, b in self.backends.items()}


def _index(name):
    try:
        return int(name.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 0
