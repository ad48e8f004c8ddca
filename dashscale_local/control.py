"""Control API: HTTP/JSON on a unix socket in the run directory (mode 0600).

There is no TCP control port. The socket file's mode keeps other users out, and the
server also checks the peer's uid (SO_PEERCRED) and refuses anyone but our own user.
Routes (GET /status, POST /scale, /restart, /stop) and their one schema: api.py; this
module only frames HTTP on the socket.
"""
import asyncio
import json
import os
import socket
import struct
from http import HTTPStatus

from .errors import RuntimeFailure, UsageError
from .http11 import END, ProtocolError, Request, RequestParser

MAX_BODY = 1 << 20  # framing only: the API answers 413 above its own, smaller limit


class ControlServer:
    def __init__(self, path, api):
        self.path = path
        self.api = api  # api.ControlAPI: routing, validation and the work
        self.server = None

    async def start(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self):
        if self.server:
            self.server.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _serve(self, reader, writer):
        try:
            refused = not _peer_is_us(writer.get_extra_info("socket"))
            # The request is read (bounded, strictly framed) even from a refused peer:
            # closing with its bytes unread would reset the connection, and the caller
            # would see a broken pipe instead of the 403.
            try:
                req, body = await asyncio.wait_for(_read_request(reader), 5)
            except ProtocolError as exc:
                if not refused:
                    await _respond(writer, exc.status, {"error": exc.reason})
                    return
                req = None
            if refused:
                await _respond(writer, 403, {"error": "control socket: permission denied"})
                return
            if req is None:
                return
            path, _, query = req.target.decode("latin-1").partition("?")
            status, payload = await self.api.handle(req.method.decode("latin-1"),
                                                    path.removeprefix("/"), body, query,
                                                    private=True)
            await _respond(writer, status, payload)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def _read_request(reader):
    """One request, framed by the proxy's strict parser: (Request, body) or (None, b"")
    when the client closed first. Raises ProtocolError for a bad or oversize request."""
    parser = RequestParser(max_body=MAX_BODY)
    req, body = None, []
    while True:
        data = await reader.read(65536)
        if not data:
            return None, b""
        for event in parser.feed(data):
            if event is END:
                return req, b"".join(body)
            if isinstance(event, Request):
                req = event
            else:
                body.append(event)


def _peer_is_us(sock):
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


async def _respond(writer, status, payload):
    body = json.dumps(payload).encode()
    writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % (status, HTTPStatus(status).phrase.encode(),
                                                 len(body)) + body)
    try:
        await writer.drain()
    except ConnectionError:
        pass


class NotRunning(UsageError):
    pass


def call(path, method, route, body=None, timeout=120.0):
    """Call the control API; UsageError (exit 2) for bad requests or nothing running."""
    if not os.path.exists(path):
        raise NotRunning(f"no dashscale is running here (no {os.path.basename(path)})",
                         file=os.path.dirname(path))
    import http.client  # the client side only: the runner need not import it

    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    try:
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(timeout)
        conn.sock.connect(path)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, route, body=payload, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotRunning("no dashscale is running here (stale control socket)",
                         file=os.path.dirname(path))
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"control API: {exc}")
    finally:
        conn.close()
    if resp.status >= 500:
        raise RuntimeFailure(data.get("error", f"control API error {resp.status}"))
    if resp.status >= 400:
        raise UsageError(data.get("error", f"control API error {resp.status}"))
    return data
