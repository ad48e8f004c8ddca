"""Live changes on a running formation: scale, drain, Procfile/.env/scale-file reloads,
rolling restarts — with real replicas and a client loop counting failed requests."""
import json
import socket
import threading
import time
import urllib.request

import psutil
import pytest

from dashscale_local.testing import Run, wait_for

pytestmark = pytest.mark.slow

ECHO = "web: gunicorn echo_app:app --workers 1\n"


def pids(run):
    return {r["name"]: r["pid"] for r in run.status()["replicas"]}


class ClientLoop(threading.Thread):
    """Steady GETs through the proxy (~rate/s) until stopped; records every failure."""

    def __init__(self, run, rate=20, path="/"):
        super().__init__(daemon=True)
        self.url, self.interval, self.path = run.url, 1.0 / rate, path
        self.ok, self.failures, self.bodies = 0, [], []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                with urllib.request.urlopen(self.url + self.path, timeout=30) as resp:
                    self.bodies.append(resp.read().decode())
                    self.ok += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(60)
        return self


def wait_output(run, text, timeout=20, since=0):
    return wait_for(lambda: text in run.output()[since:], timeout, message=repr(text))


def test_scale_up_and_down_keeps_other_replicas(dashscale):
    run = dashscale(formation="web=2")
    before = pids(run)
    result = run.cli("scale", "web=4")
    assert result.returncode == 0, result.stderr
    after = pids(run)
    assert set(after) == {"web.1", "web.2", "web.3", "web.4"}
    assert after["web.1"] == before["web.1"] and after["web.2"] == before["web.2"]
    assert all(r["ready"] for r in run.status()["replicas"])
    seen = {run.get("/")[1]["X-Dashscale-Replica"] for _ in range(8)}
    assert seen == set(after)
    result = run.cli("scale", "web=1")
    assert result.returncode == 0, result.stderr
    assert pids(run) == {"web.1": before["web.1"]}
    for name in ("web.2", "web.3", "web.4"):
        assert not psutil.pid_exists(after[name]) or psutil.Process(after[name]).status() == "zombie"


def test_scale_errors_exit_2(dashscale):
    run = dashscale(formation="web=1")
    for args, text in ((["wbe=2"], "unknown process type"), (["web=11"], "cap of 10"),
                       (["web=x"], "web=x")):
        result = run.cli("scale", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert text in result.stderr and result.stderr.count("\n") == 1
    assert list(pids(run)) == ["web.1"]


def test_scale_onto_a_taken_port_fails_cleanly_and_the_next_scale_works(dashscale):
    run = dashscale(formation="web=1")
    before = pids(run)
    taken = run.base_port + 2  # web.3's port (web.1 has the base)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        result = run.cli("scale", "web=3")
        assert result.returncode == 1, result.stderr
        assert f"port {taken} for web.3 is in use" in result.stderr
        # web.2's port was free, but nothing of the failed scale stays behind
        assert pids(run) == before
        assert run.status()["formation"] == {"web": 1}
    result = run.cli("scale", "web=3")
    assert result.returncode == 0, result.stderr
    assert set(pids(run)) == {"web.1", "web.2", "web.3"}
    assert all(r["ready"] for r in run.status()["replicas"])


def test_scale_down_drains_in_flight_request(dashscale):
    run = dashscale(formation="web=2")
    results = {}

    def slow(i):
        results[i] = run.get("/slow?s=2", timeout=30)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: all(r["proxy"]["inflight"] == 1 for r in run.status()["replicas"]), 5,
             message="one slow request on each replica")
    t0 = time.monotonic()
    assert run.cli("scale", "web=1").returncode == 0
    assert time.monotonic() - t0 >= 1.0  # waited for the in-flight request
    for t in threads:
        t.join(30)
    assert sorted(r[1]["X-Dashscale-Replica"] for r in results.values()) == ["web.1", "web.2"]
    assert all(r[0] == 200 and r[2].endswith(b"slept") for r in results.values())


def test_formation_persists_across_restarts(dashscale, app_dir):
    run = dashscale(formation="web=1")
    assert run.cli("scale", "web=3").returncode == 0
    assert run.stop() == []
    again = Run(app_dir, None, None)
    try:
        again.start()
        assert sorted(pids(again)) == ["web.1", "web.2", "web.3"]
    finally:
        assert again.stop() == []


def test_scale_file_is_read_and_watched(dashscale, app_dir):
    (app_dir / "DOKKU_SCALE").write_text("# as Dash Enterprise 4\nweb=2\n")
    run = dashscale()
    assert sorted(pids(run)) == ["web.1", "web.2"]
    (app_dir / "DOKKU_SCALE").write_text("web=3\n")
    wait_for(lambda: len([r for r in run.status()["replicas"] if r["ready"]]) == 3, 20,
             message="scaled to 3 by the scale file")
    assert run.cli("scale", "web=1").returncode == 0
    assert (app_dir / "DOKKU_SCALE").read_text().strip() == "web=1"


def test_procfile_edits_add_change_remove_types_without_failed_requests(dashscale, app_dir):
    run = dashscale(ECHO, formation="web=2")
    before = pids(run)
    loop = ClientLoop(run)
    loop.start()
    try:
        # add a type
        (app_dir / "Procfile").write_text(ECHO + "worker: python -c 'import time; time.sleep(1e6)'\n")
        wait_for(lambda: run.replica("worker.1")["ready"], 20, message="worker.1 running")
        assert pids(run)["web.1"] == before["web.1"]
        # change the web command: rolls web, one replica at a time
        mark = len(run.output())
        (app_dir / "Procfile").write_text(
            "web: VERSION=2 gunicorn echo_app:app --workers 1\n"
            "worker: python -c 'import time; time.sleep(1e6)'\n")
        wait_output(run, "reload applied", 60, since=mark)
        web_now = {n: p for n, p in pids(run).items() if n.startswith("web.")}
        assert len(web_now) == 2 and not set(web_now.values()) & set(before.values())
        body = json.loads(run.get("/env?keys=VERSION")[2])
        assert body == {"VERSION": "2"}
        worker_pid = pids(run)["worker.1"]
        # remove the worker type
        (app_dir / "Procfile").write_text("web: VERSION=2 gunicorn echo_app:app --workers 1\n")
        wait_for(lambda: "worker.1" not in pids(run), 20, message="worker removed")
        assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == "zombie"
    finally:
        loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20


def test_an_edit_saved_while_replicas_start_is_applied(dashscale, app_dir):
    """Files are watched once the replicas are up; an edit saved before is not lost."""
    slow_boot = "web: sleep 1.5 && exec gunicorn echo_app:app --workers 1\n"
    run = dashscale(slow_boot, formation="web=1", wait=False)
    wait_output(run, "starting web=1", 30)
    (app_dir / "Procfile").write_text(slow_boot + "worker: python -c 'import time; time.sleep(1e6)'\n")
    wait_for(lambda: run.replica("worker.1")["ready"], 30, message="worker.1 running")
    assert "reload applied" in run.output()
    assert run.status()["watching"] is True


def test_env_change_rolls_every_type(dashscale, app_dir):
    (app_dir / ".env").write_text("COLOUR=red\n")
    run = dashscale(formation="web=2")
    before = pids(run)
    loop = ClientLoop(run)
    loop.start()
    try:
        (app_dir / ".env").write_text("COLOUR=blue\n")
        wait_for(lambda: not set(pids(run).values()) & set(before.values())
                 and all(r["ready"] for r in run.status()["replicas"]), 60, message="rolled")
    finally:
        loop.stop()
    assert json.loads(run.get("/env?keys=COLOUR")[2]) == {"COLOUR": "blue"}
    assert loop.failures == [], loop.failures[:5]


def test_rolling_restart_under_load_loses_nothing(dashscale):
    run = dashscale(formation="web=3")
    before = pids(run)
    loop = ClientLoop(run, rate=20)
    loop.start()
    try:
        result = run.cli("restart", "web", "--rolling")
        assert result.returncode == 0, result.stderr
    finally:
        loop.stop()
    after = pids(run)
    assert len(after) == 3 and not set(after.values()) & set(before.values())
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 10


BAD_EDITS = [
    ("Procfile", b"web gunicorn echo_app:app\n", "no process types"),
    ("Procfile", ECHO.encode() + b"web: gunicorn other:app\n", "duplicate process type"),
    ("Procfile", b"", "no process types"),
    ("Procfile", b"web:\n", "Procfile:1"),
    ("Procfile", None, "Procfile not found"),
    ("Procfile", b"all: gunicorn echo_app:app\n", "all"),
    ("Procfile", b"w" * 70 + b": gunicorn echo_app:app\n", "Procfile:1"),
    ("Procfile", b"web: gunicorn \xff\xfe echo_app:app\n", "UTF-8"),
    ("Procfile", ECHO.encode() + b"worker: sleep 100\nclock: sleep 100\n", "pod limit"),
    ("DOKKU_SCALE", b"web=abc\n", "DOKKU_SCALE:1"),
    ("DOKKU_SCALE", b"# comment\nwbe=2\n", "unknown process type 'wbe'"),
    ("DOKKU_SCALE", b"web=11\n", "cap of 10"),
    ("DOKKU_SCALE", b"web=-1\n", "DOKKU_SCALE:1"),
]


def test_bad_edits_leave_the_formation_untouched(dashscale, app_dir):
    run = dashscale(ECHO, formation="web=2", args=["--pod-limit", "3"])
    before = pids(run)
    good = (app_dir / "Procfile").read_bytes()
    for i, (name, content, text) in enumerate(BAD_EDITS):
        path = app_dir / name
        mark = len(run.output())
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
        # An editor (or write_bytes) may leave a moment of empty file: wait for the
        # report about the final content, not for the first report.
        wait_for(lambda: any(text in line and "nothing changed" in line
                             for line in run.output()[mark:].splitlines()), 10,
                 message=f"reload error for bad edit #{i} {content!r}")
        report = run.output()[mark:]
        assert pids(run) == before, (i, report)
        assert run.status()["formation"] == {"web": 2}
        # restore (the restore itself is a no-op reload: same content)
        if name == "Procfile":
            path.write_bytes(good)
        else:
            path.unlink()
        time.sleep(0.3)  # let the restore's (no-op) reload pass before the next edit
    assert pids(run) == before
    # fixing the file later applies normally
    (app_dir / "Procfile").write_text(ECHO + "worker: python -c 'import time; time.sleep(1e6)'\n")
    wait_for(lambda: run.replica("worker.1")["ready"], 20, message="good edit applied")
    assert {k: v for k, v in pids(run).items() if k.startswith("web")} == before
