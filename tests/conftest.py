import os
import shutil

import pytest

from dashscale_local.testing import Run

APPS = os.path.join(os.path.dirname(__file__), "apps")


def copy_apps(directory):
    """Make ``directory`` a project directory holding the test apps."""
    for name in os.listdir(APPS):
        if name.endswith(".py"):
            shutil.copy(os.path.join(APPS, name), directory / name)
    return directory


@pytest.fixture
def app_dir(tmp_path):
    """A project directory holding the test apps."""
    return copy_apps(tmp_path)


@pytest.fixture(scope="module")
def module_app_dir(tmp_path_factory):
    """A project directory holding the test apps, shared by a test module (for one
    formation that several tests, or many hypothesis examples, talk to)."""
    return copy_apps(tmp_path_factory.mktemp("apps"))


@pytest.fixture
def dashscale(app_dir):
    """Factory: dashscale(procfile_text, formation=..., args=[...]) → a started Run.
    Every run is stopped at teardown, and the test fails if anything was left behind."""
    runs = []

    def factory(procfile_text="web: gunicorn echo_app:app --workers 1\n", formation=None,
                args=(), env=None, wait=True, directory=None, timeout=60):
        run = Run(directory or app_dir, procfile_text, formation, args, env)
        runs.append(run)
        return run.start(wait=wait, timeout=timeout)

    yield factory
    leftovers = []
    for run in runs:
        leftovers += run.stop()
    assert not leftovers, f"processes left behind after stop: {leftovers}"


@pytest.fixture(params=["c", "python"])
def http11_path(request, monkeypatch):
    """Run a test on both paths of http11: with the C fast path for plain heads (what
    the proxy uses) and on pure Python (the reference, and the fallback without a
    compiler)."""
    from dashscale_local.http11 import accel
    if request.param == "python":
        monkeypatch.setattr(accel, "fast", None)
    elif accel.fast is None:
        pytest.skip("the C fast path is not built (DASHSCALE_HTTP11_PURE or no compiler)")
    return request.param
