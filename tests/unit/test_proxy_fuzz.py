"""Property-based fuzzing of the LIVE proxy: mutated requests sent on raw sockets.

For every input the sans-IO parser (fed the same bytes) decides what must happen: a
rejection → the proxy answers that status, closes, and no replica receives anything; one
complete request → exactly one request reaches the replica, with the same method, target
and body, framed by a Content-Length equal to the body it parsed.
"""
import re
import socket

import httptools
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dashscale_local import http11

from tests.proxyharness import ProxyEnv, read_all

SEEDS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
    b"POST /_dash-update-component HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: 11\r\n\r\n{\"a\": [1]}\n",
    b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
TOKENS = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b",", b"\x00", b"\x7f", b"0", b"5", b"a",
          b"Content-Length: 4\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Transfer-Encoding: identity\r\n", b"Host: u\r\n", b" chunked", b"\r\n ",
          b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"0\r\n\r\n", b"\xff"]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("insert", "delete", "replace")))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            data[pos:pos + draw(st.integers(1, 6))] = b""
        else:
            data[pos:pos + 1] = draw(st.sampled_from(TOKENS))
    return bytes(data)


def expected(raw):
    """("error", status) | ("ok", request, body) | None (incomplete or several requests)."""
    parser = http11.RequestParser(max_body=1 << 20)
    try:
        events = parser.feed(raw)
    except http11.ProtocolError as exc:
        if any(e is http11.END for e in exc.events):
            return None  # a complete request before the error: covered elsewhere
        return ("error", exc.status)
    if events.count(http11.END) != 1 or events[-1] is not http11.END:
        return None
    req = events[0]
    if req.upgrade or req.expect_continue:
        return None
    return ("ok", req, b"".join(e for e in events if e.__class__ is bytes))


@pytest.fixture(scope="module")
def fuzz_env():
    env = ProxyEnv(n=1, settings={"proxy_max_body": 1 << 20})
    yield env
    env.close()


class _Req:
    def __init__(self):
        self.body = b""
        self.complete = 0

    def on_body(self, b):
        self.body += b

    def on_message_complete(self):
        self.complete += 1


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=mutated())
def test_live_proxy_never_forwards_a_different_framing(fuzz_env, raw):
    want = expected(raw)
    assume(want is not None)
    backend = fuzz_env.backends[0]
    before = len(backend.requests)
    with socket.create_connection(("127.0.0.1", fuzz_env.port), timeout=5) as s:
        s.sendall(raw)
        if want[0] == "error":
            data = read_all(s)
            assert data.startswith(b"HTTP/1.1 %d " % want[1]), (raw, data[:100])
            assert len(backend.requests) == before and backend.active == 0
            return
        s.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, raw
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), (raw, data[:200])
    _, req, body = want
    fuzz_env.wait(lambda: len(backend.requests) == before + 1, message="forwarded")
    head, got_body = backend.requests[-1]
    assert head.startswith(req.method + b" " + req.target + b" HTTP/1.1\r\n")
    assert got_body == body
    cls = re.findall(rb"(?im)^content-length:\s*(\d+)\r$", head)
    assert cls == ([b"%d" % len(body)] if (body or req.content_length is not None) else [])
    assert not re.search(rb"(?im)^transfer-encoding:", head)
    # an independent parser agrees on where the forwarded message ends
    sink = _Req()
    p = httptools.HttpRequestParser(sink)
    p.feed_data(head + got_body)
    assert sink.complete == 1 and sink.body == body
