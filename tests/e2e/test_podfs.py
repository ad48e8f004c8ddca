"""A pod's own disk (podfs): each replica's writes to the app directory are its own and
gone after a restart, ../mount is shared and kept, code edits arrive by roll only, and
--shared-fs runs everything in the user's directory. Real replicas (disk_app.py)."""
import os
import urllib.error
import urllib.request

import psutil
import pytest

from dashscale_local import podfs
from dashscale_local.testing import wait_for

PROCFILE = ("web: gunicorn disk_app:app --workers 1\n"
            "worker: gunicorn disk_app:app --workers 1\n")


def call(run, replica, path):
    """GET ``path`` straight from a replica (web.N or worker.N): (status, text). A worker
    counts as ready once it stays up, maybe before it listens: retried until it answers."""
    port = run.replica(replica)["port"]

    def get():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
    return wait_for(get, 30, message=f"{replica} answering {path}")


def read(run, replica, name):
    return call(run, replica, f"/read?name={name}")


def write(run, replica, name, text):
    assert call(run, replica, f"/write?name={name}&text={text}") == (200, "written")


def overlay_mounts():
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return [line for line in f if "/.dashscale/pods/" in line]


def pids(run):
    return {r["name"]: r["pid"] for r in run.wait_ready()["replicas"]}


def restart_one(run, name):
    old = run.replica(name)["pid"]
    assert run.cli("restart", name).returncode == 0
    wait_for(lambda: run.replica(name)["ready"] and run.replica(name)["pid"] != old, 30,
             message=f"{name} restarted")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "copy"])
def test_own_disk_per_replica_and_shared_mount(dashscale, app_dir, mode):
    (app_dir / "dashscale.ini").write_text(f"[dashscale]\npod_disk = {mode}\n")
    (app_dir / "version.txt").write_text("v1")
    run = dashscale(PROCFILE, formation="web=2,worker=1")
    fs = run.status()["filesystem"]
    expected = ("overlay" if podfs.overlay_works(run.run_dir) else "copy") if mode == "auto" \
        else mode
    assert fs["mode"] == expected
    assert fs["mount"] == os.path.join(run.run_dir, "mount")

    # A file one replica writes beside its code: its own, not the others', not the user's.
    write(run, "web.1", "data.txt", "one")
    assert read(run, "web.1", "data.txt") == (200, "one")
    assert read(run, "web.2", "data.txt")[0] == 404
    assert read(run, "worker.1", "data.txt")[0] == 404
    assert not (app_dir / "data.txt").exists()
    assert read(run, "web.2", "version.txt") == (200, "v1")   # the app's files are there
    cwd = call(run, "web.1", "/cwd")[1]
    assert cwd == os.path.join(run.run_dir, "pods", "web.1", "app")
    if expected == "overlay":   # mounted in the replica's namespace only
        assert os.listdir(cwd) == []
    assert read(run, "web.1", ".dashscale/state.json")[0] == 404   # the run dir is left out
    # Still the replica supervisord started (exec all the way: its signals reach gunicorn),
    # with its memory measured and its log shown.
    web1 = run.replica("web.1")
    assert "gunicorn" in " ".join(psutil.Process(web1["pid"]).cmdline())
    wait_for(lambda: run.replica("web.1")["memory_bytes"] > 0, 10, message="web.1's memory")
    wait_for(lambda: "web.1" in run.output() and "Listening at" in run.output(), 10,
             message="web.1's log")

    # ../mount: one directory for every process, on the host under .dashscale/mount.
    write(run, "web.2", "../mount/shared.txt", "kept")
    assert read(run, "web.1", "../mount/shared.txt") == (200, "kept")
    assert read(run, "worker.1", "../mount/shared.txt") == (200, "kept")
    assert (open(os.path.join(fs["mount"], "shared.txt")).read()) == "kept"

    # A pod restart: its disk starts again from the deploy; the mount stays.
    restart_one(run, "web.1")
    assert read(run, "web.1", "data.txt")[0] == 404
    assert read(run, "web.1", "../mount/shared.txt") == (200, "kept")

    # A code edit in place (as many editors save) does not reach running replicas...
    with open(app_dir / "version.txt", "r+") as f:
        f.write("v2")
    assert read(run, "web.2", "version.txt") == (200, "v1")
    restart_one(run, "web.1")   # ...nor one pod's restart
    assert read(run, "web.1", "version.txt") == (200, "v1")
    # ...until a roll: every new replica runs the tree as it is now.
    before = pids(run)
    assert run.cli("restart", "web", "--rolling").returncode == 0
    after = pids(run)
    assert len(after) == 3 and after["worker.1"] == before["worker.1"]
    assert not set(after.values()) & {before["web.1"], before["web.2"]}
    for name in after:
        assert read(run, name, "../mount/shared.txt") == (200, "kept")
        assert read(run, name, "version.txt") == (200, "v1" if name == "worker.1" else "v2")
    assert sorted(os.listdir(os.path.join(run.run_dir, "pods"))) == sorted(after)  # removed go
    # A scale-up runs what the other replicas of its type run (worker: still v1).
    assert run.cli("scale", "worker=2").returncode == 0
    after = pids(run)
    assert read(run, "worker.2", "version.txt") == (200, "v1")

    # A Procfile reload rolls both types: the mount is still there for all.
    run_procfile = PROCFILE.replace("--workers 1\n", "--workers 1 --timeout 40\n")
    (app_dir / "Procfile").write_text(run_procfile)
    wait_for(lambda: len(pids(run)) == 4 and not set(pids(run).values()) & set(after.values()),
             60, message="the Procfile roll")
    for name in pids(run):
        assert read(run, name, "../mount/shared.txt") == (200, "kept")
        assert read(run, name, "version.txt") == (200, "v2")
    assert len(os.listdir(os.path.join(run.run_dir, "deploys"))) == 1  # old deploys go
    # A restart of a whole type is a deploy too (of that type only).
    (app_dir / "version.txt").write_text("v3")
    before = pids(run)
    assert run.cli("restart", "worker").returncode == 0
    wait_for(lambda: all(p != before[n] for n, p in pids(run).items() if n.startswith("worker"))
             and all(r["ready"] for r in run.status()["replicas"]), 30, message="workers back")
    assert {n: read(run, n, "version.txt")[1] for n in pids(run)} == \
        {n: "v3" if n.startswith("worker") else "v2" for n in pids(run)}

    run.stop()
    assert overlay_mounts() == []
    assert not os.path.exists(os.path.join(run.run_dir, "pods"))
    assert open(os.path.join(run.run_dir, "mount", "shared.txt")).read() == "kept"
    assert not (app_dir / "data.txt").exists() and not (app_dir.parent / "mount").exists()


@pytest.mark.slow
def test_shared_fs_runs_in_the_users_directory(dashscale, app_dir):
    run = dashscale("web: gunicorn disk_app:app --workers 1\n", formation="web=2",
                    args=["--shared-fs"])
    assert run.status()["filesystem"] == {"mode": "shared", "mount": None, "deploy": None}
    assert call(run, "web.1", "/cwd")[1] == str(app_dir)
    write(run, "web.1", "data.txt", "one")
    assert read(run, "web.2", "data.txt") == (200, "one")
    assert (app_dir / "data.txt").read_text() == "one"
    assert not os.path.exists(os.path.join(run.run_dir, "pods"))


@pytest.mark.slow
def test_mount_setting_names_the_shared_directory(dashscale, app_dir, tmp_path_factory):
    shared = tmp_path_factory.mktemp("persistent")
    (app_dir / "dashscale.ini").write_text(f"[dashscale]\nmount = {shared}\n")
    run = dashscale("web: gunicorn disk_app:app --workers 1\n")
    assert run.status()["filesystem"]["mount"] == str(shared)
    write(run, "web.1", "../mount/x.txt", "y")
    assert (shared / "x.txt").read_text() == "y"


@pytest.mark.parametrize("line, message", [
    ("shared_fs = maybe", "shared_fs: 'maybe' is not one of true, false (or yes/no, on/off, 1/0)"),
    ("pod_disk = zfs", "pod_disk: 'zfs' is not one of auto, overlay, copy"),
])
def test_bad_settings_are_one_line_errors(dashscale, app_dir, line, message):
    (app_dir / "Procfile").write_text("web: gunicorn disk_app:app\n")
    (app_dir / "dashscale.ini").write_text(f"[dashscale]\n{line}\n")
    from dashscale_local.testing import Run
    run = Run(app_dir)
    result = run.cli("start", "--port", str(run.port), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"dashscale: {app_dir / 'dashscale.ini'}: {message}"
    assert not os.path.exists(os.path.join(run.run_dir, "pods"))
