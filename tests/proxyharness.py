"""Test harness for the live proxy without supervisord: a Pool + Proxy on an event loop in
a background thread, in front of raw recording backends, driven from raw sockets.

A RecordingBackend records the exact bytes of every connection it accepts and answers by
path (see ``RecordingBackend.respond``); ``behaviour`` overrides that for the whole
backend ("close-after-read", "never-answer", ...).
"""
import asyncio
import re
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

from dashscale_local.balancer import Pool
from dashscale_local.proxy import Proxy


class LoopThread:
    def __init__(self):
        try:
            import uvloop
            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        async def wrapper():
            return fn(*args)
        return self.run(wrapper())

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class RecordingBackend:
    """An HTTP-ish server that records what arrives, byte for byte, per connection."""

    def __init__(self, name, behaviour=None):
        self.name = name
        self.behaviour = behaviour
        self.connections = []      # bytearray per accepted connection
        self.requests = []         # (head bytes, body bytes) per complete request
        self.active = 0
        self.server = None
        self.port = None
        self.writers = set()

    async def start(self, port=0):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=128)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            self.server = None

    @property
    def received(self):
        return b"".join(bytes(c) for c in self.connections)

    async def _handle(self, reader, writer):
        rec = bytearray()
        self.connections.append(rec)
        self.writers.add(writer)
        self.active += 1
        try:
            if self.behaviour == "never-answer":
                while True:
                    data = await reader.read(65536)
                    if not data:
                        return
                    rec += data
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                rec += getattr(exc, "partial", b"")
                return
            rec += head
            m = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
            body = b""
            if m:
                body = await reader.readexactly(int(m.group(1)))
                rec += body
            self.requests.append((head, body))
            if self.behaviour == "close-after-read":
                return
            if self.behaviour == "reset-after-read":
                writer.transport.abort()
                return
            await self.respond(head, body, reader, writer, rec)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self.writers.discard(writer)
            writer.close()

    async def respond(self, head, body, reader, writer, rec):
        target = head.split(b" ", 2)[1].decode()
        url = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        name = self.name.encode()
        if path == "/slow":
            await asyncio.sleep(float(q.get("s", "1")))
        if path == "/echo":
            payload = head + body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"X-Dashscale-Replica: forged\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"streamed until close from " + name)
        elif path == "/big":
            n = int(q.get("n", "1048576"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            chunk = b"x" * 65536
            left = n
            while left > 0:
                writer.write(chunk[:left])
                left -= len(chunk)
                await writer.drain()
        elif path == "/die-before":
            writer.transport.abort()
            return
        elif path == "/die-after":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return
        elif path == "/invalid":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        elif path == "/status":
            code = int(q.get("code", "500"))
            writer.write(b"HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\n\r\nno" % code)
        elif path == "/continue-then-ok":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == "/ws":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nhello-from-" + name)
            await writer.drain()
            while True:  # a websocket-ish echo: every byte back, upper-cased
                data = await reader.read(65536)
                if not data:
                    break
                rec += data
                writer.write(data.upper())
                await writer.drain()
            return
        elif path == "/ws-refused":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
        elif path == "/unasked-101":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        else:
            payload = b"hello from " + name + b" " + target.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()


class ProxyEnv:
    """Pool + Proxy + N RecordingBackends on a LoopThread."""

    def __init__(self, n=2, settings=None, policy="round-robin", behaviours=None,
                 local_handler=None, health=False):
        self.lt = LoopThread()
        self.backends = []
        behaviours = behaviours or {}
        s = {"proxy_header_timeout": 2, "proxy_body_timeout": 2, "proxy_keepalive_timeout": 5,
             "proxy_connect_timeout": 2, "proxy_read_timeout": 5, "proxy_send_timeout": 5,
             "proxy_health_interval": 0}
        if health:
            s["proxy_health_interval"] = 0.1
        s.update(settings or {})
        self.pool = Pool(policy)

        async def setup():
            for i in range(1, n + 1):
                b = await RecordingBackend(f"web.{i}", behaviours.get(i)).start()
                self.backends.append(b)
                self.pool.add(b.name, "127.0.0.1", b.port)
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            listener.setblocking(False)
            self.port = listener.getsockname()[1]
            self.proxy = Proxy(self.pool, listener, s, local_handler=local_handler)
            await self.proxy.start()

        self.lt.run(setup())

    def close(self):
        async def teardown():
            await self.proxy.close()
            for b in self.backends:
                await b.stop()
        try:
            self.lt.run(teardown())
        finally:
            self.lt.stop()

    # -- helpers ---------------------------------------------------------------
    def connect(self, timeout=10):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def exchange(self, raw, timeout=10):
        """Send raw bytes on a new connection; everything received until the proxy closes."""
        with self.connect(timeout) as s:
            s.sendall(raw)
            return read_all(s, timeout)

    def get(self, path="/", headers=b"", timeout=10):
        s = self.connect(timeout)
        try:
            s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
            return read_response(s)
        finally:
            s.close()

    def stats(self):
        return self.lt.call(self.proxy.stats)

    def pool_stats(self):
        return self.lt.call(self.pool.stats)

    @property
    def total_received(self):
        return sum(len(b.connections) for b in self.backends)

    def wait(self, predicate, timeout=5, message="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lt.call(predicate):
                return True
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {message}")


def read_all(sock, timeout=10):
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


class Reply:
    def __init__(self, status, reason, headers, body, raw_head, complete=True):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.raw_head = raw_head
        self.complete = complete

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return f"Reply({self.status} {self.headers} {self.body[:200]!r})"


class Buffered:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError
        self.buf += chunk

    def until(self, sep):
        while sep not in self.buf:
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self):
        try:
            while True:
                self.fill()
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out


_BUFFERS = {}


def read_response(sock, method=b"GET", timeout=10):
    """One response from a socket (keeps leftover bytes for the next call)."""
    sock.settimeout(timeout)
    b = _BUFFERS.get(id(sock))
    if b is None or b.sock is not sock:
        b = _BUFFERS[id(sock)] = Buffered(sock)
    while True:
        head = b.until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, status, reason = (lines[0].split(b" ", 2) + [b""])[:3]
        status = int(status)
        headers = [tuple(x.strip() for x in line.split(b":", 1)) for line in lines[1:]]
        if 100 <= status < 200 and status != 101:
            continue  # interim
        break
    reply = Reply(status, reason, headers, b"", head)
    cl = reply.header(b"content-length")
    te = reply.header(b"transfer-encoding")
    if method == b"HEAD" or status in (101, 204, 304):
        return reply
    try:
        if te is not None and te.lower() == b"chunked":
            body = b""
            while True:
                size = int(b.until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    while b.until(b"\r\n") != b"\r\n":
                        pass  # trailer fields
                    break
                body += b.exactly(size)
                b.exactly(2)
            reply.body = body
        elif cl is not None:
            reply.body = b.exactly(int(cl))
        else:
            reply.body = b.rest()
    except EOFError:
        reply.body = b.buf
        b.buf = b""
        reply.complete = False
    return reply


def parse_forwarded(head):
    """(request line, [(lower name, value)]) of a request head a backend received."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    return lines[0], [(n.strip().lower(), v.strip()) for n, v in
                      (line.split(b":", 1) for line in lines[1:])]


def leftover(sock):
    """Bytes read_response already took from the socket beyond the response."""
    b = _BUFFERS.get(id(sock))
    if b is None or b.sock is not sock:
        return b""
    out, b.buf = b.buf, b""
    return out
