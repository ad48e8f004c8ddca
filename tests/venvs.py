"""Real venvs for tests, built once and kept across sessions and runs.

A venv lives in ``~/.cache/dashscale-tests/venv-<key>`` (``DASHSCALE_TEST_CACHE`` moves
it), ``key`` = a hash of the interpreter's version and path, the requirements and the
files of the local packages installed into it. It is built in place under an exclusive
file lock (venvs are not relocatable, so no build-then-rename) and counts as built only
once its ``.complete`` marker exists: a concurrent session waits on the lock and then
finds it built; a build that died half-way is wiped and redone.
"""
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("DASHSCALE_TEST_CACHE",
                            os.path.expanduser("~/.cache/dashscale-tests")))


BUILD_LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".venv",
                                         ".dashscale", ".git", "*.so", "*.whl")


def clean_copy(source, destination):
    """``source`` without build leftovers: what a fresh clone holds (pip builds a local
    directory in place, and a stale build/ could slip into what it installs)."""
    shutil.copytree(source, destination, ignore=BUILD_LEFTOVERS)
    return destination


def _files_digest(directory):
    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        parts = path.relative_to(directory).parts
        if path.is_file() and not BUILD_LEFTOVERS(str(directory), parts):
            digest.update("/".join(parts).encode() + path.read_bytes())
    return digest.hexdigest()


def python_version(python):
    return subprocess.run([python, "-c", "import sys; print(sys.version)"], check=True,
                          capture_output=True, text=True).stdout.strip()


def cached_venv(python, requirements, local_packages=()):
    """Path of a venv of ``python`` holding ``requirements`` (pip specifiers, from the
    index) and ``local_packages`` (directories)."""
    key = hashlib.sha256("\n".join(
        [python, python_version(python), *requirements,
         *(_files_digest(p) for p in local_packages)]).encode()).hexdigest()[:16]
    target = CACHE / f"venv-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(target)], check=True)
            pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet",
                   "--disable-pip-version-check"]
            with tempfile.TemporaryDirectory() as tmp:
                local = [clean_copy(p, os.path.join(tmp, os.path.basename(p)))
                         for p in local_packages]
                subprocess.run([*pip, *requirements, *local], check=True)
            (target / ".complete").write_text(" ".join(requirements) + "\n")
    return target


def older_python():
    """An interpreter older than dashscale's floor (3.11) when this machine has one (the
    app's venv may be any Python), else the one running the tests."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (9, 10)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python")))
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")))
    for python in filter(None, candidates):
        try:
            if subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True,
                              timeout=30).returncode == 0:
                return python
        except (OSError, subprocess.TimeoutExpired):
            continue
    return sys.executable
