"""CHECKS parsing and verdicts (no processes); run_checks against a tiny real server."""
import asyncio

import pytest

from dashscale_local.checks import Check, load_checks, parse_checks, run_checks, verdict
from dashscale_local.errors import UsageError


def test_settings_and_checks_parse():
    c = parse_checks("# zero downtime\nWAIT=0.5\nTIMEOUT=3\nATTEMPTS=2\n\n"
                     "/  My App\n/health   ok  # the probe\n/_dash-layout\n", "CHECKS")
    assert (c.wait, c.timeout, c.attempts) == (0.5, 3.0, 2)
    assert c.checks == (Check("/", "My App", 6), Check("/health", "ok", 7),
                        Check("/_dash-layout", "", 8))


def test_dokku_defaults_when_unset():
    c = parse_checks("/ hello\n")
    assert (c.wait, c.timeout, c.attempts) == (5.0, 30.0, 5)


@pytest.mark.parametrize("text, line, words", [
    ("WAIT=soon\n/\n", 1, "WAIT='soon'"),
    ("/\nATTEMPTS=0\n", 2, "ATTEMPTS='0'"),
    ("TIMEOUT=0\n", 1, "TIMEOUT='0'"),
    ("WAIT=-1\n", 1, "WAIT='-1'"),
    ("RETRIES=3\n", 1, "unknown setting RETRIES"),
    ("health ok\n", 1, "'health'"),
    ("/ok\nhttp://x/ y\n", 2, "'http://x/'"),
])
def test_invalid_lines_name_file_and_line(text, line, words):
    with pytest.raises(UsageError) as e:
        parse_checks(text, "/app/CHECKS")
    assert str(e.value).startswith(f"/app/CHECKS:{line}: ")
    assert words in str(e.value)


def test_load_checks_absent_is_none(tmp_path):
    assert load_checks(str(tmp_path)) is None
    (tmp_path / "CHECKS").write_text("WAIT=1\n/ x\n")
    assert load_checks(str(tmp_path)).checks[0].expected == "x"


def test_verdicts():
    c = Check("/health", "ok", 3)
    assert verdict(c, 200, "all ok") is None
    assert verdict(Check("/", "", 1), 302, "") is None
    assert "HTTP 503" in verdict(c, 503, "db down") and "db down" in verdict(c, 503, "db down")
    assert "'ok' not in the response" in verdict(c, 200, "starting")
    assert "no answer" in verdict(c, None, "ConnectionRefusedError")


async def _serve(responses):
    """A real HTTP server on loopback answering each request with the next response."""
    queue = list(responses)

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_run_checks_retries_until_it_passes():
    async def main():
        server, port = await _serve([(503, "booting"), (200, "ready: ok")])
        async with server:
            checks = parse_checks("WAIT=0\nATTEMPTS=3\nTIMEOUT=2\n/health ok\n", "CHECKS")
            return await run_checks(checks, port)
    assert asyncio.run(main()) is None


def test_run_checks_reports_the_last_failure():
    async def main():
        server, port = await _serve([(200, "hello")])
        async with server:
            checks = parse_checks("WAIT=0\nATTEMPTS=2\nTIMEOUT=2\n/ goodbye\n", "CHECKS")
            return await run_checks(checks, port)
    failure = asyncio.run(main())
    assert failure.startswith("CHECKS:4: GET /: 'goodbye' not in the response")
    assert "(got 'hello')" in failure and "attempt 2/2" in failure
