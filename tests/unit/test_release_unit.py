"""Release steps: discovery from the Procfile and project.toml, and a real run."""
import os
import sys

import pytest

from dashscale_local import release
from dashscale_local.errors import UsageError
from dashscale_local.procfile import parse_procfile


def _procfile(tmp_path, text):
    return parse_procfile(text, str(tmp_path / "Procfile"))


def test_release_type_and_project_toml(tmp_path):
    (tmp_path / "project.toml").write_text('[scripts]\npredeploy = "migrate.sh"\n'
                                           'postdeploy = "echo done"\n')
    (tmp_path / "migrate.sh").write_text("echo migrating\n")
    pf = _procfile(tmp_path, "web: gunicorn app:server\nrelease: python migrate.py\n")
    got = release.steps(pf, str(tmp_path))
    assert [(s.name, s.phase, s.source) for s in got] == [
        ("release", "before", "Procfile:2"), ("predeploy", "before", "project.toml"),
        ("postdeploy", "after", "project.toml")]
    assert got[1].command == "sh migrate.sh"   # a non-executable script file runs with sh
    assert got[2].command == "echo done"


def test_no_steps(tmp_path):
    assert release.steps(_procfile(tmp_path, "web: x\n"), str(tmp_path)) == []


@pytest.mark.parametrize("text, words", [
    ("predeploy = 3\n", "predeploy must be a command"),
    ("[scripts]\npostdeploy = ''\n", "scripts.postdeploy must be a command"),
    ("predeploy = \n", "cannot parse"),
])
def test_bad_project_toml_names_the_file(tmp_path, text, words):
    (tmp_path / "project.toml").write_text(text)
    with pytest.raises(UsageError) as e:
        release.steps(_procfile(tmp_path, "web: x\n"), str(tmp_path))
    assert str(e.value).startswith(str(tmp_path / "project.toml") + ": ")
    assert words in str(e.value)


def test_run_streams_output_and_reports_the_exit_code(tmp_path):
    step = release.Step("release", f"{sys.executable} -c \"import os; print('hi', "
                        "os.environ['X']); raise SystemExit(3)\"", "Procfile:2", "before")
    lines = []
    log = tmp_path / "release.log"
    outcome = release.run(step, dict(os.environ, X="from-env"), str(tmp_path),
                          lambda name, text: lines.append((name, text)), str(log))
    assert lines == [("release", "hi from-env")]
    assert outcome.code == 3 and not outcome.ok
    assert "exited 3" in outcome.describe() and "Procfile:2" in outcome.describe()
    assert log.read_text() == "hi from-env\n"
    assert outcome.as_json()["exit_code"] == 3
