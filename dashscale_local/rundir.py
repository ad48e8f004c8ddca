"""The run directory `.dashscale/` next to the Procfile: private files, the record of
what is running, and cleanup of a run whose runner died (kill -9, crash, reboot).

state.json names the runner, supervisord and every replica pid with its start time,
so a later `start` or `stop` can find orphans and kill them without ever killing a
process that merely reused a pid.
"""
import json
import os
import signal
import socket
import time

# psutil (~10 ms to import) is imported where a process is looked at: `start` passes
# through here before it spawns supervisord, and start-up time is a benchmark.
from .errors import RuntimeFailure, UsageError

RUN_DIR_NAME = ".dashscale"
TOKEN_FILE = "dashboard-token"  # beyond loopback: the token state-changing dashboard requests need


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


def identity(pid):
    """(pid, create_time) — a pid alone may have been reused by an unrelated process."""
    import psutil
    try:
        return [pid, psutil.Process(pid).create_time()]
    except psutil.Error:
        return None


def same_process(ident):
    if not ident:
        return None
    import psutil

    pid, created = ident
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.Error:
        pass
    return None


def write_state(run_dir, state):
    tmp = state_path(run_dir) + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path(run_dir))


def read_state(run_dir):
    try:
        with open(state_path(run_dir)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


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
            from .services import stop_process
            stop_process(proc, timeout)
            killed.append(proc.pid)
    for ident in state.get("replicas", {}).values():
        proc = same_process(ident)
        if proc is None:
            continue
        try:
            members = [proc] + proc.children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL)  # replica = its own process group
        except (ProcessLookupError, PermissionError, psutil.Error):
            members = [proc]
        for member in members:
            try:
                member.kill()
            except psutil.Error:
                pass
            killed.append(member.pid)
        psutil.wait_procs(members, timeout=timeout)
    for name in ("supervisor.sock", "control.sock", "state.json", TOKEN_FILE):
        _unlink(os.path.join(run_dir, name))
    return killed


def bind_listener(host, port, what="proxy"):
    """Bind the listening socket now, so a port in use is reported before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"{what} port {port} on {host} is not available: {exc.strerror}"
                         " (choose another with --port)")
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def port_in_use(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def listen_port_range():
    """(start, stop) of ports for servers we pick a port for: outside the kernel's
    ephemeral range, so no outgoing connection (a client, the proxy) can take the port
    between our check and the server's bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low > 12000:
        return 10000, low
    return high + 1, 65000


def free_listen_port(avoid=(), host="127.0.0.1", tries=200):
    """A free port from listen_port_range(), not in ``avoid``."""
    import random

    start, stop = listen_port_range()
    for _ in range(tries):
        port = random.randrange(start, stop)
        if port not in avoid and not port_in_use(port, host):
            return port
    raise RuntimeFailure("no free port found")


def wait_gone(proc, timeout):
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


