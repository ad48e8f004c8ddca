"""Micro-benchmark of the proxy's sans-IO HTTP layer: requests parsed + rebuilt per second.

Run: python benchmarks/bench_http11.py  [seconds-per-case, default 2.0]

Each case runs twice: with http11's C fast path (what the proxy uses) and in pure Python
(the anchor: the same code with the fast path off), and prints the ratio.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dashscale_local import http11  # noqa: E402
from dashscale_local.http11 import (  # noqa: E402
    Request,
    Response,
    RequestParser,
    ResponseParser,
    build_client_response_head,
    build_upstream_request,
)

BROWSER_GET = (
    b"GET /_dash-layout HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8050\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"\r\n'
    b"Accept: application/json\r\n"
    b"sec-ch-ua-mobile: ?0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b'sec-ch-ua-platform: "Linux"\r\n'
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: cors\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Referer: http://127.0.0.1:8050/\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: _ga=GA1.1.123456789.1700000000; session=eyJhbGciOiJIUzI1NiJ9.abc.def\r\n"
    b"\r\n"
)

_BODY = (
    b'{"output":"..graph.figure...text.children..","outputs":[{"id":"graph","property":'
    b'"figure"},{"id":"text","property":"children"}],"inputs":[{"id":"dropdown","property":'
    b'"value","value":"NYC"}],"changedPropIds":["dropdown.value"],"state":[]}'
)
DASH_POST = (
    b"POST /_dash-update-component HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8050\r\n"
    b"Connection: keep-alive\r\n"
    b"Content-Length: %d\r\n"
    b'sec-ch-ua: "Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"\r\n'
    b"sec-ch-ua-platform: \"Linux\"\r\n"
    b"sec-ch-ua-mobile: ?0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Content-Type: application/json\r\n"
    b"Accept: application/json\r\n"
    b"X-CSRFToken: undefined\r\n"
    b"Origin: http://127.0.0.1:8050\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: cors\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Referer: http://127.0.0.1:8050/\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"\r\n" % len(_BODY)
) + _BODY

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: gunicorn\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Connection: close\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 52\r\n"
    b"\r\n" + b'{"multi":true,"response":{"text":{"children":"NYC"}}}'[:52]
)


def _rate(step, seconds: float, rounds: int = 5) -> float:
    """Best rate over ``rounds`` runs (CPU time, so that other load on the machine
    does not count against the code under test)."""
    best = 0.0
    for _ in range(rounds):
        n = 0
        t0 = time.process_time()
        deadline = time.perf_counter() + seconds / rounds
        while True:
            for _ in range(500):
                step()
            n += 500
            if time.perf_counter() >= deadline:
                break
        best = max(best, n / max(time.process_time() - t0, 1e-9))
    return best


def parse_and_rebuild(raw: bytes, seconds: float) -> float:
    parser = RequestParser()  # one keep-alive connection carrying every request
    feed = parser.feed

    def step():
        for ev in feed(raw):
            if ev.__class__ is Request:
                build_upstream_request(ev, "127.0.0.1")

    return _rate(step, seconds)


def full_exchange(raw: bytes, seconds: float) -> float:
    """Request parse + rebuild + the upstream response turned into the client's bytes, as
    the proxy does it (one C call for a whole plain response when the fast path is on)."""
    parser = RequestParser()
    extra = ((b"X-Dashscale-Replica", b"web.1"),)
    line = b"X-Dashscale-Replica: web.1\r\n"

    def step():
        for ev in parser.feed(raw):
            if ev.__class__ is Request:
                req = ev
                build_upstream_request(req, "127.0.0.1")
        if http11.client_response(RESPONSE, req, line, 65536):
            return
        rp = ResponseParser(req.method)
        for ev in rp.feed(RESPONSE):
            if ev.__class__ is Response:
                build_client_response_head(ev, keep_alive=req.keep_alive, extra_headers=extra)

    return _rate(step, seconds)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    fast = http11.accel.fast
    print("best of 5 runs, per CPU-second of this process; C = with http11's C fast path, "
          "Python = without (the anchor)")
    if fast is None:
        print("(the C fast path is not built: only the Python column is real)")
    cases = []
    for name, raw in (("browser GET", BROWSER_GET), ("Dash callback POST", DASH_POST)):
        cases.append((f"{name} ({len(raw)} B) parse+rebuild", parse_and_rebuild, raw))
    for name, raw in (("browser GET", BROWSER_GET), ("Dash callback POST", DASH_POST)):
        cases.append((f"{name} full exchange", full_exchange, raw))
    print(f"{'case':44s} {'C req/s':>10s} {'Python req/s':>13s} {'C µs':>6s} {'Py µs':>6s} "
          f"{'ratio':>6s}")
    for label, fn, raw in cases:
        rates = []
        for accel in (fast, None):
            http11.accel.fast = accel
            rates.append(fn(raw, seconds))
        http11.accel.fast = fast
        c, py = rates
        print(f"{label:44s} {c:10,.0f} {py:13,.0f} {1e6 / c:6.2f} {1e6 / py:6.2f} "
              f"{c / py:5.1f}x")


if __name__ == "__main__":
    main()
