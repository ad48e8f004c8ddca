"""The Scale tab: served by the runner on the proxy port under /_dashscale/.

``handle(api, req, body)`` answers every request whose path is /_dashscale or starts
with /_dashscale/; the app keeps every other path. It runs in the runner, not in a
replica, so it works while the app is down.

Routes
  GET  /_dashscale                → 308 to /_dashscale/
  GET  /_dashscale/               → the page (assets/index.html, strict CSP)
  GET  /_dashscale/dashboard.js, /_dashscale/dashboard.css
  GET  /_dashscale/api/status[?since=T], POST /_dashscale/api/scale, /api/restart
                                  → api.ControlAPI (the socket's routes, bar stop; the
                                    schema and its checks are there)

Cross-site protection (the page can start and stop processes):
  * every route: the Host header must name this machine (an IP literal, ``localhost``
    or the configured --host) — a DNS-rebinding page has its own host name;
  * POST: ``X-Dashscale-Request: 1`` (a custom header: a cross-origin page cannot send
    it without a CORS preflight, which we never grant), ``Content-Type:
    application/json``, an ``Origin`` (if sent) equal to ``http://<Host>``, and a
    ``Sec-Fetch-Site`` (if sent) of ``same-origin``/``none``;
  * beyond loopback, POST also needs the token `start` printed: ``X-Dashscale-Token``
    or the cookie (HttpOnly, SameSite=Strict) that ``/_dashscale/?token=…`` sets.
"""
import asyncio
import collections
import hmac
import ipaddress
import json
import os
import time
from urllib.parse import parse_qs

from . import rundir
from .api import METHODS

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
PREFIX = b"/_dashscale"
API_ROUTES = ("status", "scale", "restart")  # no stop from a web page
TOKEN_COOKIE = b"dashscale_token"
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


def check_token(api, req):
    """Beyond loopback a state-changing request needs the token `start` printed, as
    X-Dashscale-Token or the cookie the tokened page set — whoever the peer seems to be
    (a tunnel makes a remote user look local). None if it may proceed, else a refusal."""
    if rundir.is_loopback(api.runner.host):
        return None
    sent = _header(req, b"x-dashscale-token") or _cookie(req, TOKEN_COOKIE)
    if not api.token or not sent or not hmac.compare_digest(sent, api.token.encode()):
        return 403, "this dashboard needs its token: open the URL `start` printed " \
                    "(/_dashscale/?token=…) or send X-Dashscale-Token"
    return None


def _cookie(req, name):
    for key, value in req.headers:
        if key == b"cookie":
            for item in value.split(b";"):
                k, _, v = item.strip().partition(b"=")
                if k == name:
                    return v
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


def _page(api, req, query):
    """The page; with ?token=T (the right one) a 303 to the bare page that sets the cookie,
    so the token leaves the address bar."""
    token = parse_qs(query).get("token", [None])[-1]
    if token is None:
        return _static(*STATIC[b"/"])
    if not api.token or not hmac.compare_digest(token.encode(), api.token.encode()):
        return _error(403, "wrong dashboard token")
    cookie = b"%s=%s; HttpOnly; SameSite=Strict; Path=/_dashscale/" % (TOKEN_COOKIE,
                                                                         api.token.encode())
    return 303, [(b"location", b"/_dashscale/"), (b"set-cookie", cookie),
                 (b"content-type", b"text/plain"), (b"cache-control", b"no-store")] + COMMON, \
        b"see /_dashscale/\n"


async def handle(api, req, body):
    """Answer one /_dashscale… request; ``api`` is the runner's api.ControlAPI."""
    path, _, query = req.target.partition(b"?")
    query = query.decode("latin-1")
    if not host_allowed(req.host or _header(req, b"host"), api.runner.host):
        return _error(403, "the dashboard answers only to this machine's addresses "
                           "(localhost or an IP), not to other host names (DNS rebinding)")
    if path == PREFIX:
        return 308, [(b"location", b"/_dashscale/"), (b"content-type", b"text/plain")] + COMMON, \
            b"see /_dashscale/\n"
    sub = path[len(PREFIX):]
    if sub in STATIC:
        if req.method not in (b"GET", b"HEAD"):
            return _error(405, "method not allowed", [(b"allow", b"GET, HEAD")])
        return _page(api, req, query) if sub == b"/" else _static(*STATIC[sub])
    route = sub.removeprefix(b"/api/").decode("latin-1")
    if not sub.startswith(b"/api/") or route not in API_ROUTES:
        return _error(404, f"no such dashboard route: {path.decode('latin-1')}")
    allow = [(b"allow", ", ".join(METHODS[route]).encode())]
    if req.method.decode("latin-1") not in METHODS[route]:
        return _error(405, f"use {', '.join(METHODS[route])}", allow)
    if req.method == b"POST":
        refused = check_post(req) or check_token(api, req)
        if refused:
            return _error(*refused)
    status, payload = await api.handle(req.method.decode("latin-1"), route, body, query,
                                       routes=API_ROUTES)
    return _json(status, payload)
