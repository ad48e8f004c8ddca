"""Control API: HTTP/JSON on a unix socket in the run directory (mode 0600).

There is no TCP control port. The socket file's mode keeps other users out, and the
server also checks the peer's uid (SO_PEERCRED) and refuses anyone but our own user.
Routes: GET /status, POST /scale {"formation": {"web": 6}}, POST /restart
{"target": "web.2", "rolling": false}, POST /stop.
"""
import asyncio
import json
import os
import socket
import struct
from http import HTTPStatus

from .errors import RuntimeFailure, UsageError
from .http11 import END, ProtocolError, Request, RequestParser

MAX_BODY = 1 << 20


class ControlServer:
    def __init__(self, path, runner):
        self.path = path
        self.runner = runner
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
            method, path = req.method.decode(), req.target.decode()
            body = json.loads(body) if body else {}
            status, payload = await self._route(method, path, body)
            await _respond(writer, status, payload)
        except (asyncio.TimeoutError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, method, path, body):
        runner = self.runner
        try:
            if (method, path) == ("GET", "/status"):
                return 200, runner.status()
            if (method, path) == ("POST", "/scale"):
                counts = await runner.scale(body.get("formation", {}))
                return 200, {"formation": counts}
            if (method, path) == ("POST", "/restart"):
                names = await runner.restart(body.get("target"), bool(body.get("rolling")))
                return 200, {"restarted": names}
            if (method, path) == ("POST", "/stop"):
                await runner.stop()
                return 200, {"stopping": True}
            return 404, {"error": f"no route {method} {path}"}
        except UsageError as exc:
            return 400, {"error": str(exc)}
        except Exception as exc:  # report, never kill the runner
            return 500, {"error": f"{type(exc).__name__}: {exc}"}


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
