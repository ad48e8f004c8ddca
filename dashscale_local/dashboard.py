"""The Scale tab: served by the runner on the proxy port under /_dashscale/.

``handle(runner, req, body)`` answers every request whose path is /_dashscale or starts
with /_dashscale/; the app keeps every other path. It runs in the runner, not in a
replica, so it works while the app is down.

Routes
  GET  /_dashscale                → 308 to /_dashscale/
  GET  /_dashscale/               → the page (assets/index.html, strict CSP)
  GET  /_dashscale/dashboard.js, /_dashscale/dashboard.css
  GET  /_dashscale/api/status[?since=T] → ``Runner.status()`` plus ``dashboard`` (caps,
                                    server time) and, with ``since``, ``memory_history``:
                                    the per-replica samples newer than T (epoch seconds)
  POST /_dashscale/api/scale      {"formation": {"web": 2}}  → Runner.scale
  POST /_dashscale/api/restart    {"target": "web.2", "rolling": false} → Runner.restart

Cross-site protection (the page can start and stop processes):
  * every route: the Host header must name this machine (an IP literal, ``localhost``
    or the configured --host) — a DNS-rebinding page has its own host name;
  * POST: ``X-Dashscale-Request: 1`` (a custom header: a cross-origin page cannot send
    it without a CORS preflight, which we never grant), ``Content-Type:
    application/json``, an ``Origin`` (if sent) equal to ``http://<Host>``, and a
    ``Sec-Fetch-Site`` (if sent) of ``same-origin``/``none``.
"""
import asyncio
import collections
import ipaddress
import json
import os
import time
from urllib.parse import parse_qs

from .errors import RuntimeFailure, UsageError

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
PREFIX = b"/_dashscale"
MAX_BODY = 64 * 1024
HISTORY_INTERVAL = 1.0      # seconds between memory samples
HISTORY_KEEP = 600          # samples kept (10 minutes)
WATCHED_FOR = 30.0          # seconds a dashboard poll keeps the figures fresh

COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
          (b"x-frame-options", b"DENY")]
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")] + COMMON
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {
    b"/": ("index.html", b"text/html; charset=utf-8"),
    b"/dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"/dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}
_static_cache = {}


# -- memory history (sampled by the runner every second) ------------------------------
class MemoryHistory:
    """A ring buffer of ``(time, {replica: bytes})`` taken every ``interval`` seconds from
    the runner's replicas (whose memory the runner refreshes from the guard)."""

    def __init__(self, runner, interval=HISTORY_INTERVAL, keep=HISTORY_KEEP):
        self.runner = runner
        self.interval = interval
        self.samples = collections.deque(maxlen=keep)
        self.seen = set()

    def sample(self, now=None):
        """A replica counts once it has been measured; after that a stopped or
        OOM-killed replica shows as 0 (the drop is the point of the plot)."""
        values = {}
        for name, r in list(self.runner.replicas.items()):
            if r.memory_bytes > 0:
                values[name] = r.memory_bytes
                self.seen.add(name)
            elif name in self.seen:
                values[name] = 0
        self.seen &= set(self.runner.replicas)
        self.samples.append((round(now or time.time(), 3), values))

    def since(self, t):
        """The samples newer than ``t``. The dashboard polls this: while it does, the
        guard keeps the figures it plots exact (tree readings every 10 s, not 60 s)."""
        guard = getattr(self.runner, "guard", None)
        if guard is not None:
            guard.keep_fresh(WATCHED_FOR)
        return [[ts, values] for ts, values in self.samples if ts > t]

    async def run(self):
        while True:
            try:
                self.sample()
            except Exception:  # never let a sampling hiccup end the history
                pass
            await asyncio.sleep(self.interval)


def start_history(runner):
    """Called by the runner once its loop runs; returns the sampling task."""
    runner.memory_history = MemoryHistory(runner)
    return asyncio.ensure_future(runner.memory_history.run())


# -- request handling ------------------------------------------------------------------
def _header(req, name):
    for key, value in req.headers:
        if key == name:
            return value
    return None


def _split_host(value):
    """'127.0.0.1:8050' / '[::1]:8050' / 'localhost' → host name (lower case) or None."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(host_header, configured_host):
    """True if the Host names this machine: an IP literal, localhost, or --host.
    A DNS-rebinding attack needs a host *name* of the attacker's, so this stops it."""
    if not host_header:
        return False
    try:
        name = _split_host(host_header.decode("ascii"))
    except UnicodeDecodeError:
        return False
    if not name:
        return False
    if name in ("localhost", "localhost.", (configured_host or "").lower()):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def check_post(req):
    """None if a state-changing request may proceed, else (status, message)."""
    if _header(req, b"x-dashscale-request") != b"1":
        return 403, "missing X-Dashscale-Request: 1 header (cross-site requests are refused)"
    ctype = (_header(req, b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if ctype != b"application/json":
        return 415, "Content-Type must be application/json"
    host = (req.host or _header(req, b"host") or b"").strip().lower()
    origin = _header(req, b"origin")
    if origin is not None:
        origin = origin.strip().lower()
        if origin not in (b"http://" + host, b"https://" + host):
            return 403, "cross-origin request refused (Origin does not match Host)"
    site = _header(req, b"sec-fetch-site")
    if site is not None and site.strip().lower() not in (b"same-origin", b"none"):
        return 403, "cross-site request refused (Sec-Fetch-Site)"
    return None


def _json(status, payload):
    return status, list(JSON_HEADERS), json.dumps(payload).encode()


def _error(status, message, extra=()):
    s, headers, body = _json(status, {"error": message})
    return s, headers + list(extra), body


def _static(name, ctype):
    data = _static_cache.get(name)
    if data is None:
        with open(os.path.join(ASSETS, name), "rb") as f:
            data = f.read()
        _static_cache[name] = data
    headers = [(b"content-type", ctype), (b"cache-control", b"no-cache")] + COMMON
    if name.endswith(".html"):
        headers.append((b"content-security-policy", CSP))
    return 200, headers, data


def dashboard_status(runner, since=None):
    data = runner.status()
    settings = getattr(runner, "settings", {}) or {}
    data["dashboard"] = {
        "time": time.time(),
        "max_per_type": int(float(settings.get("max_replicas_per_type", 10))),
        "pod_limit": int(float(settings.get("pod_limit", 40))),
        "history_interval": HISTORY_INTERVAL,
        "history_keep": HISTORY_KEEP,
    }
    if since is not None:
        history = getattr(runner, "memory_history", None)
        data["memory_history"] = history.since(since) if history is not None else []
    return data


def _query(target):
    _, _, query = target.partition(b"?")
    try:
        return {k: v[-1] for k, v in parse_qs(query.decode("ascii")).items()}
    except UnicodeDecodeError:
        return {}


async def handle(runner, req, body):
    path = req.target.split(b"?", 1)[0]
    if not host_allowed(req.host or _header(req, b"host"), getattr(runner, "host", None)):
        return _error(403, "the dashboard answers only to this machine's addresses "
                           "(localhost or an IP), not to other host names (DNS rebinding)")
    if path == PREFIX:
        return 308, [(b"location", b"/_dashscale/"), (b"content-type", b"text/plain")] + COMMON, \
            b"see /_dashscale/\n"
    sub = path[len(PREFIX):]
    if sub in STATIC:
        if req.method not in (b"GET", b"HEAD"):
            return _error(405, "method not allowed", [(b"allow", b"GET, HEAD")])
        return _static(*STATIC[sub])
    if sub == b"/api/status":
        if req.method not in (b"GET", b"HEAD"):
            return _error(405, "method not allowed", [(b"allow", b"GET, HEAD")])
        since = _query(req.target).get("since")
        try:
            since = float(since) if since is not None else None
        except ValueError:
            return _error(400, "since must be a number (epoch seconds)")
        return _json(200, dashboard_status(runner, since))
    if sub in (b"/api/scale", b"/api/restart"):
        if req.method != b"POST":
            return _error(405, "use POST", [(b"allow", b"POST")])
        refused = check_post(req)
        if refused:
            return _error(*refused)
        if len(body) > MAX_BODY:
            return _error(413, "request too large")
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(payload, dict):
            return _error(400, "body must be a JSON object")
        try:
            if sub == b"/api/scale":
                return await _scale(runner, payload)
            return await _restart(runner, payload)
        except UsageError as exc:
            return _error(400, str(exc))
        except RuntimeFailure as exc:
            return _error(500, str(exc))
    return _error(404, f"no such dashboard route: {path.decode('latin-1')}")


async def _scale(runner, payload):
    spec = payload.get("formation")
    if not isinstance(spec, dict) or not spec:
        return _error(400, 'expected {"formation": {"web": 2}}')
    for key, value in spec.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int) \
                or value < 0:
            return _error(400, f"bad count for {key!r}: {value!r} (a whole number ≥ 0)")
    counts = await runner.scale(spec)
    return _json(200, {"formation": counts})


async def _restart(runner, payload):
    target = payload.get("target")
    if target is not None and not isinstance(target, str):
        return _error(400, "target must be a replica (web.2), a type (web) or null")
    names = await runner.restart(target, bool(payload.get("rolling")))
    return _json(200, {"restarted": names})
