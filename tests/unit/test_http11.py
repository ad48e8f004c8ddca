"""Unit tests of the sans-IO HTTP/1.1 layer (dashscale_local.http11): pure, fast."""

import pytest

from dashscale_local.http11 import (
    CONTINUE_100,
    END,
    FRAMING_CHUNKED,
    FRAMING_CLOSE,
    FRAMING_LENGTH,
    FRAMING_NONE,
    LAST_CHUNK,
    ProtocolError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_client_response_head,
    build_upstream_request,
    encode_chunk,
    error_response,
)

# Every test runs on the C fast path and on pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("http11_path")

# ----------------------------------------------------------------------------- helpers


def merge(events):
    """Events with adjacent body chunks joined (chunk boundaries are not semantic)."""
    out = []
    for ev in events:
        if isinstance(ev, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += ev
        else:
            out.append(ev)
    return out


def parse(raw, parser=None, bytewise=False, **limits):
    """Feed ``raw`` (whole or byte by byte); return merged events or raise."""
    p = parser or RequestParser(**limits)
    events = []
    if bytewise:
        for i in range(len(raw)):
            events += p.feed(raw[i : i + 1])
    else:
        events += p.feed(raw)
    return merge(events)


def status_of(raw, bytewise=False, **limits):
    with pytest.raises(ProtocolError) as ei:
        parse(raw, bytewise=bytewise, **limits)
    return ei.value.status


def reparse(head_and_body):
    """Parse a forwarded request with a fresh parser: (Request, body)."""
    events = RequestParser().feed(head_and_body)
    assert events[0].__class__ is Request and events[-1] is END
    return events[0], b"".join(e for e in events if isinstance(e, bytes))


H = b"Host: example.com\r\n"

# ----------------------------------------------------------------- malformed corpus

BAD = [
    # --- request smuggling classics
    ("CL.TE", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX", 400),
    ("TE.CL", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST", 400),
    ("TE.TE xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE space before colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked then identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("TE chunked, gzip", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked, chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE quoted chunked", b"POST / HTTP/1.1\r\n" + H + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', 400),
    ("TE chunked;q=1", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    ("TE empty element", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE vertical tab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip, chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE gzip + chunked lines", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    # --- Content-Length
    ("CL list 1,2", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1,2\r\n\r\nab", 400),
    ("CL list identical", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2, 2\r\n\r\nab", 400),
    ("CL duplicate identical", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nab", 400),
    ("CL duplicate different", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("CL +5", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nabcde", 400),
    ("CL -1", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL 0x10", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n", 400),
    ("CL inner space", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\n", 400),
    ("CL empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    ("CL overflow", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("CL above max_body", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 67108865\r\n\r\n", 413),
    # --- chunked body
    ("chunk size overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nx\r\n0\r\n\r\n", 400),
    ("chunk size huge (> max_body)", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx", 413),
    ("chunk size 0x prefix", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size negative", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size with space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk ext NUL", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a\x00\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk ext bare CR", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a=b\rc\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk ext empty name", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;=b\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk ext whitespace", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3; a=b\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk ext unterminated quote", b"POST / HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n3;a="b\r\nabc\r\n0\r\n\r\n', 400),
    ("chunk line LF only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    ("chunk data too long", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400),
    ("chunk line too long", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"a" * 5000, 400),
    ("trailer obs-fold", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nA: b\r\n c\r\n\r\n", 400),
    ("trailer space before colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nA : b\r\n\r\n", 400),
    ("trailer Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    ("trailer too large", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"a" * 70000, 431),
    # --- line endings, whitespace, control bytes
    ("LF-only line endings", b"GET / HTTP/1.1\nHost: example.com\n\n", 400),
    ("LF-only in header section", b"GET / HTTP/1.1\r\nHost: example.com\n\r\n", 400),
    ("bare CR in header line", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("bare CR in request line", b"GET /\r HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("obs-fold SP", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold HTAB", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n\tc\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n", 400),
    ("whitespace line after request line", b"GET / HTTP/1.1\r\n " + H + b"\r\n", 400),
    ("NUL in header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("SOH in header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    ("DEL in header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    ("NUL in header name", b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", 400),
    ("invalid token char in name", b"GET / HTTP/1.1\r\n" + H + b"X(A): b\r\n\r\n", 400),
    ("non-ASCII in name", b"GET / HTTP/1.1\r\n" + H + b"X\xe9: b\r\n\r\n", 400),
    ("empty field name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
    ("field without colon", b"GET / HTTP/1.1\r\n" + H + b"X-A b\r\n\r\n", 400),
    # --- Host
    ("missing Host 1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("duplicate Host", b"GET / HTTP/1.1\r\n" + H + b"Host: evil.com\r\n\r\n", 400),
    ("duplicate Host 1.0", b"GET / HTTP/1.0\r\n" + H + b"Host: evil.com\r\n\r\n", 400),
    ("Host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    ("Host with slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("absolute-form mismatch", b"GET http://evil.com/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form userinfo", b"GET http://u@example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form bad scheme", b"GET ftp://example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    # --- request line
    ("invalid method token", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("unknown method", b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("lowercase method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("TRACE", b"TRACE / HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("double space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("trailing space after version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("fragment in target", b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CTL in target", b"GET /\x01 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non-ASCII in target", b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("authority-form with GET", b"GET example.com:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk with GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400),
    ("lowercase http version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("HTTP/3.1", b"GET / HTTP/3.1\r\n" + H + b"\r\n", 505),
    ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    # --- sizes
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("request line never ends", b"GET /" + b"a" * 9000, 414),
    ("header section too large", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ("header section never ends", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000, 431),
    ("too many headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
    # --- upgrade / expect
    ("websocket upgrade with body", b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("unknown expectation", b"POST / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
]


def test_corpus_is_large_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize("name,raw,status", BAD, ids=[c[0] for c in BAD])
def test_malformed_request_rejected(name, raw, status):
    assert status_of(raw) == status
    # the verdict never depends on how the bytes were split
    if len(raw) < 2000:
        assert status_of(raw, bytewise=True) == status


@pytest.mark.parametrize("name,raw,status", BAD, ids=[c[0] for c in BAD])
def test_error_is_sticky(name, raw, status):
    p = RequestParser()
    with pytest.raises(ProtocolError):
        p.feed(raw)
    with pytest.raises(ProtocolError) as ei:
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ei.value.status == status


def test_oversize_body_detected_before_the_body():
    p = RequestParser(max_body=10)
    with pytest.raises(ProtocolError) as ei:
        p.feed(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 11\r\n\r\n")
    assert ei.value.status == 413
    p = RequestParser(max_body=10)
    events = p.feed(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert events[0].chunked and events[1] == b"hello"
    with pytest.raises(ProtocolError) as ei:
        p.feed(b"6\r\n")  # 5 + 6 > 10: refused at the size line, before any data
    assert ei.value.status == 413


def test_limits_are_inclusive():
    # request line exactly max_request_line long is fine, one more byte is 414
    line = b"GET /" + b"a" * (100 - len(b"GET / HTTP/1.1") ) + b" HTTP/1.1"
    assert len(line) == 100
    assert parse(line + b"\r\n" + H + b"\r\n", max_request_line=100)[0].method == b"GET"
    line2 = line.replace(b"/a", b"/aa", 1)
    assert status_of(line2 + b"\r\n" + H + b"\r\n", max_request_line=100) == 414
    assert status_of(line2 + b"\r\n" + H + b"\r\n", bytewise=True, max_request_line=100) == 414
    # header section (field lines + final CRLF) exactly max_header_bytes
    section = H + b"X: " + b"b" * 50 + b"\r\n\r\n"
    ok = b"GET / HTTP/1.1\r\n" + section
    assert parse(ok, max_header_bytes=len(section))[0].get(b"x") == b"b" * 50
    assert parse(ok, bytewise=True, max_header_bytes=len(section))[0].get(b"x") == b"b" * 50
    assert status_of(ok, max_header_bytes=len(section) - 1) == 431
    assert status_of(ok, bytewise=True, max_header_bytes=len(section) - 1) == 431
    # max_headers
    hdrs = H + b"".join(b"X-%d: v\r\n" % i for i in range(9))
    assert len(parse(b"GET / HTTP/1.1\r\n" + hdrs + b"\r\n", max_headers=10)[0].headers) == 10
    assert status_of(b"GET / HTTP/1.1\r\n" + hdrs + b"X: y\r\n\r\n", max_headers=10) == 431
    # body exactly max_body
    assert parse(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n\r\nabcd", max_body=4)[1] == b"abcd"
    chunked = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
    assert parse(chunked, max_body=4)[1] == b"abcd"
    assert status_of(chunked, max_body=3) == 413


def test_error_keeps_events_parsed_before_it():
    p = RequestParser()
    with pytest.raises(ProtocolError) as ei:
        p.feed(b"GET /ok HTTP/1.1\r\n" + H + b"\r\nGET /bad HTTP/1.1\r\nHost : x\r\n\r\n")
    assert ei.value.status == 400
    assert [type(e) for e in ei.value.events] == [Request, type(END)]
    assert ei.value.events[0].target == b"/ok"


def test_eof_inside_request_is_an_error():
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nab")
    with pytest.raises(ProtocolError) as ei:
        p.feed_eof()
    assert ei.value.status == 400
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert p.feed_eof() == []
    p = RequestParser()
    p.feed(b"GET / HT")
    assert p.in_message
    with pytest.raises(ProtocolError):
        p.feed_eof()


# ---------------------------------------------------------------------- good requests

BROWSER_GET = (
    b"GET /_dash-layout?x=1&y=%20 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8050\r\n"
    b"Connection: keep-alive\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Cookie: a=1; b=2\r\n"
    b"\r\n"
)
DASH_POST = (
    b"POST /_dash-update-component HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8050\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 27\r\n"
    b"\r\n"
    b'{"output":"x.children","a"}'
)


def test_get_keep_alive():
    events = parse(BROWSER_GET)
    assert len(events) == 2 and events[1] is END
    req = events[0]
    assert req.method == b"GET"
    assert req.target == b"/_dash-layout?x=1&y=%20"
    assert req.http_version == "1.1"
    assert req.host == b"127.0.0.1:8050"
    assert req.keep_alive and not req.upgrade and not req.chunked
    assert req.content_length is None and not req.has_body
    assert req.headers[0] == (b"host", b"127.0.0.1:8050")
    assert (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)") in req.headers
    assert req.get(b"cookie") == b"a=1; b=2"
    assert all(n == n.lower() for n, _ in req.headers)


def test_pipelined_get_and_post_in_one_feed():
    events = parse(BROWSER_GET + DASH_POST + BROWSER_GET)
    kinds = [type(e).__name__ if not isinstance(e, bytes) else "bytes" for e in events]
    assert kinds == ["Request", "EndOfMessage", "Request", "bytes", "EndOfMessage",
                     "Request", "EndOfMessage"]
    assert events[2].method == b"POST" and events[2].content_length == 27
    assert events[3] == b'{"output":"x.children","a"}'


@pytest.mark.parametrize("raw", [
    BROWSER_GET,
    DASH_POST,
    BROWSER_GET + DASH_POST + DASH_POST + BROWSER_GET,
    b"\r\n\r\n" + BROWSER_GET,
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=val;q=\"x y\"\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0;last\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n"
    + BROWSER_GET,
])
def test_byte_by_byte_equals_one_feed(raw):
    assert parse(raw, bytewise=True) == parse(raw)
    # and any two-piece split too
    for cut in range(0, len(raw), 7):
        p = RequestParser()
        assert merge(p.feed(raw[:cut]) + p.feed(raw[cut:])) == parse(raw)


def test_body_split_across_many_feeds():
    body = bytes(range(256)) * 40
    raw = b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body) + body
    p = RequestParser()
    events = []
    for i in range(0, len(raw), 333):
        events += p.feed(raw[i : i + 333])
    assert events[-1] is END
    assert b"".join(e for e in events if isinstance(e, bytes)) == body


def test_chunked_body_with_extensions_and_trailers():
    raw = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=val;q=\"x \\\" y\"\r\nhello\r\n"
           b"6;flag\r\n world\r\n"
           b"0\r\nX-Checksum: abc\r\n\r\n")
    events = parse(raw)
    req, body, end = events
    assert req.chunked and req.content_length is None and req.has_body
    assert body == b"hello world"
    assert end is END
    # trailers are not reported nor forwarded
    assert all(n != b"x-checksum" for n, _ in req.headers)


def test_chunked_upper_hex_and_leading_zeros():
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n000A\r\n0123456789\r\n0\r\n\r\n"
    assert parse(raw)[1] == b"0123456789"


def test_http10():
    req, end = parse(b"GET / HTTP/1.0\r\nUser-Agent: ab\r\n\r\n")
    assert req.http_version == "1.0" and req.host is None and not req.keep_alive
    req, end = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert req.keep_alive


def test_connection_close_stops_parsing():
    p = RequestParser()
    events = p.feed(b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\nGET /x HTTP/1.1\r\nbroken")
    assert len(events) == 2 and not events[0].keep_alive
    assert p.closed
    assert p.feed(b"anything") == []


def test_websocket_upgrade_detected():
    raw = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
           b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello")
    p = RequestParser()
    events = p.feed(raw)
    req = events[0]
    assert req.upgrade and req.upgrade_protocol == b"websocket" and events[1] is END
    assert p.upgraded and p.trailing_data == b"\x81\x05hello"
    assert p.feed(b"more") == [] and p.trailing_data == b"\x81\x05hellomore"
    head = build_upstream_request(req, "10.0.0.1")
    fwd, _ = reparse(head)
    assert fwd.upgrade
    assert fwd.get(b"upgrade") == b"websocket" and fwd.get(b"connection") == b"Upgrade"
    assert fwd.get(b"sec-websocket-key") == b"dGhlIHNhbXBsZSBub25jZQ=="


def test_non_websocket_upgrade_is_ignored():
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n" + BROWSER_GET)
    events = parse(raw)
    assert not events[0].upgrade and events[2].target.startswith(b"/_dash-layout")
    up = build_upstream_request(events[0], "1.2.3.4")
    assert b"h2c" not in up.lower() and b"http2-settings" not in up.lower()


def test_expect_100_continue():
    p = RequestParser()
    events = p.feed(b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert events[0].expect_continue and len(events) == 1
    assert p.feed(b"abc") == [b"abc", END]
    assert CONTINUE_100 == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"expect" not in build_upstream_request(events[0], "1.1.1.1").lower()
    # ignored in HTTP/1.0
    assert not parse(b"POST / HTTP/1.0\r\nExpect: whatever\r\nContent-Length: 0\r\n\r\n")[0].expect_continue


def test_absolute_form_is_normalised():
    req = parse(b"GET HTTP://Example.com/p?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")[0]
    assert req.target == b"/p?q=1" and req.raw_target == b"HTTP://Example.com/p?q=1"
    assert req.host == b"Example.com"
    req = parse(b"GET http://example.com?q HTTP/1.1\r\nHost: example.com\r\n\r\n")[0]
    assert req.target == b"/?q"


def test_options_asterisk_and_trailing_whitespace():
    req = parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\nX-A:   spaced value \t \r\n\r\n")[0]
    assert req.target == b"*" and req.get(b"x-a") == b"spaced value"


def test_obs_text_and_empty_values_accepted():
    req = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9\r\nX-Empty:\r\n\r\n")[0]
    assert req.get(b"x-name") == b"caf\xe9" and req.get(b"x-empty") == b""


def test_content_length_zero_and_leading_zeros():
    req, end = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert req.content_length == 0 and end is END
    req, body, end = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\nabc")
    assert req.content_length == 3 and body == b"abc"


# ---------------------------------------------------------------- build_upstream_request

SPOOFED = (
    b"POST /_dash-update-component?a=1 HTTP/1.1\r\n"
    b"Host: app.example.com\r\n"
    b"Connection: keep-alive, X-Secret, Host, Content-Length\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-Checksum\r\n"
    b"X-Secret: drop me\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: evil.com\r\n"
    b"X-Forwarded-Prefix: /evil\r\n"
    b"Forwarded: for=6.6.6.6\r\n"
    b"X-Real-IP: 6.6.6.6\r\n"
    b"X-Dashscale-Replica: web.9\r\n"
    b"Via: 1.0 corporate-proxy\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 2\r\n"
    b"\r\n{}"
)


def test_build_upstream_request_rewrites_headers():
    req, body, _ = parse(SPOOFED)
    head = build_upstream_request(req, "192.0.2.7", proto="http", via="1.1 dashscale")
    assert head.startswith(b"POST /_dash-update-component?a=1 HTTP/1.1\r\n")
    assert head.endswith(b"\r\n\r\n")
    fwd, fbody = reparse(head + body)
    assert fbody == b"{}"
    names = [n for n, _ in fwd.headers]
    for gone in (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"x-secret",
                 b"forwarded", b"x-real-ip", b"x-dashscale-replica", b"x-forwarded-prefix"):
        assert gone not in names, gone
    assert fwd.get(b"x-forwarded-for") == b"192.0.2.7"
    assert fwd.get(b"x-forwarded-proto") == b"http"
    assert fwd.get(b"x-forwarded-host") == b"app.example.com"
    assert fwd.get(b"via") == b"1.0 corporate-proxy, 1.1 dashscale"
    assert fwd.get(b"connection") == b"close" and not fwd.keep_alive
    assert names.count(b"x-forwarded-for") == 1 and names.count(b"host") == 1
    assert fwd.host == b"app.example.com" and fwd.content_length == 2
    assert fwd.get(b"content-type") == b"application/json"


def test_build_upstream_request_keep_alive_and_no_body():
    req = parse(BROWSER_GET)[0]
    head = build_upstream_request(req, "127.0.0.1", keep_alive=True)
    fwd, body = reparse(head)
    assert fwd.keep_alive and fwd.get(b"connection") is None and body == b""
    assert fwd.content_length is None and not fwd.chunked


def test_build_upstream_request_chunked_framing():
    raw = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
    req, body, _ = parse(raw)
    # buffered: forwarded with Content-Length
    fwd, fbody = reparse(build_upstream_request(req, "1.2.3.4", body_length=len(body)) + body)
    assert fwd.content_length == 5 and not fwd.chunked and fbody == b"hello"
    assert b"x-t" not in build_upstream_request(req, "1.2.3.4").lower()
    # streaming: re-chunked
    head = build_upstream_request(req, "1.2.3.4")
    fwd, fbody = reparse(head + encode_chunk(b"hel") + encode_chunk(b"") + encode_chunk(b"lo") + LAST_CHUNK)
    assert fwd.chunked and fwd.content_length is None and fbody == b"hello"


def test_build_upstream_request_http10_without_host():
    req = parse(b"GET /x HTTP/1.0\r\n\r\n")[0]
    head = build_upstream_request(req, "1.2.3.4", default_host=b"127.0.0.1:8050")
    fwd, _ = reparse(head)
    assert fwd.http_version == "1.1" and fwd.host == b"127.0.0.1:8050"
    assert fwd.get(b"x-forwarded-host") is None


# -------------------------------------------------------------------------- responses


def resp_events(raw, method=b"GET", eof=False, bytewise=False):
    rp = ResponseParser(method)
    events = []
    if bytewise:
        for i in range(len(raw)):
            events += rp.feed(raw[i : i + 1])
    else:
        events += rp.feed(raw)
    if eof:
        events += rp.feed_eof()
    return rp, merge(events)


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_content_length(bytewise):
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    rp, (resp, body, end) = resp_events(raw, bytewise=bytewise)
    assert isinstance(resp, Response) and resp.status == 200 and resp.reason == b"OK"
    assert resp.framing == FRAMING_LENGTH and resp.content_length == 5 and resp.keep_alive
    assert body == b"hello" and end is END and rp.done


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_chunked(bytewise):
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
    rp, (resp, body, end) = resp_events(raw, bytewise=bytewise)
    assert resp.framing == FRAMING_CHUNKED and resp.content_length is None
    assert body == b"hello world" and end is END


def test_response_until_close():
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstream of bytes"
    rp, events = resp_events(raw)
    assert events[0].framing == FRAMING_CLOSE and not events[0].keep_alive
    assert events[1] == b"stream of bytes" and len(events) == 2
    assert rp.feed(b" and more") == [b" and more"]
    assert rp.feed_eof() == [END]


def test_response_truncated_is_502():
    rp = ResponseParser()
    rp.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError) as ei:
        rp.feed_eof()
    assert ei.value.status == 502
    rp = ResponseParser()
    rp.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    with pytest.raises(ProtocolError):
        rp.feed_eof()
    rp = ResponseParser()
    with pytest.raises(ProtocolError):
        rp.feed_eof()


def test_response_head_has_no_body():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
    rp, events = resp_events(raw, method=b"HEAD")
    resp, end = events
    assert resp.framing == FRAMING_NONE and end is END and rp.done
    assert resp.content_length == 1234
    head, chunked, ka = build_client_response_head(resp, keep_alive=True)
    assert b"content-length: 1234\r\n" in head.lower() and not chunked


@pytest.mark.parametrize("status", [204, 304])
def test_response_204_304(status):
    raw = b"HTTP/1.1 %d X\r\nETag: \"a\"\r\n\r\n" % status
    rp, events = resp_events(raw)
    assert events[0].status == status and events[0].framing == FRAMING_NONE
    assert events[1] is END and len(events) == 2
    head, chunked, ka = build_client_response_head(events[0], keep_alive=True)
    assert not chunked and b"transfer-encoding" not in head.lower() and ka


def test_response_interim_1xx_skipped():
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    rp, events = resp_events(raw)
    assert events[0].status == 200 and events[1] == b"ok" and events[2] is END


def test_response_101_switching_protocols():
    raw = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi")
    rp, events = resp_events(raw)
    resp = events[0]
    assert resp.upgrade and events[1] is END and rp.trailing_data == b"\x81\x02hi"
    head, chunked, ka = build_client_response_head(resp, keep_alive=True,
                                                   extra_headers=[(b"X-Dashscale-Replica", b"web.1")])
    low = head.lower()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: websocket\r\n" in low and b"connection: upgrade\r\n" in low
    assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n" in low


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: \x00\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000,
])
def test_bad_upstream_response_is_502(raw):
    rp = ResponseParser()
    with pytest.raises(ProtocolError) as ei:
        rp.feed(raw)
        rp.feed_eof()
    assert ei.value.status == 502


def test_build_client_response_head_strips_and_frames():
    raw = (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nConnection: keep-alive, X-Hop\r\n"
           b"Keep-Alive: timeout=2\r\nX-Hop: 1\r\nX-Dashscale-Replica: web.99\r\n"
           b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    rp, (resp, body, end) = resp_events(raw)
    head, chunked, ka = build_client_response_head(
        resp, keep_alive=True, extra_headers=[(b"X-Dashscale-Replica", b"web.2")])
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    rp2, (resp2, body2, end2) = resp_events(head + body)
    names = [n for n, _ in resp2.headers]
    assert b"keep-alive" not in names and b"x-hop" not in names and b"connection" not in names
    assert resp2.get(b"x-dashscale-replica") == b"web.2" and names.count(b"x-dashscale-replica") == 1
    assert resp2.get(b"server") == b"gunicorn" and resp2.content_length == 2 and body2 == b"{}"
    assert not chunked and ka
    # client asked to close
    head, chunked, ka = build_client_response_head(resp, keep_alive=False)
    assert b"connection: close\r\n" in head.lower() and not ka
    # HTTP/1.0 keep-alive client
    head, chunked, ka = build_client_response_head(resp, keep_alive=True, client_version="1.0")
    assert b"connection: keep-alive\r\n" in head.lower() and ka


def test_build_client_response_head_chunked_and_close_framing():
    rp, events = resp_events(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    resp = events[0]
    head, chunked, ka = build_client_response_head(resp, keep_alive=True)
    assert chunked and ka and b"transfer-encoding: chunked\r\n" in head.lower()
    head, chunked, ka = build_client_response_head(resp, keep_alive=True, client_version="1.0")
    assert not chunked and not ka and b"transfer-encoding" not in head.lower()
    # until-close upstream: chunked to 1.1, close-delimited to 1.0
    rp, events = resp_events(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
    resp = events[0]
    assert resp.framing == FRAMING_CLOSE
    head, chunked, ka = build_client_response_head(resp, keep_alive=True)
    assert chunked and ka
    stream = head + encode_chunk(b"abc") + encode_chunk(b"def") + LAST_CHUNK
    rp2, events2 = resp_events(stream)
    assert events2[1] == b"abcdef" and events2[2] is END
    head, chunked, ka = build_client_response_head(resp, keep_alive=True, client_version="1.0")
    assert not chunked and not ka and b"connection: close\r\n" in head.lower()
    assert b"content-length" not in head.lower()


def test_encode_chunk():
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"


@pytest.mark.parametrize("status", [400, 413, 414, 431, 501, 502, 503, 505])
def test_error_response_parses(status):
    raw = error_response(status, "details here", retry_after=3 if status == 503 else None)
    rp, (resp, body, end) = resp_events(raw)
    assert resp.status == status and not resp.keep_alive
    assert resp.get(b"connection") == b"close"
    assert resp.get(b"content-type").startswith(b"text/plain")
    assert body.startswith(b"%d " % status) and b"details here" in body
    if status == 503:
        assert resp.get(b"retry-after") == b"3"
    else:
        assert resp.get(b"retry-after") is None


# ------------------------------------------------------- independence from llhttp version


def test_installed_llhttp_is_strict():
    from dashscale_local.http11 import request as http11_request

    assert http11_request._LLHTTP_STRICT


HEAD_LEVEL_BAD = [(name, raw) for name, raw, status in BAD
                  if status == 400 and not name.startswith("chunk") and any(k in name for k in (
                      "LF-only", "bare CR", "obs-fold", "before colon", "NUL", "SOH", "DEL",
                      "token char", "non-ASCII in name", "empty field name",
                      "without colon", "whitespace line"))]


@pytest.mark.parametrize("name,raw", HEAD_LEVEL_BAD, ids=[n for n, _ in HEAD_LEVEL_BAD])
def test_fallback_checks_for_lenient_llhttp(name, raw, monkeypatch):
    """With an llhttp that accepted these (old httptools), our own checks reject them."""
    from dashscale_local.http11 import request as http11_request

    assert len(HEAD_LEVEL_BAD) >= 10
    trailer = name.startswith("trailer")
    start = raw.index(b"\r\n\r\n0\r\n") + 7 if trailer else 0  # the trailer section
    end = raw.find(b"\r\n\r\n", start)
    end = len(raw) if end < 0 else end + 4
    with pytest.raises(ProtocolError) as ei:
        http11_request._check_head_bytes(raw, start, end, start_line=not trailer)
    assert ei.value.status == 400
    # and the whole parser still behaves with the fallback switched on
    monkeypatch.setattr(http11_request, "_LLHTTP_STRICT", False)
    assert status_of(raw) == 400
    assert status_of(raw, bytewise=True) == 400
    ok = parse(BROWSER_GET + DASH_POST + b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
               b"chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n", bytewise=True)
    assert [e.method for e in ok if isinstance(e, Request)] == [b"GET", b"POST", b"POST"]


def test_expect_without_body_needs_no_continue():
    req = parse(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")[0]
    assert not req.expect_continue
