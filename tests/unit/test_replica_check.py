"""`dashscale check --replicas` without replicas: the layout and dependency diffs, the
static per-process-secret warning, and Dash Enterprise's system environment variables
(the live comparison on real replicas: tests/e2e/test_replica_check.py)."""
import json
import os

from click.testing import CliRunner

from dashscale_local.cli import main
from dashscale_local.launch import de_app_name, system_env
from dashscale_local.replica_check import diff_dependencies, diff_layout
from tests.unit.test_check import found, project, run_check

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


def test_nothing_running_is_a_usage_error(tmp_path):
    project(tmp_path, DASH_PROCFILE)
    result = CliRunner().invoke(main, ["check", "--replicas", "-f",
                                       os.path.join(str(tmp_path), "Procfile")])
    assert result.exit_code == 2 and "no dashscale is running here" in result.stderr
    assert not os.path.exists(tmp_path / ".dashscale" / "replica-check.json")
    result = CliRunner().invoke(main, ["check", "--replicas", "--measure", "-f",
                                       os.path.join(str(tmp_path), "Procfile")])
    assert result.exit_code == 2 and "takes no --measure" in result.stderr
