"""Release steps with real replicas: Procfile `release:` and project.toml predeploy /
postdeploy run once at start and once per roll (never per scale), see the replicas'
environment, block a start or a roll when they fail, and are never replicas."""
import json
import os
import re
import signal
import threading
import time
import urllib.request

import kubernetes_validate
import psutil
import pytest
import yaml
from click.testing import CliRunner

from dashscale_local import release
from dashscale_local.cli import main
from dashscale_local.testing import wait_for

from tests.e2e.test_live import ClientLoop, pids, wait_output

# `release` first: the web replicas keep the first port block (a step has none).
PROCFILE = "release: python release_step.py\nweb: gunicorn echo_app:app --workers 1\n"
SAME_ENV = ("GREETING", "DASH_APP_NAME", "DASH_REQUESTS_PATHNAME_PREFIX", "PYTHONUNBUFFERED")


def records(app_dir):
    """The release steps' runs, in order: what release_step.py appended to ../mount."""
    try:
        with open(app_dir / ".dashscale" / "mount" / "released.jsonl") as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def wait_records(app_dir, n, timeout=60):
    return wait_for(lambda: len(records(app_dir)) >= n and records(app_dir), timeout,
                    message=f"{n} release runs")


def replica_env(run, keys):
    status, _, body = run.get("/env?keys=" + ",".join(keys))
    assert status == 200
    return json.loads(body)


@pytest.mark.slow
def test_release_runs_once_at_start_and_once_per_roll(dashscale, app_dir):
    (app_dir / ".env").write_text("GREETING=hello\n")
    (app_dir / "project.toml").write_text(
        '[deploy]\npredeploy = "python release_step.py predeploy"\n'
        'postdeploy = "python release_step.py postdeploy"\n')
    run = dashscale(PROCFILE, formation="web=2")
    runs = wait_records(app_dir, 3)
    assert [r["step"] for r in runs] == ["release", "predeploy", "postdeploy"]
    out = run.output()
    # release and predeploy before the replicas start, postdeploy once they serve
    assert out.index("predeploy ran") < out.index("starting web=2") \
        < out.index("web replicas ready") < out.index("postdeploy ran")
    assert re.search(r"\d release +\| release ran with GREETING=hello", out)
    # The replicas' environment (less PORT and the replica's name), and a disk of its own
    # as a replica's: a view of the deploy with the shared ../mount beside it.
    seen = replica_env(run, SAME_ENV)
    assert seen["GREETING"] == "hello" and seen["DASH_APP_NAME"]
    for r in runs:
        assert {k: r["env"][k] for k in SAME_ENV} == seen
        assert r["env"]["PORT"] is None and r["env"]["DASHSCALE_REPLICA"] == r["step"]
        assert r["cwd"] == os.path.join(run.run_dir, "pods", r["step"], "app")
    assert not os.path.exists(app_dir / "scratch.txt")  # not in the user's tree
    assert not os.path.exists(os.path.join(run.run_dir, "pods", "release"))  # gone after
    # Not a replica: not in status, no port block, not restartable
    status = run.status()
    assert [(r["name"], r["port"]) for r in status["replicas"]] == \
        [("web.1", run.base_port), ("web.2", run.base_port + 1)]
    assert status["formation"] == {"web": 2}
    assert [s["name"] for s in status["release"]["steps"]] == ["release", "predeploy",
                                                                 "postdeploy"]
    last = wait_for(lambda: run.status()["release"]["last"]["name"] == "postdeploy" and
                    run.status()["release"]["last"], 30, message="postdeploy done")
    assert last["ok"] and last["exit_code"] == 0 and last["source"] == "project.toml"
    assert re.search(r"^release: last run ok \d+\.\ds at \d\d:\d\d:\d\d \(postdeploy, "
                     r"project.toml\)$", run.cli("status").stdout, re.M)
    scale = run.cli("scale", "release=1")
    assert scale.returncode == 2 and "'release' is a release step" in scale.stderr
    restart = run.cli("restart", "release")
    assert restart.returncode == 2 and "no replica or process type named" in restart.stderr
    assert "release ran with GREETING=hello" in run.cli("logs", "release").stdout

    # Not on scale (up or down), not on a single replica's restart
    assert run.cli("scale", "web=3").returncode == 0
    run.wait_ready(3)
    assert run.cli("scale", "web=2").returncode == 0
    assert run.cli("restart", "web.1").returncode == 0
    assert len(records(app_dir)) == 3

    # Once per roll: a .env edit, a command edit, a rolling restart of the type
    mark = len(run.output())
    (app_dir / ".env").write_text("GREETING=bye\n")
    wait_output(run, "reload applied", 60, since=mark)
    runs = wait_records(app_dir, 6)
    assert [r["step"] for r in runs[3:]] == ["release", "predeploy", "postdeploy"]
    assert runs[3]["env"]["GREETING"] == "bye" and replica_env(run, ["GREETING"]) == \
        {"GREETING": "bye"}
    mark = len(run.output())
    (app_dir / "Procfile").write_text(PROCFILE.replace("--workers 1", "--workers 1 -t 60"))
    wait_output(run, "reload applied", 60, since=mark)
    wait_records(app_dir, 9)
    (app_dir / "VERSION").write_text("2")  # code: a restart of the type deploys it
    assert run.cli("restart", "web", "--rolling").returncode == 0
    assert [r["version"] for r in wait_records(app_dir, 12)[9:]] == ["2"] * 3
    assert [r["step"] for r in records(app_dir)] == ["release", "predeploy", "postdeploy"] * 4
    assert [r["type"] for r in run.status()["replicas"]] == ["web", "web"]  # (renamed by rolls)


@pytest.mark.slow
def test_failing_release_before_a_roll_keeps_the_running_replicas(dashscale, app_dir):
    (app_dir / ".env").write_text("GREETING=hello\n")
    run = dashscale(PROCFILE, formation="web=2")
    wait_records(app_dir, 1)
    before = pids(run)
    load = ClientLoop(run)
    load.start()
    try:
        wait_for(lambda: load.ok >= 5, 30, message="requests before the edit")
        mark = len(run.output())
        bad = "GREETING=bye\nRELEASE_EXIT=3\n"
        (app_dir / ".env").write_text(bad)
        wait_output(run, "release step failed", 60, since=mark)
        # The same content saved again (an editor's second event): not run nor said again.
        (app_dir / ".env").write_text(bad)
        time.sleep(0.5)  # past the watcher's debounce (0.1 s): its reload has run
        served = load.ok
        wait_for(lambda: load.ok >= served + 5, 30, message="requests after the failure")
    finally:
        load.stop()
    assert load.failures == [] and load.ok > 10
    out = run.output()[mark:]
    [line] = [x for x in out.splitlines() if "release step failed" in x]
    assert "reload: release step failed: release (Procfile:1: python release_step.py) " \
           "exited 3 — nothing changed, still running web=2" in line
    assert "ready on" not in out and "rolling" not in out  # nothing new started
    assert pids(run) == before
    assert replica_env(run, ["GREETING"]) == {"GREETING": "hello"}
    assert len(records(app_dir)) == 2
    last = run.status()["release"]["last"]
    assert (last["name"], last["exit_code"], last["ok"]) == ("release", 3, False)
    assert re.search(r"^release: last run FAILED \(exit 3\) at ", run.cli("status").stdout,
                     re.M)
    # Fixed: the roll goes ahead, after one more (passing) release run
    mark = len(run.output())
    (app_dir / ".env").write_text("GREETING=bye\n")
    wait_output(run, "reload applied", 60, since=mark)
    assert len(records(app_dir)) == 3 and records(app_dir)[2]["env"]["GREETING"] == "bye"
    assert replica_env(run, ["GREETING"]) == {"GREETING": "bye"}
    assert run.status()["release"]["last"]["ok"]


@pytest.mark.slow
def test_a_deploy_whose_release_failed_is_not_used_by_a_scale_up(dashscale, app_dir):
    (app_dir / "VERSION").write_text("1")
    run = dashscale("release: python release_step.py\nweb: gunicorn disk_app:app -w 1\n")
    (app_dir / "VERSION").write_text("2")   # new code, and a release that fails on it
    mark = len(run.output())
    (app_dir / ".env").write_text("RELEASE_EXIT=3\n")
    wait_output(run, "release step failed", 60, since=mark)
    assert records(app_dir)[-1]["version"] == "2"   # it ran on the new snapshot…
    assert run.cli("scale", "web=2").returncode == 0
    run.wait_ready(2)
    port = {r["name"]: r["port"] for r in run.status()["replicas"]}["web.2"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/read?name=VERSION") as resp:
        assert resp.read() == b"1"   # …which no replica runs: a scale-up runs the old one


@pytest.mark.slow
def test_failing_release_at_start_starts_nothing(dashscale, app_dir):
    (app_dir / ".env").write_text("RELEASE_EXIT=3\n")
    run = dashscale(PROCFILE, formation="web=2", wait=False)
    assert run.process.wait(60) == 1
    out = run.output()
    assert re.search(r"release +\| release ran with GREETING=None", out)
    assert out.rstrip().splitlines()[-1] == (
        "dashscale: release step failed: release (Procfile:1: python release_step.py) "
        "exited 3; no replica was started")
    assert "web.1" not in out and "web.2" not in out
    assert not os.path.exists(os.path.join(run.run_dir, "logs", "web.1.log"))
    for name in ("state.json", "supervisor.sock", "control.sock", "pods", "deploys"):
        assert not os.path.exists(os.path.join(run.run_dir, name))
    assert len(records(app_dir)) == 1
    # (the fixture fails the test if any process of the run is left)


@pytest.mark.slow
def test_kill_9_of_the_runner_during_a_release_leaves_nothing(dashscale, app_dir):
    run = dashscale("release: echo migrating; sleep 300\n" + PROCFILE.split("\n")[1],
                    wait=False)
    wait_for(lambda: "release" in json.load(open(os.path.join(run.run_dir, "state.json")))
             ["replicas"], 30, message="the release step in state.json")
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(30)
    stop = run.cli("stop")
    assert stop.returncode == 0 and "cleaned up after a runner that had died" in stop.stdout
    # (the fixture fails the test if `sleep 300` or anything else of the run is left)


def test_release_is_not_a_process_type(app_dir):
    (app_dir / "Procfile").write_text(PROCFILE)
    procfile = str(app_dir / "Procfile")
    for args in (["start", "-f", procfile, "-m", "release=1"],
                 ["export", "k8s", "-f", procfile, "-m", "web=1,release=2"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.stderr == ("dashscale: 'release' is a release step, not a process "
                                 "type: it runs once per deploy, to completion, and has no "
                                 "replicas to scale\n")
    (app_dir / "DOKKU_SCALE").write_text("web=2\nrelease=1\n")
    result = CliRunner().invoke(main, ["start", "-f", procfile])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"dashscale: {app_dir / 'DOKKU_SCALE'}: 'release' is a "
                                    "release step")
    assert records(app_dir) == []
    (app_dir / "Procfile").write_text("release: python release_step.py\n")
    result = CliRunner().invoke(main, ["start", "-f", procfile])
    assert result.exit_code == 2
    assert result.stderr == (f"dashscale: {procfile}: only a release step: no process type "
                             "to run (add one, e.g. 'web: gunicorn app:server')\n")


def test_check_lists_release_steps(app_dir):
    (app_dir / "Procfile").write_text("release: python migrate.py\n"
                                      "web: gunicorn echo_app:app --workers 2\n")
    (app_dir / "project.toml").write_text('postdeploy = "echo warmed"\n')
    check = ["check", "-f", str(app_dir / "Procfile"), "--json"]
    result = CliRunner().invoke(main, check)
    data = json.loads(result.stdout)
    assert data["processes"] == {"web": "gunicorn echo_app:app --workers 2"}
    assert data["release"] == [
        {"name": "release", "command": "python migrate.py", "source": "Procfile:1",
         "phase": "before"},
        {"name": "postdeploy", "command": "echo warmed", "source": "project.toml",
         "phase": "after"}]
    # Its script must exist; nothing else about it (not web, not a WSGI server) is a finding
    assert [(e["line"], e["code"]) for e in data["errors"]] == [(1, "app-module-missing")]
    assert data["warnings"] == []
    (app_dir / "migrate.py").write_text("print('migrated')\n")
    result = CliRunner().invoke(main, check[:-1])
    assert result.exit_code == 0, result.output
    assert "release step release (Procfile:1, runs before the new replicas start): " \
           "python migrate.py" in result.stdout


def test_export_k8s_renders_release_steps_as_jobs(app_dir):
    (app_dir / "Procfile").write_text(PROCFILE)
    (app_dir / "project.toml").write_text('[scripts]\npostdeploy = "echo warmed"\n')
    (app_dir / ".env").write_text("GREETING=hello\n")
    result = CliRunner().invoke(main, ["export", "k8s", "-f", str(app_dir / "Procfile"),
                                       "--app-name", "shop", "--image", "reg/shop:1"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    # the release Job before the Deployments, postdeploy's after; no release Deployment
    assert [k for k in kinds if k[0] in ("Job", "Deployment")] == [
        ("Job", "shop-release"), ("Deployment", "shop-web"), ("Job", "shop-postdeploy")]
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    web = next(d for d in docs if d["kind"] == "Deployment")
    job = jobs["shop-release"]
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [c] = pod["containers"]
    [w] = web["spec"]["template"]["spec"]["containers"]
    assert c["image"] == w["image"] == "reg/shop:1"
    assert c["command"] == ["python", "release_step.py"]
    assert c["envFrom"] == w["envFrom"]
    assert {"name": "DASHSCALE_REPLICA", "value": "release"} in c["env"]
    assert c["resources"] == w["resources"]
    assert job["metadata"]["annotations"]["dashscale/source"] == "Procfile:1"
    assert "to completion before the Deployments roll" in \
        job["metadata"]["annotations"]["dashscale/runs"]
    assert jobs["shop-postdeploy"]["spec"]["template"]["spec"]["containers"][0]["command"] \
        == ["echo", "warmed"]
    header = result.stdout.split("---")[0]
    assert "# release (Procfile:1): Job shop-release, run once to completion before the " \
           "Deployments roll" in header
    assert "release (Procfile:1): Job shop-release" in result.stderr
    assert "postdeploy (project.toml): Job shop-postdeploy" in result.stderr
    # supervisord: a comment, not a program
    conf = CliRunner().invoke(main, ["export", "supervisord", "-f", str(app_dir / "Procfile")])
    assert conf.exit_code == 0, conf.output
    assert "[program:release" not in conf.stdout and "[group:release" not in conf.stdout
    assert "; release (Procfile:1) is a release step, not a program" in conf.stdout


def test_a_step_leaves_nothing_running(tmp_path):
    """A step that backgrounds a process holding its output finishes when the step
    exits, and what it left in its process group is killed."""
    step = release.Step("release", "sleep 300 & echo $! > bg.pid; echo started",
                        "Procfile:1", "before")
    lines, result = [], []
    worker = threading.Thread(target=lambda: result.append(release.run(
        step, dict(os.environ), str(tmp_path), lambda name, text: lines.append(text))))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the step did not finish when its shell exited"
    assert result[0].ok and lines == ["started"]
    pid = int((tmp_path / "bg.pid").read_text())
    wait_for(lambda: not psutil.pid_exists(pid) or
             psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
             message="the background process killed")
