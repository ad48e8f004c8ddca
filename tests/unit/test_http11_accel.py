"""The C fast path of http11 (http11/_fast.c) against the pure-Python path.

The contract: for any input, the C path either declines (None, and Python parses as
before) or gives exactly what Python gives: the same events, the same forwarded bytes,
the same parser state. It never decides an error itself. Checked on the corpus of
tests/unit/test_http11.py and on generated heads, biased towards the plain heads the C path
takes and mutated towards what it must leave alone.
"""
import contextlib
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dashscale_local import http11
from dashscale_local.http11 import (
    END,
    LAST_CHUNK,
    ProtocolError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_client_response_head,
    build_upstream_request,
    encode_chunk,
)

from .test_http11 import BAD, BROWSER_GET, DASH_POST

C = http11.accel.fast
needs_c = pytest.mark.skipif(C is None, reason="the C fast path is not built")
FUZZ = settings(max_examples=1500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = dict(max_request_line=120, max_header_bytes=400, max_headers=12, max_body=5000)
WRK_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8050\r\n\r\n"
GUNICORN_200 = (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Fri, 27 Nov 2026 18:00:00 GMT\r\n"
                b"Connection: close\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")


@contextlib.contextmanager
def path(accel):
    saved = http11.accel.fast
    http11.accel.fast = C if accel else None
    try:
        yield
    finally:
        http11.accel.fast = saved


def test_fast_path_is_built():
    """make/pip build it; CI must not silently measure or test the fallback alone."""
    if os.environ.get("DASHSCALE_HTTP11_PURE"):
        pytest.skip("DASHSCALE_HTTP11_PURE is set")
    assert C is not None, "dashscale_local.http11._fast did not build (is gcc installed?)"


# ----------------------------------------------------------------------------- requests


def request_outcome(pieces, accel, limits=LIMITS):
    """Everything observable of feeding ``pieces``: events (with the forwarded heads),
    or the error, and the parser's state afterwards."""
    with path(accel):
        p = RequestParser(**limits)
        events = []
        try:
            for piece in pieces:
                events += p.feed(piece)
        except ProtocolError as e:
            return ("error", e.status, e.reason, _summary(e.events))
        return ("ok", _summary(events), p._state, p._remaining, p._keep_alive, p.closed,
                p.in_message)


def _summary(events):
    out = []
    for ev in events:
        if ev.__class__ is Request:
            out.append((ev._key(),
                        build_upstream_request(ev, b"10.0.0.9"),
                        build_upstream_request(ev, "::1", "https", keep_alive=True,
                                               body_length=7)))
        else:
            out.append(ev)
    return out


def c_answers(head, limits=LIMITS):
    return C.parse_request_head(head, limits["max_request_line"], limits["max_header_bytes"],
                                limits["max_headers"], limits["max_body"]) is not None


def assert_same_request(head, body=b""):
    pieces = [head, body] if body else [head]
    assert request_outcome(pieces, True) == request_outcome(pieces, False)
    whole = [head + body]
    assert request_outcome(whole, True) == request_outcome(whole, False)


@needs_c
@pytest.mark.parametrize("head", [
    WRK_GET,
    BROWSER_GET,
    DASH_POST.partition(b"\r\n\r\n")[0] + b"\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: x\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost:\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 1\r\n"
    b"Forwarded: for=x\r\nX-Dashscale-Replica: web.9\r\nContent-Length: 007\r\n\r\n",
    # what follows the head in the same read goes through the Python state machine
    DASH_POST,
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBAD\x00 / HTTP/1.1\r\n\r\n",  # then a 400
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nignored after close",
])
def test_plain_heads_take_the_fast_path(head):
    limits = dict(LIMITS, max_header_bytes=65536, max_request_line=8192, max_headers=100)
    assert c_answers(head, limits)
    pieces = [head]
    assert request_outcome(pieces, True, limits) == request_outcome(pieces, False, limits)


@needs_c
@pytest.mark.parametrize("head", [
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",                      # leading empty line
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",                  # absolute-form
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",                  # non-ASCII target
    b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",                       # fragment: 400
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \xe9\r\n\r\n",               # obs-text
    b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1\r\n\r\n",    # underscore name
    b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5001\r\n\r\n",  # over max_body: 413
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nFoo: 1\r\n\r\n",  # named field
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nClose: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close,\r\n\r\n",   # empty list element
    b"GET / HTTP/1.1\r\n\r\n",                                     # no Host in 1.1
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /" + b"a" * 120 + b" HTTP/1.1\r\nHost: a\r\n\r\n",       # over max_request_line
    b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 12 + b"\r\n",  # over max_headers
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 400 + b"\r\n\r\n",  # over max_header_bytes
])
def test_unusual_heads_are_left_to_python(head):
    assert not c_answers(head)
    assert_same_request(head)


@pytest.mark.parametrize("name,raw,status", BAD, ids=[c[0] for c in BAD])
def test_corpus_same_on_both_paths(name, raw, status):
    head, sep, body = raw.partition(b"\r\n\r\n")
    pieces = [head + sep, body] if sep and body else [raw]
    big = dict(max_request_line=8192, max_header_bytes=65536, max_headers=100,
               max_body=64 * 1024 * 1024)
    assert request_outcome(pieces, True, big) == request_outcome(pieces, False, big)
    assert request_outcome(pieces, True, big)[0] == "error"


# Heads built from the parts a client could send, each part sometimes replaced by
# something the C path must decline, and sometimes mutated byte by byte.
METHODS = [b"GET", b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
           b"get", b"CONNECT", b"TRACE", b"G ET", b"GETT"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ",
            b"HTTP/1.10", b"HTTP/1"]
NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Connection",
         b"Transfer-Encoding", b"Upgrade", b"Expect", b"Via", b"X-Forwarded-For",
         b"X-Forwarded-Host", b"X_Forwarded_For", b"X-Dashscale-Replica", b"Keep-Alive",
         b"Proxy-Connection", b"TE", b"Trailer", b"close", b"Close", b"keep-alive",
         b"Forwarded", b"X-Real-IP", b"Accept", b"Cookie", b"User-Agent", b"X-CSRFToken",
         b"x", b"Host ", b"", b"A:B", b"\xe9"]
VALUES = [b"", b"a", b"127.0.0.1:8050", b"[::1]:80", b"0", b"5", b"007", b"12", b"99999",
          b"-1", b"1 2", b"1,1", b"close", b"Close", b"keep-alive", b"Keep-Alive",
          b"close, keep-alive", b"close,", b" close ", b"upgrade", b"foo", b"chunked",
          b"100-continue", b"websocket", b"text/html, */*;q=0.8", b"a=b; c=d",
          b"\tx\t", b"  spaced  ", b"a\x00b", b"a\x7fb", b"\xe9t\xe9", b"a\rb", b"a\nb",
          b"host name", b"a@b", b"a/b"]
TARGET_BYTES = bytes(range(0x20, 0x80)) + b"\x00\x09\x80\xe9\xff"


PLAIN_NAMES = [b"Accept", b"Cookie", b"User-Agent", b"X-CSRFToken", b"x", b"Content-Type",
               b"Keep-Alive", b"TE", b"Trailer", b"Proxy-Connection", b"Forwarded",
               b"X-Real-IP", b"X-Forwarded-For", b"X-Dashscale-Replica", b"Connection",
               b"Content-Length"]
PLAIN_VALUES = {b"Connection": [b"close", b"keep-alive", b"Keep-Alive", b"close, keep-alive",
                                b" close "],
                b"Content-Length": [b"0", b"5", b"007", b"12", b"4999", b"5000"]}
PCHAR = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/?"


@st.composite
def request_heads(draw):
    """Half plain heads (what browsers and wrk send), half anything; some mutated."""
    plain = draw(st.booleans())
    if plain:
        method = draw(st.sampled_from(METHODS[:8]))
        target = b"/" + draw(st.binary(max_size=25).map(
            lambda b: bytes(PCHAR[x % len(PCHAR)] for x in b)))
        version = draw(st.sampled_from(VERSIONS[:3]))
    else:
        method = draw(st.sampled_from(METHODS))
        target = b"/" + draw(st.binary(max_size=25).map(
            lambda b: bytes(TARGET_BYTES[x % len(TARGET_BYTES)] for x in b)))
        if draw(st.integers(0, 9)) == 0:
            target = draw(st.sampled_from([b"*", b"http://a/b", b"", b"a", b"//x"]))
        version = draw(st.sampled_from(VERSIONS))
    lines = [method + b" " + target + b" " + version]
    if draw(st.integers(0, 9)) if plain else draw(st.integers(0, 4)):
        lines.append(b"Host: " + draw(st.sampled_from([b"a", b"127.0.0.1:8050", b"x.y", b""])))
    for _ in range(draw(st.integers(0, 6))):
        if plain:
            name = draw(st.sampled_from(PLAIN_NAMES))
            value = draw(st.sampled_from(PLAIN_VALUES.get(name, VALUES[:2] + VALUES[24:28])))
        else:
            name = draw(st.sampled_from(NAMES))
            value = draw(st.sampled_from(VALUES))
        sep = draw(st.sampled_from([b": ", b":", b":\t", b":  ", b" : "][:4 if plain else 5]))
        tail = draw(st.sampled_from([b"", b"", b" ", b"\t"]))
        lines.append(name + sep + value + tail)
    fields = lines[1:]
    draw(st.randoms()).shuffle(fields)
    lines[1:] = fields
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    for _ in range(draw(st.integers(0, 1) if plain else st.integers(0, 2))):  # mutations
        i = draw(st.integers(0, len(head) - 1))
        b = draw(st.sampled_from(b"\r\n \t\x00:,_\x80Aa0"))
        head = head[:i] + bytes([b]) + head[i + 1:] if draw(st.booleans()) else \
            head[:i] + bytes([b]) + head[i:]
    return head


@FUZZ
@given(head=request_heads(), body=st.binary(max_size=12))
@example(head=WRK_GET, body=b"")
@example(head=b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", body=b"abcGET")
def test_generated_requests_same_on_both_paths(head, body):
    assert_same_request(head, body)


# ---------------------------------------------------------------------------- responses


def response_outcome(pieces, method, accel, eof=False):
    with path(accel):
        rp = ResponseParser(method, max_header_bytes=400)
        events = []
        try:
            for piece in pieces:
                events += rp.feed(piece)
            if eof:
                events += rp.feed_eof()
        except ProtocolError as e:
            return ("error", e.status, e.reason, _resp_summary(e.events))
        return ("ok", _resp_summary(events), rp.done, rp.trailing_data)


def _resp_summary(events):
    out = []
    for ev in events:
        if ev.__class__ is Response:
            key = (ev.status, ev.reason, ev.http_version, ev.headers, ev.connection,
                   ev.framing, ev.content_length, ev.keep_alive, ev.upgrade)
            heads = tuple(build_client_response_head(ev, keep_alive=ka, client_version=v,
                                                     extra_headers=[(b"X-R", b"web.1")])
                          for ka in (True, False) for v in ("1.1", "1.0"))
            out.append((key, heads))
        elif out and ev.__class__ is bytes and out[-1].__class__ is bytes:
            out[-1] += ev  # chunk boundaries are not semantic
        else:
            out.append(ev)
    return out


def assert_same_response(raw, method=b"GET", cut=None):
    for pieces in ([raw], [raw[:cut], raw[cut:]] if cut is not None else [raw]):
        for eof in (False, True):
            assert (response_outcome(pieces, method, True, eof)
                    == response_outcome(pieces, method, False, eof))


@needs_c
@pytest.mark.parametrize("raw,method", [
    (GUNICORN_200, b"GET"),
    (GUNICORN_200[:-3], b"GET"),  # the body comes in later reads
    (GUNICORN_200.partition(b"\r\n\r\n")[0] + b"\r\n\r\n", b"HEAD"),
    (b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"GET"),
    (b"HTTP/1.1 204 \r\nX-Dashscale-Replica: spoof\r\nKeep-Alive: 5\r\n\r\n", b"POST"),
    (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 10\r\n\r\n", b"GET"),
])
def test_plain_responses_take_the_fast_path(raw, method):
    assert C.parse_response_head(raw, 400) is not None
    assert_same_response(raw, method)
    assert_same_response(raw, method, cut=len(raw) - 1)


@needs_c
@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nClose: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: \xe9\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: 1\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",  # head not complete
])
def test_unusual_responses_are_left_to_python(raw):
    assert C.parse_response_head(raw, 400) is None
    assert_same_response(raw)


STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 ",
                b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 500 \t x",
                b"HTTP/1.1 999 Odd", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
                b"HTTP/1.1 101 Switching", b"HTTP/1.1 200", b"HTTP/1.1 2000 X",
                b"HTTP/1.1 020 X", b"HTTP/1.2 200 OK", b"HTTP/1.1 200 \xe9",
                b"HTTP/1.1  200 OK", b"HTTP/1.1 200 OK "]
RESP_NAMES = [b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
              b"Keep-Alive", b"Upgrade", b"TE", b"Trailer", b"Proxy-Connection",
              b"X-Dashscale-Replica", b"X-Dashscale", b"close", b"Close", b"Server", b"Date",
              b"Content-Type", b"Set-Cookie", b"X_Y", b"", b"A B"]


@st.composite
def responses(draw):
    plain = draw(st.booleans())
    lines = [draw(st.sampled_from(STATUS_LINES[:8] if plain else STATUS_LINES))]
    body = draw(st.binary(max_size=10))
    if draw(st.integers(0, 3)):
        cl = draw(st.sampled_from([len(body), len(body), 0, len(body) + 3,
                                   max(len(body) - 1, 0)]))
        lines.append(b"Content-Length: %d" % cl)
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(RESP_NAMES[4:11] + RESP_NAMES[13:17] if plain
                                    else RESP_NAMES))
        sep = draw(st.sampled_from([b": ", b":", b":\t", b" : "][:3 if plain else 4]))
        if plain and name == b"Connection":
            value = draw(st.sampled_from(PLAIN_VALUES[name]))
        else:
            value = draw(st.sampled_from(VALUES[:2] + VALUES[24:28] if plain else VALUES))
        lines.append(name + sep + value)
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    for _ in range(draw(st.integers(0, 1) if plain else st.integers(0, 2))):
        i = draw(st.integers(0, len(raw) - 1))
        b = draw(st.sampled_from(b"\r\n \t\x00:,\x80Aa0"))
        raw = raw[:i] + bytes([b]) + raw[i + 1:]
    return raw


@FUZZ
@given(raw=responses(), method=st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]),
       cut=st.integers(0, 200))
@example(raw=GUNICORN_200, method=b"GET", cut=10)
def test_generated_responses_same_on_both_paths(raw, method, cut):
    assert_same_response(raw, method, cut % (len(raw) + 1))


# ------------------------------------------------- whole responses, as the proxy relays them


def python_client_response(raw, method, keep_alive, version, extra):
    """What the proxy's general path sends for ``raw`` arriving in one read, or None
    when that path would not finish the exchange with it."""
    with path(False):
        rp = ResponseParser(method, max_header_bytes=400)
        try:
            events = rp.feed(raw)
        except ProtocolError:
            return None
    if not events or events[-1] is not END or events[0].__class__ is not Response \
            or events[0].upgrade:
        return None
    head, chunked, ka = build_client_response_head(
        events[0], keep_alive=keep_alive, client_version=version,
        extra_headers=[(b"X-Dashscale-Replica", extra)])
    assert ka == keep_alive or chunked or events[0].framing != "length"
    body = b"".join(events[1:-1])
    return events[0].status, ka, head + (encode_chunk(body) + LAST_CHUNK if chunked else body)


def assert_same_client_response(raw, method, keep_alive, version):
    label = b"web.3"
    got = C.client_response(raw, method == b"HEAD", keep_alive, version == "1.1",
                            b"X-Dashscale-Replica: " + label + b"\r\n", 400)
    if got is not None:
        status, out = got
        assert python_client_response(raw, method, keep_alive, version, label) == \
            (status, keep_alive, out)
    return got


@needs_c
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("raw,method", [
    (GUNICORN_200, b"GET"),
    (GUNICORN_200.partition(b"\r\n\r\n")[0] + b"\r\n\r\n", b"HEAD"),
    (b"HTTP/1.0 404 Not Found\r\nContent-Length: 007\r\n\r\n1234567", b"POST"),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 010\r\nX-Dashscale-A: 1\r\n\r\n", b"GET"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b"DELETE"),
])
def test_whole_plain_responses_are_relayed_by_c(raw, method, keep_alive, version):
    assert assert_same_client_response(raw, method, keep_alive, version) is not None


@needs_c
@pytest.mark.parametrize("raw", [
    GUNICORN_200[:-1],                                              # body still to come
    b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",                  # no reason: phrase table
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",      # read until close
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
])
def test_other_responses_take_the_general_path(raw):
    assert assert_same_client_response(raw, b"GET", True, "1.1") is None


@needs_c
@pytest.mark.parametrize("get", [WRK_GET, b"HEAD / HTTP/1.0\r\n\r\n"])
def test_client_response_is_the_c_call_or_none_without_it(get):
    """http11.client_response (what the proxy calls) decides: C when it is on, else None
    (the proxy then takes the general path)."""
    [req, _] = RequestParser().feed(get)
    line = b"X-Dashscale-Replica: web.1\r\n"
    got = http11.client_response(GUNICORN_200, req, line, 400)
    assert got is not None
    assert got == C.client_response(GUNICORN_200, req.method == b"HEAD", req.keep_alive,
                                    req.http_version == "1.1", line, 400)
    assert http11.client_response(bytearray(GUNICORN_200), req, line, 400) is None
    with path(False):
        assert http11.client_response(GUNICORN_200, req, line, 400) is None


@FUZZ
@given(raw=responses(), method=st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]),
       keep_alive=st.booleans(), version=st.sampled_from(["1.1", "1.0"]))
@example(raw=GUNICORN_200, method=b"GET", keep_alive=True, version="1.1")
def test_generated_whole_responses_same_as_general_path(raw, method, keep_alive, version):
    if C is None:
        pytest.skip("the C fast path is not built")
    assert_same_client_response(raw, method, keep_alive, version)
