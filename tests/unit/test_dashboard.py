"""The Scale tab at /_dashscale/: which requests may change the formation, and the memory
history (the API through the real proxy and the page in Chromium: tests/e2e/test_dashboard.py)."""
import pytest

from dashscale_local import dashboard

GOOD = {"Content-Type": "application/json", "X-Dashscale-Request": "1"}


# -- unit: which requests may change the formation --------------------------------------
class FakeRequest:
    def __init__(self, headers, method=b"POST", target=b"/_dashscale/api/scale"):
        self.method, self.target = method, target
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.host = dict(self.headers).get(b"host")


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:8050", True), ("localhost:8050", True), ("[::1]:8050", True),
    ("192.168.1.20:8050", True), ("LOCALHOST", True), ("myhost.lan:8050", False),
    ("evil.example:8050", False), ("127.0.0.1.evil.example", False), ("", False),
])
def test_host_allowed(host, ok):
    assert dashboard.host_allowed(host.encode(), "127.0.0.1") is ok


def test_host_allowed_configured_name():
    assert dashboard.host_allowed(b"myhost.lan:8050", "myhost.lan")


@pytest.mark.parametrize("headers,status", [
    ({"Host": "127.0.0.1:8050", "Content-Type": "application/json"}, 403),
    ({"Host": "127.0.0.1:8050", "X-Dashscale-Request": "1"}, 415),
    ({"Host": "127.0.0.1:8050", "X-Dashscale-Request": "1", "Content-Type": "text/plain"}, 415),
    ({"Host": "127.0.0.1:8050", **GOOD, "Origin": "http://evil.example"}, 403),
    ({"Host": "127.0.0.1:8050", **GOOD, "Origin": "null"}, 403),
    ({"Host": "127.0.0.1:8050", **GOOD, "Origin": "http://127.0.0.1:9999"}, 403),
    ({"Host": "127.0.0.1:8050", **GOOD, "Sec-Fetch-Site": "cross-site"}, 403),
    ({"Host": "127.0.0.1:8050", **GOOD, "Sec-Fetch-Site": "same-site"}, 403),
    ({"Host": "127.0.0.1:8050", **GOOD}, None),
    ({"Host": "127.0.0.1:8050", **GOOD, "Origin": "http://127.0.0.1:8050",
      "Sec-Fetch-Site": "same-origin"}, None),
    ({"Host": "127.0.0.1:8050", "X-Dashscale-Request": "1",
      "Content-Type": "application/json; charset=utf-8"}, None),
])
def test_check_post(headers, status):
    refused = dashboard.check_post(FakeRequest(headers))
    assert (refused[0] if refused else None) == status


@pytest.mark.parametrize("host,headers,refused", [
    ("127.0.0.1", {}, False),                                   # loopback: as before
    ("::1", {}, False),
    ("0.0.0.0", {}, True),
    ("0.0.0.0", {"X-Dashscale-Token": "s3cret"}, False),
    ("0.0.0.0", {"X-Dashscale-Token": "s3cre"}, True),
    ("0.0.0.0", {"Cookie": "a=1; dashscale_token=s3cret"}, False),
    ("0.0.0.0", {"Cookie": "dashscale_token=s3cret2"}, True),
    ("192.168.1.5", {"Cookie": "dashscale_token="}, True),
])
def test_check_token(host, headers, refused):
    class Api:
        token = "s3cret"

        class runner:
            pass
    Api.runner.host = host
    result = dashboard.check_token(Api, FakeRequest(headers))
    assert (result is not None) is refused
    assert result is None or result[0] == 403


def test_memory_history_ring_buffer():
    class R:
        memory_bytes = 5

    class Runner:
        replicas = {"web.1": R()}

    h = dashboard.MemoryHistory(Runner(), keep=3)
    for t in range(5):
        h.sample(now=100.0 + t)
    assert [s[0] for s in h.since(0)] == [102.0, 103.0, 104.0]
    assert h.since(103.0) == [[104.0, {"web.1": 5}]]
