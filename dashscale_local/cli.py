"""The `dashscale` command. Bad input → one line naming file/line/value, exit 2;
runtime failure → exit 1."""
import json
import os
import sys
import time

import click

from . import rundir
from .clickutil import handle_errors, procfile_option, python_option, python_setting
from .errors import RuntimeFailure, UsageError
from .output import LogTail, Printer, last_lines
from .proctree import wait_gone
from .pyenv import save_python_env, saved_python_env
from .sizes import format_size


def _run_dir(procfile):
    return rundir.run_dir_for(procfile)


def _control(procfile, method, route, body=None, timeout=300.0):
    from . import control
    return control.call(rundir.control_socket(_run_dir(procfile)), method, route, body, timeout)


class LazyGroup(click.Group):
    """Commands that live in their own modules are imported only when used, so
    `dashscale start` does not pay for export/check/bench/top before it starts
    supervisord (start-up time is a benchmark)."""

    lazy = {"bench": "bench:bench", "export": "export:export", "check": "doctor:check",
            "top": "top:top", "init": "init:init"}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            import importlib
            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(f".{module}", __package__), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dashscale-local")
def main():
    """Run a Dash app's Procfile as replicas behind one URL, as Dash Enterprise does."""


@main.command()
@procfile_option
@click.option("-m", "-c", "--formation", "formation", multiple=True,
              help="Replicas per type: web=4,worker=1 or all=2 (default 1 each).")
@click.option("-e", "--env", "env_files", multiple=True, help="Env file(s) (default: .env).")
@click.option("--host", default=None, help="Proxy address (default 127.0.0.1).")
@click.option("--port", "-p", type=int, default=None, help="Proxy port (default 8050).")
@click.option("--base-port", type=int, default=None, help="First replica port (default 5006).")
@click.option("--memory-limit", default=None, help="8GiB, or per type: web=2GiB,worker=512MiB.")
@click.option("--on-limit", type=click.Choice(["stop", "restart"]), default=None,
              help="Over its limit a replica is OOMKilled; then: stop (default) or restart "
                   "with CrashLoopBackOff.")
@click.option("--memory-metric", type=click.Choice(["pss", "rss", "uss"]), default=None,
              help="Memory of a replica's process tree (default pss, as a pod's cgroup "
                   "counts; rss where PSS is unavailable).")
@click.option("--balance", type=click.Choice(["round-robin", "least-outstanding"]), default=None)
@click.option("--pod-limit", type=int, default=None, help="Cap on all replicas together (40).")
@click.option("--app-name", default=None, help="Serve the app under /NAME/ as Dash Enterprise.")
@click.option("--spread/--no-spread", default=None, help="Pin replicas to distinct CPUs.")
@click.option("--service", "services", multiple=True, metavar="redis|postgres",
              help="Run a private Redis / PostgreSQL for the app (repeatable); injects "
                   "REDIS_URL / DATABASE_URL. Replaces dashscale.ini's `services`.")
@click.option("--shared-fs", is_flag=True, default=None,
              help="Run every replica in this directory (default: each in its own "
                   "ephemeral copy of it, as Dash Enterprise pods, with ../mount shared).")
@python_option
@handle_errors
def start(procfile, formation, env_files, host, port, base_port, memory_limit, on_limit,
          memory_metric, balance, pod_limit, app_name, spread, services, shared_fs, python):
    """Start the formation in the foreground (Ctrl-C stops everything)."""
    from .checks import load_checks
    from .config import load_settings
    from .launch import launch
    from .project import Project

    procfile = os.path.abspath(procfile)
    project_dir = os.path.dirname(procfile)
    settings = load_settings(project_dir, {
        "host": host, "port": port, "base_port": base_port, "memory_limit": memory_limit,
        "on_limit": on_limit, "memory_metric": memory_metric, "balance": balance,
        "pod_limit": pod_limit, "app_name": app_name, "spread": spread,
        "services": services or None, "shared_fs": True if shared_fs else None,
        **python_setting(python)})
    project = Project(procfile, env_files, memory_limit, settings)
    project.checks = load_checks(project_dir)  # a bad CHECKS: exit 2, nothing started
    counts = project.formation(formation, settings)
    run_dir = project.run_dir
    runner_proc = rundir.live_runner(run_dir)
    if runner_proc is not None:
        raise UsageError(f"dashscale is already running here (pid {runner_proc.pid}); "
                         "use `dashscale status` or `dashscale stop`", file=run_dir)
    project.check_programs()  # gunicorn missing from the app's venv: say so, start nothing
    rundir.prepare(run_dir)
    printer = Printer()
    save_python_env(run_dir, project.python_env)
    killed = rundir.cleanup_stale(run_dir)
    if killed:
        printer.system(f"cleaned up a previous run that did not stop: killed pids "
                       f"{', '.join(map(str, killed))}")
    launched = launch(project, settings, counts, printer)
    printer.system(f"python: {project.python_env.describe()}")  # once nothing can fail on input
    # The event-loop half (asyncio, the proxy, psutil…) is imported while supervisord starts.
    from .runner import Runner
    sys.exit(Runner(project, settings, counts, printer).run(launched))


@main.command()
@procfile_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable (stable keys).")
@handle_errors
def status(procfile, as_json):
    """Replicas, their state, memory and the proxy URL."""
    data = _control(procfile, "GET", "/status")
    data.setdefault("python", saved_python_env(_run_dir(procfile)))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"proxy {data['proxy']['url']}  formation "
               + ",".join(f"{k}={v}" for k, v in data["formation"].items()))
    if data["python"]:
        click.echo(f"python {data['python']['path']} ({data['python']['why']})")
    rows = [("REPLICA", "STATE", "PID", "PORT", "READY", "MEMORY / LIMIT", "PEAK", "RESTARTS",
             "OOM", "SERVED", "5XX")]
    notes = []
    for r in data["replicas"]:
        used, limit = r["memory_bytes"], r["memory_limit_bytes"]
        up = r["state"] in ("STARTING", "RUNNING")
        mem = f"{format_size(used) if up else '-'} / {format_size(limit)}"
        if limit and up:
            mem += f" ({100 * used / limit:.0f}%)" + (" (!)" if used >= 0.8 * limit else "")
        rows.append((r["name"], r["state"], str(r["pid"] or "-"), str(r["port"]),
                     "yes" if r["ready"] else "no", mem,
                     format_size(r.get("peak_memory_bytes", 0)), str(r["restarts"]),
                     str(r["oom_kills"]), str(r.get("proxy", {}).get("served", 0)),
                     str(r.get("proxy", {}).get("status_5xx", 0))))
        ex = r.get("last_exit") or {}
        if r["state"] == "OOMKILLED" and ex.get("reason") == "OOMKilled":
            then = ("restarts at " + time.strftime("%H:%M:%S", time.localtime(ex["restart_at"]))
                    + f" (back-off {ex.get('restart_delay_s', 0):g}s)"
                    if ex.get("restart_at") else f"`dashscale restart {r['name']}` brings it back")
            notes.append(f"{r['name']} OOMKilled at "
                         f"{time.strftime('%H:%M:%S', time.localtime(ex['time']))} (exit 137): "
                         f"{ex.get('metric', 'memory')} {format_size(ex.get('memory_bytes') or 0)}"
                         f" reached its limit {format_size(ex.get('limit_bytes') or limit)}; {then}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for note in notes:
        click.echo(note)
    click.echo(_memory_line(data["memory"]))
    line = release_line(data.get("release"))
    if line:
        click.echo(line)
    _echo_services(data.get("services") or [])


def release_line(info):
    """`release: last run ok 1.2s at 12:00:01 (release, Procfile:1)`, or None without
    release steps."""
    if not info or not (info["steps"] or info["last"]):
        return None
    if info.get("running"):
        return f"release: {info['running']} is running"
    last = info["last"]
    if last is None:
        return "release: not run yet"
    code = last["exit_code"]
    result = f"ok {last['seconds']:.1f}s" if last["ok"] else \
        f"FAILED (exit {code})" if code >= 0 else f"FAILED (signal {-code})"
    at = time.strftime("%H:%M:%S", time.localtime(last["time"]))
    return f"release: last run {result} at {at} ({last['name']}, {last['source']})"


def _memory_line(m, ram=None):
    """`memory X of max Y (pss)`, noting when the limits add up to more than this
    machine's RAM (a replica would meet the machine's limit before its own)."""
    if ram is None:
        import psutil
        ram = psutil.virtual_memory().total
    line = (f"memory {format_size(m['total_bytes'])} of max {format_size(m['max_bytes'])} "
            f"({m.get('metric', 'pss')})")
    if m["max_bytes"] > ram:
        line += (f" — the limits add up to more than this machine's {format_size(ram)} RAM")
    return line


def _echo_services(services):
    """Managed services, apart from the replicas (their memory is not in the total)."""
    if not services:
        return
    rows = [("SERVICE", "STATE", "PID", "PORT", "MEMORY", "DATA", "RESTARTS", "ENV")]
    for s in services:
        rows.append((s["name"], s["state"], str(s["pid"] or "-"), str(s["port"]),
                     format_size(s["memory_bytes"]), format_size(s["data_bytes"]),
                     str(s["restarts"]), s["env"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    click.echo("")
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@main.command()
@procfile_option
@click.argument("formation", nargs=-1, required=True)
@handle_errors
def scale(procfile, formation):
    """Change replica counts while running: dashscale scale web=6 worker=0."""
    from .formation import parse_formation
    spec = {}
    for item in formation:
        spec.update(parse_formation(item, source="scale"))
    data = _control(procfile, "POST", "/scale", {"formation": spec})
    click.echo("formation: " + ",".join(f"{k}={v}" for k, v in data["formation"].items()))


@main.command()
@procfile_option
@click.argument("target", required=False)
@click.option("--rolling", is_flag=True, help="One at a time, waiting until each serves.")
@handle_errors
def restart(procfile, target, rolling):
    """Restart all replicas, a type (web) or one replica (web.2)."""
    data = _control(procfile, "POST", "/restart", {"target": target, "rolling": rolling})
    click.echo("restarted: " + ", ".join(data["restarted"]))


@main.command()
@procfile_option
@click.option("--timeout", type=float, default=60.0, help="Seconds to wait for the stop.")
@handle_errors
def stop(procfile, timeout):
    """Stop the running formation (or clean up after a runner that died)."""
    run_dir = _run_dir(procfile)
    runner_proc = rundir.live_runner(run_dir)
    if runner_proc is None:
        killed = rundir.cleanup_stale(run_dir)
        if killed is not None:
            click.echo("cleaned up after a runner that had died"
                       + (f": stopped pids {', '.join(map(str, killed))}" if killed else
                          " (its processes had already exited)"))
            return
        raise UsageError("no dashscale is running here", file=run_dir)
    try:
        _control(procfile, "POST", "/stop", timeout=10)
    except UsageError:
        runner_proc.terminate()  # socket gone but runner alive: signal it instead
    if not wait_gone(runner_proc, timeout):
        raise RuntimeFailure(f"runner (pid {runner_proc.pid}) did not stop in {timeout:g}s")
    click.echo("stopped")


@main.command()
# Here -f means follow (as tail and the contract's `logs [-f]`): the Procfile is --procfile.
@click.option("--procfile", default="Procfile", show_default=True,
              help="The Procfile; the run directory .dashscale/ is next to it.")
@click.option("--follow", "-f", "follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True)
@click.argument("replica", required=False)
@handle_errors
def logs(procfile, follow, lines, replica):
    """Show replica logs (all, or one: web.2; release steps' as `release`)."""
    log_dir = os.path.join(_run_dir(procfile), "logs")
    if not os.path.isdir(log_dir):
        raise UsageError("no logs here (nothing has run)", file=log_dir)
    names = _log_names(log_dir)
    if replica:
        if replica not in names:
            raise UsageError(f"no log for '{replica}' (have: {', '.join(names)})", file=log_dir)
        names = [replica]
    printer = Printer()
    for name in names:
        for line in last_lines(os.path.join(log_dir, f"{name}.log"), lines):
            printer.line(name, line)
    if not follow:
        return
    tails = {n: LogTail(os.path.join(log_dir, f"{n}.log")) for n in names}
    try:
        while True:
            for name, tail in tails.items():
                for line in tail.read_lines():
                    printer.line(name, line)
            if not replica:  # new replicas appear after a scale
                for n in _log_names(log_dir):
                    if n not in tails:
                        tails[n] = LogTail(os.path.join(log_dir, f"{n}.log"), from_start=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def _log_names(log_dir):
    """Replicas (and services) with a log file, supervisord's own log aside."""
    return sorted(f[:-4] for f in os.listdir(log_dir)
                  if f.endswith(".log") and f != "supervisord.log")


if __name__ == "__main__":
    main()
