"""`dashscale init`: the Procfile written for the Dash app found in a directory, the fixes
printed, the refusals (the real command and a run of `start`: tests/e2e/test_init.py)."""
import os
import shutil

from click.testing import CliRunner

from dashscale_local.cli import main
from tests import TESTS

PAGES_APP = os.path.join(TESTS, "apps", "pages_app")

FLAT = """\
import dash
from dash import html

app = dash.Dash(__name__)
server = app.server
app.layout = html.Div("hello from a flat app")

if __name__ == "__main__":
    app.run(debug=True)
"""

NO_SERVER = """\
from dash import Dash, html

app = Dash(__name__)
app.layout = html.Div("no server here")

if __name__ == "__main__":
    app.run_server(debug=True)
"""

FACTORY = """\
import dash_bootstrap_components as dbc
from dash import Dash


def create_app():
    app = Dash(__name__, external_stylesheets=[dbc.themes.BOOTSTRAP])
    return app
"""

MAIN = """\
from app import create_app

app = create_app()
server = app.server
"""


def tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def init(directory, *args, expect=0):
    result = CliRunner().invoke(main, ["init", "-f", str(directory / "Procfile"), *args])
    assert result.exit_code == expect, (result.output, result.exception)
    return result


def procfile(directory):
    return (directory / "Procfile").read_text()


def test_flat_app_with_server_and_gunicorn(tmp_path):
    tree(tmp_path, {"app.py": FLAT, "requirements.txt": "dash==2.17.1\ngunicorn>=20\n",
                    "utils.py": "x = 1\n"})
    res = init(tmp_path)
    assert procfile(tmp_path) == "web: gunicorn app:server --workers 2\n"
    assert "Dash app: app.py:4 (module app; defines `server`)" in res.output
    assert "web: gunicorn app:server --workers 2" in res.output
    assert "fix:" not in res.output and "also found" not in res.output


def test_app_without_server_and_requirements_without_gunicorn(tmp_path):
    tree(tmp_path, {"app.py": NO_SERVER, "requirements.txt": "dash\n# gunicorn later\n"})
    res = init(tmp_path)
    assert procfile(tmp_path) == "web: gunicorn app:server --workers 2\n"
    assert "fix: app.py:3: add `server = app.server` after the `app = Dash(...)` " \
           "statement (gunicorn loads app:server)" in res.output
    assert "fix: requirements.txt: add gunicorn" in res.output
    tree(tmp_path, {"pyproject.toml": "[project]\ndependencies = ['dash']\n"})
    (tmp_path / "requirements.txt").unlink()
    res = init(tmp_path, "--force")
    assert "fix: pyproject.toml: add gunicorn" in res.output
    (tmp_path / "pyproject.toml").unlink()
    assert "fix: no requirements.txt" in init(tmp_path, "--force").output


def test_app_packaged_as_a_folder(tmp_path):
    """The dash-bootstrap-components shape: app/__init__.py has a factory, main.py the
    module-level server; main:server is chosen and the package is listed."""
    tree(tmp_path, {"app/__init__.py": FACTORY, "app/layout.py": "LAYOUT = None\n",
                    "main.py": MAIN, "requirements.txt": "gunicorn\n"})
    res = init(tmp_path)
    assert procfile(tmp_path) == "web: gunicorn main:server --workers 2\n"
    assert "also found: app/__init__.py:6" in res.output and "fix:" not in res.output
    (tmp_path / "main.py").unlink()  # the factory alone: say how to expose it
    res = init(tmp_path, "--force")
    assert procfile(tmp_path) == "web: gunicorn app:server --workers 2\n"
    assert "fix: app/__init__.py:6: Dash(...) is created inside create_app()" in res.output


def test_multi_page_index_is_the_entry_point(tmp_path):
    """Dash's classic multi-page layout: app.py creates app and server, index.py imports
    them, sets the layout and imports the pages; gunicorn must load index:server."""
    tree(tmp_path, {
        "app.py": "import dash\n\napp = dash.Dash(__name__, suppress_callback_exceptions=True)"
                  "\nserver = app.server\n",
        "index.py": "from dash import dcc, html\n\nfrom app import app, server\n"
                    "from apps import overview\n\napp.layout = html.Div([dcc.Location(id='url'),"
                    " html.Div(id='page')])\n\nif __name__ == '__main__':\n"
                    "    app.run_server(debug=True)\n",
        "apps/__init__.py": "", "apps/overview.py": "from app import app\n",
        "requirements.txt": "dash==1.0.0\ngunicorn==19.9.0\n"})
    res = init(tmp_path)
    assert procfile(tmp_path) == "web: gunicorn index:server --workers 2\n"
    assert "Dash app: index.py:3 (module index; defines `server`)" in res.output
    assert "also found: app.py:3" in res.output and "fix:" not in res.output


def test_src_layout_and_nested_module(tmp_path):
    tree(tmp_path, {"src/dashboard/__init__.py": "", "requirements.txt": "gunicorn\n",
                    "src/dashboard/main.py": FLAT.replace("import dash\n", "import dash as d\n")
                    .replace("dash.Dash(", "d.Dash(")})
    init(tmp_path)
    assert procfile(tmp_path) == \
        "web: gunicorn dashboard.main:server --workers 2 --pythonpath src\n"


def test_pages_app(tmp_path):
    directory = tmp_path / "pages"
    shutil.copytree(PAGES_APP, directory)
    res = init(directory)
    assert procfile(directory) == "web: gunicorn app:server --workers 2\n"
    assert "Dash app: app.py:" in res.output  # pages/ register pages, they are not apps
    text = (directory / "app.py").read_text().replace("server = app.server\n", "")
    (directory / "app.py").write_text(text)
    res = init(directory, "--force")
    assert "fix: app.py:7: add `server = app.server`" in res.output


def test_skips_venvs_tests_and_the_run_dir(tmp_path):
    tree(tmp_path, {".venv/lib/python3.11/site-packages/dash/dash.py": FLAT,
                    "env2/pyvenv.cfg": "home = /usr\n", "env2/lib/app.py": FLAT,
                    "tests/test_app.py": FLAT, "node_modules/x/app.py": FLAT,
                    ".dashscale/app.py": FLAT, "notes.py": "print('hi')\n",
                    "config.py": "server = 'db.local'\n", "broken.py": "def (:\n"})
    res = init(tmp_path, expect=2)
    assert res.output.strip() == (f"dashscale: no Dash app found in {tmp_path} (no .py file "
                                  "creates Dash(...) or defines `server`)")
    assert not (tmp_path / "Procfile").exists()


def test_never_overwrites_without_force(tmp_path):
    tree(tmp_path, {"app.py": FLAT, "Procfile": "web: python app.py\n"})
    res = init(tmp_path, expect=2)
    assert res.output.strip() == (f"dashscale: {tmp_path / 'Procfile'}: a Procfile already "
                                  "exists; `dashscale init --force` overwrites it")
    assert procfile(tmp_path) == "web: python app.py\n"
    init(tmp_path, "--force")
    assert procfile(tmp_path) == "web: gunicorn app:server --workers 2\n"


def test_without_server_the_module_that_runs_the_app_wins(tmp_path):
    tree(tmp_path, {
        "a_helpers.py": "import subprocess\nfrom dash import Dash\n\nspare = Dash('x')\n"
                        "subprocess.run(['true'])\n",
        "dashboard.py": NO_SERVER.replace("app.run_server(debug=True)", "app.run(debug=True)"),
        "requirements.txt": "gunicorn\n"})
    res = init(tmp_path)
    assert procfile(tmp_path) == "web: gunicorn dashboard:server --workers 2\n"
    assert "also found: a_helpers.py:4" in res.output
    assert "fix: dashboard.py:3: add `server = app.server`" in res.output
