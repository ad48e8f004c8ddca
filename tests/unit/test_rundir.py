"""The run directory stays out of git and private."""
import os
import shutil
import stat
import subprocess

import pytest

from dashscale_local import rundir


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_run_directory_is_ignored_by_git_and_private(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "Procfile").write_text("web: gunicorn app:server\n")
    run_dir = rundir.run_dir_for(str(tmp_path / "Procfile"))
    rundir.prepare(run_dir)
    rundir.prepare(run_dir)  # a second start rewrites it, still fine
    with open(os.path.join(run_dir, "web.1.log"), "w") as f:
        f.write("log\n")
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain",
                             "--untracked-files=all"], capture_output=True, text=True,
                            check=True).stdout
    assert status.splitlines() == ["?? Procfile"]
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert sorted(os.listdir(run_dir)) == [".gitignore", "web.1.log"]
