"""The live proxy (Pool + Proxy on a real event loop) in front of raw recording backends,
driven over raw sockets: framing safety, keep-alive, pipelining, bodies, timeouts,
failures, draining, WebSocket tunnels, header hygiene, limits and counters."""
import contextlib
import json
import socket
import threading
import time

import pytest

from tests.proxyharness import ProxyEnv, leftover, parse_forwarded, read_all, read_response

H = b"Host: t\r\n"


@pytest.fixture
def env_factory():
    envs = []

    def make(**kw):
        env = ProxyEnv(**kw)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def env(env_factory):
    return env_factory(n=2)


def status_of(raw):
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split(b" ", 2)[1])


# --------------------------------------------------------------------------- malformed corpus

CORPUS = [
    # (id, raw request, expected status)
    ("cl-and-te", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two-different-cl", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("two-equal-cl", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cl-list", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("cl-not-digits", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400),
    ("cl-plus-sign", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("cl-overflow", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    ("te-identity", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("te-chunked-not-last", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te-xchunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-quoted", b'POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "chunked"\r\n\r\n', 400),
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-in-http10", b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold-te", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rX-B: b\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\nHost: t\n\n", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    ("space-before-colon-cl", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\nabc", 400),
    ("tab-before-colon-te", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
    ("ctl-in-value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    ("duplicate-host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid-host", b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
    ("absolute-form-host-mismatch", b"GET http://evil/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("userinfo", b"GET http://u@t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("fragment", b"GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("extra-spaces", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("http2-version", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("bad-version", b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", 400),
    ("connect-method", b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 501),
    ("lowercase-method", b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    ("bad-method-token", b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    ("request-line-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    ("headers-too-large", b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ("too-many-headers", b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n", 431),
    ("expect-unknown", b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\na", 417),
    ("body-over-cap", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413),
    ("chunked-over-cap", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", 413),
    ("chunk-size-not-hex", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    ("chunk-size-overflow", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\n", 400),
    ("chunk-size-space", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-missing-crlf", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("chunk-bare-lf", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("cl-in-trailer", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    ("upgrade-with-body", b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc", 400),
]


@pytest.fixture(scope="module")
def corpus_env():
    env = ProxyEnv(n=2, settings={"proxy_max_body": 1024 * 1024})
    yield env
    env.close()


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_malformed_request_rejected_and_never_forwarded(corpus_env, raw, expected):
    before = corpus_env.total_received
    resp = corpus_env.exchange(raw)
    assert status_of(resp) == expected, resp
    assert b"\r\nConnection: close\r\n" in resp
    time.sleep(0.02)
    assert corpus_env.total_received == before, "a rejected request reached a replica"


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("smuggled", [
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n",
], ids=["cl-te", "te-te", "cl-cl"])
def test_smuggling_after_a_valid_request(env, smuggled):
    """A valid request, then a smuggling attempt on the same connection: the first is
    answered, the second gets 400, and the replicas saw exactly the first one."""
    first = b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
    with env.connect() as s:
        s.sendall(first + smuggled)
        r1 = read_response(s)
        assert r1.status == 200 and b"/first" in r1.body
        r2 = read_response(s)
        assert r2.status == 400
        assert read_all(s) == b""
    heads = [h for b in env.backends for h, _ in b.requests]
    assert len(heads) == 1 and heads[0].startswith(b"GET /first HTTP/1.1\r\n")
    assert b"/admin" not in b"".join(b.received for b in env.backends)


# --------------------------------------------------------------------------- basics

def test_forwarded_request_is_rebuilt_and_spoofed_headers_never_reach_backend(env):
    raw = (b"POST /echo?q=1 HTTP/1.1\r\nHost: t:8050\r\nX-Forwarded-For: 6.6.6.6\r\n"
           b"X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 6.6.6.6\r\n"
           b"Forwarded: for=6.6.6.6\r\nX-Dashscale-Replica: web.9\r\nX-Dashscale-Anything: 1\r\n"
           b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
           b"TE: trailers\r\nProxy-Connection: keep-alive\r\nVia: 1.0 upstream\r\n"
           b"Content-Length: 5\r\nX-Keep: yes\r\n\r\nhello")
    with env.connect() as s:
        s.sendall(raw)
        r = read_response(s)
    assert r.status == 200
    assert r.header(b"x-dashscale-replica") in (b"web.1", b"web.2")
    assert [n for n, _ in r.headers if n.lower() == b"x-dashscale-replica"] == [b"X-Dashscale-Replica"]
    line, headers = parse_forwarded(r.body.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert line == b"POST /echo?q=1 HTTP/1.1"
    h = {}
    for n, v in headers:
        h.setdefault(n, []).append(v)
    assert h[b"x-forwarded-for"] == [b"127.0.0.1"]
    assert h[b"x-forwarded-host"] == [b"t:8050"]
    assert h[b"x-forwarded-proto"] == [b"http"]
    assert h[b"host"] == [b"t:8050"]
    assert h[b"via"] == [b"1.0 upstream, 1.1 dashscale"]
    assert h[b"content-length"] == [b"5"]
    assert h[b"connection"] == [b"close"]
    assert h[b"x-keep"] == [b"yes"]
    for gone in (b"x-real-ip", b"forwarded", b"x-dashscale-replica", b"x-dashscale-anything",
                 b"x-hop", b"keep-alive", b"te", b"proxy-connection"):
        assert gone not in h, gone
    assert r.body.endswith(b"\r\n\r\nhello")


def test_keep_alive_round_robin_and_one_upstream_connection_per_request(env):
    with env.connect() as s:
        seen = []
        for i in range(4):
            s.sendall(b"GET /n%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
            r = read_response(s)
            assert r.status == 200 and r.body.endswith(b"/n%d" % i)
            assert r.header(b"connection") is None  # kept alive towards the client
            seen.append(r.header(b"x-dashscale-replica"))
    assert seen == [b"web.1", b"web.2", b"web.1", b"web.2"]
    assert [len(b.connections) for b in env.backends] == [2, 2]
    for b in env.backends:
        for head, _ in b.requests:
            assert b"\r\nconnection: close\r\n" in head


def test_pipelined_requests_answered_in_order(env):
    reqs = (b"GET /slow?s=0.3&id=1 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /?id=2 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo?id=3 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /?id=4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            b"GET /?id=5 HTTP/1.1\r\nHost: t\r\n\r\n")  # after close: never processed
    with env.connect() as s:
        s.sendall(reqs)
        bodies = [read_response(s) for _ in range(4)]
        assert read_all(s) == b""
    assert [r.status for r in bodies] == [200] * 4
    assert b"id=1" in bodies[0].body or b"slept" in bodies[0].body or bodies[0].body
    assert bodies[1].body.endswith(b"id=2")
    assert b"POST /echo?id=3" in bodies[2].body and bodies[2].body.endswith(b"abc")
    assert bodies[3].body.endswith(b"id=4") and bodies[3].header(b"connection") == b"close"
    targets = sorted(h.split(b" ")[1] for b in env.backends for h, _ in b.requests)
    assert targets == sorted([b"/slow?s=0.3&id=1", b"/?id=2", b"/echo?id=3", b"/?id=4"])


def test_head_request_and_status_passthrough(env):
    with env.connect() as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s, method=b"HEAD")
        assert r.status == 200 and r.body == b""
        s.sendall(b"GET /status?code=503 HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s)
        assert r.status == 503 and r.body == b"no"
    st = env.pool_stats()
    assert sum(b["status_5xx"] for b in st.values()) == 1
    assert sum(b["served"] for b in st.values()) == 2


# --------------------------------------------------------------------------- bodies

def test_chunked_request_forwarded_with_content_length(env):
    raw = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: dropped\r\n\r\n")
    with env.connect() as s:
        s.sendall(raw)
        r = read_response(s)
    assert r.status == 200
    head, _, body = r.body.partition(b"\r\n\r\n")
    assert body == b"hello world"
    assert b"\r\ncontent-length: 11\r\n" in head
    assert b"transfer-encoding" not in head.lower() and b"x-trailer" not in head.lower()


def test_chunked_and_until_close_responses_rechunked_and_keep_alive(env):
    with env.connect() as s:
        s.sendall(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s)
        assert r.status == 200 and r.body == b"hello world"
        assert r.header(b"transfer-encoding") == b"chunked"
        assert b"X-Trailer" not in r.raw_head
        s.sendall(b"GET /until-close HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s)
        assert r.header(b"transfer-encoding") == b"chunked"
        assert r.body.startswith(b"streamed until close from web.")
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # connection still usable
        assert read_response(s).status == 200


def test_until_close_response_to_http10_client_is_close_delimited(env):
    raw = env.exchange(b"GET /until-close HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower() and b"connection: close" in head.lower()
    assert body.startswith(b"streamed until close from web.")


def test_large_body_both_ways(env):
    payload = bytes(range(256)) * 4096 * 5  # 5 MiB
    with env.connect(timeout=30) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(payload))
        s.sendall(payload)
        r = read_response(s, timeout=30)
        assert r.status == 200 and r.body.endswith(payload)
        s.sendall(b"GET /big?n=8000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s, timeout=30)
        assert r.status == 200 and len(r.body) == 8000000
    got = [body for b in env.backends for _, body in b.requests if body]
    assert got == [payload]


def test_body_cap_is_configurable(env_factory):
    env = env_factory(n=1, settings={"proxy_max_body": "1KiB"})
    ok = env.exchange(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                      b"Content-Length: 1024\r\n\r\n" + b"a" * 1024)
    assert status_of(ok) == 200
    too_big = env.exchange(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n")
    assert status_of(too_big) == 413
    chunked = env.exchange(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"400\r\n" + b"a" * 1024 + b"\r\n1\r\n")
    assert status_of(chunked) == 413
    assert len(env.backends[0].requests) == 1


def test_expect_100_continue(env):
    with env.connect() as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 4\r\n\r\n")
        s.settimeout(5)
        interim = s.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        r = read_response(s)
    assert r.status == 200 and r.body.endswith(b"\r\n\r\ndata")
    assert b"expect" not in r.body.lower()


def test_expect_100_continue_of_a_pipelined_request_waits_its_turn(env):
    with env.connect() as s:
        s.sendall(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: t\r\n\r\n"
                  b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        s.settimeout(5)
        data = b""
        while not data.endswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        # the 100 comes after the whole first response, never interleaved into it
        first = data[:-len(b"HTTP/1.1 100 Continue\r\n\r\n")]
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"/slow?s=0.3")
        assert b"100 Continue" not in first
        s.sendall(b"ok")
        r2 = read_response(s)
        assert r2.status == 200 and r2.body.endswith(b"ok")


def test_interim_upstream_100_is_not_relayed(env):
    r = env.get("/continue-then-ok")
    assert r.status == 200 and r.body == b"ok"


# --------------------------------------------------------------------------- timeouts

def test_slowloris_header_deadline(env_factory):
    env = env_factory(n=1, settings={"proxy_header_timeout": 0.5})
    with env.connect() as s:
        t0 = time.monotonic()
        for piece in (b"GET / HTTP/1.1\r\n", b"Host: t\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
            s.sendall(piece)
            time.sleep(0.2)
        try:
            for _ in range(10):
                s.sendall(b"X-C: 3\r\n")
                time.sleep(0.2)
        except OSError:
            pass
        data = read_all(s)
        elapsed = time.monotonic() - t0
    assert status_of(data) == 408
    assert elapsed < 2.5
    assert env.total_received == 0
    assert env.stats()["timeouts_408"] == 1


def test_slowloris_on_a_kept_alive_connection(env_factory):
    env = env_factory(n=1, settings={"proxy_header_timeout": 0.5, "proxy_keepalive_timeout": 30})
    with env.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s).status == 200
        s.sendall(b"GET / HTTP/1.1\r\n")  # then nothing
        t0 = time.monotonic()
        r = read_response(s)
        assert r.status == 408 and time.monotonic() - t0 < 1.5


def test_body_timeout(env_factory):
    env = env_factory(n=1, settings={"proxy_body_timeout": 0.4})
    with env.connect() as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        data = read_all(s)
    assert status_of(data) == 408
    assert env.total_received == 0


def test_idle_keepalive_and_silent_connections_closed_quietly(env_factory):
    env = env_factory(n=1, settings={"proxy_keepalive_timeout": 0.4, "proxy_header_timeout": 0.4})
    with env.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s).status == 200
        t0 = time.monotonic()
        assert read_all(s) == b""  # closed, no 408 on an idle connection
        assert 0.3 < time.monotonic() - t0 < 2
    with env.connect() as s:  # never sent a byte
        assert read_all(s) == b""
    assert env.stats()["idle_closed"] == 2


def test_upstream_read_timeout_is_504(env_factory):
    env = env_factory(n=1, settings={"proxy_read_timeout": 0.4})
    t0 = time.monotonic()
    r = env.get("/slow?s=3")
    assert r.status == 504 and b"web.1" in r.body
    assert time.monotonic() - t0 < 2
    st = env.pool_stats()["web.1"]
    assert st["errors"] == 1 and st["inflight"] == 0
    assert env.stats()["gateway_timeout"] == 1


@contextlib.contextmanager
def full_backlog_port():
    """A loopback port whose listen backlog is full: new connects hang (SYNs dropped)."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    port = blocker.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            f = socket.socket()
            fillers.append(f)
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        for f in fillers:
            f.close()
        blocker.close()


def test_upstream_connect_timeout_retries_elsewhere(env_factory):
    env = env_factory(n=2, settings={"proxy_connect_timeout": 0.3})
    # web.1 points at a listener whose backlog is full: connects hang (SYNs dropped).
    with full_backlog_port() as port:
        env.lt.call(env.pool.add, "web.1", "127.0.0.1", port)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("this kernel does not drop SYNs on a full backlog")
        except OSError:
            pass
        finally:
            probe.close()
        r = env.get("/")
        assert r.status == 200 and r.header(b"x-dashscale-replica") == b"web.2"
        st = env.pool_stats()
        assert st["web.1"]["connect_failures"] == 1 and not st["web.1"]["in_rotation"]


# --------------------------------------------------------------------------- failures

def test_connect_refused_retries_on_another_replica(env):
    port = env.backends[0].port
    env.lt.run(env.backends[0].stop())
    time.sleep(0.05)
    replicas = [env.get(f"/r{i}").header(b"x-dashscale-replica") for i in range(4)]
    assert replicas == [b"web.2"] * 4
    st = env.pool_stats()
    assert st["web.1"]["health"] == "failed" and st["web.1"]["connect_failures"] == 1
    assert st["web.1"]["inflight"] == 0 and st["web.2"]["served"] == 4
    c = env.stats()
    assert c["connect_retries"] == 1 and c["connect_failures"] == 1
    assert port  # (the port stays closed)


def test_no_retry_once_bytes_reached_a_replica(env_factory):
    env = env_factory(n=2, behaviours={1: "close-after-read"})
    r = env.get("/x")
    assert r.status == 502
    assert b"web.1" in r.body and b"before answering" in r.body
    assert len(env.backends[0].requests) == 1
    assert env.backends[1].connections == []  # never retried
    st = env.pool_stats()
    assert st["web.1"]["errors"] == 1 and st["web.1"]["in_rotation"]  # reached: not a connect failure


def test_reset_after_read_is_502_not_retried(env_factory):
    env = env_factory(n=2, behaviours={1: "reset-after-read"})
    raw = env.exchange(b"POST /cb HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    assert status_of(raw) == 502
    assert env.backends[1].connections == []


def test_replica_dies_before_head_is_502(env):
    r = env.get("/die-before")
    assert r.status == 502 and b"closed the connection before answering" in r.body
    assert env.stats()["bad_gateway"] == 1


def test_replica_dies_mid_response_truncates(env):
    with env.connect() as s:
        s.sendall(b"GET /die-after HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s)
        assert r.status == 200 and not r.complete and r.body == b"0123456789"
    env.wait(lambda: env.proxy.stats()["truncated"] == 1, message="truncated counted")
    assert sum(b["errors"] for b in env.pool_stats().values()) == 1


def test_invalid_upstream_response_is_502(env):
    r = env.get("/invalid")
    assert r.status == 502 and b"invalid response" in r.body


def test_unasked_101_is_502(env):
    assert env.get("/unasked-101").status == 502


def test_503_with_retry_after_when_no_replica(env_factory):
    env = env_factory(n=1, settings={"proxy_retry_after": 3})
    env.lt.call(env.pool.remove, "web.1")
    raw = env.exchange(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(raw) == 503 and b"\r\nRetry-After: 3\r\n" in raw
    assert env.stats()["no_replica"] == 1


def test_503_when_every_replica_refuses(env):
    for b in env.backends:
        env.lt.run(b.stop())
    raw = env.exchange(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(raw) == 503 and b"Retry-After" in raw and b"could not connect" in raw
    assert env.lt.call(lambda: env.pool.rotation) == []


# --------------------------------------------------------------------------- rotation

def test_draining_lets_in_flight_finish_and_sends_new_requests_elsewhere(env):
    result = {}

    def slow():
        result["r"] = env.get("/slow?s=0.8")

    t = threading.Thread(target=slow)
    t.start()
    env.wait(lambda: env.backends[0].active == 1, message="slow request on web.1")
    import asyncio
    drain = asyncio.run_coroutine_threadsafe(env.pool.drain("web.1", 5), env.lt.loop)
    others = [env.get("/").header(b"x-dashscale-replica") for _ in range(3)]
    assert others == [b"web.2"] * 3
    assert drain.result(5) is True
    t.join(5)
    assert result["r"].status == 200 and result["r"].header(b"x-dashscale-replica") == b"web.1"
    st = env.pool_stats()["web.1"]
    assert st["health"] == "draining" and st["inflight"] == 0 and st["served"] == 1


def test_drain_grace_expires(env):
    import asyncio
    t = threading.Thread(target=lambda: env.get("/slow?s=1.5"))
    t.start()
    env.wait(lambda: env.backends[0].active == 1, message="slow request on web.1")
    drain = asyncio.run_coroutine_threadsafe(env.pool.drain("web.1", 0.2), env.lt.loop)
    assert drain.result(5) is False
    t.join(5)


def test_least_outstanding_avoids_busy_replica(env_factory):
    env = env_factory(n=3, policy="least-outstanding")
    threads = [threading.Thread(target=lambda: env.get("/slow?s=1")) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    env.wait(lambda: sum(b.active for b in env.backends) == 2, message="two slow in flight")
    busy = {b.name for b in env.backends if b.active}
    free = ({"web.1", "web.2", "web.3"} - busy).pop()
    for _ in range(5):
        assert env.get("/").header(b"x-dashscale-replica") == free.encode()
    for t in threads:
        t.join(5)


def test_round_robin_does_not_avoid_busy_replica(env):
    t = threading.Thread(target=lambda: env.get("/slow?s=0.6"))
    t.start()
    env.wait(lambda: env.backends[0].active == 1, message="slow request on web.1")
    t0 = time.monotonic()
    r = env.get("/")  # web.2
    r2 = env.get("/")  # web.1 again: answered concurrently by the async backend
    assert {r.header(b"x-dashscale-replica"), r2.header(b"x-dashscale-replica")} == {b"web.1", b"web.2"}
    assert time.monotonic() - t0 < 0.6
    t.join(5)


# --------------------------------------------------------------------------- WebSocket

def test_websocket_tunnel_both_ways(env):
    with env.connect() as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\n"
                  b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  b"early")  # bytes right after the head: delivered after the 101
        r = read_response(s)
        assert r.status == 101
        assert r.header(b"upgrade") == b"websocket" and r.header(b"connection") == b"Upgrade"
        s.settimeout(5)
        got = leftover(s)
        while b"EARLY" not in got:
            got += s.recv(4096)
        assert got.startswith(b"hello-from-web.")
        for msg in (b"ping", b"x" * 200000):
            s.sendall(msg)
            echoed = b""
            while len(echoed) < len(msg):
                echoed += s.recv(65536)
            assert echoed == msg.upper()
        assert env.stats()["open_tunnels"] == 1
    env.wait(lambda: env.proxy.stats()["open_tunnels"] == 0, message="tunnel closed")
    head = [h for b in env.backends for h, _ in b.requests][0]
    assert b"\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" in head
    st = env.stats()
    assert st["upgrades"] == 1
    assert sum(b["inflight"] for b in env.pool_stats().values()) == 0


def test_websocket_closed_by_backend_closes_client(env):
    with env.connect() as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert read_response(s).status == 101
        env.lt.run(env.backends[0].stop())
        env.lt.run(env.backends[1].stop())
        s.settimeout(5)
        data = leftover(s) + read_all(s)
        assert data.startswith(b"hello-from-")


def test_websocket_refused_by_backend_is_a_plain_response(env):
    with env.connect() as s:
        s.sendall(b"GET /ws-refused HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        r = read_response(s)
        assert r.status == 400 and r.body == b"no"
        assert read_all(s) == b""


def test_non_websocket_upgrade_is_stripped(env):
    r = env.get("/echo", headers=b"Connection: Upgrade\r\nUpgrade: h2c\r\n")
    assert r.status == 200 and b"upgrade" not in r.body.lower().split(b"\r\n\r\n")[0].replace(b"connection: close", b"")


# --------------------------------------------------------------------------- clients

def test_client_disconnect_mid_request_frees_the_slot(env):
    s = env.connect()
    s.sendall(b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    env.wait(lambda: env.backends[0].active == 1, message="request reached web.1")
    assert env.pool_stats()["web.1"]["inflight"] == 1
    s.close()
    env.wait(lambda: env.pool.backends["web.1"].inflight == 0, timeout=1, message="slot freed")
    st = env.pool_stats()["web.1"]
    assert st["aborted"] == 1 and st["errors"] == 0
    assert env.stats()["client_aborts"] == 1


def test_client_disconnect_while_connecting_frees_the_slot(env_factory):
    env = env_factory(n=1, settings={"proxy_connect_timeout": 5})
    with full_backlog_port() as port:
        env.lt.call(env.pool.add, "web.1", "127.0.0.1", port)
        s = env.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        env.wait(lambda: env.pool.backends["web.1"].inflight == 1, message="connecting")
        s.close()
        env.wait(lambda: env.pool.backends["web.1"].inflight == 0, timeout=1, message="slot freed")


def test_slow_reader_is_cut_after_send_timeout(env_factory):
    env = env_factory(n=1, settings={"proxy_send_timeout": 0.5})
    s = env.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /big?n=50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
    env.wait(lambda: env.proxy.stats()["client_too_slow"] == 1, timeout=5, message="send timeout")
    env.wait(lambda: env.pool.backends["web.1"].inflight == 0, message="slot freed")
    s.close()


def test_max_connections(env_factory):
    env = env_factory(n=1, settings={"proxy_max_connections": 3})
    held = [env.connect() for _ in range(3)]
    try:
        env.wait(lambda: len(env.proxy.connections) == 3, message="3 connections")
        raw = env.exchange(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(raw) == 503 and b"too many connections" in raw
        held.pop().close()
        env.wait(lambda: len(env.proxy.connections) == 2, message="one closed")
        assert env.get("/").status == 200
        assert env.stats()["connections_refused"] == 1
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------- health

def test_active_check_evicts_a_dead_replica_without_any_request(env_factory):
    env = env_factory(n=2, health=True)
    env.lt.run(env.backends[0].stop())
    env.wait(lambda: not env.pool.backends["web.1"].in_rotation, timeout=2, message="evicted")
    assert env.pool.backends["web.1"].failed
    # standalone: the checker re-probes with back-off and puts it back once it answers
    port = env.backends[0].port
    env.lt.run(env.backends[0].start(port))
    env.wait(lambda: env.pool.backends["web.1"].in_rotation, timeout=5, message="back in rotation")
    assert env.get("/").status == 200


def test_passive_failure_hands_replica_to_owner(env_factory):
    env = env_factory(n=2, health=True)
    calls = []
    env.lt.call(setattr, env.pool, "on_connect_failure", calls.append)
    env.lt.run(env.backends[0].stop())
    assert env.get("/").header(b"x-dashscale-replica") == b"web.2"
    assert calls == ["web.1"]
    port = env.backends[0].port
    env.lt.run(env.backends[0].start(port))
    time.sleep(0.5)  # with an owner, the proxy never puts it back itself
    assert not env.pool.backends["web.1"].in_rotation


def test_busy_sync_replica_is_not_evicted(env_factory):
    """A sync worker busy for 1.5 s still completes TCP handshakes (listen backlog):
    the active check must keep it in rotation."""
    env = env_factory(n=1, health=True)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    def sync_worker():  # one request at a time, like gunicorn's sync worker
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(65536)
                if data.startswith(b"GET /slow"):
                    time.sleep(1.5)
                if data:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threading.Thread(target=sync_worker, daemon=True).start()
    env.lt.call(env.pool.remove, "web.1")
    env.lt.call(env.pool.add, "sync.1", "127.0.0.1", port)
    try:
        rounds0 = env.proxy.health.rounds
        r = env.get("/slow")
        assert r.status == 200
        assert env.proxy.health.rounds - rounds0 >= 5  # probed several times meanwhile
        assert env.pool.backends["sync.1"].in_rotation
    finally:
        srv.close()


def test_health_reprobe_with_backoff_puts_replica_back(env_factory):
    """The runner's passive path: connect failure → Health re-probes over HTTP with
    back-off → pool.add, and not while the replica is being removed."""
    from dashscale_local.health import Health, HealthDriver

    env = env_factory(n=2)
    port = env.backends[0].port
    changes = []
    health = Health(env.pool, interval=0, on_change=lambda *c: changes.append(c))
    driver = HealthDriver(health, http_timeout=2.0)

    async def setup():
        for i, b in enumerate(env.backends, 1):
            health.spawned(b.name, 1000 + i, b.port)
        driver.start()

    env.lt.run(setup())
    env.wait(lambda: health.in_rotation() == ["web.1", "web.2"], timeout=5, message="ready")
    env.lt.run(env.backends[0].stop())
    assert env.get("/").header(b"x-dashscale-replica") == b"web.2"
    assert ("web.1", 1001, False) in changes
    assert not env.pool.backends["web.1"].in_rotation
    env.lt.run(env.backends[0].start(port))
    env.wait(lambda: env.pool.backends["web.1"].in_rotation, timeout=5, message="re-added")
    assert changes[-1] == ("web.1", 1001, True)
    # a replica being removed (draining) is not put back by a late probe
    env.lt.run(env.backends[0].stop())
    env.get("/")
    env.get("/")
    assert not env.pool.backends["web.1"].in_rotation
    env.lt.call(health.removing, "web.1")
    env.lt.run(env.backends[0].start(port))
    with pytest.raises(AssertionError, match="timed out"):
        env.wait(lambda: env.pool.backends["web.1"].in_rotation, timeout=2.5, message="late")
    env.lt.call(driver.stop)


# --------------------------------------------------------------------------- observability

def test_counters_and_pool_stats(env):
    for _ in range(4):
        assert env.get("/").status == 200
    env.exchange(b"GET / HTTP/1.1\r\n\r\n")  # 400: no Host
    env.get("/die-before")
    c = env.stats()
    assert c["requests"] == 5 and c["rejected"] == 1 and c["bad_gateway"] == 1
    assert c["connections"] == 6
    env.wait(lambda: env.proxy.stats()["open_connections"] == 0, message="all closed")
    st = env.pool_stats()
    assert sum(b["served"] for b in st.values()) == 4
    assert sum(b["errors"] for b in st.values()) == 1
    for b in st.values():
        assert b["inflight"] == 0 and b["in_rotation"] and b["health"] == "ok"
        assert sum(b["latency_counts"]) == b["served"] + b["errors"]
        assert len(b["latency_counts"]) == len(b["latency_buckets"]) + 1
        json.dumps(b)


def test_local_handler_serves_dashscale_paths(env_factory):
    async def handler(req, body):
        return 200, [(b"content-type", b"application/json")], b'{"local": true}'

    env = env_factory(n=1, local_handler=handler)
    r = env.get("/_dashscale/api/status")
    assert r.status == 200 and r.body == b'{"local": true}'
    assert env.total_received == 0
    assert env.get("/").status == 200
    assert env.stats()["local_requests"] == 1


def test_active_check_backs_off_while_idle_only_with_an_owner():
    """Under the runner (an owner that sees exits itself) the period doubles after each
    round without a request, up to proxy_health_idle_interval; a request brings it back
    to the base period. A standalone proxy keeps the base period."""
    from dashscale_local.balancer import Pool
    from dashscale_local.proxy import HealthChecker, ProxySettings

    pool = Pool()
    pool.add("web.1", "127.0.0.1", 1)
    settings = ProxySettings({"proxy_health_interval": 2, "proxy_health_idle_interval": 10})
    standalone = HealthChecker(pool, settings)
    assert [standalone.next_interval() for _ in range(3)] == [2, 2, 2]
    pool.on_connect_failure = lambda name: None
    owned = HealthChecker(pool, settings)

    def rounds(n):
        out = []
        for _ in range(n):
            owned.interval = owned.next_interval()
            out.append(owned.interval)
        return out
    assert rounds(5) == [2, 4, 8, 10, 10]   # the first round counts as busy (no baseline)
    pool.backends["web.1"].routed += 1      # a request came
    assert rounds(2) == [2, 4]
