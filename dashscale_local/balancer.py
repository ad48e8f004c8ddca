"""Which replica gets the next request: the rotation of ready web replicas.

The runner adds a replica when it answers HTTP and removes it the moment it is stopped,
killed or fails a connect; the proxy picks from what is left. Picking is O(replicas) at
most and allocation-free, since it runs once per request.
"""
import asyncio
import bisect

# Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Backend:
    __slots__ = ("name", "host", "port", "inflight", "served", "errors", "in_rotation",
                 "draining", "histogram", "_idle")

    def __init__(self, name, host, port):
        self.name = name
        self.host = host
        self.port = port
        self.inflight = 0
        self.served = 0
        self.errors = 0
        self.in_rotation = True
        self.draining = False
        self.histogram = [0] * (len(LATENCY_BUCKETS) + 1)
        self._idle = None  # Future set when inflight drops to 0 while draining

    def stats(self):
        return {"inflight": self.inflight, "served": self.served, "errors": self.errors,
                "in_rotation": self.in_rotation, "draining": self.draining,
                "latency_buckets": list(LATENCY_BUCKETS), "latency_counts": list(self.histogram)}


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
        backend = self.backends.get(name)
        if backend is None or (backend.host, backend.port) != (host, port):
            old = backend
            backend = self.backends[name] = Backend(name, host, port)
            if old is not None:
                backend.served, backend.errors = old.served, old.errors
                backend.histogram = old.histogram
        backend.in_rotation, backend.draining = True, False
        self._rebuild()
        return backend

    def remove(self, name):
        """Out of rotation at once; requests in flight finish on their own."""
        backend = self.backends.get(name)
        if backend is not None and backend.in_rotation:
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
        backend.draining = True
        self.remove(name)
        if backend.inflight == 0:
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
            start = self._next
            for i in range(n):
                b = rotation[(start + i) % n]
                if b in tried:
                    continue
                if best is None or b.inflight < best.inflight:
                    best = b
            self._next = (start + 1) % n
            return best
        for _ in range(n):
            b = rotation[self._next % n]
            self._next = (self._next + 1) % n
            if b not in tried:
                return b
        return None

    def acquire(self, backend):
        backend.inflight += 1

    def release(self, backend, ok, seconds):
        backend.inflight -= 1
        if ok:
            backend.served += 1
        else:
            backend.errors += 1
        backend.histogram[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if backend.inflight == 0 and backend._idle is not None and not backend._idle.done():
            backend._idle.set_result(True)

    def connect_failed(self, backend):
        """Passive health: a refused connect takes the replica out until re-probed."""
        backend.errors += 1
        self.remove(backend.name)
        if self.on_connect_failure is not None:
            self.on_connect_failure(backend.name)

    def stats(self):
        return {name: b.stats() for name, b in self.backends.items()}


def _index(name):
    try:
        return int(name.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 0
