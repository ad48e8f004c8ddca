"""`dashscale check`: a corpus of Procfiles and apps, each with the findings (file, line,
code) it must produce (`--measure` on a real replica: tests/e2e/test_check.py)."""
import json
import os
import shutil
import sys
import textwrap

import pytest
from click.testing import CliRunner

from dashscale_local.cli import main
from tests import TESTS

APP_WITH_ENGINE = """\
import os

from sqlalchemy import create_engine
import redis as r
import helpers


def lazily():
    return create_engine("sqlite://")   # after the fork: fine

engine = create_engine(os.environ.get("DATABASE_URL", "sqlite://"))
if os.environ.get("CACHE"):
    cache = r.Redis.from_url(os.environ["CACHE"])
server = object()
"""
HELPERS_WITH_POOL = """\
from psycopg2 import pool as pg

POOL = pg.ThreadedConnectionPool(1, 4)
"""
PLAIN_APP = "server = object()\n"


def run_check(directory, *args, procfile="Procfile"):
    result = CliRunner().invoke(main, ["check", "--json", "-f",
                                       os.path.join(str(directory), procfile), *args])
    data = json.loads(result.stdout)
    return result.exit_code, data


def found(data, kind="warnings"):
    """[(basename of file, line, code)] of the findings."""
    return sorted((os.path.basename(f["file"]), f["line"], f["code"]) for f in data[kind])


def project(tmp_path, procfile, files=None):
    for name, text in {"app.py": PLAIN_APP, **(files or {})}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (tmp_path / "Procfile").write_text(procfile)
    return tmp_path


# Each case: Procfile, extra files, expected warnings, expected errors, exit code.
CASES = {
    "clean-3-workers": (
        "web: gunicorn app:server --workers 3\n", {}, [], [], 0),
    "preload-create-engine": (
        "web: gunicorn app:server --preload -w 2\n",
        {"app.py": APP_WITH_ENGINE, "helpers.py": HELPERS_WITH_POOL},
        [("app.py", 11, "preload-shared-pool"), ("app.py", 13, "preload-shared-pool"),
         ("helpers.py", 3, "preload-shared-pool")], [], 0),
    "engine-without-preload": (
        "web: gunicorn app:server -w 2\n", {"app.py": APP_WITH_ENGINE}, [], [], 0),
    "preload-in-package": (
        "web: gunicorn pkg.dash_app:server --preload -w 2\n",
        {"pkg/__init__.py": "", "pkg/dash_app.py": "from . import db\nserver = 1\n",
         "pkg/db.py": "import redis\nclient = redis.StrictRedis()\n"},
        [("db.py", 2, "preload-shared-pool")], [], 0),
    "workers-1": (
        "web: gunicorn app:server -w 1\n", {}, [("Procfile", 1, "gunicorn-workers")], [], 0),
    "workers-8": (
        "web: gunicorn app:server --workers=8\n", {},
        [("Procfile", 1, "gunicorn-workers")], [], 0),
    "workers-default": (
        "web: gunicorn app:server\n", {}, [("Procfile", 1, "gunicorn-workers")], [], 0),
    "web-concurrency-in-env": (
        "web: gunicorn app:server\n", {".env": "DEBUG=1\nWEB_CONCURRENCY=8\n"},
        [(".env", 2, "gunicorn-workers")], [], 0),
    "web-concurrency-ok": (
        "web: gunicorn app:server\n", {".env": "WEB_CONCURRENCY=2\n"}, [], [], 0),
    "workers-from-env-var": (
        "web: gunicorn app:server -w $WORKERS\n", {".env": "WORKERS=6\n"},
        [("Procfile", 1, "gunicorn-workers")], [], 0),
    "gunicorn-conf-file": (
        "web: gunicorn app:server\n",
        {"gunicorn.conf.py": "bind = '0.0.0.0:8000'\n\nworkers = 6\npreload_app = True\n",
         "app.py": "from sqlalchemy import create_engine\nengine = create_engine('x')\n"
                   "server = object()\n"},
        [("app.py", 2, "preload-shared-pool"), ("gunicorn.conf.py", 1, "bind-all-interfaces"),
         ("gunicorn.conf.py", 1, "bind-fixed-port"),
         ("gunicorn.conf.py", 3, "gunicorn-workers")], [], 0),
    "gunicorn-cmd-args": (
        "web: gunicorn app:server\n", {".env": "GUNICORN_CMD_ARGS='--workers 9'\n"},
        [(".env", 1, "gunicorn-workers")], [], 0),
    "bind-0.0.0.0": (
        "web: gunicorn app:server -w 2 --bind 0.0.0.0:$PORT\n", {},
        [("Procfile", 1, "bind-all-interfaces")], [], 0),
    "bind-all-by-empty-host": (
        "web: gunicorn app:server -w 2 -b :${PORT}\n", {},
        [("Procfile", 1, "bind-all-interfaces")], [], 0),
    "bind-fixed-port": (
        "web: gunicorn app:server -w 2 --bind 127.0.0.1:8000\n", {},
        [("Procfile", 1, "bind-fixed-port")], [], 0),
    "python-options-before-script": (
        "web: gunicorn app:server -w 2\nworker: python -u -W ignore w.py\n", {"w.py": ""},
        [], [], 0),
    "python-app-py": (
        "web: python app.py\n", {}, [("Procfile", 1, "web-not-wsgi")], [], 0),
    "dev-server-on-all-interfaces": (
        "web: flask run --host 0.0.0.0 --port $PORT\n", {},
        [("Procfile", 1, "bind-all-interfaces"), ("Procfile", 1, "web-not-wsgi")], [], 0),
    "other-wsgi-servers": (
        "web: waitress-serve --port=$PORT app:server\n"
        "api: newrelic-admin run-program gunicorn app:server -w 2\n"
        "worker: python -m tasks --queue default\n", {"tasks.py": ""}, [],
        # Neither program is installed in the environment the replicas would run in.
        [("Procfile", 1, "command-not-installed"), ("Procfile", 2, "command-not-installed")], 2),
    "missing-python-module": (
        "web: gunicorn app:server -w 2\nworker: python -m no_such_tasks_mod\n", {}, [],
        [("Procfile", 2, "app-module-missing")], 2),
    "missing-module": (
        "web: gunicorn nothere:server -w 2\n", {}, [],
        [("Procfile", 1, "app-module-missing")], 2),
    "missing-script": (
        "web: gunicorn app:server -w 2\nworker: python worker.py\n", {}, [],
        [("Procfile", 2, "app-module-missing")], 2),
    "no-app-module": (
        "web: gunicorn -w 2\n", {}, [], [("Procfile", 1, "app-module-missing")], 2),
    "skipped-lines": (
        "# comment\nweb: gunicorn app:server -w 2\nworker python w.py\n\n  indented: x\n",
        {}, [("Procfile", 3, "procfile-skipped-line"), ("Procfile", 5, "procfile-skipped-line")],
        [], 0),
    "no-web": (
        "worker: gunicorn app:server -w 2\n", {}, [("Procfile", None, "no-web")], [], 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_corpus(tmp_path, name):
    procfile, files, warnings, errors, code = CASES[name]
    directory = project(tmp_path, procfile, files)
    exit_code, data = run_check(directory)
    assert found(data, "warnings") == sorted(warnings, key=lambda w: (w[0], w[1] or 0, w[2]))
    assert found(data, "errors") == errors
    assert exit_code == code
    assert set(data) == {"processes", "release", "warnings", "errors", "python"}
    assert data["release"] == []  # release steps: none here
    for finding in data["warnings"] + data["errors"]:
        assert set(finding) >= {"file", "line", "message"} and finding["message"]


def test_preload_message_and_json_shape(tmp_path):
    directory = project(tmp_path, "web: gunicorn app:server --preload -w 2\nworker: python w.py\n",
                        {"app.py": APP_WITH_ENGINE, "helpers.py": "", "w.py": ""})
    code, data = run_check(directory)
    assert code == 0
    assert data["processes"] == {"web": "gunicorn app:server --preload -w 2",
                                 "worker": "python w.py"}
    [engine] = [w for w in data["warnings"] if w["line"] == 11]
    assert engine["file"] == os.path.join(str(directory), "app.py")
    assert "create_engine" in engine["message"] and "shared between workers" in \
        engine["message"]


def test_paths_are_shown_as_given(tmp_path, monkeypatch):
    directory = project(tmp_path / "proj", "web: gunicorn app:server -w 1\nbad line\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "-f", "proj/Procfile"])
    assert result.exit_code == 0
    out = result.stdout
    assert "valid Procfile detected (web)" in out
    assert "proj/Procfile:1: warning: web: 1 gunicorn worker" in out
    assert "proj/Procfile:2: warning: not a 'name: command' line" in out
    assert "0 errors, 2 warnings" in out
    assert directory.exists()


def test_text_output_and_errors_exit_2(tmp_path):
    directory = project(tmp_path, "web: gunicorn missing_mod:server -w 2\n")
    result = CliRunner().invoke(main, ["check", "-f", str(directory / "Procfile")])
    assert result.exit_code == 2
    assert f"{directory}/Procfile:1: error: web: app module 'missing_mod' not found" in \
        result.stdout


def test_unreadable_procfile(tmp_path):
    (tmp_path / "Procfile").write_text("web: a\nweb: b\n")
    code, data = run_check(tmp_path)
    assert code == 2
    [error] = data["errors"]
    assert error["line"] == 2 and "duplicate" in error["message"]
    result = CliRunner().invoke(main, ["check", "-f", str(tmp_path / "Procfile")])
    assert result.exit_code == 2 and "Procfile:2: duplicate" in result.stderr
    code, data = run_check(tmp_path / "nowhere")
    assert code == 2 and "not found" in data["errors"][0]["message"]


# ─── the app's source: module, attribute, run_server (fixture apps of real shapes) ───
SHAPES = os.path.join(TESTS, "fixtures", "shapes")


def shape(tmp_path, name, procfile):
    shutil.copytree(os.path.join(SHAPES, name), tmp_path, dirs_exist_ok=True)
    (tmp_path / "Procfile").write_text(procfile)
    return tmp_path


def test_missing_attribute_is_an_error_with_the_fix(tmp_path):
    directory = shape(tmp_path, "no_server", "web: gunicorn app:server --workers 2\n")
    code, data = run_check(directory)
    assert code == 2
    [error] = data["errors"]
    assert (error["code"], error["line"]) == ("app-attr-missing", 1)
    assert error["message"] == (
        "web: 'app' defines no 'server' (gunicorn needs a WSGI callable): add "
        f"'server = app.server' after 'app = Dash(...)' ({directory}/app.py:6)")


@pytest.mark.parametrize("name, procfile", [
    ("packaged", "web: gunicorn app.main:server --workers 2\n"),
    ("toplevel_main", "web: gunicorn main:server --workers 2\n"),
    ("pages", "web: gunicorn app:server --workers 2\n"),
    ("chdir", "web: gunicorn --chdir src dashboard:server --workers 2\n"),
    ("import_error", "web: gunicorn app:server --workers 2\n"),  # only a run can tell
])
def test_apps_of_real_shapes_have_no_findings(tmp_path, name, procfile):
    code, data = run_check(shape(tmp_path, name, procfile))
    assert (code, data["errors"], data["warnings"]) == (0, [], [])


@pytest.mark.parametrize("procfile, module", [
    ("web: gunicorn app.mian:server -w 2\n", "app.mian"),
    ("web: gunicorn --chdir source dashboard:server -w 2\n", "dashboard"),
])
def test_missing_module_of_a_packaged_app(tmp_path, procfile, module):
    name = "packaged" if module.startswith("app.") else "chdir"
    code, data = run_check(shape(tmp_path, name, procfile))
    assert code == 2
    [error] = data["errors"]
    assert error["code"] == "app-module-missing" and repr(module) in error["message"]


@pytest.mark.parametrize("source", [
    "from dash_setup import *\n",                        # a star import may bind it
    "globals()['server'] = object()\n",                  # bound at run time
    "def __getattr__(name):\n    return object()\n",     # module __getattr__
    "try:\n    from wsgi import server\nexcept ImportError:\n    server = None\n",
    "if True:\n    server, other = object(), 1\n",
])
def test_attribute_check_is_silent_when_unsure_or_bound(tmp_path, source):
    directory = project(tmp_path, "web: gunicorn app:server -w 2\n", {"app.py": source})
    code, data = run_check(directory)
    assert [e["code"] for e in data["errors"]] == [] and code == 0


def test_attribute_under_main_guard_does_not_count(tmp_path):
    source = "import flask\nif __name__ == '__main__':\n    server = flask.Flask('x')\n"
    code, data = run_check(project(tmp_path, "web: gunicorn app:server -w 2\n",
                                   {"app.py": source}))
    assert [e["code"] for e in data["errors"]] == ["app-attr-missing"]
    assert "define 'server' at module level" in data["errors"][0]["message"]


def needs_dash_3():
    from dashscale_local.appsource import dash_version
    version = dash_version(sys.executable)
    assert version is not None, "the test venv has Dash"
    if version[0] < 3:
        pytest.skip(f"Dash {version} here: run_server still exists")
    return ".".join(map(str, version))


def test_run_server_on_dash_3_reached_from_the_procfile_is_an_error(tmp_path):
    version = needs_dash_3()
    directory = shape(tmp_path, "legacy", "web: python app.py\n")
    code, data = run_check(directory)
    assert code == 2
    [error] = data["errors"]
    assert (os.path.basename(error["file"]), error["line"], error["code"]) == \
        ("app.py", 10, "run-server-removed")
    assert error["message"] == ("'app.run_server(' was removed in Dash 3 (the replicas' "
                                f"environment has Dash {version}): `python app.py` (web) "
                                "reaches it; use 'app.run('")


def test_run_server_not_reached_is_a_warning(tmp_path):
    needs_dash_3()
    directory = shape(tmp_path, "legacy", "web: gunicorn app:server -w 2\n")
    code, data = run_check(directory)
    assert code == 0 and data["errors"] == []
    assert found(data) == [("app.py", 10, "run-server-removed")]


def test_dash_version_comes_from_the_given_interpreter(tmp_path):
    from dashscale_local.appsource import dash_version
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 2.18.1\n")
    fake.chmod(0o755)
    assert dash_version(str(fake)) == (2, 18, 1)
    assert dash_version(str(tmp_path / "missing")) is None
