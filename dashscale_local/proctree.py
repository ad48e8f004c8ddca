"""Process-tree helpers: a process's identity (pid + start time, so a reused pid is
never mistaken for ours), waiting for it to go, killing a whole replica group, the
memory of a tree, and stopping a leftover server with its own clean signal.

psutil (~10 ms to import) is imported inside the functions: `start` passes through
here before it spawns supervisord, and start-up time is a benchmark.
"""
import os
import signal
import time


def identity(pid):
    """(pid, create_time) — a pid alone may have been reused by an unrelated process."""
    import psutil
    try:
        return [pid, psutil.Process(pid).create_time()]
    except psutil.Error:
        return None


def same_process(ident):
    """The live psutil.Process an identity() names, or None (gone, zombie or reused)."""
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


def wait_gone(proc, timeout):
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def kill_all(procs, timeout):
    """SIGKILL each process and wait for them; returns their pids."""
    import psutil
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in procs]


def kill_group(proc, timeout):
    """SIGKILL a replica (its own process group) with all its descendants; returns
    the pids killed."""
    import psutil
    try:
        members = [proc] + proc.children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, psutil.Error):
        members = [proc]
    return kill_all(members, timeout)


def tree_memory(pid):
    """Σ PSS over a process and its descendants (Σ RSS when PSS is unavailable)."""
    import psutil
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", 0) or info.rss
        except psutil.Error:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total


def stop_pid(pid, sig, names, timeout=30.0):
    """Stop a leftover server of ours (from a run whose supervisord was killed), if the
    pid still runs a program whose name contains one of ``names``."""
    import psutil
    try:
        proc = psutil.Process(pid)
        if not any(n in proc.name() for n in names):
            return False
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        return False
    return True


def stop_process(proc, timeout=30.0):
    """A recorded service process left by a dead run: its clean stop (PostgreSQL: SIGINT,
    fast shutdown; Redis: SIGTERM, which saves), then SIGKILL."""
    import psutil
    try:
        sig = signal.SIGINT if "postgres" in proc.name() else signal.SIGTERM
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        try:
            proc.kill()
        except psutil.Error:
            pass
    except psutil.Error:
        pass
