"""The bytes http11 sends: the head forwarded to a replica, the response head (or the
whole response, in one C call) for the client, chunks and error responses."""
from http import HTTPStatus

from . import accel
from .common import _HOP_BY_HOP, _RESP_DROP, FRAMING_LENGTH, FRAMING_NONE
from .request import Request
from .response import Response

# Never forwarded upstream from the client's header list (we regenerate what we need).
_REQ_DROP = _HOP_BY_HOP | {
    b"expect",
    # rewritten by us
    b"host",
    b"via",
    b"forwarded",
    b"x-real-ip",
}
_X_DROP = (b"x-forwarded-", b"x-dashscale-")


def _spoofs_dropped(name, drop):
    """A name with underscores that a CGI/WSGI server (HTTP_X_FORWARDED_FOR) would read
    as a header we drop: dropped too (nginx drops every underscored name by default)."""
    dashed = name.replace(b"_", b"-")
    return dashed in drop or dashed.startswith(_X_DROP)


# Never removed because a client named them in Connection (regenerated anyway).
_CONN_PROTECTED = frozenset([b"host", b"content-length"])


def _b(x) -> bytes:
    return x if x.__class__ is bytes else str(x).encode("latin-1")


def _forward_fields(req, out):
    """Append the client's end-to-end fields to ``out``; return its Via values or None."""
    conn = req.connection
    drop = _REQ_DROP if not conn else _REQ_DROP | (conn - _CONN_PROTECTED)
    vias = None
    for name, value in req.headers:
        # a cheap first test: startswith parses its arguments on each call
        if name in drop or (name[:1] == b"x" and name.startswith(_X_DROP)):
            if name == b"via":
                if vias is None:
                    vias = [value]
                else:
                    vias.append(value)
            continue
        if 95 in name and _spoofs_dropped(name, drop):  # "_"
            continue  # X_Forwarded_For: CGI-style servers read it as X-Forwarded-For
        out += (name, b": ", value, b"\r\n")
    return vias


def build_upstream_request(
    req: Request,
    client_ip,
    proto="http",
    via="1.1 dashscale",
    *,
    keep_alive: bool = False,
    body_length=None,
    default_host: bytes = b"localhost",
) -> bytes:
    """Rebuild the head forwarded to a replica from the parsed request.

    * Request line ``METHOD target HTTP/1.1`` (absolute-form already normalised).
    * ``Host`` first (``default_host`` for an HTTP/1.0 request without one).
    * Dropped: hop-by-hop fields (Connection, Keep-Alive, Proxy-Connection, TE,
      Trailer, Transfer-Encoding, Upgrade), any field named in Connection (except Host
      and Content-Length, which we regenerate), Expect (the proxy answers 100-continue
      itself), Content-Length, incoming Via / Forwarded / X-Real-IP / ``X-Forwarded-*``
      / ``X-Dashscale-*``.
    * Added: ``X-Forwarded-For: client_ip``, ``X-Forwarded-Proto: proto``,
      ``X-Forwarded-Host: host`` (when there is one), ``Via`` (incoming values + ``via``).
    * Framing: ``Content-Length: N`` for a Content-Length body.  For a chunked request
      pass ``body_length=len(buffered_body)`` to forward it with Content-Length (what
      the proxy does: it buffers bodies, at most ``max_body``); with
      ``body_length=None`` the head says ``Transfer-Encoding: chunked`` and the caller
      must re-chunk the body with :func:`encode_chunk` / :data:`LAST_CHUNK`.
    * ``Connection: close`` unless ``keep_alive``; a WebSocket upgrade carries
      ``Connection: Upgrade`` and its ``Upgrade`` value.
    """
    host = req.host
    fwd = req.forward
    if (fwd is not None and not keep_alive and client_ip.__class__ is bytes
            and proto.__class__ is bytes and via.__class__ is bytes):
        # A head the C fast path parsed (fields filtered, no Via, not chunked, no
        # upgrade), as the proxy forwards it: the same bytes as below, in one step.
        cl = req.content_length
        return (b"%b %b HTTP/1.1\r\nhost: %b\r\n%b%bconnection: close\r\n"
                b"x-forwarded-for: %b\r\nx-forwarded-proto: %b\r\n%bvia: %b\r\n\r\n") % (
            req.method, req.target, default_host if host is None else host, fwd,
            b"" if cl is None else b"content-length: %d\r\n" % cl, client_ip, proto,
            b"x-forwarded-host: %b\r\n" % host if host else b"", via)
    if host is None:
        host = default_host
    out = [req.method, b" ", req.target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    if fwd is not None:
        out.append(fwd)  # filtered by the C fast path, which leaves Via to Python
        vias = None
    else:
        vias = _forward_fields(req, out)
    if req.chunked:
        if body_length is None:
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            out += (b"content-length: ", b"%d" % body_length, b"\r\n")
    elif req.content_length is not None:
        out += (b"content-length: ", b"%d" % req.content_length, b"\r\n")
    if req.upgrade:
        out += (b"connection: Upgrade\r\nupgrade: ", req.upgrade_protocol, b"\r\n")
    elif not keep_alive:
        out.append(b"connection: close\r\n")
    if client_ip.__class__ is not bytes:
        client_ip = _b(client_ip)
    if proto.__class__ is not bytes:
        proto = _b(proto)
    out += (b"x-forwarded-for: ", client_ip, b"\r\nx-forwarded-proto: ", proto, b"\r\n")
    if req.host:
        out += (b"x-forwarded-host: ", req.host, b"\r\n")
    if via.__class__ is not bytes:
        via = _b(via)
    if vias is not None:
        vias.append(via)
        via = b", ".join(vias)
    out += (b"via: ", via, b"\r\n\r\n")
    return b"".join(out)


def build_client_response_head(
    resp: Response,
    *,
    keep_alive: bool,
    client_version: str = "1.1",
    extra_headers=(),
):
    """Head for the client: ``(head_bytes, chunked, keep_alive)`` (see docs/http11.md).

    Hop-by-hop fields of the upstream response (and fields named in its Connection)
    are dropped, as is any upstream ``X-Dashscale-*`` field; ``extra_headers`` are
    appended.  Framing: Content-Length passes through; a chunked or read-until-close
    upstream body is sent chunked to an HTTP/1.1 client, and close-delimited to an
    HTTP/1.0 client (keep_alive becomes False).  Bodiless responses (HEAD, 204, 304)
    keep an upstream Content-Length as is.  A 101 keeps ``Upgrade`` and says
    ``Connection: Upgrade``.
    """
    status = resp.status
    reason = resp.reason or (HTTPStatus(status).phrase.encode() if _known(status) else b"")
    fwd = resp.forward
    if fwd is None:
        conn = resp.connection
        fwd = []
        for name, value in resp.headers:
            if name in _RESP_DROP:
                continue
            if name.startswith(b"x-dashscale-"):
                continue
            if conn and name in conn:
                continue
            fwd += (name, b": ", value, b"\r\n")
        fwd = b"".join(fwd)
    out = [b"HTTP/1.1 %d %b\r\n%b" % (status, reason, fwd)]
    chunked = False
    framing = resp.framing
    http11 = client_version == "1.1"
    if resp.upgrade:
        upg = resp.get(b"upgrade")
        if upg is not None:
            out += (b"upgrade: ", upg, b"\r\n")
        out.append(b"connection: Upgrade\r\n")
        keep_alive = False
    else:
        if framing == FRAMING_LENGTH:
            out += (b"content-length: ", b"%d" % resp.content_length, b"\r\n")
        elif framing == FRAMING_NONE:
            # HEAD / 304: Content-Length describes the selected representation
            cl = resp.get(b"content-length")
            if cl is not None and status != 204 and status >= 200:
                out += (b"content-length: ", cl, b"\r\n")
        elif http11:
            out.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        else:
            keep_alive = False
        if not keep_alive:
            out.append(b"connection: close\r\n")
        elif not http11:
            out.append(b"connection: keep-alive\r\n")
    for name, value in extra_headers:
        if name.__class__ is not bytes:
            name = _b(name)
        if value.__class__ is not bytes:
            value = _b(value)
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out), chunked, keep_alive


def client_response(data, req: Request, extra: bytes, max_header_bytes: int = 65536):
    """A whole plain response that arrived in one read (``data``), turned into the bytes
    for the client in one C call: ``(status, bytes)``, with the ``extra`` header lines
    (b"X-Dashscale-Replica: web.1\r\n") added; the client connection stays as
    ``req.keep_alive`` says. None when the C fast path is off or declines (a partial,
    chunked, read-until-close or 101 response, any error): then ResponseParser and
    build_client_response_head give the same bytes (tests/unit/test_http11_accel.py)."""
    fast = accel.fast
    if fast is None or data.__class__ is not bytes:
        return None
    return fast.client_response(data, req.method == b"HEAD", req.keep_alive,
                                req.http_version == "1.1", extra, max_header_bytes)


def _known(status: int) -> bool:
    try:
        HTTPStatus(status)
    except ValueError:
        return False
    return True


def encode_chunk(data) -> bytes:
    """One chunk of a chunked body; empty data gives ``b""`` (an empty chunk would end it)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_response(status: int, reason_text=None, retry_after=None) -> bytes:
    """A small plain-text response that closes the connection."""
    phrase = HTTPStatus(status).phrase if _known(status) else "Error"
    body = f"{status} {phrase}\n"
    if reason_text and reason_text != phrase:
        body += f"{reason_text}\n"
    body_b = body.encode("utf-8", "replace")
    head = [
        f"HTTP/1.1 {status} {phrase}\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        f"Content-Length: {len(body_b)}\r\n",
        "Cache-Control: no-store\r\n",
        "Connection: close\r\n",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {int(retry_after)}\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body_b
