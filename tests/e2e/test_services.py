"""Managed services (issue 9): a real redis-server and PostgreSQL under the app's
supervisord, private to the app, their URLs in every replica, data that survives a
stop/start, restarted when they die, stopped last with nothing left running."""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import psutil
import pytest

from dashscale_local import services as svc
from dashscale_local.testing import wait_for
from tests import REPO

COUNTER = "web: gunicorn counter_app:app --workers 1\n"

needs_redis = pytest.mark.skipif(not shutil.which("redis-server"),
                                 reason="Debian package redis-server not installed")
needs_postgres = pytest.mark.skipif(
    not any(os.access(os.path.join(d, "initdb"), os.X_OK)
            for d in __import__("glob").glob(svc.POSTGRES_GLOB)) and not shutil.which("initdb"),
    reason="Debian package postgresql not installed")


def get(run, path, timeout=30):
    """(status, body, replica) through the proxy; HTTP errors are answers too."""
    try:
        status, headers, body = run.get(path, timeout=timeout)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("X-Dashscale-Replica")
    return status, body.decode(), headers.get("X-Dashscale-Replica")


def service(run, name):
    return next(s for s in run.status()["services"] if s["name"] == name)


def listening(pid):
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def test_unknown_service_exits_2(app_dir):
    (app_dir / "Procfile").write_text(COUNTER)
    cli = [sys.executable, "-m", "dashscale_local.cli", "start", "-f", str(app_dir / "Procfile")]
    r = subprocess.run(cli + ["--service", "memcached"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown service 'memcached'" in r.stderr, r.stderr
    (app_dir / "dashscale.ini").write_text("[dashscale]\nservices = redis, mongo\n")
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 2 and "dashscale.ini: services: unknown service 'mongo'" in r.stderr, \
        r.stderr


def test_export_k8s_keeps_the_services(app_dir):
    (app_dir / "Procfile").write_text(COUNTER + "worker: python -c 'import time; time.sleep(1e9)'\n")
    (app_dir / "dashscale.ini").write_text("[dashscale]\nservices = redis, postgres\n")
    r = subprocess.run([sys.executable, "-m", "dashscale_local.cli", "export", "k8s", "-f",
                        str(app_dir / "Procfile"), "--app-name", "shop"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import yaml
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Secret", "shop-redis"), ("Deployment", "shop-redis"),
            ("Service", "shop-redis")} <= kinds
    assert "# services: redis" in r.stdout and "postgres" in r.stdout
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] in ("shop-web", "shop-worker"):
            env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@shop-redis:6379/0"
            assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "shop-redis"
            assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "shop-postgres"
    try:
        from kubernetes_validate import validate
    except ImportError:
        return
    for d in docs:
        validate(d, "1.30", strict=True)


@pytest.mark.slow
@needs_redis
def test_redis_shared_state_survives_stop_start_and_a_crash(dashscale, app_dir):
    run = dashscale(COUNTER, formation="web=3", args=["--service", "redis"])
    out = run.output()
    assert out.index("redis") < out.index("starting web=3"), "replicas started before redis"
    red = service(run, "redis")
    assert red["state"] in ("STARTING", "RUNNING") and red["ready"] and red["pid"]
    assert red["env"] == "REDIS_URL"
    assert "***" in red["url"] and red["memory_bytes"] > 0 and red["data_bytes"] > 0
    st = run.status()
    assert st["memory"]["total_bytes"] == sum(r["memory_bytes"] for r in st["replicas"])
    assert st["memory"]["max_bytes"] == sum(r["memory_limit_bytes"] for r in st["replicas"])

    # private: loopback only, password from a 0600 file, refused without it
    sdir = os.path.join(run.run_dir, "services", "redis")
    password = open(os.path.join(sdir, "password")).read().strip()
    assert stat.S_IMODE(os.stat(os.path.join(sdir, "password")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sdir).st_mode) == 0o700
    assert listening(red["pid"]) == {("127.0.0.1", red["port"])}
    with socket.create_connection(("127.0.0.1", red["port"]), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(100).startswith(b"-NOAUTH")

    # the same URL in every replica
    urls = {}
    for _ in range(3):
        code, body, replica = get(run, "/env?keys=REDIS_URL")
        urls[replica] = json.loads(body)["REDIS_URL"]
    assert set(urls) == {"web.1", "web.2", "web.3"}
    assert set(urls.values()) == {f"redis://:{password}@127.0.0.1:{red['port']}/0"}

    # a counter incremented through 3 replicas at once is consistent
    results = []

    def hit():
        for _ in range(10):
            results.append(get(run, "/incr"))
    threads = [threading.Thread(target=hit) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(code == 200 for code, _, _ in results), results
    assert sorted(int(body.split()[0]) for _, body, _ in results) == list(range(1, 31))
    assert {replica for _, _, replica in results} == {"web.1", "web.2", "web.3"}

    # stop: clean shutdown (SIGTERM = SHUTDOWN SAVE), nothing left running
    pid = red["pid"]
    assert run.stop() == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    log = open(os.path.join(run.run_dir, "logs", "redis.log")).read()
    assert "DB saved on disk" in log and "ready to exit" in log

    # start again: same data, same port (still free)
    run2 = dashscale(COUNTER, formation="web=3", args=["--service", "redis"])
    assert get(run2, "/count")[1] == "30"
    red2 = service(run2, "redis")
    assert red2["port"] == red["port"]

    # the server dies: supervisord restarts it, replicas reconnect
    os.kill(red2["pid"], signal.SIGKILL)
    wait_for(lambda: service(run2, "redis")["restarts"] == 1 and
             service(run2, "redis")["state"] == "RUNNING", 20, message="redis restarted")
    assert service(run2, "redis")["pid"] != red2["pid"]
    values = wait_for(lambda: [get(run2, "/incr") for _ in range(3)]
                      if all(get(run2, "/count")[0] == 200 for _ in range(3)) else None,
                      20, message="replicas reconnected")
    assert [code for code, _, _ in values] == [200, 200, 200]
    assert int(values[-1][1].split()[0]) >= 33  # the 30 came back from the AOF
    assert "redis restarted" in run2.output()


@pytest.mark.slow
@needs_postgres
def test_postgres_private_persistent_and_restarted(dashscale, app_dir):
    pg_target = None
    try:
        run = dashscale(COUNTER, formation="web=2", args=["--service", "postgres"])
        pg = service(run, "postgres")
        pg_target = pg["data_path"]
        assert pg["state"] in ("STARTING", "RUNNING") and pg["ready"]
        assert pg["env"] == "DATABASE_URL"
        assert "postgres: initdb" in run.output()
        assert listening(pg["pid"]) == {("127.0.0.1", pg["port"])}
        proc = psutil.Process(pg["pid"])
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as postgres, data outside
            assert proc.username() == "postgres" and pg["user"] == "postgres"
            st = os.stat(pg_target)
            assert st.st_uid == psutil.Process(pg["pid"]).uids().real
            assert stat.S_IMODE(st.st_mode) == 0o700
            assert os.path.islink(pg["data_dir"])
        assert stat.S_IMODE(os.stat(run.run_dir).st_mode) == 0o700

        code, body, _ = get(run, "/env?keys=DATABASE_URL")
        url = json.loads(body)["DATABASE_URL"]
        password = open(os.path.join(run.run_dir, "services", "postgres", "password")).read()
        assert url == f"postgresql://app:{password.strip()}@127.0.0.1:{pg['port']}/app"
        import psycopg
        bad = url.replace(password.strip(), "wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(bad, connect_timeout=5)

        seen = set()
        for i in range(6):
            code, body, replica = get(run, f"/pg/add?v={i}")
            assert code == 200, body
            seen.add(replica)
        assert seen == {"web.1", "web.2"} and get(run, "/pg/rows")[1] == "6"

        pid = pg["pid"]
        assert run.stop() == []
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        log = open(os.path.join(run.run_dir, "logs", "postgres.log")).read()
        assert "received fast shutdown request" in log and "database system is shut down" in log

        run2 = dashscale(COUNTER, formation="web=2", args=["--service", "postgres"])
        assert run2.output().count("postgres: initdb") == 1  # once (the log is shared)
        assert get(run2, "/pg/rows")[1] == "6"

        old = service(run2, "postgres")["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: service(run2, "postgres")["restarts"] >= 1 and
                 service(run2, "postgres")["state"] == "RUNNING", 30, message="postgres restarted")
        # each replica's connection broke: the first use fails, the next reconnects
        wait_for(lambda: all(get(run2, "/pg/add?v=9")[0] == 200 for _ in range(2)), 30,
                 interval=0.3, message="replicas reconnected to postgres")
        assert int(get(run2, "/pg/rows")[1]) >= 8
        run2.stop()
    finally:
        if pg_target and pg_target.startswith(os.path.expanduser("~postgres")):
            shutil.rmtree(pg_target, ignore_errors=True)  # outside the test's tmp dir
            for leftover in (pg_target + ".dashscale-project",):
                if os.path.exists(leftover):
                    os.unlink(leftover)


def _background_callback(base, output, n_clicks, timeout=60):
    """One Dash background callback as the renderer runs it: submit, then poll."""
    with urllib.request.urlopen(base + "/", timeout=30) as resp:
        page = resp.read().decode()
    config = json.loads(re.search(r'<script id="_dash-config" type="application/json">'
                                  r'(.*?)</script>', page, re.S).group(1))
    url = base + "/_dash-update-component?endId=" + urllib.parse.quote(config["end_id"], safe="")
    body = {"output": f"{output}.figure", "outputs": {"id": output, "property": "figure"},
            "inputs": [{"id": "bg-btn", "property": "n_clicks", "value": n_clicks}],
            "changedPropIds": ["bg-btn.n_clicks"],
            "state": [{"id": output, "property": "id", "value": output}]}

    def post(u, b):
        req = urllib.request.Request(u, data=json.dumps(b).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            assert resp.status == 200, (resp.status, raw[:300])
            return json.loads(raw)
    data = post(url, body)
    assert "cacheKey" in data and "job" in data, data  # queued, not run in the web replica
    url += "&cacheKey=%s&job=%s" % (urllib.parse.quote(data["cacheKey"], safe=""),
                                    urllib.parse.quote(data["job"], safe=""))
    body["inputs"][0]["value"] = body["state"][0]["value"] = None  # as the renderer polls
    deadline = time.monotonic() + timeout
    while "response" not in data:
        assert time.monotonic() < deadline, "background callback never finished"
        time.sleep(0.25)
        data = post(url, body)
    return data["response"][output]["figure"]["layout"]["title"]["text"]


@pytest.mark.slow
@needs_redis
def test_celery_worker_runs_a_background_callback(dashscale, app_dir):
    shutil.copytree(os.path.join(REPO, "sample_app"), app_dir / "sample_app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (app_dir / "dashscale.ini").write_text("[dashscale]\nservices = redis\n")  # not --service
    with open(os.path.join(REPO, "Procfile.celery")) as f:
        procfile = f.read()
    run = dashscale(procfile, formation="web=1,worker=1", env={"SAMPLE_CALLBACK_SECONDS": "0.2"},
                    timeout=90)
    assert [s["name"] for s in run.status()["services"]] == ["redis"]
    titles, errors = {}, []

    def one(i):
        try:
            titles[i] = _background_callback(run.url, f"bg-graph-{i}", 1)
        except Exception as exc:  # reported below
            errors.append(f"bg-graph-{i}: {exc!r}")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors and sorted(titles) == [1, 2, 3, 4], (errors, titles)
    web_pid = run.replica("web.1")["pid"]
    for i, title in titles.items():  # each its own result, run by the worker replica
        assert title.startswith(f"background {i} · worker.1 (pid ") and "click 1" in title
        assert f"(pid {web_pid})" not in title


def test_postgres_data_of_a_missing_version_exits_2(app_dir):
    (app_dir / "Procfile").write_text(COUNTER)
    data = app_dir / ".dashscale" / "services" / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("99\n")
    r = subprocess.run([sys.executable, "-m", "dashscale_local.cli", "start", "-f",
                        str(app_dir / "Procfile"), "--service", "postgres", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "initialised by PostgreSQL 99" in r.stderr
    assert "install the Debian package postgresql-99" in r.stderr


@pytest.mark.slow
@needs_redis
def test_a_service_that_cannot_start_is_reported_and_nothing_runs(dashscale, app_dir):
    aof = app_dir / ".dashscale" / "services" / "redis" / "data" / "appendonlydir"
    aof.mkdir(parents=True)
    (aof / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    run = dashscale(COUNTER, args=["--service", "redis"], wait=False)
    assert run.process.wait(60) == 1
    out = run.output()
    assert "service redis failed to start" in out
    assert "starting web=1" not in out  # no replica was started
    assert run.kill_leftovers() == []


@pytest.mark.slow
@needs_redis
def test_stop_after_runner_and_supervisord_were_killed_stops_the_service(dashscale):
    run = dashscale(COUNTER, args=["--service", "redis"])
    st = run.status()
    red = service(run, "redis")
    os.kill(st["supervisord_pid"], signal.SIGKILL)
    os.kill(st["runner_pid"], signal.SIGKILL)
    run.process.wait(10)
    assert psutil.pid_exists(red["pid"])  # orphaned
    r = run.cli("stop")
    assert r.returncode == 0, r.stderr
    assert str(red["pid"]) in r.stdout
    assert not psutil.pid_exists(red["pid"]) or \
        psutil.Process(red["pid"]).status() == psutil.STATUS_ZOMBIE
    # a clean shutdown (its log went to the dead supervisord): Redis removed its pid file
    assert not os.path.exists(os.path.join(run.run_dir, "services", "redis", "redis.pid"))
