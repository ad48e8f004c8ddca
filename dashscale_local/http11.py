"""Sans-IO HTTP/1.1 protocol layer for the dashscale proxy (no sockets, no asyncio).

The proxy feeds bytes in and gets events / bytes out, as with h11.  Parsing of request
and response heads is done by llhttp (through ``httptools``) in its default, strict mode;
this module adds the framing and the checks llhttp leaves out (see "Decisions" below).

Client side
-----------
``RequestParser(max_request_line=8192, max_header_bytes=65536, max_headers=100,
max_body=64 MiB, max_chunk_line=4096)``

* ``feed(data: bytes) -> list`` returns the events completed by ``data``, in order, for
  any number of pipelined requests:

  - a :class:`Request` once its head is complete (method, target, http_version,
    headers, host, keep_alive, upgrade, content_length, chunked, expect_continue, ...);
  - ``bytes`` objects: body data, already de-chunked (never empty);
  - :data:`END` (the :class:`EndOfMessage` singleton) when the request is complete.

  It raises :class:`ProtocolError` (``.status``, ``.reason``) for a bad request; the
  events parsed before the error in the same call are in ``exc.events``.  Once an error
  was raised every later ``feed`` raises it again: answer with
  ``error_response(exc.status, exc.reason)`` and close.
* After a request with ``keep_alive == False`` the parser ignores any further bytes
  (RFC 9112 §9.6: requests after ``Connection: close`` are not processed).
* After a WebSocket upgrade request (``req.upgrade``) the parser stops parsing: bytes
  that followed the head, and any bytes fed afterwards, accumulate in
  ``parser.trailing_data`` (send them upstream once the replica answered 101).
* State: ``parser.in_message`` (a request is partially received), ``parser.closed``,
  ``parser.upgraded``.
* ``feed_eof() -> list``: the client half-closed.  Returns ``[]`` between requests,
  raises ``ProtocolError(400)`` inside a request.
* ``CONTINUE_100``: the interim response to send when ``req.expect_continue`` and the
  body has not been received yet (the proxy buffers bodies, so it answers itself and
  does not forward ``Expect``).

Upstream side
-------------
``build_upstream_request(req, client_ip, proto="http", via="1.1 dashscale", *,
keep_alive=False, body_length=None, default_host=b"localhost") -> bytes`` rebuilds the
request head from parsed values (see its docstring for the framing rules).

``ResponseParser(request_method=b"GET", max_header_bytes=65536)``: ``feed(data)`` →
events :class:`Response` (status, reason, http_version, headers, framing,
content_length, keep_alive, upgrade), ``bytes`` body chunks (de-chunked), :data:`END`.
``feed_eof()`` → ``[END]`` for a read-until-close body, raises
``ProtocolError(502)`` for a truncated one.  Interim 1xx responses (100, 102, 103) are
consumed silently; a 101 ends parsing (leftover bytes in ``trailing_data``).
Any upstream protocol violation raises ``ProtocolError(502, ...)``.  Bytes after the
end of the response are ignored; reuse the upstream connection only if
``resp.keep_alive`` (always False for HEAD, 101 and read-until-close responses).
``parser.done`` tells whether END was produced.

``build_client_response_head(resp, *, keep_alive, client_version="1.1",
extra_headers=()) -> (head: bytes, chunked: bool, keep_alive: bool)``, e.g. with
``extra_headers=[(b"X-Dashscale-Replica", b"web.2")]``: the head to send to the client
(``keep_alive``/``client_version`` come from the client's Request).  If ``chunked`` is true, send
every body chunk as ``encode_chunk(data)`` and finish with ``LAST_CHUNK``; otherwise
send body bytes as they are.  When the returned ``keep_alive`` is false, close the
client connection after the body (that is what delimits it for read-until-close
bodies towards HTTP/1.0 clients).

``encode_chunk(data) -> bytes`` (``b""`` for empty data), ``LAST_CHUNK``,
``error_response(status, reason_text=None, retry_after=None) -> bytes`` (plain text,
``Connection: close``).

Decisions (RFC 9110 / 9112)
---------------------------
* Line endings: CRLF only.  A bare LF or bare CR anywhere in a head, chunk line or
  trailer section → 400 (llhttp strict rejects them too; RFC 9112 §2.2 makes accepting
  a lone LF optional).  Empty lines before a request line are skipped (§2.2).
* Request line: exactly ``method SP target SP version``; extra spaces → 400.  Versions
  ``HTTP/1.0`` and ``HTTP/1.1`` only; any other ``HTTP/d.d`` → 505; anything else
  (including HTTP/0.9 request lines) → 400.  Longer than ``max_request_line`` → 414.
* Methods: a non-token → 400; GET HEAD POST PUT DELETE OPTIONS PATCH are supported;
  any other token (CONNECT, TRACE, WebDAV, lowercase ``get`` ...) → 501.
* Targets: origin-form (``/...``), ``*`` (OPTIONS only), absolute-form ``http(s)://``.
  A ``#`` fragment, userinfo, empty authority, authority-form → 400.  Absolute-form is
  normalised to origin-form for forwarding (``req.target``; ``req.raw_target`` keeps
  the original) and its authority must equal the Host header (case-insensitive),
  otherwise 400.
* Host: exactly one in HTTP/1.1, at most one in HTTP/1.0, characters of
  ``uri-host [":" port]`` only, else 400.  An empty Host is accepted (RFC 9110 §7.2).
* Fields: names must be tokens with no whitespace before the colon; no obs-fold; no
  control bytes (NUL, CTLs except HTAB, DEL) in values; obs-text (0x80-0xFF) is allowed
  in values.  Leading/trailing OWS is stripped from values.  Names are delivered and
  forwarded lower-cased.  More than ``max_headers`` fields, or a header section (field
  lines + final CRLF) larger than ``max_header_bytes`` → 431.
* Content-Length: 1*DIGIT only (no sign, hex, list, inner space); any duplicate —
  even identical (``3, 3`` or two ``3`` lines) — → 400 (RFC 9110 §8.6 allows either
  rejecting or merging; we reject).  Values above 2**64 → 400 (overflow), above
  ``max_body`` → 413 before any body byte is read.
* Transfer-Encoding: forbidden in HTTP/1.0 (400); with Content-Length → 400; the
  combined list must end with ``chunked`` and contain it only once (else 400, covering
  ``identity``, ``xchunked``, ``chunked, gzip``, ``chunked`` + ``identity`` lines,
  ``"chunked"``, ``chunked;q=1``); empty list elements → 400; a valid coding before a
  final ``chunked`` (``gzip, chunked``) → 501 (we implement no transfer codings).
* Chunked bodies: chunk size 1*HEXDIG with no whitespace, more than 16 significant hex
  digits → 400 (overflow); running total above ``max_body`` → 413 as soon as the size
  line is read; chunk extensions must match ``*( ";" token [ "=" ( token /
  quoted-string ) ] )`` without whitespace (else 400); chunk-size line longer than
  ``max_chunk_line`` → 400; data must be followed by CRLF; trailer fields are validated
  like header fields (Content-Length in trailers → 400), limited by
  ``max_header_bytes`` (431) and dropped (never forwarded).  llhttp is fed the same
  chunked bytes as a cross-check and must agree on where the message ends.
* Upgrade: ``req.upgrade`` is true only for ``GET``, HTTP/1.1, ``Connection`` listing
  ``upgrade`` and ``Upgrade`` naming ``websocket`` first; such a request must not have a
  body (400).  Other upgrade requests (h2c ...) are served as plain requests with the
  Upgrade header stripped (RFC 9110 §7.8 lets a server ignore Upgrade); if such a
  request also has a chunked body → 400.
* Expect: ``100-continue`` (HTTP/1.1, with a body) sets ``req.expect_continue``; any
  other expectation → 417; ``Expect`` is ignored for HTTP/1.0 and never forwarded.
* keep-alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with
  ``Connection: keep-alive``.
* The verdict (events or error status) never depends on how the bytes were split
  across ``feed`` calls: errors are reported in stream order and limits are checked
  on exactly the bytes that can belong to the element.

How it works
------------
Message framing is ours: the head is delimited by the first CRLF CRLF (found with
``bytes.find``, never past the size limits), bodies by Content-Length or by our own
chunk decoder.  llhttp is fed exactly the same bytes, message by message (so it can
never see a different message boundary than we do), and validates them strictly;
header fields come from its ``on_header`` callbacks.  At import time the installed
llhttp is probed with a few malformed heads; if it accepts any of them (older
httptools), equivalent checks in Python are switched on.

C fast path
-----------
``_http11_fast.c`` (built at install when a C compiler is there, else skipped) parses
the common case in one call: a request head that arrives whole in one read, and a
response head with Content-Length (or no body), whose body is then counted here without
llhttp. It also prepares the header lines to forward. It only ever answers when it is
certain to give what the Python path gives; anything else — every error, limit,
absolute-form target, Transfer-Encoding, Upgrade, Expect, Via, obs-text, a field named
in Connection — gets ``None`` and the Python path above, which stays the reference.
``tests/test_http11_accel.py`` checks both paths against each other on the corpus and
on generated heads, and every other http11 test runs on both. ``DASHSCALE_HTTP11_PURE=1``
turns it off.
"""

from __future__ import annotations

import os
import re
from http import HTTPStatus

from httptools import HttpRequestParser, HttpResponseParser
from httptools.parser.errors import HttpParserError, HttpParserUpgrade

# The C fast path for plain heads (_http11_fast.c): it answers only when it is sure to
# give what the Python path gives, else None. Optional: without a C compiler at install
# time, or with DASHSCALE_HTTP11_PURE=1, everything runs in Python.
try:
    from . import _http11_fast as fast
except ImportError:  # pragma: no cover - depends on the install
    fast = None
if os.environ.get("DASHSCALE_HTTP11_PURE"):
    fast = None

__all__ = [
    "ProtocolError",
    "Request",
    "Response",
    "EndOfMessage",
    "END",
    "RequestParser",
    "ResponseParser",
    "build_upstream_request",
    "build_client_response_head",
    "encode_chunk",
    "LAST_CHUNK",
    "CONTINUE_100",
    "error_response",
    "FRAMING_NONE",
    "FRAMING_LENGTH",
    "FRAMING_CHUNKED",
    "FRAMING_CLOSE",
]

MiB = 1024 * 1024

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

FRAMING_NONE = "none"  # no body (HEAD, 1xx, 204, 304)
FRAMING_LENGTH = "length"  # Content-Length
FRAMING_CHUNKED = "chunked"  # Transfer-Encoding: chunked
FRAMING_CLOSE = "close"  # body runs until the upstream closes

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEXDIG = b"0123456789abcdefABCDEF"
_DIGIT = b"0123456789"
# uri-host [ ":" port ]: unreserved / pct-encoded / sub-delims / ":" / IP-literal brackets
_HOST_CHARS = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:[]"
)

_SUPPORTED_METHODS = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]
)

_QSTR = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_TOK = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_EXT_RE = re.compile(rb"(?:;" + _TOK + rb"(?:=(?:" + _TOK + rb"|" + _QSTR + rb"))?)*")

# Request header names handled specially while parsing.
_SPECIAL = frozenset(
    [b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"]
)

# Hop-by-hop fields (RFC 9110 §7.6.1) and framing: never passed on, in either direction.
_HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ]
)
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

# Host values already found valid: a client sends the same one on every request, and
# bytes.translate builds its deletion table on each call (bounded, small values only).
_HOSTS_SEEN = set()

# Never removed because a client named them in Connection (regenerated anyway).
_CONN_PROTECTED = frozenset([b"host", b"content-length"])

_RESP_DROP = _HOP_BY_HOP

_NO_TOKENS = frozenset()
_CLOSE_TOKENS = frozenset([b"close"])
_RESP_FRAMING = frozenset([b"content-length", b"transfer-encoding", b"connection"])

_VERSION_11 = b"HTTP/1.1"
_VERSION_10 = b"HTTP/1.0"

# parser states
_HEAD = 0
_BODY = 1
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_CHUNK_CRLF = 4
_TRAILER = 5
_CLOSED = 6
_UPGRADED = 7
_ERROR = 8


class ProtocolError(Exception):
    """A request (or upstream response) that must be refused: answer ``status`` and close."""

    def __init__(self, status: int, reason: str):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.events: list = []

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class EndOfMessage:
    """End of the current message (use the :data:`END` singleton)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = EndOfMessage()


class Request:
    """A parsed request head.

    ``method``/``target``/``raw_target``/``host``: bytes (``host`` may be None in
    HTTP/1.0); ``http_version``: ``"1.1"`` or ``"1.0"``; ``headers``: list of
    ``(lower-case name, value)`` in arrival order (values OWS-stripped);
    ``connection``: frozenset of lower-case Connection tokens; ``content_length``:
    int or None; ``chunked``: bool; ``keep_alive``; ``upgrade`` (WebSocket);
    ``upgrade_protocol``: the Upgrade value for a WebSocket request;
    ``expect_continue``.
    """

    __slots__ = (
        "method",
        "target",
        "raw_target",
        "http_version",
        "headers",
        "host",
        "connection",
        "keep_alive",
        "upgrade",
        "upgrade_protocol",
        "content_length",
        "chunked",
        "expect_continue",
        "forward",
    )

    def __init__(
        self,
        method,
        target,
        raw_target,
        http_version,
        headers,
        host,
        connection,
        keep_alive,
        upgrade,
        upgrade_protocol,
        content_length,
        chunked,
        expect_continue,
        forward=None,
    ):
        self.method = method
        self.target = target
        self.raw_target = raw_target
        self.http_version = http_version
        self.headers = headers
        self.host = host
        self.connection = connection
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.upgrade_protocol = upgrade_protocol
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        # the header lines build_upstream_request passes on (b"name: value\r\n"...),
        # when the C fast path parsed the head; None: computed from ``headers``
        self.forward = forward

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get(self, name: bytes, default=None):
        """First value of header ``name`` (lower-case bytes)."""
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def _key(self):
        return tuple(getattr(self, s) for s in self.__slots__[:-1])  # not ``forward``

    def __eq__(self, other):
        return isinstance(other, Request) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Request({self.method!r} {self.target!r} HTTP/{self.http_version} "
            f"host={self.host!r} cl={self.content_length} chunked={self.chunked} "
            f"keep_alive={self.keep_alive} upgrade={self.upgrade} "
            f"headers={self.headers!r})"
        )


class _Sink:
    """httptools callback target (kept apart from the parser to avoid a ref cycle)."""

    __slots__ = ("hdrs", "hc", "mc")

    # Callbacks this target does not use, present as None: httptools looks each one up
    # with getattr(target, name, None) per parser, and a missing one costs an
    # AttributeError (message formatting included) every time.
    on_url = on_body = on_message_begin = on_chunk_header = on_chunk_complete = None

    def __init__(self):
        self.hdrs = []
        self.hc = 0
        self.mc = 0

    def on_header(self, name, value):
        self.hdrs.append((name, value))

    def on_headers_complete(self):
        self.hc += 1

    def on_message_complete(self):
        self.mc += 1


def _persistent(version, conn_tokens) -> bool:
    """RFC 9112 §9.3: HTTP/1.1 persists unless ``close``; HTTP/1.0 only with ``keep-alive``."""
    if version == "1.1":
        return b"close" not in conn_tokens
    return b"keep-alive" in conn_tokens


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(400, reason)


def _split_tokens(values) -> list:
    """Comma-separated list elements (lower-cased, OWS-stripped) of several field values."""
    out = []
    for v in values:
        for item in v.split(b","):
            out.append(item.strip(b" \t").lower())
    return out


_CTL_BYTES = bytes(range(0, 9)) + bytes(range(10, 32)) + b"\x7f"  # CTLs but HTAB


def _check_head_bytes(b, start, end, start_line=True):
    """Whole-head checks, used only when the installed llhttp is not strict enough
    (see ``_llhttp_is_strict``): CRLF only, no obs-fold, no CTL (except HTAB),
    field names are tokens directly followed by ':'."""
    head = bytes(b[start:end])
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise _bad("bare CR or LF in request head")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise _bad("obs-fold or whitespace at the start of a header line")
    flat = head.replace(b"\r\n", b"")
    if len(flat.translate(None, _CTL_BYTES)) != len(flat):
        raise _bad("control character in request head")
    lines = head.split(b"\r\n")
    for line in lines[1:] if start_line else lines:
        if line:
            name, colon, _ = line.partition(b":")
            if not colon or not name or name.translate(None, _TCHAR):
                raise _bad("invalid header field name")


def _llhttp_is_strict() -> bool:
    """Does the installed llhttp (httptools) reject what this module relies on it to
    reject?  Older httptools bundle an llhttp that accepts some of these."""
    bad_heads = (
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    for raw in bad_heads:
        try:
            HttpRequestParser(_Sink()).feed_data(raw)
        except (HttpParserError, HttpParserUpgrade):
            continue
        except Exception:
            return False
        return False
    return True


_LLHTTP_STRICT = _llhttp_is_strict()


class RequestParser:
    """Incremental, strict HTTP/1.1 request parser (see the module docstring)."""

    __slots__ = (
        "max_request_line",
        "max_header_bytes",
        "max_headers",
        "max_body",
        "max_chunk_line",
        "trailing_data",
        "_state",
        "_buf",
        "_scan",
        "_fed",
        "_rl",
        "_hs",
        "_sink",
        "_p",
        "_dirty",
        "_remaining",
        "_total",
        "_error",
        "_keep_alive",
    )

    def __init__(
        self,
        max_request_line: int = 8192,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_body: int = 64 * MiB,
        max_chunk_line: int = 4096,
    ):
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.max_chunk_line = max_chunk_line
        self.trailing_data = b""
        self._state = _HEAD
        self._buf = None  # bytearray holding an incomplete element (head, chunk line, ...)
        self._scan = 0  # bytes of the current element already searched
        self._fed = 0  # bytes of the current element already given to llhttp
        self._rl = None  # parsed request line of the current head, once complete
        self._hs = 0  # offset of the header section in the current head
        self._sink = _Sink()
        self._p = HttpRequestParser(self._sink)
        self._dirty = False
        self._remaining = 0
        self._total = 0
        self._error = None
        self._keep_alive = True

    # ------------------------------------------------------------------ public

    @property
    def upgraded(self) -> bool:
        return self._state == _UPGRADED

    @property
    def closed(self) -> bool:
        """True after a request that does not keep the connection alive."""
        return self._state == _CLOSED

    @property
    def in_message(self) -> bool:
        """True while a request is partially received."""
        st = self._state
        if st == _HEAD:
            return bool(self._buf)
        return st in (_BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER)

    def feed(self, data) -> list:
        if self._error is not None:
            raise self._error
        st = self._state
        if st >= _CLOSED:
            if st == _UPGRADED:
                self.trailing_data += bytes(data)
            return []
        if data.__class__ is not bytes:
            data = bytes(data)
        events = []
        buf = self._buf
        if st == _HEAD and not buf and data and data[0] != 13:  # not a leading CRLF
            if fast is not None:
                r = fast.parse_request_head(data, self.max_request_line,
                                              self.max_header_bytes, self.max_headers,
                                              self.max_body)
                if r is not None:
                    end = r[9]
                    events = self._plain_head(*r[:9])
                    if end < len(data):  # a body, or the next request, in the same read
                        try:
                            events += self.feed(data[end:])
                        except ProtocolError as e:
                            e.events = events + e.events
                            raise
                    return events
            # Fast path: ``data`` is exactly one whole head (a GET, typically). The
            # same steps as _head, minus the bookkeeping for a head split across feeds;
            # anything else (or anything _head would reject) takes the general path.
            lf = data.find(b"\n", 0, self.max_request_line + 2)
            if lf > 0 and data[lf - 1] == 13:
                end = data.find(b"\r\n\r\n", lf - 1, lf + 1 + self.max_header_bytes) + 4
                if end == len(data):
                    try:
                        self._head_complete(
                            data, 0, lf + 1, end, self._request_line(data[: lf - 1]), events)
                    except ProtocolError as e:
                        e.events = events
                        self._fail(e)
                        raise
                    return events
        if buf:
            buf += data
            b = buf
        else:
            b = data
        n = len(b)
        pos = 0
        try:
            while pos < n:
                st = self._state
                if st == _HEAD:
                    r = self._head(b, pos, n, events)
                elif st == _BODY:
                    rem = self._remaining
                    avail = n - pos
                    if avail < rem:
                        events.append(bytes(b[pos:]) if pos or b is buf else b)
                        self._remaining = rem - avail
                        r = n
                    else:
                        r = pos + rem
                        events.append(bytes(b[pos:r]))
                        self._end(events)
                elif st <= _TRAILER:
                    r = self._chunked(b, pos, n, events)
                elif st == _UPGRADED:
                    self.trailing_data += bytes(b[pos:])
                    r = n
                else:  # _CLOSED: ignore whatever follows
                    r = n
                if r < 0:
                    pos = ~r
                    break
                pos = r
        except ProtocolError as e:
            e.events = events
            self._fail(e)
            raise
        if pos < n:
            if b is buf:
                del buf[:pos]
            else:
                self._buf = bytearray(b[pos:])
        elif buf:
            self._buf = None
        return events

    def feed_eof(self) -> list:
        if self._error is not None:
            raise self._error
        if self.in_message:
            e = _bad("connection closed inside a request")
            self._fail(e)
            raise e
        return []

    # ----------------------------------------------------------------- helpers

    def _plain_head(self, method, target, version, headers, host, conn, keep_alive, cl,
                    forward):
        """A head the C fast path parsed: no Transfer-Encoding, Upgrade or Expect, an
        origin-form target (the same steps as the end of _head_complete)."""
        req = Request(method, target, target, version, headers, host,
                      _NO_TOKENS if conn is None else conn, keep_alive, False, None, cl,
                      False, False, forward)
        self._keep_alive = keep_alive
        if cl:
            self._state = _BODY
            self._remaining = cl
            return [req]
        events = [req]
        self._end(events)
        return events

    def _fail(self, e):
        self._error = e
        self._state = _ERROR
        self._buf = None

    def _ll(self, chunk):
        """Give bytes to llhttp (the strict validator), mapping its errors to 400."""
        try:
            self._p.feed_data(chunk)
        except (HttpParserError, HttpParserUpgrade) as e:
            raise _bad(f"malformed request: {e}") from None

    def _end(self, events):
        events.append(END)
        self._total = 0
        self._state = _HEAD if self._keep_alive else _CLOSED

    # -------------------------------------------------------------------- head

    def _head(self, b, pos, n, events):
        """Parse a request head starting at ``pos``; return the position after it,
        or ``~start`` when more bytes are needed (offsets kept relative to start)."""
        rl = self._rl
        if rl is None:
            if self._scan <= 1:
                # RFC 9112 §2.2: ignore empty lines received before the request line
                # (``_scan == 1`` when only a CR had arrived).
                if b.startswith(b"\r\n", pos):
                    pos += 2
                    while b.startswith(b"\r\n", pos):
                        pos += 2
                    self._scan = 0
                if pos >= n:
                    return n
            limit = pos + self.max_request_line + 2
            lf = b.find(b"\n", pos + self._scan, limit)
            if lf < 0:
                # Early rejection of non-HTTP garbage (TLS hello, binary) in the method.
                sp = b.find(b" ", pos, pos + 16)
                probe = b[pos : (sp if sp >= 0 else min(n, pos + 16))].rstrip(b"\r")
                if probe.translate(None, _TCHAR):
                    raise _bad("invalid method token")
                if n >= limit:
                    raise ProtocolError(414, "request line too long")
                self._scan = n - pos
                return ~pos
            if lf == pos or b[lf - 1] != 13:
                raise _bad("bare LF in request line")
            line = b[pos : lf - 1]
            if line.__class__ is not bytes:
                line = bytes(line)
            rl = self._rl = self._request_line(line)
            self._hs = lf + 1 - pos
            self._scan = lf - 1 - pos
        hs = pos + self._hs
        window = hs + self.max_header_bytes
        end = b.find(b"\r\n\r\n", pos + self._scan, window)
        if end < 0:
            self._partial(b, pos, n, window, "request header section")
            self._scan = max(self._hs - 2, n - pos - 3)
            return ~pos
        return self._head_complete(b, pos, hs, end + 4, rl, events)

    def _request_line(self, line):
        parts = line.split(b" ")
        method = parts[0]
        # Order matters for determinism: the early probe in _head only knows the method.
        if method not in _SUPPORTED_METHODS and (not method or method.translate(None, _TCHAR)):
            raise _bad("invalid method token")
        if len(parts) != 3:
            if len(parts) == 2 and not parts[1].startswith(b"HTTP/"):
                raise _bad("missing HTTP version (HTTP/0.9 is not supported)")
            raise _bad("malformed request line")
        _, target, version = parts
        if version == _VERSION_11:
            v = "1.1"
        elif version == _VERSION_10:
            v = "1.0"
        elif (
            len(version) == 8
            and version.startswith(b"HTTP/")
            and version[5] in b"0123456789"
            and version[6] == 46
            and version[7] in b"0123456789"
        ):
            raise ProtocolError(505, "HTTP version not supported")
        else:
            raise _bad("malformed HTTP version")
        if method not in _SUPPORTED_METHODS:
            raise ProtocolError(501, "method not implemented")
        if not target:
            raise _bad("empty request target")
        if 35 in target:  # "#" (an int test: ``bytes in bytes`` first tries int())
            raise _bad("fragment in request target")
        c = target[0]
        authority = None
        norm = target
        if c == 47:  # "/"
            pass
        elif target == b"*":
            if method != b"OPTIONS":
                raise _bad("asterisk-form target outside OPTIONS")
        else:
            low = target[:8].lower()
            if low.startswith(b"http://"):
                rest = target[7:]
            elif low == b"https://":
                rest = target[8:]
            else:
                raise _bad("invalid request target")
            i = len(rest)
            for ch in (b"/", b"?"):
                j = rest.find(ch)
                if 0 <= j < i:
                    i = j
            authority = rest[:i]
            path = rest[i:]
            # 64 = "@"
            if not authority or 64 in authority or authority.translate(None, _HOST_CHARS):
                raise _bad("invalid authority in absolute-form target")
            norm = path if path.startswith(b"/") else b"/" + path
        return (method, norm, target, v, authority)

    def _partial(self, b, pos, n, window, what):
        """An incomplete head or trailer section: stream its new bytes to llhttp so that
        malformed ones fail early; 431 once it reaches ``window`` without ending."""
        upto = n if n < window else window
        if upto > pos + self._fed:
            self._ll(b[pos + self._fed : upto])
            self._fed = upto - pos
        if n >= window:
            raise ProtocolError(431, f"{what} too large")

    def _head_complete(self, b, pos, hs, end, rl, events):
        if not _LLHTTP_STRICT:
            _check_head_bytes(b, pos, end)
        sink = self._sink
        hc = sink.hc
        try:
            self._p.feed_data(b[pos + self._fed : end])
        except HttpParserUpgrade:
            self._dirty = True
        except HttpParserError as e:
            raise _bad(f"malformed request head: {e}") from None
        if sink.hc != hc + 1:
            raise _bad("request head framing disagreement")
        method, target, raw_target, version, authority = rl
        self._rl = None
        self._scan = 0
        self._fed = 0
        raw = sink.hdrs
        sink.hdrs = []
        if len(raw) > self.max_headers:
            raise ProtocolError(431, "too many header fields")
        # llhttp strips leading OWS from values, not trailing OWS
        headers = [(nm.lower(), vl.rstrip(b" \t")) for nm, vl in raw]

        host = None
        nhost = 0
        cl = None
        te = None
        conn = None
        upg = None
        expect = None
        for name, value in headers:
            if name in _SPECIAL:
                if name == b"host":
                    nhost += 1
                    host = value
                elif name == b"content-length":
                    if cl is not None:
                        raise _bad("duplicate Content-Length")
                    if not value.isdigit():  # 1*DIGIT (bytes.isdigit: ASCII only)
                        raise _bad("invalid Content-Length")
                    cl = int(value)
                elif name == b"transfer-encoding":
                    if te is None:
                        te = [value]
                    else:
                        te.append(value)
                elif name == b"connection":
                    if conn is None:
                        conn = [value]
                    else:
                        conn.append(value)
                elif name == b"upgrade":
                    upg = value if upg is None else upg + b", " + value
                else:  # expect
                    expect = value if expect is None else expect + b", " + value

        # Host (RFC 9112 §3.2)
        if nhost != 1:
            if nhost > 1:
                raise _bad("more than one Host header")
            if version == "1.1":
                raise _bad("missing Host header")
        elif host and host not in _HOSTS_SEEN:
            if host.translate(None, _HOST_CHARS):
                raise _bad("invalid Host header")
            if len(_HOSTS_SEEN) < 64 and len(host) <= 255:
                _HOSTS_SEEN.add(host)
        if authority is not None:
            if host is not None and host.lower() != authority.lower():
                raise _bad("absolute-form target does not match Host")
            host = authority

        # Framing (RFC 9112 §6)
        chunked = False
        if te is not None:
            if version == "1.0":
                raise _bad("Transfer-Encoding in an HTTP/1.0 request")
            if cl is not None:
                raise _bad("both Content-Length and Transfer-Encoding")
            codings = _split_tokens(te)
            if codings[-1] != b"chunked":
                raise _bad("final transfer coding is not chunked")
            for c in codings[:-1]:
                if c == b"chunked":
                    raise _bad("chunked applied more than once")
                if not c or c.translate(None, _TCHAR):
                    raise _bad("invalid transfer coding")
            if len(codings) > 1:
                raise ProtocolError(501, "transfer coding not implemented")
            chunked = True
        elif cl is not None and cl > self.max_body:
            raise ProtocolError(413, "request body too large")

        if conn is None:
            conn_tokens = _NO_TOKENS
        elif len(conn) == 1 and 44 not in conn[0]:  # ","
            conn_tokens = frozenset((conn[0].lower(),))
        else:
            conn_tokens = frozenset(_split_tokens(conn))

        upgrade = False
        if (
            upg is not None
            and b"upgrade" in conn_tokens
            and method == b"GET"
            and version == "1.1"
            and upg.split(b",", 1)[0].strip(b" \t").lower() == b"websocket"
        ):
            if chunked or cl:
                raise _bad("upgrade request with a body")
            upgrade = True
        else:
            upg = None

        expect_continue = False
        if expect is not None and version == "1.1":
            if expect.lower() != b"100-continue":
                raise ProtocolError(417, "unsupported expectation")
            expect_continue = chunked or bool(cl)  # nothing to wait for without a body

        keep_alive = not upgrade and _persistent(version, conn_tokens)
        self._keep_alive = keep_alive

        events.append(
            Request(
                method,
                target,
                raw_target,
                version,
                headers,
                host,
                conn_tokens,
                keep_alive,
                upgrade,
                upg,
                cl,
                chunked,
                expect_continue,
            )
        )

        if upgrade:
            events.append(END)
            self._state = _UPGRADED
            self.trailing_data = bytes(b[end:])
            return len(b)
        if chunked:
            if self._dirty:
                # llhttp switched to upgrade mode and cannot cross-check the body
                raise _bad("upgrade request with a chunked body")
            self._state = _CHUNK_SIZE
            return end
        p = self._p
        if self._dirty or cl or not p.should_keep_alive():
            self._new_llhttp()
        if cl:
            self._state = _BODY
            self._remaining = cl
            return end
        self._end(events)
        return end

    def _new_llhttp(self):
        self._sink = _Sink()
        self._p = HttpRequestParser(self._sink)
        self._dirty = False

    # ----------------------------------------------------------------- chunked

    def _chunked(self, b, pos, n, events):
        st = self._state
        while pos < n:
            if st == _CHUNK_DATA:
                rem = self._remaining
                avail = n - pos
                if avail < rem:
                    chunk = bytes(b[pos:]) if pos or b.__class__ is not bytes else b
                    self._remaining = rem - avail
                    end = n
                else:
                    end = pos + rem
                    chunk = bytes(b[pos:end])
                    st = self._state = _CHUNK_CRLF
                self._ll(chunk)
                events.append(chunk)
                pos = end
            elif st == _CHUNK_CRLF:
                if n - pos < 2:
                    if b[pos] != 13:
                        raise _bad("chunk data not followed by CRLF")
                    return ~pos
                if b[pos] != 13 or b[pos + 1] != 10:
                    raise _bad("chunk data not followed by CRLF")
                self._ll(b"\r\n")
                pos += 2
                st = self._state = _CHUNK_SIZE
            elif st == _CHUNK_SIZE:
                limit = pos + self.max_chunk_line + 2
                lf = b.find(b"\n", pos + self._scan, limit)
                if lf < 0:
                    if n >= limit:
                        raise _bad("chunk size line too long")
                    self._scan = n - pos
                    return ~pos
                self._scan = 0
                if lf == pos or b[lf - 1] != 13:
                    raise _bad("bare LF in chunk size line")
                line = bytes(b[pos : lf - 1])
                size_s, semi, _ = line.partition(b";")
                if not size_s or size_s.translate(None, _HEXDIG):
                    raise _bad("invalid chunk size")
                if semi and _CHUNK_EXT_RE.fullmatch(line, len(size_s)) is None:
                    raise _bad("invalid chunk extension")
                if len(size_s.lstrip(b"0")) > 16:
                    raise _bad("chunk size overflow")
                size = int(size_s, 16)
                self._total += size
                if self._total > self.max_body:
                    raise ProtocolError(413, "request body too large")
                self._ll(b[pos : lf + 1])
                pos = lf + 1
                if size:
                    self._remaining = size
                    st = self._state = _CHUNK_DATA
                else:
                    st = self._state = _TRAILER
                    self._fed = 0
            else:  # _TRAILER
                return self._trailer(b, pos, n, events)
        return pos

    def _trailer(self, b, pos, n, events):
        # Either an empty line right away, or field lines ending with CRLF CRLF.
        if self._fed == 0 and self._scan == 0:
            if n - pos < 2:
                if b[pos] != 13:
                    pass  # a trailer field starts; fall through to the search
                else:
                    return ~pos
            elif b[pos] == 13 and b[pos + 1] == 10:
                return self._trailer_done(b, pos, pos + 2, events)
        window = pos + self.max_header_bytes
        end = b.find(b"\r\n\r\n", pos + max(self._scan - 3, 0), window)
        if end < 0:
            self._partial(b, pos, n, window, "trailer section")
            self._scan = n - pos
            return ~pos
        return self._trailer_done(b, pos, end + 4, events)

    def _trailer_done(self, b, pos, end, events):
        if not _LLHTTP_STRICT and end - pos > 2:
            _check_head_bytes(b, pos, end, start_line=False)
        sink = self._sink
        mc = sink.mc
        self._ll(b[pos + self._fed : end])
        if sink.mc != mc + 1:
            raise _bad("chunked framing disagreement")
        self._fed = 0
        self._scan = 0
        self._new_llhttp()
        self._end(events)
        return end


# --------------------------------------------------------------------------- upstream


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


# --------------------------------------------------------------------------- responses


class Response:
    """A parsed upstream response head.

    ``status``: int; ``reason``: bytes; ``http_version``: str; ``headers``: list of
    ``(lower-case name, value)``; ``connection``: frozenset of Connection tokens;
    ``framing``: one of FRAMING_NONE / FRAMING_LENGTH / FRAMING_CHUNKED /
    FRAMING_CLOSE; ``content_length``: int or None; ``keep_alive``: whether the
    upstream connection could be reused; ``upgrade``: a 101 response.
    """

    __slots__ = (
        "status",
        "reason",
        "http_version",
        "headers",
        "connection",
        "framing",
        "content_length",
        "keep_alive",
        "upgrade",
        "forward",
    )

    def __init__(
        self, status, reason, http_version, headers, connection, framing, content_length,
        keep_alive, upgrade, forward=None,
    ):
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.connection = connection
        self.framing = framing
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        # the end-to-end header lines, already filtered as build_client_response_head
        # would (b"name: value\r\n"...), or None: computed from ``headers`` then
        self.forward = forward

    def get(self, name: bytes, default=None):
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def __repr__(self) -> str:
        return (
            f"Response({self.status} {self.reason!r} framing={self.framing} "
            f"cl={self.content_length} headers={self.headers!r})"
        )


class ResponseParser:
    """Upstream response parser for one request/response exchange.

    ``request_method`` tells whether the response can have a body (HEAD never has).
    Events: :class:`Response`, ``bytes`` body chunks (de-chunked), :data:`END`.
    Interim 1xx responses other than 101 are consumed and not reported.
    """

    __slots__ = (
        "request_method",
        "max_header_bytes",
        "response",
        "trailing_data",
        "_p",
        "_hdrs",
        "_reason",
        "_events",
        "_head_bytes",
        "_done",
        "_error",
        "_remaining",
    )

    # Not used; None rather than missing (see _Sink): one parser is made per response.
    on_message_begin = on_chunk_header = on_chunk_complete = None

    def __init__(self, request_method: bytes = b"GET", max_header_bytes: int = 65536):
        self.request_method = request_method
        self.max_header_bytes = max_header_bytes
        self.response = None
        self.trailing_data = b""
        self._hdrs = []
        self._reason = b""
        self._events = None
        self._head_bytes = 0
        self._done = False
        self._error = None
        self._remaining = None  # Content-Length body bytes still due after a fast head
        # The httptools parser, made on first use: not at all when the C fast path
        # parses the head. NB: it holds bound methods of self (a reference cycle); it
        # is dropped as soon as the exchange is over.
        self._p = None

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data) -> list:
        if self._error is not None:
            raise self._error
        if self._done:
            if self.response is not None and self.response.upgrade:
                self.trailing_data += bytes(data)
            return []
        if self._remaining is not None:
            return self._counted(data)
        p = self._p
        if p is None:
            if fast is not None and data.__class__ is bytes:
                r = fast.parse_response_head(data, self.max_header_bytes)
                if r is not None:
                    events = self._plain_head(data, *r)
                    if events is not None:
                        return events
            p = self._p = HttpResponseParser(self)
        events = self._events = []
        try:
            p.feed_data(data)
        except HttpParserUpgrade as e:
            off = e.args[0] if e.args else len(data)
            self.trailing_data = bytes(data[off:])
        except HttpParserError as e:
            # bytes after a complete HEAD/204/304 response are ignored, not an error
            if not self._done and self._error is None:
                self._error = ProtocolError(502, f"malformed upstream response: {e}")
        self._events = None
        if self._error is not None:
            self._error.events = events
            self._p = None
            raise self._error
        if self._done:
            self._p = None
        elif self.response is None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._error = ProtocolError(502, "upstream response head too large")
                self._p = None
                raise self._error
        return events

    def feed_eof(self) -> list:
        if self._error is not None:
            raise self._error
        if self._done:
            return []
        self._p = None
        resp = self.response
        if resp is not None and resp.framing == FRAMING_CLOSE:
            self._done = True
            return [END]
        self._error = ProtocolError(502, "upstream closed the connection mid-response")
        raise self._error

    def _plain_head(self, data, status, reason, version, headers, conn, cl, forward, end):
        """A head the C fast path parsed (final status, no Transfer-Encoding): the same
        Response as on_headers_complete, and the body counted here, without llhttp."""
        method = self.request_method
        if status == 204 or status == 304 or method == b"HEAD":
            framing = FRAMING_NONE
        elif cl is not None:
            framing = FRAMING_LENGTH
        else:
            return None  # read until close: left to llhttp
        if conn is None:
            conn = _NO_TOKENS
        keep_alive = method != b"HEAD" and _persistent(version, conn)
        resp = self.response = Response(status, reason, version, headers, conn, framing,
                                        cl, keep_alive, False, forward)
        if framing == FRAMING_NONE:
            self._done = True
            return [resp, END]
        avail = len(data) - end
        if avail >= cl:
            self._done = True
            if cl:
                return [resp, data[end : end + cl], END]
            return [resp, END]
        self._remaining = cl - avail
        if avail:
            return [resp, data[end:]]
        return [resp]

    def _counted(self, data):
        rem = self._remaining
        n = len(data)
        if n < rem:
            if not n:
                return []
            self._remaining = rem - n
            return [data if data.__class__ is bytes else bytes(data)]
        self._remaining = None
        self._done = True
        return [bytes(data[:rem]) if n > rem or data.__class__ is not bytes else data, END]

    # httptools callbacks ----------------------------------------------------
    def on_status(self, data):
        self._reason += data

    def on_header(self, name, value):
        self._hdrs.append((name, value))

    def on_headers_complete(self):
        p = self._p
        status = p.get_status_code()
        raw = self._hdrs
        self._hdrs = []
        reason = self._reason
        self._reason = b""
        if self._done or self._error is not None:
            return
        if status < 200 and status != 101:
            if status < 100:
                self._error = ProtocolError(502, "invalid upstream status code")
            return  # interim response (100 Continue, 103 Early Hints): dropped
        # One pass: the (name, value) list, the framing fields, and the end-to-end lines
        # that build_client_response_head forwards (hop-by-hop and X-Dashscale-* left out).
        headers = []
        append = headers.append
        fwd = []
        cl = None
        te = None
        conn = None
        for n, v in raw:
            n = n.lower()
            v = v.rstrip(b" \t")  # llhttp strips leading OWS from values, not trailing
            append((n, v))
            if n in _RESP_DROP:
                if n == b"content-length":
                    if cl is not None or not v.isdigit():
                        self._error = ProtocolError(502, "invalid upstream Content-Length")
                        return
                    cl = int(v)
                elif n == b"transfer-encoding":
                    te = v if te is None else te + b"," + v
                elif n == b"connection":
                    conn = v if conn is None else conn + b"," + v
            elif n[:1] != b"x" or not n.startswith(b"x-dashscale-"):
                fwd += (n, b": ", v, b"\r\n")
        # The Response (framing, keep-alive) of a final or 101 head.
        if conn is None:
            conn_tokens = _NO_TOKENS
        else:
            if conn == b"close":
                conn_tokens = _CLOSE_TOKENS
            else:
                conn_tokens = frozenset(_split_tokens((conn,)))
            # fields named in Connection are hop-by-hop too
            if not conn_tokens.isdisjoint(fwd[::4]):
                fwd = None  # rare: build_client_response_head filters ``headers``
        method = self.request_method
        version = p.get_http_version()
        upgrade = status == 101
        if upgrade or status == 204 or status == 304 or method == b"HEAD":
            framing = FRAMING_NONE
        elif te is not None:
            if _split_tokens((te,)) != [b"chunked"]:
                self._error = ProtocolError(502, "unsupported upstream transfer coding")
                return
            framing = FRAMING_CHUNKED
            cl = None
        elif cl is not None:
            framing = FRAMING_LENGTH
        else:
            framing = FRAMING_CLOSE
        keep_alive = (framing != FRAMING_CLOSE and not upgrade and method != b"HEAD"
                      and _persistent(version, conn_tokens))
        resp = self.response = Response(
            status, reason, version, headers, conn_tokens, framing, cl, keep_alive, upgrade,
            b"".join(fwd) if fwd is not None else None,
        )
        events = self._events
        events.append(resp)
        if framing == FRAMING_NONE:
            events.append(END)
            self._done = True

    def on_body(self, data):
        if not self._done and self.response is not None:
            self._events.append(data)

    def on_message_complete(self):
        if self.response is not None and not self._done:
            self._events.append(END)
            self._done = True


def build_client_response_head(
    resp: Response,
    *,
    keep_alive: bool,
    client_version: str = "1.1",
    extra_headers=(),
):
    """Head for the client: ``(head_bytes, chunked, keep_alive)`` (see module doc).

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
