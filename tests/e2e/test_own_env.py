"""An app in its own environment: dashscale (run from the repo's venv) starts the app with
the app's venv, whichever way that venv is given; installing dashscale beside an app
pinned to old Dash/gunicorn changes none of its pins; a Procfile program missing from
the chosen venv is one line and exit 2 before anything starts.

The app venvs are real (python -m venv + pip from the index), cached across runs by
tests/venvs.py: two of them, ~1-2 min to build on a fresh machine.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from dashscale_local.testing import Run, processes_with_marker, wait_for
from tests import REPO, TESTS
from tests.venvs import cached_venv, clean_copy, older_python

FIXTURES = os.path.join(TESTS, "fixtures", "own_env")
FIXTURE_DEP = os.path.join(FIXTURES, "fixture_dep")
PROCFILE = "web: gunicorn app:server --workers 2\n"
# The oldest supported stack: Dash 2.0 runs on Flask/Werkzeug 2.0, gunicorn 20.0.
# gunicorn 20.0 imports pkg_resources: setuptools is pinned too (3.12+ venvs lack it).
OLD_PINS = ["dash==2.0.0", "flask==2.0.3", "werkzeug==2.0.3", "gunicorn==20.0.4",
            "setuptools<70"]
# Dash 3 and another gunicorn, on an interpreter older than dashscale's own when one exists.
CURRENT_PINS = ["dash==3.2.0", "gunicorn==23.0.0"]


@pytest.fixture(scope="session")
def app_venv():
    """A venv with fixture_dep, which dashscale's environment does not have."""
    return cached_venv(older_python(), CURRENT_PINS, [FIXTURE_DEP])


@pytest.fixture(scope="session")
def old_venv():
    """An app venv pinned to the oldest Dash and gunicorn we support (dashscale's Python,
    so that dashscale itself could be installed into it)."""
    return cached_venv(sys.executable, OLD_PINS, [FIXTURE_DEP])


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """dashscale's wheel, built from this checkout as `pip install <repo>` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    source = clean_copy(REPO, tmp_path_factory.mktemp("src") / "dashscale")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "-w", str(out), str(source)], check=True, timeout=600)
    (path,) = out.glob("dashscale_local-*.whl")
    return path


@pytest.fixture
def project(tmp_path):
    shutil.copy(os.path.join(FIXTURES, "app", "app.py"), tmp_path / "app.py")
    return tmp_path


def _post_callback(run, value):
    body = json.dumps({"output": "title.children",
                       "outputs": {"id": "title", "property": "children"},
                       "inputs": [{"id": "region", "property": "value", "value": value}],
                       "changedPropIds": ["region.value"]}).encode()
    status, headers, data = run.get("/_dash-update-component", data=body, method="POST",
                                    headers={"Content-Type": "application/json"})
    assert status == 200
    return json.loads(data)["response"]["title"]["children"], headers["X-Dashscale-Replica"]


def _runtime(run):
    return json.loads(run.get("/runtime")[2])


def _serves_from(run, venv, source):
    """The replicas run ``venv``'s Python, import fixture_dep from it, serve callbacks,
    and status says where the environment came from."""
    venv = os.path.realpath(venv)
    for _ in range(4):  # both replicas (round-robin)
        rt = _runtime(run)
        assert os.path.realpath(rt["prefix"]) == venv, rt
        assert os.path.realpath(rt["fixture_dep"]).startswith(venv + os.sep), rt
    assert _post_callback(run, "south")[0] == "SOUTH (fixture-dep-1.0)"
    st = json.loads(run.cli("status", "--json", check=True).stdout)
    assert st["python"]["source"] == source
    assert os.path.realpath(os.path.dirname(os.path.dirname(st["python"]["path"]))) == venv
    assert "dashscale | python: " in run.output()
    return rt


@pytest.mark.slow
def test_activated_app_venv_runs_the_app(dashscale, project, app_venv):
    # As after `source .venv/bin/activate` elsewhere: VIRTUAL_ENV set, its bin first.
    env = {"VIRTUAL_ENV": str(app_venv),
           "PATH": str(app_venv / "bin") + os.pathsep + os.environ["PATH"]}
    run = dashscale(PROCFILE, formation="web=2", env=env, directory=project)
    rt = _serves_from(run, app_venv, "VIRTUAL_ENV")
    assert rt["virtual_env"] == str(app_venv)
    assert rt["dash"].startswith("3.") and rt["gunicorn"] == "23.0.0"
    assert f"python: {app_venv} (the active VIRTUAL_ENV)" in run.output()


@pytest.mark.slow
def test_dot_venv_next_to_the_procfile_runs_the_app(dashscale, project, app_venv,
                                                     monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)  # Run's env starts from os.environ
    os.symlink(app_venv, project / ".venv")
    run = dashscale(PROCFILE, formation="web=2", directory=project)
    rt = _serves_from(run, app_venv, ".venv")
    assert rt["virtual_env"] == str(project / ".venv")
    check = run.cli("check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["python"]["source"] == ".venv"


@pytest.mark.slow
def test_oldest_supported_dash_and_gunicorn_serve_callbacks(dashscale, project, old_venv,
                                                              monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    run = dashscale(PROCFILE, formation="web=2", args=["--python", str(old_venv)],
                    directory=project)
    rt = _serves_from(run, old_venv, "--python")
    assert (rt["dash"], rt["gunicorn"]) == ("2.0.0", "20.0.4")
    answers = {_post_callback(run, "east") for _ in range(4)}
    assert answers == {("EAST (fixture-dep-1.0)", "web.1"), ("EAST (fixture-dep-1.0)", "web.2")}


@pytest.mark.slow
def test_installing_dashscale_changes_no_pin(old_venv, wheel):
    """pip's own plan for installing dashscale into the pinned venv: nothing it already
    has is upgraded or downgraded (dashscale's dependencies fit the app's pins)."""
    python = str(old_venv / "bin" / "python")
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(
        subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True,
                       capture_output=True, text=True).stdout)}
    plan = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--quiet",
                           "--report", "-", str(wheel)], capture_output=True, text=True,
                          timeout=600)
    assert plan.returncode == 0, plan.stderr[-3000:]
    to_install = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                  for i in json.loads(plan.stdout)["install"]}
    assert "dashscale-local" in to_install
    changed = {name: (installed[name], version) for name, version in to_install.items()
               if name in installed}
    assert changed == {}, f"installing dashscale would change the app's pins: {changed}"
    for name, version in (pin.split("==") for pin in OLD_PINS if "==" in pin):
        assert installed[name] == version


@pytest.mark.slow
def test_wheel_installs_only_dashscale(wheel):
    """The built wheel: no top-level sample_app, and the sample app's stack only in the
    `demo` extra."""
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dashscale_local"}
    requires = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            requires.setdefault(re.match(r"[A-Za-z0-9_.-]+", spec).group(0), []).append(spec)
    for name in ("dash", "plotly", "pandas", "numpy"):
        assert requires[name] and all('extra == "demo"' in r for r in requires[name]), name
    assert any("extra" not in r for r in requires["gunicorn"])  # the doctor's parser
    assert "Requires-Python: >=3.11" in metadata


# ─── a program missing from the chosen environment ──────────────────────────────────────
def _bare_venv(path):
    """A venv without gunicorn (nor pip: none is needed to be a venv)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


def test_missing_gunicorn_is_one_line_before_anything_starts(project, monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    venv = _bare_venv(project / ".venv")
    run = Run(project, PROCFILE)
    result = subprocess.run(run.command("start", "-f", run.procfile, "--port", str(run.port),
                                        "--base-port", str(run.base_port)),
                            cwd=project, env=run.env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"dashscale: {run.procfile}:1: 'gunicorn' is not installed in {venv} (.venv next "
        f"to the Procfile): run {venv}/bin/python -m pip install gunicorn"]
    assert result.stdout == ""
    assert not os.path.exists(run.run_dir)  # nothing prepared, nothing started
    assert processes_with_marker(run.run_id) == []
    check = run.cli("check")
    assert check.returncode == 2
    assert (f"Procfile:1: error: 'gunicorn' is not installed in {venv} (.venv next to the "
            f"Procfile): run {venv}/bin/python -m pip install gunicorn") in check.stdout


def test_check_json_names_the_environment_and_the_missing_program(project, monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    venv = _bare_venv(project / "env")
    run = Run(project, "web: gunicorn app:server -w 2\nworker: python -m tasks\n")
    (project / "tasks.py").write_text("")
    result = run.cli("check", "--json", "--python", str(venv / "bin" / "python"))
    data = json.loads(result.stdout)
    assert result.returncode == 2
    assert data["python"] == {"path": str(venv / "bin" / "python"), "venv": str(venv),
                              "source": "--python", "why": "from --python"}
    errors = [(e["line"], e["code"]) for e in data["errors"]]
    assert errors == [(1, "command-not-installed")]  # python is in every venv


def test_bad_python_option_is_a_usage_error(project):
    run = Run(project, PROCFILE)
    result = run.cli("start", "--python", str(project / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip() == \
        f"dashscale: --python = {project / 'nope'}: no such file or directory"
    assert not os.path.exists(run.run_dir)


@pytest.mark.slow  # needs the app venv (built once, then cached)
def test_check_looks_for_modules_in_the_app_environment(project, app_venv, monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    run = Run(project, "web: gunicorn app:server -w 2\nworker: python -m fixture_dep\n")
    os.symlink(app_venv, project / ".venv")
    found = json.loads(run.cli("check", "--json").stdout)
    assert (found["errors"], found["python"]["source"]) == ([], ".venv")
    bare = _bare_venv(project / "bare")
    found = json.loads(run.cli("check", "--json", "--python", str(bare)).stdout)
    assert [(e["line"], e["code"]) for e in found["errors"]] == [
        (1, "command-not-installed"), (2, "app-module-missing")]


@pytest.mark.slow
def test_live_edit_to_a_missing_program_changes_nothing(dashscale, monkeypatch):
    """A Procfile saved with a program the environment lacks is reported with its line
    and the running replica keeps serving (no failed roll)."""
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    run = dashscale("web: gunicorn echo_app:app --workers 1\n")
    pid = run.replica("web.1")["pid"]
    with open(run.procfile, "w") as f:
        f.write("web: no-such-server echo_app:app\n")
    wait_for(lambda: "'no-such-server' is not installed in" in run.output(), 15,
             message="the reload error")
    line = next(text for text in run.output().splitlines()
                if "'no-such-server' is not" in text)
    assert f"{run.procfile}:1: 'no-such-server' is not installed in " in line
    assert "nothing changed" in line
    assert run.get("/")[0] == 200 and run.replica("web.1")["pid"] == pid


@pytest.mark.slow
def test_check_measure_runs_the_replica_in_the_app_environment(project, app_venv, monkeypatch):
    # fixture_dep is only in the app's venv: a replica run with dashscale's own gunicorn
    # would fail to import the app.
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    run = Run(project, PROCFILE)
    os.symlink(app_venv, project / ".venv")
    result = run.cli("check", "--measure", "--json", timeout=180)
    data = json.loads(result.stdout)
    assert result.returncode == 0, data
    assert data["measure"]["workers"] == 2 and data["measure"]["per_worker_bytes"] > 0
    assert processes_with_marker(run.run_id) == []
