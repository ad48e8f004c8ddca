"""http11's request side: the strict, incremental RequestParser and its Request events."""
import re

from httptools import HttpRequestParser
from httptools.parser.errors import HttpParserError, HttpParserUpgrade

from . import accel
from .common import (
    _NO_TOKENS, _TCHAR, END, MiB, ProtocolError, _bad, _persistent, _split_tokens,
)

_HEXDIG = b"0123456789abcdefABCDEF"
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

# Host values already found valid: a client sends the same one on every request, and
# bytes.translate builds its deletion table on each call (bounded, small values only).
_HOSTS_SEEN = set()

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
    """Incremental, strict HTTP/1.1 request parser (rules: docs/http11.md)."""

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
            fast = accel.fast
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
