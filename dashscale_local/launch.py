"""The first moments of `dashscale start`: check everything that can fail on bad input,
bind the proxy's port, write supervisord's config with every replica's program already
in it (no reloadConfig round trips), and spawn supervisord.

Deliberately light on imports (no asyncio, psutil or XML-RPC client): supervisord takes
~0.1 s to start, and the runner's own imports happen while it does. Start-up time is a
benchmark (benchmarks/bench_startup.py).
"""
import errno
import os
import re
import time

from . import rundir
from .errors import UsageError
from .formation import plan_replicas
from .output import LogTail
from .supervisor import Supervisord

DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO)


class Launched:
    """What the launch leaves for the runner."""

    def __init__(self, started, sup, listener, specs, services, autostart, tails):
        self.started = started    # time.monotonic() when launch() began
        self.sup = sup            # the spawned Supervisord
        self.listener = listener  # the proxy's bound, listening socket
        self.specs = specs        # a ReplicaSpec per replica, each with its program written
        self.services = services  # services.Services, or None when none are configured
        self.autostart = autostart  # supervisord starts the replicas without being asked
        self.tails = tails        # a LogTail per replica, from where its log ended
        self.spawned_at = time.monotonic()


def launch(project, settings, counts, out):
    """Spawn supervisord for the formation ``counts``. Bad input raises UsageError
    (exit 2) and leaves nothing running. ``settings``: a checked config.Settings."""
    started = time.monotonic()
    host, port = settings.host, settings.port
    specs = plan_replicas(project.type_names, counts, settings.base_port)
    for spec in specs:
        if rundir.port_in_use(spec.port):
            raise UsageError(f"port {spec.port} for {spec.name} is already in use "
                             "(another app? choose --base-port)")
    listener = rundir.bind_listener(host, port)
    sup = Supervisord(project.run_dir, {"startsecs": settings.startsecs,
                                        "startretries": settings.startretries,
                                        "stopwaitsecs": settings.stop_timeout})
    try:
        token = rundir.new_token(project.run_dir, host)
        if token:
            out.system(f"WARNING: the proxy listens on {host}: the app and its dashboard "
                       "(/_dashscale/, which can scale and restart replicas) are reachable "
                       "from other machines. Use --host 127.0.0.1 to keep them private.")
            where = f"[{host}]" if ":" in host else host
            out.system("dashboard (scale and restart need its token): "
                       f"http://{where}:{port}/_dashscale/?token={token}")
        sup.write_config()
        for name in os.listdir(sup.programs_dir):
            os.unlink(os.path.join(sup.programs_dir, name))  # leftovers of a dead run
        services = _prepare_services(project, settings, sup, out)
        project.pods.prepare()  # each replica's own disk: the first deploy
        app_name = settings.app_name
        # Without services to wait for, supervisord starts the replicas itself, as soon
        # as its loop first wakes (the runner's first connect): no start RPC round trip.
        autostart = services is None
        for spec in specs:
            write_replica_program(sup, project, spec, app_name, autostart)
        # Taken now: autostarted replicas may write before the runner looks.
        tails = {spec.name: LogTail.from_end(sup.log_path(spec.name)) for spec in specs}
        sup.start()
        if autostart:
            sup.poke_when_up()
    except OSError as exc:
        listener.close()
        give_up(sup, exc, project.run_dir)
    return Launched(started, sup, listener, specs, services, autostart, tails)


def give_up(sup, exc, run_dir):
    """After an OSError while starting: kill supervisord; a disk that filled up (or went
    read-only) after rundir.prepare's probe is one clear line, exit 2."""
    if sup.process:
        sup.process.kill()
        sup.process.wait()
    if exc.errno not in DISK_ERRORS:
        raise exc
    raise UsageError(f"cannot write to the run directory: {exc.strerror}",
                     file=exc.filename or run_dir) from None


def _prepare_services(project, settings, sup, out):
    """Managed services: binaries, data (initdb once), ports clear of the replicas'
    port blocks, and their URLs in every replica's environment."""
    if not settings.services:
        return None
    from .services import Services

    services = Services.from_settings(settings, project.run_dir, project.directory)
    base_port = settings.base_port
    blocks = range(base_port, base_port + 100 * (len(project.type_names) + 2))
    services.prepare(avoid_ports={settings.port, *blocks}, out=out)
    services.write_programs(sup)
    project.extra_env.update(services.env())
    return services


def write_replica_program(sup, project, spec, app_name, autostart=False):
    """The replica's launcher script and supervisord program, from the Procfile command
    and the environment it runs with."""
    command = project.procfile.types[spec.type].command
    env = dict(os.environ)
    env.update(system_env(project.directory, app_name))
    env.update(project.env)  # .env wins over DE's system variables
    env.update({"PORT": str(spec.port), "DASHSCALE_REPLICA": spec.name,
                "PYTHONUNBUFFERED": "1"})
    project.python_env.apply(env)  # the app's venv first on PATH (gunicorn, python…)
    # A private runtime dir per replica: gunicorn ≥24 puts its control socket in
    # $XDG_RUNTIME_DIR (else ~/.gunicorn, shared by all replicas and clashing).
    runtime_dir = os.path.join(project.run_dir, "rt", spec.name)
    os.makedirs(os.path.dirname(runtime_dir), mode=0o700, exist_ok=True)  # rt/ too
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = runtime_dir
    env.update(project.extra_env)
    sup.write_program(spec.name, spec.type, command, _launcher_env(env), project.directory,
                      autostart, entry=project.pods.entry(sup.launch_dir, spec.name))


def system_env(directory, app_name):
    """Dash Enterprise's system environment variables (README: "Dash Enterprise's
    environment variables"). DE serves an app under /NAME/; without --app-name dashscale
    serves it at /, and says so: Dash derives the prefix /DASH_APP_NAME/ by itself when
    DASH_REQUESTS_PATHNAME_PREFIX is unset."""
    prefix = f"/{app_name}/" if app_name else "/"
    return {"DASH_APP_NAME": app_name or de_app_name(directory),
            "DASH_REQUESTS_PATHNAME_PREFIX": prefix, "DASH_ROUTES_PATHNAME_PREFIX": prefix}


def de_app_name(directory):
    """The directory's name as a DE app name: lowercase letters, digits and hyphens,
    starting with a letter, at most 63 characters."""
    name = re.sub(r"[^a-z0-9]+", "-", os.path.basename(os.path.abspath(directory)).lower())
    name = re.sub(r"^[^a-z]+", "", name)[:63].strip("-")
    return name or "app"


def _launcher_env(env):
    # Only what differs from supervisord's own environment (which it inherits from us)
    # needs exporting; keeps launchers short and secrets out of others.
    base = os.environ
    return {k: v for k, v in env.items() if base.get(k) != v and k.isidentifier()}
