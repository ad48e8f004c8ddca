"""The proxy end to end: real supervisord, real sync gunicorn replicas (tests/apps/echo_app)."""
import json
import os
import signal
import socket
import threading
import time
import urllib.error

import pytest

from dashscale_local.testing import wait_for

pytestmark = pytest.mark.slow


def test_spoofed_headers_and_per_replica_stats(dashscale):
    run = dashscale(formation="web=2")
    status, headers, body = run.get("/echo", data=b"payload", method="POST", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Dashscale-Replica": "web.9",
        "X-Forwarded-Host": "evil", "Content-Type": "text/plain"})
    assert status == 200
    seen = json.loads(body)
    assert seen["body"] == "payload"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == f"127.0.0.1:{run.port}"
    assert "x-dashscale-replica" not in seen["headers"]
    assert headers["X-Dashscale-Replica"] == seen["replica"]
    for _ in range(3):
        run.get("/")
    st = run.status()
    served = {r["name"]: r["proxy"]["served"] for r in st["replicas"]}
    assert sum(served.values()) == 4 and all(served.values())
    for r in st["replicas"]:
        assert r["proxy"]["inflight"] == 0 and r["proxy"]["health"] == "ok"
        assert sum(r["proxy"]["latency_counts"]) == r["proxy"]["served"]
    assert st["proxy_stats"]["requests"] >= 4


def test_worker_dying_mid_request_is_502_then_recovers(dashscale):
    run = dashscale(formation="web=2")
    with pytest.raises(urllib.error.HTTPError) as err:
        run.get("/crash")
    assert err.value.code == 502
    assert b"closed the connection" in err.value.read()
    # gunicorn's master respawns the worker; the replica stays in rotation
    wait_for(lambda: all(run.get("/")[0] == 200 for _ in range(4)), 30, message="serving again")


def test_killed_replica_leaves_rotation_and_requests_keep_succeeding(dashscale):
    run = dashscale(formation="web=2", args=["--on-limit", "stop"])
    pid = run.replica("web.1")["pid"]
    os.killpg(pid, signal.SIGKILL)
    # A request racing the kill may have reached the dying replica (→ 502, never resent);
    # once its socket is gone, connects are refused and retried on web.2.
    time.sleep(0.3)
    t0 = time.monotonic()
    failures = 0
    while time.monotonic() - t0 < 1.5:
        try:
            run.get("/")
        except urllib.error.HTTPError:
            failures += 1
    assert failures == 0
    wait_for(lambda: run.replica("web.1")["pid"] not in (None, pid), 30, message="restarted")
    wait_for(lambda: run.replica("web.1")["proxy"]["in_rotation"], 30, message="back in rotation")


def test_busy_sync_replica_is_not_evicted_by_active_checks(dashscale, app_dir):
    (app_dir / "dashscale.ini").write_text("[dashscale]\nproxy_health_interval = 0.2\n")
    run = dashscale(formation="web=1")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", run.get("/slow?s=2.5")))
    t.start()
    time.sleep(0.3)
    for _ in range(10):  # probed ~10 times while the only worker is busy
        assert run.replica("web.1")["proxy"]["in_rotation"]
        time.sleep(0.2)
    t.join(10)
    assert result["r"][0] == 200


def test_least_outstanding_sends_fast_requests_past_a_slow_callback(dashscale):
    run = dashscale(formation="web=2", args=["--balance", "least-outstanding"])
    assert run.status()["proxy"]["balance"] == "least-outstanding"
    t = threading.Thread(target=lambda: run.get("/slow?s=2"))
    t.start()
    wait_for(lambda: sum(r["proxy"]["inflight"] for r in run.status()["replicas"]) == 1, 5,
             message="slow request in flight")
    busy = [r["name"] for r in run.status()["replicas"] if r["proxy"]["inflight"]][0]
    for _ in range(4):
        t0 = time.monotonic()
        status, headers, _ = run.get("/")
        assert status == 200 and headers["X-Dashscale-Replica"] != busy
        assert time.monotonic() - t0 < 1.0
    t.join(10)


def test_websocket_upgrade_reaches_gunicorn(dashscale):
    """A sync gunicorn app does not speak WebSocket: the upgrade request is forwarded
    (Connection: Upgrade) and the app's plain answer comes back as an ordinary response."""
    run = dashscale(formation="web=1")
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = json.loads(body)
    assert seen["headers"]["upgrade"] == "websocket"
    assert seen["headers"]["connection"].lower() == "upgrade"
