"""`dashscale export` against real processes: k8s from a running formation, and the
supervisord config run by a real supervisord serving the echo app."""
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request

import psutil
import pytest
import yaml

from dashscale_local.testing import MARKER, free_port_block, processes_with_marker, wait_for
from tests.unit.test_export import TRICKY_ENV, export, write


@pytest.mark.slow
def test_k8s_uses_the_running_formation(dashscale, app_dir):
    """Started with -m web=3 (not saved): the export has replicas: 3 and says so."""
    run = dashscale(formation="web=3")
    assert not (app_dir / ".dashscale" / "formation").exists()
    result = export(app_dir, "k8s")
    first = result.stdout.splitlines()[0]
    assert first == f"# formation web=3 from the running instance (pid {run.process.pid})"
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(result.stdout)
            if d and d["kind"] == "Deployment"}
    assert [d["spec"]["replicas"] for d in docs.values()] == [3]
    result = export(app_dir, "k8s", "-m", "web=2")
    assert result.stdout.startswith("# formation web=2 from -m over the running instance")
    run.stop()
    assert export(app_dir, "k8s").stdout.startswith("# formation web=1 from default 1 per type")


# ─── supervisord ──────────────────────────────────────────────────────────────────────
def _dotenv(values):
    # python-dotenv: single quotes keep everything literally (no escapes, no ${}).
    return "".join(f"{k}='{v}'\n" if "'" not in v else f'{k}="{v}"\n'
                   for k, v in values.items())


@pytest.fixture
def supervisord_runs():
    """Start supervisord processes; at teardown stop them and prove nothing is left."""
    started = []

    def start(conf, env):
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", conf,
                                 "-n"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        started.append((proc, env[MARKER]))
        return proc

    yield start
    leftovers = []
    for proc, marker in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # supervisord stops its programs' groups
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        left = processes_with_marker(marker)
        leftovers += [p.pid for p in left]
        for p in left:
            p.kill()
    assert not leftovers, f"left behind: {leftovers}"


@pytest.mark.slow
def test_supervisord_export_runs_under_real_supervisord(app_dir, tmp_path, supervisord_runs):
    write(app_dir, "Procfile", "web: gunicorn echo_app:app --workers 1\n"
                               "sleeper: python -c 'import time; time.sleep(600)'\n")
    write(app_dir, ".env", _dotenv(TRICKY_ENV))
    base = free_port_block(types=2, per_type=3)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = str(conf_dir / "supervisord.conf")
    export(app_dir, "supervisord", "-m", "web=2", "--base-port", str(base), "-o", conf)
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env[MARKER] = f"export-test-{os.getpid()}-{id(conf)}"
    proc = supervisord_runs(conf, env)

    def get(port, path="/"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.read().decode()

    def serving():
        assert proc.poll() is None, "supervisord exited"
        return [get(base), get(base + 1)]
    bodies = wait_for(serving, 30, interval=0.1, message="both web replicas serving")
    assert bodies[0].startswith("web.1 ") and bodies[1].startswith("web.2 ")
    seen = json.loads(get(base + 1, "/env?keys=" + ",".join(
        list(TRICKY_ENV) + ["PORT", "DASHSCALE_REPLICA", "PYTHONUNBUFFERED"])))
    assert seen == {**TRICKY_ENV, "PORT": str(base + 1), "DASHSCALE_REPLICA": "web.2",
                    "PYTHONUNBUFFERED": "1"}
    # Replicas listen on loopback only; control is a 0700 unix socket next to the config.
    listening = {c.laddr for p in psutil.Process(proc.pid).children(recursive=True)
                 for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert {(a.ip, a.port) for a in listening} == {("127.0.0.1", base),
                                                   ("127.0.0.1", base + 1)}
    sock = conf_dir / "supervisord.sock"
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o700

    def states():  # RUNNING once up for startsecs (1 s)
        status = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf,
                                 "status"], capture_output=True, text=True, timeout=30, env=env)
        found = sorted(line.split()[:2] for line in status.stdout.split("\n") if line)
        return found if all(state == "RUNNING" for _, state in found) else None
    assert wait_for(states, 15, interval=0.2, message="RUNNING") == [
        ["sleeper:sleeper.1", "RUNNING"], ["web:web.1", "RUNNING"], ["web:web.2", "RUNNING"]]
    assert (conf_dir / "web.1.log").exists()
    # A clean shutdown through supervisorctl stops every replica's process group.
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 5  # 2 × (master + worker) + sleeper
    subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, "shutdown"],
                   capture_output=True, timeout=30, env=env)
    proc.wait(30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
