"""An app in its own environment, without processes: which venv is chosen (the order and
the explicit forms), how it is applied to the environment, and the one-line error for a
Procfile program it lacks (real venvs and replicas: tests/e2e/test_own_env.py)."""
import shutil
import sys

import pytest

from dashscale_local.errors import UsageError
from dashscale_local.commands import program_of
from dashscale_local.pyenv import PythonEnv, missing_programs, resolve
from dashscale_local.procfile import load_procfile


# ─── resolution order (no processes) ──────────────────────────────────────────────────
def _fake_venv(path):
    (path / "bin").mkdir(parents=True)
    (path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = path / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return path


def test_resolution_order(tmp_path):
    explicit, active = _fake_venv(tmp_path / "explicit"), _fake_venv(tmp_path / "active")
    app = tmp_path / "app"
    app.mkdir()
    environ = {"VIRTUAL_ENV": str(active)}

    def source(**kw):
        env = resolve(str(app), environ=environ, **kw)
        return env.source, env.venv

    assert source(explicit=str(explicit), explicit_source="--python") == \
        ("--python", str(explicit))
    _fake_venv(app / "venv")
    _fake_venv(app / ".venv")
    assert source() == ("VIRTUAL_ENV", str(active))
    del environ["VIRTUAL_ENV"]
    assert source() == (".venv", str(app / ".venv"))
    shutil.rmtree(app / ".venv")
    assert source() == ("venv", str(app / "venv"))
    shutil.rmtree(app / "venv")
    own = resolve(str(app), environ=environ)
    assert (own.source, own.python) == ("dashscale", sys.executable)


def test_explicit_path_forms_and_errors(tmp_path):
    venv = _fake_venv(tmp_path / "v")
    by_binary = resolve(str(tmp_path), str(venv / "bin" / "python"), "--python", environ={})
    by_dir = resolve(str(tmp_path), str(venv), "--python", environ={})
    relative = resolve(str(tmp_path), "v", "dashscale.ini: python", environ={})
    assert by_binary == by_dir == PythonEnv(str(venv / "bin" / "python"), "--python",
                                            "from --python")
    assert relative.python == str(venv / "bin" / "python")  # relative to the Procfile
    assert relative.why == "from dashscale.ini: python"
    (tmp_path / "plain").write_text("")
    for value, why in [("missing", "no such file or directory"),
                       ("plain", "not a python executable nor a venv"),
                       (".", "not a python executable nor a venv")]:
        with pytest.raises(UsageError) as err:
            resolve(str(tmp_path), value, "dashscale.ini: python", environ={})
        assert str(err.value).startswith(f"dashscale.ini: python = {value}: {why}")
    with pytest.raises(UsageError, match="VIRTUAL_ENV = /gone: no bin/python"):
        resolve(str(tmp_path), environ={"VIRTUAL_ENV": "/gone"})


def test_apply_puts_the_env_first_and_drops_other_venvs(tmp_path, monkeypatch):
    app, other = _fake_venv(tmp_path / "app"), _fake_venv(tmp_path / "other")
    env = resolve(str(tmp_path), str(app), "--python", environ={})
    applied = env.apply({"PATH": f"{other}/bin:/usr/bin:{app}/bin", "VIRTUAL_ENV": str(other)})
    assert applied == {"PATH": f"{app}/bin:/usr/bin", "VIRTUAL_ENV": str(app)}
    plain = PythonEnv("/usr/bin/python3", "--python", "from --python")
    assert plain.venv is None
    assert plain.apply({"PATH": f"{other}/bin:/bin", "VIRTUAL_ENV": str(other)}) == \
        {"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": ""}


@pytest.mark.parametrize("command, program", [
    ("gunicorn app:server -w 2", "gunicorn"),
    ("FOO=1 exec celery -A tasks worker", "celery"),
    ("exec env A=1 gunicorn app:server", "env"),
    ("./bin/serve --port $PORT", "./bin/serve"),
    ("cd sub && gunicorn app:server", None),
    ("$SERVER app:server", None),
    ("gunicorn 'unbalanced", None),
])
def test_program_of(command, program):
    assert program_of(command) == program


def test_missing_programs_names_line_env_and_package(tmp_path, monkeypatch):
    venv = _fake_venv(tmp_path / ".venv")
    for name in ("gunicorn", "waitress-serve"):
        (venv / "bin" / name).write_text("#!/bin/sh\n")
        (venv / "bin" / name).chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    (tmp_path / "Procfile").write_text(
        "web: gunicorn app:server\napi: waitress-serve app:server\n"
        "ops: newrelic-admin run-program gunicorn app:server\nsh: ./run.sh\n")
    env = resolve(str(tmp_path), environ={})
    found = missing_programs(load_procfile(str(tmp_path / "Procfile")), env, str(tmp_path))
    assert found == [
        (3, f"'newrelic-admin' is not installed in {venv} (.venv next to the Procfile): "
            f"run {venv}/bin/python -m pip install newrelic"),
        (4, f"sh: './run.sh' not found or not executable (in {tmp_path})")]
