"""End to end: real supervisord, real gunicorn replicas, real HTTP through the proxy."""
import json
import os
import signal
import socket
import sys
import urllib.error

import psutil
import pytest

from dashscale_local.cli import _memory_line
from dashscale_local.sizes import format_size
from dashscale_local.testing import Run, processes_with_marker, wait_for

pytestmark = pytest.mark.slow


def test_three_replicas_serve_round_robin(dashscale):
    run = dashscale(formation="web=3")
    seen = []
    for _ in range(6):
        status, headers, body = run.get("/")
        assert status == 200
        seen.append(headers["X-Dashscale-Replica"])
        assert body.decode().startswith(headers["X-Dashscale-Replica"] + " ")
    assert set(seen) == {"web.1", "web.2", "web.3"}
    assert seen[:3] == seen[3:]  # strict rotation


def test_replicas_bind_loopback_on_their_ports(dashscale):
    run = dashscale(formation="web=2")
    st = run.status()
    ports = [r["port"] for r in st["replicas"]]
    assert ports == [run.base_port, run.base_port + 1]
    for r in st["replicas"]:
        conns = [c for p in [psutil.Process(r["pid"])] + psutil.Process(r["pid"]).children(True)
                 for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns), conns


def test_status_json_keys(dashscale):
    run = dashscale(formation="web=2")
    wait_for(lambda: all(r["memory_bytes"] for r in run.status()["replicas"]), 10,
             message="memory measured")
    result = run.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["proxy"] == {**data["proxy"], "url": run.url, "port": run.port}
    assert [r["name"] for r in data["replicas"]] == ["web.1", "web.2"]
    for r in data["replicas"]:
        for key in ("name", "type", "state", "pid", "port", "memory_bytes",
                    "memory_limit_bytes", "restarts", "oom_kills", "last_exit"):
            assert key in r
        assert r["state"] in ("STARTING", "RUNNING")
        assert r["memory_bytes"] > 0
        assert r["memory_limit_bytes"] == 8 * 1024 ** 3
    assert data["memory"]["max_bytes"] == 2 * 8 * 1024 ** 3
    assert data["memory"]["total_bytes"] == sum(r["memory_bytes"] for r in data["replicas"])
    text = run.cli("status")
    assert "web.2" in text.stdout and "RUNNING" in text.stdout or "STARTING" in text.stdout


def test_status_text_5xx_column_and_limits_over_ram(dashscale):
    """The table's 5XX column counts the app's 5xx answers per replica (the proxy's
    status_5xx); 1 TiB limits × 2 exceed any test machine's RAM, and the max line says so."""
    run = dashscale(formation="web=2", args=["--memory-limit", "1TiB"])
    for _ in range(3):
        with pytest.raises(urllib.error.HTTPError) as exc:
            run.get("/fail")
        assert exc.value.code == 500
        # Read it whole: urllib raises at the head, and a client that closes before the
        # body arrived is counted as aborted, not as a 5xx served.
        assert exc.value.read().endswith(b" failed")
    run.get("/")

    # urllib raises on the 500's head and closes without reading its body: the proxy may
    # count that request as aborted (the client went first), but its 5xx all the same.
    def counted():
        stats = [r["proxy"] for r in run.status()["replicas"]]
        return sum(s["status_5xx"] for s in stats) == 3 and \
            sum(s["served"] + s["aborted"] for s in stats) == 4
    wait_for(counted, 10, message=f"3 5xx and 4 answered ({run.status()['replicas']})")
    text = run.cli("status").stdout.splitlines()
    header = next(line.split() for line in text if line.startswith("REPLICA"))
    assert header[-2:] == ["SERVED", "5XX"]
    rows = {line.split()[0]: line.split() for line in text if line.startswith("web.")}
    assert sum(int(rows[name][-1]) for name in ("web.1", "web.2")) == 3
    assert sum(int(rows[name][-2]) for name in ("web.1", "web.2")) == sum(
        r["proxy"]["served"] for r in run.status()["replicas"])
    ram = format_size(psutil.virtual_memory().total)
    memory = next(line for line in text if line.startswith("memory "))
    assert memory.endswith(f"of max 2 TiB (pss) — the limits add up to more than this "
                           f"machine's {ram} RAM"), memory


def test_memory_line_notes_limits_over_ram():
    m = {"total_bytes": 180 * 2**20, "max_bytes": 24 * 2**30, "metric": "pss"}
    assert _memory_line(m, ram=23 * 2**30) == (
        "memory 180 MiB of max 24 GiB (pss) — the limits add up to more than this "
        "machine's 23 GiB RAM")
    assert _memory_line(m, ram=32 * 2**30) == "memory 180 MiB of max 24 GiB (pss)"


def test_each_replica_is_shown_coming_up_from_its_first_line(dashscale):
    """Replicas start as soon as supervisord does: their first lines must not be missed."""
    run = dashscale(formation="web=2")
    for name in ("web.1", "web.2"):
        wait_for(lambda: any(line.split("|")[0].strip().endswith(name)
                             and "Starting gunicorn" in line
                             for line in run.output().splitlines()),
                 10, message=f"{name}'s first line")


def test_stop_leaves_nothing(dashscale, app_dir):
    run = dashscale(formation="web=2")
    assert len(processes_with_marker(run.run_id)) >= 5  # runner, supervisord, 2×(master+worker)
    result = run.cli("stop")
    assert result.returncode == 0, result.stderr
    assert run.process.wait(30) == 0
    assert processes_with_marker(run.run_id) == []
    assert not os.path.exists(os.path.join(run.run_dir, "control.sock"))
    assert not os.path.exists(os.path.join(run.run_dir, "supervisor.sock"))
    assert "stopped" in run.output()


def test_sigterm_to_runner_stops_everything(dashscale):
    run = dashscale(formation="web=2")
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(30) == 0
    assert processes_with_marker(run.run_id) == []


SLOW_TO_STOP = """\
import os, signal, sys, time
def on_term(*_):
    # ../mount: kept and shared (each replica's own directory is gone once it stops)
    with open("../mount/" + os.environ["DASHSCALE_REPLICA"] + ".term", "w") as f:
        f.write(repr(time.time()))
    time.sleep(1.5)  # a replica finishing its in-flight work
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(1)
"""


def test_ctrl_c_stops_every_replica_at_once(dashscale, app_dir):
    """A terminal's Ctrl-C signals the whole foreground group: only the runner may get it
    (supervisord's own shutdown stops one replica after another), and the runner TERMs
    every replica together, so 4 replicas that each take 1.5 s to stop take 1.5 s."""
    (app_dir / "slow_stop.py").write_text(SLOW_TO_STOP)
    run = dashscale(f"worker: {sys.executable} slow_stop.py\n", formation="worker=4")
    sup_pid = run.status()["supervisord_pid"]
    assert os.getpgid(sup_pid) != os.getpgid(run.process.pid)
    os.killpg(run.process.pid, signal.SIGINT)  # what the terminal does
    assert run.process.wait(30) == 0
    times = [float((app_dir / ".dashscale" / "mount" / f"worker.{i}.term").read_text())
             for i in range(1, 5)]
    # one after another they would be ≥1.5 s apart
    assert max(times) - min(times) < 1.0, times
    assert processes_with_marker(run.run_id) == []


@pytest.mark.parametrize("also_supervisord", [False, True])
def test_recovery_after_kill_9(dashscale, app_dir, also_supervisord):
    """kill -9 of the runner (and supervisord): the next `stop` finds what is left through
    .dashscale/ and shuts it down; a new `start` on the same ports then works."""
    run = dashscale(formation="web=2")
    st = run.status()
    replica_pids = [r["pid"] for r in st["replicas"]]
    if also_supervisord:
        os.kill(st["supervisord_pid"], signal.SIGKILL)
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(10)
    result = run.cli("stop")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                             for p in replica_pids), 15, message="replicas gone")
    assert processes_with_marker(run.run_id) == []
    again = Run(app_dir, None, "web=2")
    again.port, again.base_port = run.port, run.base_port
    try:
        again.start()
        assert again.get("/")[0] == 200
    finally:
        assert again.stop() == []


def test_start_after_kill_9_cleans_up_first(dashscale, app_dir):
    run = dashscale(formation="web=1")
    st = run.status()
    os.kill(st["supervisord_pid"], signal.SIGKILL)
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(10)
    again = Run(app_dir, None, "web=1")
    again.port, again.base_port = run.port, run.base_port
    try:
        again.start()
        assert "cleaned up a previous run" in again.output()
        assert not psutil.pid_exists(st["replicas"][0]["pid"]) or \
            psutil.Process(st["replicas"][0]["pid"]).status() == "zombie"
    finally:
        assert again.stop() == []


def test_crashed_replica_is_restarted(dashscale):
    run = dashscale(formation="web=1")
    old = run.replica("web.1")
    with pytest.raises(Exception):
        run.get("/crash?master=1", timeout=10)
    def restarted():
        r = run.replica("web.1")
        return r if r["pid"] != old["pid"] and r["ready"] else None
    new = wait_for(restarted, 30, message="web.1 restarted")
    assert new["restarts"] == 1
    assert run.get("/")[2].decode().startswith("web.1")


def test_bad_module_is_reported_fatal(dashscale):
    run = dashscale("web: gunicorn no_such_module:app --workers 1\n", wait=False)
    code = run.process.wait(90)
    out = run.output()
    assert code == 1, out
    # One line with the cause (the exception's last line) and the log to read.
    assert "dashscale | web: worker failed to boot (exit 3): ModuleNotFoundError: No module " \
        "named 'no_such_module' — see .dashscale/logs/web.1.log" in out
    assert processes_with_marker(run.run_id) == []


def test_proxy_port_in_use_is_an_error_before_anything_starts(dashscale, app_dir):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        run = Run(app_dir, "web: gunicorn echo_app:app\n", None)
        run.port = blocker.getsockname()[1]
        run.start(wait=False)
        assert run.process.wait(30) == 2
        out = run.output()
        assert f"proxy port {run.port}" in out and "not available" in out
        assert out.strip().count("\n") == 0  # one line
        assert processes_with_marker(run.run_id) == []
    finally:
        blocker.close()


def test_env_reaches_replicas(dashscale, app_dir):
    (app_dir / ".env").write_text("GREETING='hello world'\nexport TOKEN=s3cret\n")
    run = dashscale(formation="web=1")
    body = json.loads(run.get("/env?keys=GREETING,TOKEN,PORT,DASHSCALE_REPLICA,PYTHONUNBUFFERED")[2])
    assert body == {"GREETING": "hello world", "TOKEN": "s3cret", "PORT": str(run.base_port),
                    "DASHSCALE_REPLICA": "web.1", "PYTHONUNBUFFERED": "1"}


def test_503_when_no_replica_ready(dashscale):
    run = dashscale("web: gunicorn echo_app:app\nworker: python -c 'import time; time.sleep(600)'\n",
                    formation="web=0,worker=1")
    with pytest.raises(urllib.error.HTTPError) as err:
        run.get("/")
    assert err.value.code == 503
    assert err.value.headers.get("Retry-After")
