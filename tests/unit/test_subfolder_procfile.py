"""Run from the folder above a project: `check`/`start` point at the Procfile below,
`init` refuses to write a second one, and finds the requirements next to the app."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from dashscale_local.cli import main
from dashscale_local.procfile import procfiles_below
from tests import TESTS

NESTED = os.path.join(TESTS, "fixtures", "nested")
HINT = ("found: your_project/Procfile — run dashscale from there or pass "
        "-f your_project/Procfile")


@pytest.fixture
def parent(tmp_path, monkeypatch):
    shutil.copytree(NESTED, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [["check"], ["start"], ["check", "--json"]])
def test_procfile_not_found_names_the_one_below(parent, command):
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2
    if command == ["check", "--json"]:
        [error] = json.loads(result.stdout)["errors"]
        message = error["message"]
    else:
        message = result.stderr
        assert len(message.strip().splitlines()) == 1
    assert f"Procfile not found — {HINT}" in message
    assert not os.path.exists(parent / ".dashscale")  # nothing started, nothing written


def test_init_refuses_to_write_a_second_procfile_unless_forced(parent):
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 2 and not os.path.exists(parent / "Procfile")
    assert result.stderr.strip() == (
        "dashscale: a Procfile already exists below: your_project/Procfile — run dashscale "
        "from there or pass -f your_project/Procfile; `dashscale init --force` writes one "
        "here anyway")
    result = CliRunner().invoke(main, ["init", "--force"])
    assert result.exit_code == 0, result.output
    assert (parent / "Procfile").read_text() == \
        "web: gunicorn app:server --workers 2 --pythonpath your_project\n"
    # the requirements next to the app count (they lack gunicorn)
    assert "no requirements.txt" not in result.output
    assert "fix: your_project/requirements.txt: add gunicorn" in result.output


def test_procfiles_below_two_levels_skipping_envs_and_hidden(tmp_path):
    for rel in ("a/Procfile", "b/c/Procfile", "d/e/f/Procfile", ".hidden/Procfile",
                "node_modules/x/Procfile", "env1/Procfile", "tests/Procfile"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("web: x\n")
    (tmp_path / "env1" / "pyvenv.cfg").write_text("home = /usr\n")
    assert procfiles_below(str(tmp_path)) == [str(tmp_path / "a/Procfile"),
                                              str(tmp_path / "b/c/Procfile")]
