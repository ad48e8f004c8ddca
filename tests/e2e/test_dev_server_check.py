"""`app.run(...)` at module level in the module gunicorn imports (each worker would start
Dash's development server): `check` flags it, `init` lists it as a fix; `run_server`
findings follow the Dash of the replicas' environment, not dashscale's."""
import json
import os
import shutil
import sys

import pytest
from click.testing import CliRunner

from dashscale_local.appsource import dash_version
from dashscale_local.cli import main
from tests.venvs import cached_venv
from tests import TESTS

SHAPE = os.path.join(TESTS, "fixtures", "shapes", "run_at_import")
RUN_LINE = 16  # `app.run(...)` in the fixture
GUARD = '`if __name__ == "__main__":`'
# Dash 2.0 (before app.run existed, added in 2.4) as the app's own environment
OLD_PINS = ["dash==2.0.0", "flask==2.0.3", "werkzeug==2.0.3", "gunicorn==20.0.4",
            "setuptools<70"]


def app_dir(tmp_path, procfile=None, run_server=False):
    shutil.copytree(SHAPE, tmp_path, dirs_exist_ok=True)
    if run_server:
        source = (tmp_path / "app.py").read_text()
        (tmp_path / "app.py").write_text(source.replace("app.run(", "app.run_server("))
    if procfile:
        (tmp_path / "Procfile").write_text(procfile)
    return tmp_path


def check(directory, *args):
    result = CliRunner().invoke(main, ["check", "--json", "-f",
                                       str(directory / "Procfile"), *args])
    return result.exit_code, json.loads(result.stdout)


def test_module_level_app_run_is_an_error_when_gunicorn_imports_it(tmp_path):
    code, data = check(app_dir(tmp_path, "web: gunicorn app:server --workers 2\n"))
    assert code == 2
    [error] = data["errors"]
    assert (os.path.basename(error["file"]), error["line"], error["code"]) == \
        ("app.py", RUN_LINE, "dev-server-at-import")
    assert error["message"] == (
        "'app.run(' at module level starts Dash's development server when gunicorn "
        f"imports app: put it under {GUARD}")


def test_module_level_app_run_is_fine_when_the_procfile_runs_the_file(tmp_path):
    code, data = check(app_dir(tmp_path, "web: python app.py\n"))
    assert code == 0 and data["errors"] == []
    assert [w["code"] for w in data["warnings"]] == ["web-not-wsgi"]


def test_init_lists_the_module_level_run_as_a_fix(tmp_path):
    directory = app_dir(tmp_path)
    result = CliRunner().invoke(main, ["init", "-f", str(directory / "Procfile")])
    assert result.exit_code == 0, result.output
    assert (f"fix: app.py:{RUN_LINE}: 'app.run(' at module level starts Dash's development "
            f"server when gunicorn imports app: put it under {GUARD}\n") in result.output
    assert "next: dashscale start  (after the fixes above)" in result.output


def test_run_server_at_module_level_on_dash_3_says_import_fails(tmp_path):
    version = dash_version(sys.executable)
    if version is None or version[0] < 3:
        pytest.skip(f"Dash {version} in dashscale's environment: run_server exists")
    code, data = check(app_dir(tmp_path, "web: gunicorn app:server -w 2\n", run_server=True))
    assert code == 2
    [error] = data["errors"]
    assert (error["line"], error["code"]) == (RUN_LINE, "run-server-removed")
    assert error["message"] == (
        "'app.run_server(' was removed in Dash 3 (the replicas' environment has Dash "
        f"{'.'.join(map(str, version))}): gunicorn (web) fails to import app; use "
        f"'app.run(' under {GUARD}")


@pytest.mark.slow  # builds (once, then cached) a venv with Dash 2.0
def test_run_server_follows_the_dash_of_the_app_environment(tmp_path):
    old = cached_venv(sys.executable, OLD_PINS)
    directory = app_dir(tmp_path, "web: gunicorn app:server -w 2\n", run_server=True)
    code, data = check(directory, "--python", str(old / "bin" / "python"))
    assert code == 2 and data["python"]["path"] == str(old / "bin" / "python")
    [error] = data["errors"]  # Dash 2.0 has run_server (and no app.run): not "removed"
    assert (error["line"], error["code"]) == (RUN_LINE, "dev-server-at-import")
    assert error["message"] == (
        "'app.run_server(' at module level starts Dash's development server when gunicorn "
        f"imports app: put it under {GUARD}")
    assert not any("'app.run('" in f["message"] for f in data["errors"] + data["warnings"])
