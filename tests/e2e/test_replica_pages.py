"""`check --replicas` on a Dash Pages app: `/_dash-layout` is only the shell, so each
page is rendered on each replica (as bench renders it) and compared."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from dashscale_local.cli import main
from tests import TESTS

PAGES_SHAPES = os.path.join(TESTS, "apps", "pages_shapes_app")


@pytest.mark.slow
def test_dash_pages_content_is_rendered_and_compared_per_page(dashscale, tmp_path):
    """The shell is the same everywhere; the /drawn page draws its component id at
    import, so each replica renders another one. /drawn is found from the shell's
    links; --page adds paths (a missing page renders Dash's 404 on both: agree)."""
    directory = tmp_path / "shapes"
    shutil.copytree(PAGES_SHAPES, directory)
    run = dashscale("web: gunicorn app:server --workers 1\n", formation="web=2",
                    directory=directory, env={"SHAPES_CALLBACK_SECONDS": "0"})
    result = run.cli("check", "--replicas", "--json", "--page", "/alpha", "--page", "nope",
                     timeout=120)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert {(d["replica"], d["what"]) for d in data["divergences"]} == {("web.2", "page")}
    [drawn] = data["divergences"]
    assert drawn["id"].startswith("box-") and "fixed ids" in drawn["cause"]
    assert drawn["detail"].startswith(f"id {drawn['id']!r} on web.1, ")
    assert "page /drawn > _pages_content.children" in drawn["detail"]
    text = run.cli("check", "--replicas")
    assert text.returncode == 1 and "web.2: page: id" in text.stdout


def test_page_without_replicas_is_a_usage_error(tmp_path):
    (tmp_path / "Procfile").write_text("web: gunicorn app:server\n")
    result = CliRunner().invoke(main, ["check", "--page", "/a", "-f",
                                       str(tmp_path / "Procfile")])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("--page goes with --replicas (the pages compared "
                                          "between the running replicas), got --page /a "
                                          "without it")
