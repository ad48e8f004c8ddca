"""The app's single URL: an asyncio L7 proxy over the ready web replicas.

I/O only: framing, validation and header rewriting live in http11 (sans-IO). Per client
connection, requests are handled one at a time in arrival order (pipelined requests
queue). A request body is buffered whole (≤ max_body) before a replica is chosen, so a
request is only ever retried on another replica when the *connect* failed — never after
any byte reached a replica (Dash callbacks are POSTs). Responses are streamed, with
back-pressure: a slow client pauses reading from the replica.
"""
import asyncio
import time
from http import HTTPStatus

from . import http11
from .http11 import END, ProtocolError, Request, Response

MiB = 1024 * 1024
LOCAL_PREFIX = b"/_dashscale/"  # served by the runner itself, never by the app


def _is_local(target):
    """/_dashscale/… and /_dashscale itself (which the dashboard redirects)."""
    return target.startswith(LOCAL_PREFIX) or target == LOCAL_PREFIX[:-1] \
        or target.startswith(LOCAL_PREFIX[:-1] + b"?")


class ProxySettings:
    def __init__(self, settings=None):
        s = settings or {}
        f = lambda key, default: float(s.get(key, default))  # noqa: E731
        self.max_body = int(f("proxy_max_body", 64 * MiB))
        self.header_timeout = f("proxy_header_timeout", 10)     # slowloris: whole head
        self.body_timeout = f("proxy_body_timeout", 60)         # whole request body
        self.keepalive_timeout = f("proxy_keepalive_timeout", 75)
        self.connect_timeout = f("proxy_connect_timeout", 5)
        self.read_timeout = f("proxy_read_timeout", 300)        # slow callbacks
        self.max_connections = int(f("proxy_max_connections", 4096))
        self.retry_after = int(f("proxy_retry_after", 1))


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
        self.root_is_local = False  # with --app-name, `/` redirects to /NAME/ (runner answers)
        self.listener = listener
        self.settings = ProxySettings(settings)
        self.server = None
        self.connections = set()
        self.counters = {"requests": 0, "rejected": 0, "no_replica": 0, "bad_gateway": 0,
                         "connect_retries": 0, "connections_refused": 0}

    async def start(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ClientConnection(self), sock=self.listener,
                                               backlog=1024)

    async def close(self):
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.abort()

    def stats(self):
        return dict(self.counters, open_connections=len(self.connections))


class ClientConnection(asyncio.Protocol):
    """One client connection: parse requests, forward each, stream the response back."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.pool = proxy.pool
        self.settings = proxy.settings
        self.transport = None
        self.client_ip = "-"
        self.parser = http11.RequestParser(max_body=self.settings.max_body)
        self.queue = []            # complete (request, body) waiting their turn
        self.current = None        # request being received
        self.body = []
        self.busy = False          # a request is being forwarded
        self.closing = False
        self.timer = None
        self.upstream = None       # Upstream of the request in flight
        self.tunnel = None         # upstream transport once a WebSocket is upgraded

    # -- connection events ---------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "-"
        if len(self.proxy.connections) >= self.settings.max_connections:
            self.proxy.counters["connections_refused"] += 1
            transport.write(http11.error_response(503, "too many connections",
                                                  retry_after=self.settings.retry_after))
            transport.close()
            self.closing = True
            return
        self.proxy.connections.add(self)
        self._arm(self.settings.header_timeout, 408)

    def connection_lost(self, exc):
        self.closing = True
        self.proxy.connections.discard(self)
        self._disarm()
        if self.upstream is not None:
            self.upstream.client_gone()
        if self.tunnel is not None:
            self.tunnel.close()

    def abort(self):
        self.closing = True
        if self.transport:
            self.transport.abort()

    def pause_writing(self):
        if self.upstream is not None:
            self.upstream.pause()

    def resume_writing(self):
        if self.upstream is not None:
            self.upstream.resume()

    def data_received(self, data):
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._take(exc.events)
            self._reject(exc.status, exc.reason)
            return
        self._take(events)

    def eof_received(self):
        if self.tunnel is not None:
            if self.tunnel.can_write_eof():
                self.tunnel.write_eof()
            return True
        try:
            self.parser.feed_eof()
        except ProtocolError as exc:
            self._reject(exc.status, exc.reason)
            return False
        # Half-closed between requests: finish what is queued, then close.
        if not self.busy and not self.queue:
            return False
        self.closing_after_queue = True
        return True

    # -- requests ------------------------------------------------------------
    def _take(self, events):
        for ev in events:
            if ev.__class__ is Request:
                self.current, self.body = ev, []
                self._arm(self.settings.body_timeout, 408)
                if ev.expect_continue:
                    self.transport.write(http11.CONTINUE_100)
            elif ev is END:
                self.queue.append((self.current, b"".join(self.body)))
                self.current, self.body = None, []
                self._disarm()
                if self.current is None and not self.busy:
                    pass
            else:
                self.body.append(ev)
        if self.queue and not self.busy:
            self._next()
        if len(self.queue) > 8:
            self.transport.pause_reading()  # a client pipelining too far ahead

    def _next(self):
        if not self.queue:
            if getattr(self, "closing_after_queue", False):
                self.transport.close()
            elif not self.closing:
                self._arm(self.settings.keepalive_timeout if self.current is None
                          else self.settings.header_timeout, None)
            return
        if len(self.queue) <= 8:
            self.transport.resume_reading()
        req, body = self.queue.pop(0)
        self.busy = True
        self._disarm()
        self.proxy.counters["requests"] += 1
        if self.proxy.local_handler is not None and (
                _is_local(req.target) or (req.target == b"/" and self.proxy.root_is_local)):
            asyncio.ensure_future(self._serve_locally(req, body))
        else:
            asyncio.ensure_future(self._forward(req, body))

    async def _serve_locally(self, req, body):
        """Paths under /_dashscale/ (the dashboard and its API) are the runner's own."""
        try:
            status, headers, payload = await self.proxy.local_handler(req, body)
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

    async def _forward(self, req, body):
        loop = asyncio.get_running_loop()
        tried = []
        while True:
            backend = self.pool.pick(tried)
            if backend is None:
                self.proxy.counters["no_replica"] += 1
                self._reply_error(503, "no replica is ready to serve this request",
                                  retry_after=self.settings.retry_after)
                return
            up = Upstream(self, backend, req)
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: up, backend.host, backend.port),
                    self.settings.connect_timeout)
                break
            except (OSError, asyncio.TimeoutError):
                # Nothing reached the replica: safe to try the next one.
                self.pool.connect_failed(backend)
                self.proxy.counters["connect_retries"] += 1
                tried.append(backend)
        if self.closing:
            up.transport.close()
            return
        self.upstream = up
        self.pool.acquire(backend)
        up.started = time.monotonic()
        up.transport.write(http11.build_upstream_request(
            req, self.client_ip, body_length=len(body) if req.chunked else None) + body)

    def request_done(self, up, ok, keep_alive):
        """Called by Upstream when the response ended (or failed)."""
        self.pool.release(up.backend, ok, time.monotonic() - up.started)
        self.upstream = None
        self.busy = False
        if not keep_alive or self.closing:
            if not self.closing:
                self.transport.close()
            return
        self._next()

    def start_tunnel(self, upstream_transport, leftover_upstream):
        """After a 101: bytes flow both ways untouched until either side closes."""
        self.tunnel = upstream_transport
        self._disarm()
        pending = self.parser.trailing_data if hasattr(self.parser, "trailing_data") else b""
        if pending:
            upstream_transport.write(bytes(pending))
        if leftover_upstream:
            self.transport.write(leftover_upstream)

    # -- errors and timers ---------------------------------------------------
    def _reject(self, status, reason):
        self.proxy.counters["rejected"] += 1
        self.queue.clear()
        if not self.busy:
            self._send_error_and_close(status, reason)
        else:
            self.pending_error = (status, reason)
            self.transport.pause_reading()

    def _reply_error(self, status, reason, retry_after=None):
        self.busy = False
        self._send_error_and_close(status, reason, retry_after)

    def _send_error_and_close(self, status, reason, retry_after=None):
        if self.closing:
            return
        self.closing = True
        self.transport.write(http11.error_response(status, reason, retry_after=retry_after))
        self.transport.close()

    def _arm(self, seconds, status):
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timeout, status)

    def _disarm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timeout(self, status):
        self.timer = None
        if self.busy:
            return
        if status is None or (self.current is None and not self.parser.in_message):
            self.transport.close()  # idle keep-alive connection
        else:
            self._send_error_and_close(status, "request not received in time")


class Upstream(asyncio.Protocol):
    """The connection to one replica for one request; streams its response back."""

    def __init__(self, client, backend, req):
        self.client = client
        self.backend = backend
        self.req = req
        self.parser = http11.ResponseParser(req.method)
        self.transport = None
        self.head_sent = False
        self.chunked = False
        self.keep_alive = False
        self.finished = False
        self.tunnel = False
        self.started = 0.0
        self.timer = None
        self.replica = backend.name.encode()

    def connection_made(self, transport):
        self.transport = transport
        self._arm()

    def _arm(self):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(
            self.client.settings.read_timeout, self._timed_out)

    def _timed_out(self):
        self.timer = None
        if not self.finished and not self.tunnel:
            self._fail(504, f"{self.backend.name} did not answer within "
                            f"{self.client.settings.read_timeout:g}s")

    def data_received(self, data):
        if self.tunnel:
            self.client.transport.write(data)
            return
        self._arm()
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._fail(502, f"{self.backend.name} sent an invalid response: {exc.reason}")
            return
        self._handle(events)

    def _handle(self, events):
        client = self.client
        write = client.transport.write
        for ev in events:
            if ev.__class__ is bytes:
                write(http11.encode_chunk(ev) if self.chunked else ev)
            elif ev is END:
                if self.chunked:
                    write(http11.LAST_CHUNK)
                self._finish(True, self.keep_alive)
                return
            elif ev.__class__ is Response:
                head, self.chunked, self.keep_alive = http11.build_client_response_head(
                    ev, keep_alive=self.req.keep_alive, client_version=self.req.http_version,
                    extra_headers=((b"X-Dashscale-Replica", self.replica),))
                write(head)
                self.head_sent = True
                if ev.upgrade:
                    self.tunnel = True
                    if self.timer:
                        self.timer.cancel()
                    client.start_tunnel(self.transport, bytes(self.parser.trailing_data or b""))
                    return

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
        if self.tunnel:
            self.client.transport.close()
            self.client.pool.release(self.backend, True, time.monotonic() - self.started)
            return
        if self.finished:
            return
        try:
            events = self.parser.feed_eof()
        except ProtocolError:
            events = None
        if events:
            self._handle(events)
        if not self.finished:
            self._fail(502, f"{self.backend.name} closed the connection before a complete "
                            "response (did the replica die?)")

    def _fail(self, status, reason):
        client = self.client
        if self.finished:
            return
        self.finished = True
        if self.transport is not None:
            self.transport.abort()
        client.proxy.counters["bad_gateway"] += 1
        client.pool.release(self.backend, False, time.monotonic() - self.started)
        client.upstream = None
        client.busy = False
        if self.head_sent:
            client.closing = True
            client.transport.abort()  # the client sees a truncated response, as from nginx
        else:
            client._send_error_and_close(status, reason)

    def _finish(self, ok, keep_alive):
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        self.transport.close()
        pending = getattr(self.client, "pending_error", None)
        if pending:
            self.client.pool.release(self.backend, ok, time.monotonic() - self.started)
            self.client.upstream = None
            self.client.busy = False
            self.client._send_error_and_close(*pending)
            return
        self.client.request_done(self, ok, keep_alive)

    def client_gone(self):
        if not self.finished:
            self.finished = True
            self.client.pool.release(self.backend, False, time.monotonic() - self.started)
            if self.transport is not None:
                self.transport.abort()

    def pause(self):
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self):
        if self.transport is not None:
            self.transport.resume_reading()
