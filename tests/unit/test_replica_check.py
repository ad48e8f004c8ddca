"""`dashscale check --replicas` (live comparison of the web replicas), the static
per-process-secret warning, and Dash Enterprise's system environment variables."""
import json
import os
import urllib.request

import pytest
from click.testing import CliRunner

from dashscale_local.cli import main
from dashscale_local.launch import de_app_name, system_env
from dashscale_local.replica_check import diff_dependencies, diff_layout
from tests.test_check import found, project, run_check

DASH_PROCFILE = "web: gunicorn replica_app:server --workers 1\n"


# -- the comparison (sans-IO) -----------------------------------------------------------
def _div(id_, children=None, **props):
    return {"type": "Div", "namespace": "dash_html_components",
            "props": {"id": id_, "children": children, **props}}


def test_layout_diff_names_ids_values_and_structure():
    names = ("web.1", "web.2")
    a = _div("root", [_div("graph-3f2a"), _div("caption", "started 1.5")])
    b = _div("root", [_div("graph-9c1d"), _div("caption", "started 2.5")])
    diffs = diff_layout(a, b, names)
    assert [(k, i) for k, i, _ in diffs] == [("id", "graph-3f2a"), ("value", None)]
    assert "'graph-3f2a' on web.1, 'graph-9c1d' on web.2" in diffs[0][2]
    assert "'started 1.5' on web.1, 'started 2.5' on web.2" in diffs[1][2]
    assert "#'caption'.children" in diffs[1][2]
    shorter = _div("root", [_div("graph-3f2a")])
    assert [k for k, _, _ in diff_layout(a, shorter, names)] == ["structure"]
    assert diff_layout(a, json.loads(json.dumps(a)), names) == []


def test_dependency_diff_lists_unmatched_callbacks():
    def dep(output, inputs=("name.value",)):
        return {"output": output, "inputs": [{"id": i.split(".")[0],
                                              "property": i.split(".")[1]} for i in inputs]}
    diffs = diff_dependencies([dep("graph-3f2a.children"), dep("a.children")],
                              [dep("graph-9c1d.children"), dep("a.children", ["b.value"])],
                              ("web.1", "web.2"))
    details = sorted(d for _, _, d in diffs)
    assert any("'graph-3f2a.children' on web.1, 'graph-9c1d.children' on web.2" in d
               for d in details)
    assert any("'a.children': inputs" in d for d in details)


# -- the static warning ------------------------------------------------------------------
SECRET_APP = """\
import os
import secrets
from uuid import uuid4

import dash

app = dash.Dash(__name__)
app.server.secret_key = os.urandom(16)
app.server.config["SECRET_KEY"] = secrets.token_hex(16)
KEY = str(uuid4())
app.server.config.update(SECRET_KEY=KEY)
app.server.config.update({"SECRET_KEY": os.environ.get("SECRET_KEY", os.urandom(8))})


def later():
    app.server.secret_key = os.urandom(16)   # not at import: not reported

server = app.server
"""
SAFE_APP = """\
import os

import dash

app = dash.Dash(__name__)
app.server.secret_key = os.environ["SECRET_KEY"]
server = app.server
"""


def test_static_warning_for_per_process_secret(tmp_path):
    project(tmp_path, "web: gunicorn app:server -w 2\n", {"app.py": SECRET_APP})
    code, data = run_check(tmp_path)
    assert code == 0
    assert [f for f in found(data) if f[2] == "per-process-secret"] == [
        ("app.py", 8, "per-process-secret"), ("app.py", 9, "per-process-secret"),
        ("app.py", 11, "per-process-secret"), ("app.py", 12, "per-process-secret")]
    messages = {f["line"]: f["message"] for f in data["warnings"]
                if f["code"] == "per-process-secret"}
    assert "os.urandom()" in messages[8] and "os.environ" in messages[8]
    assert "secrets.token_hex()" in messages[9]
    assert "uuid.uuid4() at import (via KEY)" in messages[11]
    assert "when the variable is not set" in messages[12]


def test_no_warning_for_a_key_from_the_environment(tmp_path):
    project(tmp_path, "web: python app.py\n", {"app.py": SAFE_APP})
    _code, data = run_check(tmp_path)
    assert not [f for f in data["warnings"] if f["code"] == "per-process-secret"]
    project(tmp_path, "web: python app.py\n", {"app.py": SECRET_APP})
    _code, data = run_check(tmp_path)
    assert ("app.py", 8, "per-process-secret") in found(data)  # python app.py too


# -- DE's system environment variables ---------------------------------------------------
def test_system_env_values():
    assert de_app_name("/x/My_Dash App.v2") == "my-dash-app-v2"
    assert de_app_name("/x/2024") == "app"
    assert system_env("/x/sales", "") == {"DASH_APP_NAME": "sales",
                                          "DASH_REQUESTS_PATHNAME_PREFIX": "/",
                                          "DASH_ROUTES_PATHNAME_PREFIX": "/"}
    assert system_env("/x/sales", "shop")["DASH_ROUTES_PATHNAME_PREFIX"] == "/shop/"


def _env_of(port, keys):
    url = f"http://127.0.0.1:{port}/env?keys={','.join(keys)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_every_process_sees_de_variables_and_env_file_wins(dashscale, app_dir):
    (app_dir / ".env").write_text("DASH_APP_NAME=from-dotenv\n")
    run = dashscale("web: gunicorn echo_app:app -w 1\nworker: gunicorn echo_app:app -w 1\n",
                    formation="web=2,worker=1")
    keys = ["DASH_APP_NAME", "DASH_REQUESTS_PATHNAME_PREFIX", "DASH_ROUTES_PATHNAME_PREFIX"]
    for r in run.status()["replicas"]:
        assert _env_of(r["port"], keys) == {"DASH_APP_NAME": "from-dotenv",
                                            "DASH_REQUESTS_PATHNAME_PREFIX": "/",
                                            "DASH_ROUTES_PATHNAME_PREFIX": "/"}, r["name"]


# -- check --replicas on real replicas ---------------------------------------------------
def _check(run):
    result = run.cli("check", "--replicas", "--json", timeout=120)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None, \
        result.stderr


def _start(dashscale, app_dir, mode, formation="web=2"):
    (app_dir / ".env").write_text(f"REPLICA_APP_MODE={mode}\n")
    return dashscale(DASH_PROCFILE, formation=formation, timeout=120)


@pytest.mark.slow
def test_ids_drawn_per_process_are_reported(dashscale, app_dir):
    run = _start(dashscale, app_dir, "ids")
    code, data, err = _check(run)
    assert code == 1, err
    assert set(data) >= {"divergences", "replicas", "agree"} and data["agree"] is False
    assert [r["name"] for r in data["replicas"]] == ["web.1", "web.2"]
    by_what = {}
    for d in data["divergences"]:
        assert set(d) >= {"replica", "what", "id", "detail", "cause"}
        assert d["replica"] == "web.2"
        by_what.setdefault(d["what"], []).append(d)
    ids = [d for d in by_what["layout"] if d["id"] and d["id"].startswith("graph-")]
    assert ids and "on web.1" in ids[0]["detail"] and "on web.2" in ids[0]["detail"]
    assert "fixed ids" in ids[0]["cause"]
    assert any("started at" in d["detail"] and "import" in d["cause"]
               for d in by_what["layout"])
    assert any(d["id"].startswith("graph-") for d in by_what["dependencies"])
    assert "session" not in by_what  # the key is shared
    # The dashboard shows the last result.
    _status, _headers, body = run.get("/_dashscale/api/status")
    shown = json.loads(body)["replica_check"]
    assert shown["agree"] is False and len(shown["divergences"]) == len(data["divergences"])
    text = run.cli("check", "--replicas")
    assert text.returncode == 1 and "likely cause" in text.stdout


@pytest.mark.slow
def test_clean_app_passes(dashscale, app_dir):
    run = _start(dashscale, app_dir, "clean")
    code, data, err = _check(run)
    assert (code, data["agree"], data["divergences"]) == (0, True, []), err
    assert all(r["cookies"] == ["session"] for r in data["replicas"])  # compared, accepted


@pytest.mark.slow
def test_per_process_secret_loses_the_session(dashscale, app_dir):
    run = _start(dashscale, app_dir, "session")
    code, data, err = _check(run)
    assert code == 1, err
    sessions = [d for d in data["divergences"] if d["what"] == "session"]
    assert {d["replica"] for d in sessions} == {"web.1", "web.2"}
    assert sessions[0]["id"] == "session" and "secret key" in sessions[0]["cause"]
    assert not [d for d in data["divergences"] if d["what"] != "session"]


@pytest.mark.slow
def test_one_replica_or_no_dash_app_is_a_usage_error(dashscale, app_dir):
    run = dashscale("web: gunicorn echo_app:app -w 1\n")
    result = run.cli("check", "--replicas")
    assert result.returncode == 2 and "at least 2 ready web replicas" in result.stderr
    run.cli("scale", "web=2", check=True)
    run.wait_ready(count=2)
    result = run.cli("check", "--replicas")  # echo_app is not a Dash app
    assert result.returncode == 2 and "no web replica serves a Dash app under /" in \
        result.stderr, result.stderr


def test_nothing_running_is_a_usage_error(tmp_path):
    project(tmp_path, DASH_PROCFILE)
    result = CliRunner().invoke(main, ["check", "--replicas", "-f",
                                       os.path.join(str(tmp_path), "Procfile")])
    assert result.exit_code == 2 and "no dashscale is running here" in result.stderr
    assert not os.path.exists(tmp_path / ".dashscale" / "replica-check.json")
    result = CliRunner().invoke(main, ["check", "--replicas", "--measure", "-f",
                                       os.path.join(str(tmp_path), "Procfile")])
    assert result.exit_code == 2 and "takes no --measure" in result.stderr
