"""The app's single URL: an asyncio L7 reverse proxy over the ready web replicas.

I/O only: framing, validation and header rewriting live in ``http11`` (sans-IO, strict).
This module decides *when* bytes move. Design notes (requests, failures, timers,
WebSocket, health, speed): docs/proxy.md.
"""
import argparse
import asyncio
import os
import signal
import socket
import sys
from http import HTTPStatus

from . import http11
from .config import PARSERS, Settings, load_settings
from .errors import UsageError
from .cadence import backoff_interval
from .http11 import END, LAST_CHUNK, ProtocolError, Request, Response, encode_chunk

LOCAL_PREFIX = b"/_dashscale/"  # served by the runner itself, never by the app


_LOCAL_STEM = LOCAL_PREFIX[:-1]
_LOCAL_QUERY = _LOCAL_STEM + b"?"


def _is_local(target):
    """/_dashscale/… and /_dashscale itself (the dashboard redirects it to /_dashscale/)."""
    # target[1] == 95 ("_"): a cheap first test, run on every request the runner proxies
    return len(target) > 10 and target[1] == 95 and target.startswith(_LOCAL_STEM) and (
        target.startswith(LOCAL_PREFIX) or target == _LOCAL_STEM
        or target.startswith(_LOCAL_QUERY))

# Deadline kinds of a client connection.
_NONE, _IDLE, _HEADER, _BODY = 0, 1, 2, 3
# Deadline kinds of an upstream connection.
_CONNECT, _READ, _SEND, _TUNNEL = 1, 2, 3, 4

_REPLICA_HEADER = b"X-Dashscale-Replica"
_REPLICA_LINES = {}  # label → b"X-Dashscale-Replica: web.1\r\n"
_MAX_RESPONSE_HEAD = 65536
_VIA = b"1.1 dashscale"

COUNTERS = ("connections", "connections_refused", "requests", "local_requests", "rejected",
            "timeouts_408", "idle_closed", "no_replica", "connect_failures", "connect_retries",
            "bad_gateway", "gateway_timeout", "truncated", "client_aborts", "client_too_slow",
            "upgrades")


class ProxySettings:
    """The proxy's settings: the ``proxy_*`` fields of config.Settings (seconds unless
    noted; defaults and checks there). Also takes a dict of ``proxy_*`` values, checked
    the same way (tests, ``python -m dashscale_local.proxy --set``)."""

    KEYS = tuple(k for k in PARSERS if k.startswith("proxy_"))

    def __init__(self, settings=None):
        if not isinstance(settings, Settings):
            settings = load_settings(overrides={k: v for k, v in (settings or {}).items()
                                                if k in self.KEYS and v != ""},
                                     given_as=lambda key: f"proxy setting {key}")
        self.max_body = settings.proxy_max_body                 # bytes; 413 above
        self.header_timeout = settings.proxy_header_timeout     # whole head, from 1st byte
        self.body_timeout = settings.proxy_body_timeout         # between two body reads
        self.keepalive_timeout = settings.proxy_keepalive_timeout  # idle client connection
        self.connect_timeout = settings.proxy_connect_timeout   # connect to a replica
        self.read_timeout = settings.proxy_read_timeout         # between two replica reads
        self.send_timeout = settings.proxy_send_timeout         # client not reading
        self.max_connections = settings.proxy_max_connections   # open client connections
        self.retry_after = settings.proxy_retry_after           # Retry-After of a 503
        self.health_interval = settings.proxy_health_interval   # active probe period, 0 = off
        self.health_idle_interval = settings.proxy_health_idle_interval  # idle: up to
        timeouts = (self.header_timeout, self.body_timeout, self.keepalive_timeout,
                    self.connect_timeout, self.read_timeout, self.send_timeout)
        self.sweep_interval = min(0.5, max(0.02, min(timeouts) / 4))


def _phrase(status):
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class Proxy:
    def __init__(self, pool, listener, settings=None, local_handler=None):
        self.pool = pool
        # async (request, body) -> (status, [(name, value)], body) for LOCAL_PREFIX paths
        self.local_handler = local_handler
        self.listener = listener
        self.settings = settings if isinstance(settings, ProxySettings) else ProxySettings(settings)
        self.server = None
        self.loop = None
        self.connections = set()
        self.tunnels = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.health = None
        self._sweeper = None

    async def start(self):
        self.loop = loop = asyncio.get_running_loop()
        _raise_nofile_limit(2 * self.settings.max_connections + 256)
        self.server = await loop.create_server(self._protocol, sock=self.listener, backlog=1024)
        self._sweeper = loop.call_later(self.settings.sweep_interval, self._sweep)
        if self.settings.health_interval > 0:
            self.health = HealthChecker(self.pool, self.settings)
            self.health.start()

    def _protocol(self):
        return ClientConnection(self)

    async def close(self):
        if self.health is not None:
            self.health.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.abort()

    def stats(self):
        return dict(self.counters, open_connections=len(self.connections),
                    open_tunnels=self.tunnels)

    def _sweep(self):
        """Fire every deadline that passed (see "Timers" in docs/proxy.md)."""
        now = self.loop.time()
        for conn in list(self.connections):
            d = conn.deadline
            if d and d <= now:
                conn.deadline_passed()
            up = conn.upstream
            if up is not None and up.deadline and up.deadline <= now:
                up.deadline_passed()
        self._sweeper = self.loop.call_later(self.settings.sweep_interval, self._sweep)


class ClientConnection(asyncio.Protocol):
    """One client connection: parse requests, forward each, stream the response back."""

    __slots__ = ("proxy", "pool", "settings", "loop", "counters", "transport", "client_ip",
                 "parser", "queue", "current", "body", "busy", "closing", "deadline", "kind",
                 "upstream", "tunnel", "pending_error", "continue_pending", "read_paused",
                 "write_paused")

    def __init__(self, proxy):
        self.proxy = proxy
        self.pool = proxy.pool
        self.settings = proxy.settings
        self.loop = proxy.loop
        self.counters = proxy.counters
        self.transport = None
        self.client_ip = b"-"
        self.parser = http11.RequestParser(max_body=self.settings.max_body)
        self.queue = []            # complete (request, body chunks) waiting their turn
        self.current = None        # request whose body is being received
        self.body = None
        self.busy = False          # a request is being served
        self.closing = False
        self.deadline = 0.0        # loop time; 0 = none (see Proxy._sweep)
        self.kind = _NONE
        self.upstream = None       # Upstream of the request in flight (also the tunnel)
        self.tunnel = False
        self.pending_error = None  # a protocol error found while busy: sent after
        self.continue_pending = False
        self.read_paused = False
        self.write_paused = False

    # -- connection events ---------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        proxy = self.proxy
        self.counters["connections"] += 1
        if len(proxy.connections) >= self.settings.max_connections:
            self.counters["connections_refused"] += 1
            self.closing = True
            transport.write(http11.error_response(503, "too many connections",
                                                  retry_after=self.settings.retry_after))
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0].encode("latin-1")
        proxy.connections.add(self)
        self.deadline = self.loop.time() + self.settings.header_timeout
        self.kind = _HEADER

    def connection_lost(self, exc):
        self.closing = True
        self.proxy.connections.discard(self)
        self.deadline = 0.0
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.client_gone()
        self.queue.clear()
        self.body = None

    def abort(self):
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self):
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.client_paused()

    def resume_writing(self):
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.client_resumed()

    def data_received(self, data):
        if self.tunnel:
            self.upstream.tunnel_write(data)
            return
        if self.closing:
            return
        kind = self.kind
        if kind == _IDLE:
            self.kind = _HEADER  # a new request starts: the head must be complete in time
            self.deadline = self.loop.time() + self.settings.header_timeout
        elif kind == _BODY:
            self.deadline = self.loop.time() + self.settings.body_timeout
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._take(exc.events)
            self._reject(exc.status, exc.reason)
            return
        if events:
            # The usual case, one whole request (a GET, or a callback POST with its body)
            # while nothing else is pending, goes straight to _dispatch; _take + _next
            # would do the same, in more steps.
            if (len(events) <= 3 and events[-1] is END and not self.busy
                    and self.current is None and not self.queue):
                req = events[0]
                if req.__class__ is Request and not req.expect_continue:
                    self._dispatch(req, events[1:-1])
                    return
            self._take(events)

    def eof_received(self):
        if self.tunnel:
            return self.upstream.tunnel_eof_from_client()
        if self.busy:
            # The client went away while its request is in flight (see module doc).
            self._client_gone()
            return False
        try:
            self.parser.feed_eof()
        except ProtocolError as exc:
            if not self.closing:
                self.counters["rejected"] += 1
            self._send_error_and_close(exc.status, exc.reason)
        return False

    def _client_gone(self):
        self.counters["client_aborts"] += 1
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.client_gone()
        self.abort()

    # -- requests ------------------------------------------------------------
    def _take(self, events):
        for ev in events:
            cls = ev.__class__
            if cls is bytes:
                self.body.append(ev)
            elif cls is Request:
                self.current = ev
                self.body = []
                if ev.chunked or ev.content_length:
                    if not self.busy:
                        self.kind = _BODY
                        self.deadline = self.loop.time() + self.settings.body_timeout
                    if ev.expect_continue:
                        if self.busy or self.queue:
                            self.continue_pending = True  # sent when it is this one's turn
                        elif not self.closing:
                            self.transport.write(http11.CONTINUE_100)
            else:  # END
                self.queue.append((self.current, self.body))
                self.current = None
                self.body = None
                self.continue_pending = False
        if self.queue:
            if not self.busy:
                self._next()
            elif not self.read_paused and not self.closing:
                self.read_paused = True
                self.transport.pause_reading()

    def _next(self):
        if self.closing:
            return
        if not self.queue:
            if self.pending_error is not None:
                self._send_error_and_close(*self.pending_error)
                return
            if self.parser.closed:
                self.transport.close()  # the last request said Connection: close
                return
            if self.current is not None:
                self.kind = _BODY
                self.deadline = self.loop.time() + self.settings.body_timeout
                if self.continue_pending:
                    self.continue_pending = False
                    if not self.body:
                        self.transport.write(http11.CONTINUE_100)
            elif self.parser.in_message:
                self.kind = _HEADER
                self.deadline = self.loop.time() + self.settings.header_timeout
            else:
                self.kind = _IDLE
                self.deadline = self.loop.time() + self.settings.keepalive_timeout
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            return
        req, body = self.queue.pop(0)
        self._dispatch(req, body)

    def _dispatch(self, req, body):
        """Serve ``req`` now (nothing else is in flight on this connection)."""
        self.busy = True
        self.deadline = 0.0
        self.kind = _NONE
        if self.read_paused and not self.queue:
            self.read_paused = False
            self.transport.resume_reading()
        proxy = self.proxy
        if proxy.local_handler is not None and (
                _is_local(req.target)
                or (req.target == b"/" and getattr(proxy, "root_is_local", False))):
            self.counters["local_requests"] += 1
            self.loop.create_task(self._serve_locally(req, body))
            return
        self.counters["requests"] += 1
        # _forward(req, body, None), inlined: this runs once per request
        backend = self.pool.pick()
        if backend is None:
            self._forward(req, body, None)  # → 503
            return
        backend.inflight += 1  # Pool.acquire
        backend.routed += 1
        self.upstream = up = Upstream(self, backend, req, body, None)
        up.connect()

    async def _serve_locally(self, req, body):
        """Paths under /_dashscale/ (the dashboard and its API) are the runner's own."""
        try:
            status, headers, payload = await self.proxy.local_handler(req, b"".join(body))
        except Exception as exc:  # a dashboard bug must not take the proxy down
            status, headers, payload = 500, [(b"content-type", b"text/plain")], \
                f"dashboard error: {exc}".encode()
        if self.closing:
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status))]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % len(payload))
        if not req.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + (payload if req.method != b"HEAD" else b""))
        self.busy = False
        if not req.keep_alive:
            self.transport.close()
            return
        self._next()

    def _forward(self, req, body, tried):
        backend = self.pool.pick(tried)
        if backend is None:
            self.busy = False
            self.counters["no_replica"] += 1
            if tried:
                reason = ("could not connect to any replica (tried " +
                          ", ".join(b.name for b in tried) + ")")
            else:
                reason = "no replica is ready to serve this request"
            self._send_error_and_close(503, reason, self.settings.retry_after)
            return
        self.pool.acquire(backend)
        self.upstream = up = Upstream(self, backend, req, body, tried)
        up.connect()

    def connect_failed(self, up):
        """Nothing reached the replica: safe to try another one."""
        self.upstream = None
        self.counters["connect_failures"] += 1
        self.pool.connect_failed(up.backend)
        if self.closing:
            return
        tried = up.tried or []
        tried.append(up.backend)
        self.counters["connect_retries"] += 1
        self._forward(up.req, up.body, tried)

    def request_done(self, keep_alive):
        """Called by Upstream when the response was relayed completely."""
        self.upstream = None
        self.busy = False
        if self.closing:
            return
        if not keep_alive:
            self.closing = True
            self.transport.close()
            return
        self._next()

    def upstream_failed(self, status, reason, head_sent):
        self.upstream = None
        self.busy = False
        if head_sent:
            self.counters["truncated"] += 1
            self.abort()  # the client sees a truncated response, as from nginx
        else:
            self._send_error_and_close(status, reason)

    # -- errors and timers ---------------------------------------------------
    def _reject(self, status, reason):
        self.counters["rejected"] += 1
        self.current = None
        self.body = None
        if self.busy or self.queue:
            # Answer what came before the bad request first, then the error.
            self.pending_error = (status, reason)
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            if not self.busy:
                self._next()
        else:
            self._send_error_and_close(status, reason)

    def _send_error_and_close(self, status, reason, retry_after=None):
        if self.closing:
            return
        self.closing = True
        self.deadline = 0.0
        self.transport.write(http11.error_response(status, reason, retry_after=retry_after))
        self.transport.close()

    def deadline_passed(self):
        kind = self.kind
        self.deadline = 0.0
        if self.busy or self.closing:
            return
        if kind == _IDLE or (kind == _HEADER and not self.parser.in_message):
            # Nothing of a request arrived (an idle keep-alive or pre-opened connection):
            # close quietly, as nginx does.
            self.counters["idle_closed"] += 1
            self.closing = True
            self.transport.close()
        elif kind == _HEADER or kind == _BODY:
            self.counters["timeouts_408"] += 1
            what = "request head" if kind == _HEADER else "request body"
            self._send_error_and_close(408, f"{what} not received in time")


class Upstream(asyncio.Protocol):
    """The connection to one replica for one request; streams its response back."""

    __slots__ = ("client", "backend", "req", "body", "tried", "loop", "settings", "parser",
                 "transport", "connecting", "waiting", "head_sent", "chunked", "keep_alive",
                 "done", "tunnel", "started", "deadline", "kind", "status", "client_eof",
                 "upstream_eof")

    def __init__(self, client, backend, req, body, tried):
        self.client = client
        self.backend = backend
        self.req = req
        self.body = body
        self.tried = tried
        self.loop = loop = client.loop
        self.settings = client.settings
        self.parser = None
        self.transport = None
        self.head_sent = False  # chunked, keep_alive and status are set with the head
        self.done = False
        self.tunnel = False     # client_eof and upstream_eof are set with the tunnel
        self.started = now = loop.time()
        self.deadline = now + self.settings.connect_timeout
        self.kind = _CONNECT

    # -- connect ---------------------------------------------------------------
    # ``loop.create_connection`` is a coroutine; it is driven here by hand (send, then
    # resume from the done-callback of the future it waits on) instead of by a Task:
    # no Task object, no registration in asyncio's task set, and the connect syscall is
    # made at once rather than one loop iteration later.
    def connect(self):
        backend = self.backend
        self.waiting = None
        self.connecting = self.loop.create_connection(self._self, backend.host, backend.port)
        self._step(None)

    def _step(self, _future):
        self.waiting = None
        coro = self.connecting
        try:
            waiting = coro.send(None)
        except StopIteration:
            self.connecting = None  # connected: connection_made has run
            return
        except asyncio.CancelledError:
            self._connect_ended()
            return
        except Exception:  # OSError (refused, unreachable...) and anything unexpected
            self._connect_ended()
            return
        if waiting is None:  # a bare yield (asyncio.sleep(0))
            self.loop.call_soon(self._step, None)
            return
        waiting._asyncio_future_blocking = False
        self.waiting = waiting
        waiting.add_done_callback(self._step)

    def _connect_ended(self):
        """The connect raised or was cancelled: nothing reached the replica."""
        self.connecting = None
        if self.done or self.transport is not None:
            return  # the client went away meanwhile
        self._connect_failed()

    def _cancel_connect(self):
        """Abandon a connect in progress (→ ``_connect_ended`` once it unwinds)."""
        waiting = self.waiting
        if waiting is not None and self.transport is None:
            waiting.cancel()

    def _self(self):
        return self

    def _connect_failed(self):
        self.done = True
        self.deadline = 0.0
        self.client.connect_failed(self)

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        if self.done:  # the client went away while we connected
            transport.abort()
            return
        req = self.req
        body = self.body
        self.body = None
        self.kind = _READ
        self.deadline = self.loop.time() + self.settings.read_timeout
        head = http11.build_upstream_request(
            req, self.client.client_ip, b"http", _VIA,
            body_length=sum(map(len, body)) if req.chunked else None)
        if body:
            body.insert(0, head)
            transport.writelines(body)
        else:
            transport.write(head)

    def data_received(self, data):
        if self.tunnel:
            self.deadline = self.loop.time() + self.settings.read_timeout
            self.client.transport.write(data)
            return
        if self.done:
            return
        parser = self.parser
        if parser is None:  # the first bytes of the response
            req = self.req
            # The usual case, a whole plain response in one read, relayed in one step
            # (http11's C fast path): the same bytes as ResponseParser + _relay.
            label = self.backend.label
            line = _REPLICA_LINES.get(label)
            if line is None:
                line = _REPLICA_LINES[label] = b"%s: %s\r\n" % (_REPLICA_HEADER, label)
            r = http11.client_response(data, req, line, _MAX_RESPONSE_HEAD)
            if r is not None:
                self.status, out = r
                self.keep_alive = req.keep_alive
                self.chunked = False
                self.head_sent = True
                client = self.client
                if not client.closing:
                    client.transport.write(out)
                self._finish()
                return
            parser = self.parser = http11.ResponseParser(req.method, _MAX_RESPONSE_HEAD)
        if self.kind == _READ:
            self.deadline = self.loop.time() + self.settings.read_timeout
        try:
            events = parser.feed(data)
        except ProtocolError as exc:
            if exc.events:
                self._relay(exc.events)
            self._fail(502, f"{self.backend.name} sent an invalid response: {exc.reason}")
            return
        if events:
            self._relay(events)

    def _relay(self, events):
        if not self.head_sent and events[-1] is END and len(events) <= 3:
            # The usual case: the whole response in one read ([Response, body?, END]).
            resp = events[0]
            if resp.__class__ is Response and not resp.upgrade:
                req = self.req
                head, chunked, self.keep_alive = http11.build_client_response_head(
                    resp, keep_alive=req.keep_alive, client_version=req.http_version,
                    extra_headers=((_REPLICA_HEADER, self.backend.label),))
                self.chunked = chunked
                self.status = resp.status
                self.head_sent = True
                if len(events) == 3:
                    head += encode_chunk(events[1]) + LAST_CHUNK if chunked else events[1]
                elif chunked:
                    head += LAST_CHUNK
                client = self.client
                if not client.closing:
                    client.transport.write(head)
                self._finish()
                return
        out = []
        chunked = self.chunked if self.head_sent else False
        for ev in events:
            cls = ev.__class__
            if cls is bytes:
                out.append(encode_chunk(ev) if chunked else ev)
            elif ev is END:
                if chunked:
                    out.append(LAST_CHUNK)
                self._write(out)
                self._finish()
                return
            elif cls is Response:
                req = self.req
                if ev.upgrade and not req.upgrade:
                    self._write(out)
                    self._fail(502, f"{self.backend.name} switched protocols unasked")
                    return
                head, chunked, self.keep_alive = http11.build_client_response_head(
                    ev, keep_alive=req.keep_alive, client_version=req.http_version,
                    extra_headers=((_REPLICA_HEADER, self.backend.label),))
                self.chunked = chunked
                self.status = ev.status
                out.append(head)
                self.head_sent = True
                if ev.upgrade:
                    leftover = self.parser.trailing_data
                    if leftover:
                        out.append(leftover)
                    self._write(out)
                    self._start_tunnel()
                    return
        if out:
            self._write(out)

    def _write(self, out):
        client = self.client
        if client.closing or not out:
            return
        if len(out) == 1:
            client.transport.write(out[0])
        else:
            client.transport.write(b"".join(out))

    def eof_received(self):
        if self.tunnel:
            return self.tunnel_eof_from_upstream()
        return False  # close; connection_lost decides (a read-until-close body ends here)

    def connection_lost(self, exc):
        if self.tunnel:
            self._end_tunnel()
            return
        if self.done:
            return
        events = None
        if self.parser is not None:  # else: closed before sending a byte
            try:
                events = self.parser.feed_eof()
            except ProtocolError:
                pass
        if events:
            self._relay(events)
        if not self.done:
            if self.head_sent:
                why = f"{self.backend.name} closed the connection mid-response"
            else:
                why = (f"{self.backend.name} closed the connection before answering "
                       "(did the replica die?)")
            self._fail(502, why)

    def pause_writing(self):
        if self.tunnel and not self.client.closing:
            self.client.transport.pause_reading()  # the replica reads slowly

    def resume_writing(self):
        if self.tunnel and not self.client.closing:
            self.client.transport.resume_reading()

    # -- outcomes --------------------------------------------------------------
    def _finish(self):
        self.done = True
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.close()
        self.client.pool.release(self.backend, True, self.loop.time() - self.started, self.status)
        self.parser = None
        self.client.request_done(self.keep_alive)

    def _fail(self, status, reason):
        if self.done:
            return
        self.done = True
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.abort()
        client = self.client
        client.counters["gateway_timeout" if status == 504 else "bad_gateway"] += 1
        client.pool.release(self.backend, False, self.loop.time() - self.started)
        self.parser = None
        client.upstream_failed(status, reason, self.head_sent)

    def client_gone(self):
        """The client connection closed: free the replica slot at once."""
        if self.tunnel:
            if self.transport is not None:
                self.transport.close()
            return
        if self.done:
            return
        self.done = True
        self.deadline = 0.0
        if self.transport is None:
            self._cancel_connect()
        else:
            self.transport.abort()
        self.client.pool.release(self.backend, None, self.loop.time() - self.started)

    def client_paused(self):
        """The client's socket buffer is full: stop reading the replica until it drains."""
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.done:
            self.kind = _SEND
            self.deadline = self.loop.time() + self.settings.send_timeout

    def client_resumed(self):
        if self.transport is not None:
            self.transport.resume_reading()
        if not self.done:
            self.kind = _TUNNEL if self.tunnel else _READ
            self.deadline = self.loop.time() + self.settings.read_timeout

    def deadline_passed(self):
        kind = self.kind
        self.deadline = 0.0
        if kind == _CONNECT:
            self._cancel_connect()  # → _connect_failed (nothing was sent)
        elif kind == _READ:
            self._fail(504, f"{self.backend.name} did not answer within "
                            f"{self.settings.read_timeout:g}s")
            self.client.pool.unresponsive(self.backend)  # hung: out until it answers
        elif kind == _SEND:
            client = self.client
            client.counters["client_too_slow"] += 1
            self.client_gone()
            client.upstream = None
            client.abort()
        elif kind == _TUNNEL:
            self.client.abort()
            if self.transport is not None:
                self.transport.abort()

    # -- WebSocket tunnel ------------------------------------------------------
    def _start_tunnel(self):
        """After a 101: bytes flow both ways untouched until either side closes."""
        client = self.client
        self.tunnel = True
        self.client_eof = self.upstream_eof = False
        self.kind = _TUNNEL
        self.deadline = self.loop.time() + self.settings.read_timeout
        client.tunnel = True
        client.busy = True
        client.deadline = 0.0
        client.proxy.tunnels += 1
        client.counters["upgrades"] += 1
        self.client.pool.release(self.backend, True, self.loop.time() - self.started, 101)
        pending = client.parser.trailing_data
        if pending:
            self.transport.write(pending)
        if client.read_paused:
            client.read_paused = False
            client.transport.resume_reading()

    def tunnel_write(self, data):
        self.deadline = self.loop.time() + self.settings.read_timeout
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def tunnel_eof_from_client(self):
        self.client_eof = True
        if self.upstream_eof:
            self._end_tunnel()
            return False
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        return True

    def tunnel_eof_from_upstream(self):
        self.upstream_eof = True
        client = self.client
        if self.client_eof:
            self._end_tunnel()
            return False
        if not client.closing and client.transport.can_write_eof():
            client.transport.write_eof()
        return True

    def _end_tunnel(self):
        if self.done:
            return
        self.done = True
        self.deadline = 0.0
        client = self.client
        client.proxy.tunnels -= 1
        if self.transport is not None:
            self.transport.close()
        if not client.closing:
            client.closing = True
            client.transport.close()


class HealthChecker:
    """Active health checks: a TCP connect to every replica in rotation each interval."""

    FALL_ON_TIMEOUT = 3
    REPROBE_MIN, REPROBE_MAX = 0.1, 2.0

    def __init__(self, pool, settings):
        self.pool = pool
        self.interval = self.base = settings.health_interval
        self.idle_cap = settings.health_idle_interval
        self._routed = None
        self.timeout = min(settings.connect_timeout, max(self.interval, 0.5))
        self.task = None
        self.rounds = 0

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self):
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self.interval
        while True:
            now = loop.time()
            wake = next_check
            standalone = self.pool.on_connect_failure is None
            if standalone:
                for b in self.pool.backends.values():
                    if b.failed:
                        wake = min(wake, b.retry_at)
            await asyncio.sleep(max(0.0, wake - now))
            now = loop.time()
            if now >= next_check:
                await self.check_rotation()
                self.interval = self.next_interval()
                next_check = now + self.interval
            if self.pool.on_connect_failure is None:
                await self.reprobe_failed(loop.time())

    def next_interval(self):
        """The base period while requests come; with an owner (the runner sees a replica's
        exit by itself) and no request since the last round, doubled up to the idle cap."""
        routed = sum(b.routed for b in self.pool.backends.values())
        busy = (routed != self._routed or self.pool.on_connect_failure is None
                or any(b.inflight for b in self.pool.backends.values()))
        self._routed = routed
        return backoff_interval(self.interval, self.base, self.idle_cap, busy)

    async def check_rotation(self):
        backends = list(self.pool.rotation)
        results = await asyncio.gather(*(tcp_probe(b.host, b.port, self.timeout)
                                         for b in backends))
        self.rounds += 1
        for b, result in zip(backends, results):
            if not b.in_rotation:
                continue
            if result is True:
                b.probe_timeouts = 0
            elif result is False or b.probe_timeouts + 1 >= self.FALL_ON_TIMEOUT:
                self.pool.connect_failed(b, acquired=False)
                b.retry_delay = self.REPROBE_MIN
                b.retry_at = asyncio.get_running_loop().time() + b.retry_delay
            else:
                b.probe_timeouts += 1

    async def reprobe_failed(self, now):
        due = [b for b in self.pool.backends.values() if b.failed and b.retry_at <= now]
        if not due:
            return
        results = await asyncio.gather(*(tcp_probe(b.host, b.port, self.timeout) for b in due))
        for b, ok in zip(due, results):
            if not b.failed:
                continue  # its owner decided meanwhile
            if ok is True:
                self.pool.add(b.name, b.host, b.port)
            else:
                b.retry_delay = min(max(b.retry_delay * 2, self.REPROBE_MIN), self.REPROBE_MAX)
                b.retry_at = asyncio.get_running_loop().time() + b.retry_delay


async def tcp_probe(host, port, timeout):
    """True if a TCP connect succeeds, False if refused, None if it timed out."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(asyncio.Protocol, host, port), timeout)
    except asyncio.TimeoutError:
        return None
    except OSError:
        return False
    transport.close()
    return True


def _raise_nofile_limit(want):
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ImportError, ValueError, OSError):
        pass


# --------------------------------------------------------------------------- standalone

def main(argv=None):
    """``python -m dashscale_local.proxy --backend HOST:PORT ... [--port P]``: the proxy on
    its own in front of fixed backends (benchmarks, debugging). Backends are named web.1…"""
    from .balancer import Pool

    ap = argparse.ArgumentParser(prog="python -m dashscale_local.proxy")
    ap.add_argument("--backend", action="append", required=True, metavar="HOST:PORT")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8050)
    ap.add_argument("--balance", choices=Pool.POLICIES, default="round-robin")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--set", action="append", default=[], metavar="proxy_KEY=VALUE",
                    help="a proxy setting, e.g. proxy_read_timeout=30")
    args = ap.parse_args(argv)
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in ProxySettings.KEYS:
            ap.error(f"unknown setting {key}")
        settings[key] = value
    try:
        settings = ProxySettings(settings)
    except UsageError as exc:
        ap.error(str(exc))
    pool = Pool(args.balance)
    for i, spec in enumerate(args.backend, 1):
        host, _, port = spec.rpartition(":")
        pool.add(f"web.{i}", host or "127.0.0.1", int(port))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)
    listener.setblocking(False)
    if args.loop == "uvloop":
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            print("uvloop not installed: using the default asyncio loop", file=sys.stderr)

    async def run():
        proxy = Proxy(pool, listener, settings)
        await proxy.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"proxy on http://{args.host}:{args.port} → {len(args.backend)} backend(s), "
              f"{args.balance}, pid {os.getpid()}, HTTP heads parsed by "
              f"{'the C fast path' if http11.accel.fast else 'pure Python'}", flush=True)
        await stop.wait()
        await proxy.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
