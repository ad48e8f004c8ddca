"""Property-based tests of dashscale_local.http11 (hypothesis).

(a) arbitrary / mutated input never raises anything but ProtocolError, and the verdict
    does not depend on how the bytes are split across feed() calls;
(b) whatever the parser accepts is forwarded with the same method, target, end-to-end
    header fields and body: re-parsing build_upstream_request(...) + body with a fresh
    parser gives back the same request, so forwarded framing never differs from what
    was parsed.
"""

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dashscale_local.http11 import (
    END,
    LAST_CHUNK,
    ProtocolError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_upstream_request,
    encode_chunk,
)

# Every test runs on the C fast path and on pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("http11_path")

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
VCHAR = bytes(range(0x21, 0x7F)) + b"\x80\xa0\xe9\xff"

# header names the generator must not produce by chance (they change framing/semantics)
SPECIAL = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect",
           "te", "trailer", "keep-alive", "proxy-connection", "via", "forwarded", "x-real-ip"}

HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
       b"transfer-encoding", b"upgrade", b"content-length", b"expect", b"host", b"via",
       b"forwarded", b"x-real-ip"}


def outcome(parser_factory, pieces):
    """Merged events of feeding ``pieces``, or ('error', status)."""
    p = parser_factory()
    events = []
    try:
        for piece in pieces:
            events += p.feed(piece)
    except ProtocolError as e:
        assert e.status in (400, 413, 414, 417, 431, 501, 505), e
        return ("error", e.status)
    out = []
    for ev in events:
        assert ev.__class__ in (Request, bytes) or ev is END
        if isinstance(ev, bytes):
            assert ev  # never empty chunks
            if out and isinstance(out[-1], bytes):
                out[-1] += ev
                continue
        out.append(ev)
    return out


def split_at(raw, cuts):
    cuts = sorted({c % (len(raw) + 1) for c in cuts})
    pieces, last = [], 0
    for c in cuts:
        pieces.append(raw[last:c])
        last = c
    pieces.append(raw[last:])
    return pieces


# ---------------------------------------------------------------- valid request strategy

header_name = st.text(TCHAR, min_size=1, max_size=12).filter(lambda s: s.lower() not in SPECIAL)
header_value = st.builds(
    lambda core, lead, trail: lead + core + trail,
    st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=20).map(
            lambda b: bytes(VCHAR[x % len(VCHAR)] for x in b)),
        st.lists(st.binary(min_size=1, max_size=6).map(
            lambda b: bytes(VCHAR[x % len(VCHAR)] for x in b)), min_size=2, max_size=4)
        .map(lambda parts: b" ".join(parts)),
    ),
    st.sampled_from([b"", b" ", b"\t", b"  "]),
    st.sampled_from([b"", b" ", b"\t "]),
)
rewritten_header = st.sampled_from([
    (b"X-Forwarded-For", b"6.6.6.6"), (b"X-Forwarded-Proto", b"https"),
    (b"X-Forwarded-Host", b"evil"), (b"X-Dashscale-Replica", b"web.9"),
    (b"Forwarded", b"for=1.1.1.1"), (b"X-Real-IP", b"6.6.6.6"), (b"Via", b"1.0 other"),
    (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Trailer", b"X-T"),
    (b"Proxy-Connection", b"keep-alive"),
])


@st.composite
def valid_requests(draw):
    """(raw bytes, expected body) of a well-formed request."""
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD",
                                   b"OPTIONS"]))
    path = "/" + draw(st.text(PCHAR, max_size=30))
    if draw(st.booleans()):
        path += "?" + draw(st.text(PCHAR + "?", max_size=30))
    target = path.encode()
    headers = []
    if version == b"1.1" or draw(st.booleans()):
        host = draw(st.sampled_from([b"example.com", b"127.0.0.1:8050", b"[::1]:80", b"a-b.c"]))
        headers.append((draw(st.sampled_from([b"Host", b"host", b"HOST"])), host))
    for _ in range(draw(st.integers(0, 8))):
        headers.append((draw(header_name).encode(), draw(header_value)))
    for _ in range(draw(st.integers(0, 3))):
        headers.append(draw(rewritten_header))
    # Connection tokens naming some of the random headers
    conn = []
    if draw(st.booleans()):
        conn.append(draw(st.sampled_from([b"keep-alive", b"close", b"Keep-Alive"])))
    named = [n for n, _ in headers if n.lower() not in {b"host"}]
    if named and draw(st.booleans()):
        conn.append(draw(st.sampled_from(named)))
    if conn:
        headers.append((b"Connection", b", ".join(conn)))
    if version == b"1.1" and draw(st.integers(0, 9)) == 0:
        headers.append((b"Expect", b"100-continue"))
    draw(st.randoms()).shuffle(headers)

    framing = draw(st.sampled_from(["none", "cl", "chunked"] if version == b"1.1"
                                   else ["none", "cl"]))
    body = draw(st.binary(max_size=200)) if framing != "none" else b""
    if framing == "cl":
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        payload = b""
        rest = body
        while rest:
            n = draw(st.integers(1, len(rest)))
            ext = draw(st.sampled_from([b"", b";a", b";a=b", b';q="x y"', b";a=1;b"]))
            payload += b"%x%s\r\n%s\r\n" % (n, ext, rest[:n])
            rest = rest[n:]
        payload += b"0\r\n"
        for _ in range(draw(st.integers(0, 2))):
            payload += draw(header_name).encode() + b": " + draw(header_value).strip() + b"\r\n"
        payload += b"\r\n"
    else:
        payload = b""
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    head += b"".join(n + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + v + b"\r\n"
                     for n, v in headers)
    return head + b"\r\n" + payload, body


def end_to_end(req, conn=None):
    """The header fields a proxy must forward unchanged (lower-case name, value); ``conn``:
    the Connection tokens that make a field hop-by-hop (default: ``req``'s own)."""
    conn = req.connection if conn is None else conn

    def dropped(n):
        return (n in HOP or n.startswith(b"x-forwarded-") or n.startswith(b"x-dashscale-")
                or (n in conn and n not in (b"host", b"content-length")))

    # X_Forwarded_For, Keep_Alive...: a CGI-style server would read them as the dashed
    # field, so a name with "_" is dropped when its dashed form is.
    return [(n, v) for n, v in req.headers
            if not dropped(n) and not dropped(n.replace(b"_", b"-"))]


# ------------------------------------------------------------------------- properties


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_only_raise_protocol_error(data, cuts):
    whole = outcome(RequestParser, [data])
    assert outcome(RequestParser, split_at(data, cuts)) == whole


@FUZZ
@given(valid_requests(), st.data())
def test_mutated_requests_only_raise_protocol_error(req_body, data):
    raw, _ = req_body
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        byte = data.draw(st.sampled_from(b"\r\n\x00 \t:,;\"0aZ\x7f\xff-/#?"))
        if op == "insert":
            raw.insert(i, byte)
        elif op == "delete" and raw:
            del raw[i]
        elif raw:
            raw[i] = byte
    raw = bytes(raw)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    whole = outcome(RequestParser, [raw])
    assert outcome(RequestParser, split_at(raw, cuts)) == whole
    # pipelined twice: the first verdict never depends on what follows
    twice = outcome(RequestParser, [raw + raw])
    if isinstance(whole, list) and whole and whole[-1] is END and whole[0].keep_alive \
            and not whole[0].upgrade:
        assert twice[: len(whole)] == whole or twice[0] == "error"


@FUZZ
@given(valid_requests(), st.lists(st.integers(0, 2000), max_size=6))
def test_valid_requests_accepted_and_split_invariant(req_body, cuts):
    raw, body = req_body
    whole = outcome(RequestParser, [raw])
    assert isinstance(whole, list), (raw, whole)
    assert whole[0].__class__ is Request and whole[-1] is END
    assert b"".join(e for e in whole if isinstance(e, bytes)) == body
    assert outcome(RequestParser, split_at(raw, cuts)) == whole


@FUZZ
@given(valid_requests(), st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]),
       st.booleans(), st.booleans())
# found by CI: an underscored name whose dashed form is dropped is dropped too
@example((b"GET / HTTP/1.1\r\nHost: example.com\r\n0: \r\nKEEP_ALIVE: \r\n\r\n", b""),
         "127.0.0.1", False, False)
@example((b"GET / HTTP/1.0\r\nCLOSE: \r\n\r\n", b""), "127.0.0.1", False, False)
def test_forwarded_request_reparses_identically(req_body, client_ip, keep_alive, rechunk):
    raw, body = req_body
    events = RequestParser().feed(raw)
    req = events[0]
    assert events[-1] is END
    parsed_body = b"".join(e for e in events if isinstance(e, bytes))
    assert parsed_body == body

    if req.chunked and rechunk:
        head = build_upstream_request(req, client_ip, keep_alive=keep_alive)
        mid = len(body) // 2
        fwd_bytes = head + encode_chunk(body[:mid]) + encode_chunk(body[mid:]) + LAST_CHUNK
    else:
        head = build_upstream_request(req, client_ip, keep_alive=keep_alive,
                                      body_length=len(body) if req.chunked else None)
        fwd_bytes = head + body
    fwd_events = RequestParser().feed(fwd_bytes)
    fwd = fwd_events[0]
    assert fwd.__class__ is Request and fwd_events[-1] is END
    # exactly one message: the forwarded framing ends where the body ends
    assert sum(1 for e in fwd_events if e is END) == 1
    assert b"".join(e for e in fwd_events if isinstance(e, bytes)) == body

    assert fwd.method == req.method and fwd.target == req.target
    assert fwd.http_version == "1.1"
    assert fwd.host == (req.host if req.host is not None else b"localhost")
    # judged by the client's Connection, not the proxy's own ``Connection: close``
    # (a client field named ``close`` is passed on as it is)
    assert end_to_end(fwd, req.connection) == end_to_end(req)
    names = [n for n, _ in fwd.headers]
    assert names.count(b"x-forwarded-for") == 1 and fwd.get(b"x-forwarded-for") == client_ip.encode()
    assert names.count(b"x-forwarded-proto") == 1
    assert names.count(b"via") == 1 and fwd.get(b"via").endswith(b"1.1 dashscale")
    assert not any(n.startswith(b"x-dashscale-") for n in names)
    assert fwd.keep_alive == keep_alive
    if req.chunked and rechunk:
        assert fwd.chunked and fwd.content_length is None
    elif body or req.content_length == 0:
        assert not fwd.chunked and fwd.content_length == len(body)
    else:
        assert not fwd.has_body


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([b"GET", b"HEAD", b"POST"]),
       st.lists(st.integers(0, 300), max_size=4), st.booleans())
def test_response_parser_only_raises_protocol_error(data, method, cuts, eof):
    for prefix in (b"", b"HTTP/1.1 200 OK\r\n"):
        rp = ResponseParser(method)
        try:
            for piece in split_at(prefix + data, cuts):
                for ev in rp.feed(piece):
                    assert isinstance(ev, (Response, bytes)) or ev is END
            if eof:
                rp.feed_eof()
        except ProtocolError as e:
            assert e.status == 502
