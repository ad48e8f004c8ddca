"""The run directory `.dashscale/` next to the Procfile: private files, the record of
what is running, and cleanup of a run whose runner died (kill -9, crash, reboot).

state.json names the runner, supervisord and every replica pid with its start time,
so a later `start` or `stop` can find orphans and kill them without ever killing a
process that merely reused a pid.
"""
import json
import os

from .errors import UsageError
from . import ports, proctree
from .proctree import kill_group, same_process, stop_process

RUN_DIR_NAME = ".dashscale"
TOKEN_FILE = "dashboard-token"  # beyond loopback: the token state-changing dashboard requests need
# The names runner.py calls them by; they live in proctree.py and ports.py.
identity, port_in_use = proctree.identity, ports.port_in_use


def run_dir_for(procfile_path):
    return os.path.join(os.path.dirname(os.path.abspath(procfile_path)), RUN_DIR_NAME)


def prepare(run_dir):
    """Create the run directory (0700) with a `.gitignore` of `*` (git status stays
    clean), or fail with a clear message."""
    try:
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        os.chmod(run_dir, 0o700)
        ignore = os.path.join(run_dir, ".gitignore")  # written each time: the write test
        with open(os.open(ignore + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  "w") as f:
            f.write("# dashscale's run directory: nothing here belongs in git\n*\n")
        os.replace(ignore + ".tmp", ignore)
    except OSError as exc:
        raise UsageError(f"cannot use run directory: {exc.strerror}", file=run_dir)


def state_path(run_dir):
    return os.path.join(run_dir, "state.json")


def control_socket(run_dir):
    return os.path.join(run_dir, "control.sock")


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host in ("127.0.0.1", "::1", "localhost"):
        return True
    import ipaddress
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_path(run_dir):
    return os.path.join(run_dir, TOKEN_FILE)


def new_token(run_dir, host):
    """Beyond loopback: a fresh dashboard token, saved (0600) for `status`; on loopback
    none (and no leftover of an earlier run)."""
    path = token_path(run_dir)
    if is_loopback(host):
        _unlink(path)
        return None
    import secrets
    token = secrets.token_urlsafe(24)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)
    return token


def read_token(run_dir):
    try:
        with open(token_path(run_dir)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_json(path, data):
    """Write ``data`` as JSON to ``path`` whole (a temporary file, then renamed), 0600."""
    tmp = path + ".tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path):
    """What write_json left at ``path``, or None (absent or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_state(run_dir, state):
    write_json(state_path(run_dir), state)


def read_state(run_dir):
    return read_json(state_path(run_dir))


def live_runner(run_dir):
    """The psutil.Process of the runner recorded in the run dir, if it still runs."""
    state = read_state(run_dir)
    return same_process(state.get("runner")) if state else None


def cleanup_stale(run_dir, timeout=10.0):
    """Shut down what a dead runner left: supervisord (TERM, it stops its replicas),
    then any recorded replica group still alive (KILL). Returns the pids killed, or
    None when there was no record of a run at all."""
    state = read_state(run_dir)
    if not state:
        return None
    import psutil

    procs = []
    killed = []
    sup = same_process(state.get("supervisord"))
    if sup:
        procs.append(sup)
        killed.append(sup.pid)
        try:
            sup.terminate()
            sup.wait(timeout)
        except psutil.TimeoutExpired:
            sup.kill()
        except psutil.Error:
            pass
    for ident in (state.get("services") or {}).values():
        proc = same_process(ident)  # supervisord was gone: stop the server cleanly
        if proc is not None:
            stop_process(proc, timeout)
            killed.append(proc.pid)
    for ident in state.get("replicas", {}).values():
        proc = same_process(ident)
        if proc is not None:
            killed += kill_group(proc, timeout)  # replica = its own process group
    for name in ("supervisor.sock", "control.sock", "state.json", TOKEN_FILE):
        _unlink(os.path.join(run_dir, name))
    return killed
