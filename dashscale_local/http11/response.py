"""http11's upstream side: ResponseParser (one exchange) and its Response events."""
from httptools import HttpResponseParser
from httptools.parser.errors import HttpParserError, HttpParserUpgrade

from . import accel
from .common import (
    _NO_TOKENS, _RESP_DROP, END, FRAMING_CHUNKED, FRAMING_CLOSE, FRAMING_LENGTH,
    FRAMING_NONE, ProtocolError, _persistent, _split_tokens,
)

_CLOSE_TOKENS = frozenset([b"close"])


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
            fast = accel.fast
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
