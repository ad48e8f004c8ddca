"""`dashscale export k8s|supervisord`: the same Procfile, formation, limits and .env as
`start`, written as Kubernetes manifests or as a standalone supervisord config.

What each becomes (Deployments, ports, binds, ConfigMap/Secret, probes, Ingress, names,
managed services; the supervisord programs and what it cannot carry): docs/export.md.
"""
import os
import re
import shlex
import sys

import click

from .clickutil import handle_errors, procfile_option
from .commands import is_compound, replica_command
from .errors import RuntimeFailure, UsageError
from .formation import format_formation, plan_replicas
from .sizes import DEFAULT_MEMORY_LIMIT, format_size

DEFAULT_IMAGE = "dashscale-app:latest"
CONTAINER_PORT = 8050
SERVICE_PORT = 80
MEMORY_REQUEST = 128 * 2**20  # Dash Enterprise's default request
MANAGED_BY = "dashscale"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
SECRET_KEY = re.compile(
    r"(SECRET|PASSWORD|PASSWD|PASSPHRASE|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|"
    r"_KEY$|^KEY$|_PWD$|^PWD$|_PASS$|_DSN$|AUTH)", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")

# ``$PORT``, ``${PORT}``, ``${PORT:-5000}``, ``${PORT-5000}``, ``${PORT:=5000}``
PORT_REF = re.compile(r"\$(?:PORT(?![A-Za-z0-9_])|\{PORT(?::?[-=][^}]*)?\})")
SHELL_CHARS = re.compile(r"[$`\\*?\[\]{}~#!]")


# ─── commands ─────────────────────────────────────────────────────────────────────────
def resolve_port(command, port):
    """Replace ``$PORT`` references (not inside single quotes) with ``port``."""
    out, i, single, double = [], 0, False, False
    while i < len(command):
        c = command[i]
        if c == "\\" and not single:
            out.append(command[i:i + 2])
            i += 2
            continue
        if c == "'" and not double:
            single = not single
        elif c == '"' and not single:
            double = not double
        elif c == "$" and not single:
            m = PORT_REF.match(command, i)
            if m:
                out.append(str(port))
                i = m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def command_argv(command):
    """The command as an argv: exec form when it is a plain argv, else through sh."""
    argv = None
    if not is_compound(command) and not SHELL_CHARS.search(command):
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = None
    if argv and "=" not in argv[0]:
        return argv
    return ["/bin/sh", "-c", command if is_compound(command) else f"exec {command}"]


def _dash_prefix_env(app_name):
    if not app_name:
        return {}
    prefix = f"/{app_name}/"
    return {"DASH_APP_NAME": app_name, "DASH_REQUESTS_PATHNAME_PREFIX": prefix,
            "DASH_ROUTES_PATHNAME_PREFIX": prefix}


# ─── loading the project (as `start` does) ────────────────────────────────────────────
def load(procfile, env_files, formation, memory_limit, base_port=None, app_name=None):
    """(project, settings, counts); ``settings.app_name``: --app-name, else dashscale.ini's,
    checked by the rule `start` uses (config.app_name)."""
    from .config import load_settings
    from .project import Project

    procfile = os.path.abspath(procfile)
    settings = load_settings(os.path.dirname(procfile), {
        "memory_limit": memory_limit, "base_port": base_port, "app_name": app_name})
    project = Project(procfile, env_files, memory_limit, settings)
    counts, source = formation_and_source(project, settings, formation)
    project.formation_source = source
    return project, settings, counts


def running_formation(project):
    """(formation, runner pid) of an instance running from this Procfile, else None."""
    from . import control, rundir
    if rundir.live_runner(project.run_dir) is None:
        return None
    try:
        status = control.call(rundir.control_socket(project.run_dir), "GET", "/status",
                              timeout=10)
    except (UsageError, RuntimeFailure):
        return None
    counts = {k: v for k, v in status.get("formation", {}).items()
              if k in project.type_names}
    return counts, status.get("runner_pid")


def formation_and_source(project, settings, specs):
    """The formation to export and where it came from: the running instance, else the
    saved formation, else 1 per type; `-m` specs apply on top."""
    from .formation import parse_formation, resolve_formation
    running = running_formation(project)
    if running is not None:
        base, source = running[0], f"the running instance (pid {running[1]})"
    else:
        base = project.saved_formation()
        saved = [p for p in (project.scale_file, os.path.join(project.run_dir, "formation"))
                 if os.path.exists(p)]
        source = os.path.relpath(saved[0], project.directory) if base else "default 1 per type"
    parsed = [parse_formation(s, source="-m") for s in specs if s]
    counts = resolve_formation(project.type_names, base, *parsed,
                               pod_limit=int(settings["pod_limit"]),
                               max_per_type=int(settings["max_replicas_per_type"]))
    if parsed:
        source = f"-m over {source}"
    return counts, source


# `python app.py`, `python3 -u index.py`, `flask run`, `python -m flask run` (after VAR=x)
DEV_SERVER = re.compile(r"^(?:\S+=\S*\s+)*(?:\S*/)?(?:python[0-9.]*\s+(?:-u\s+)?\S+\.py\b"
                        r"|flask\s+run\b|python[0-9.]*\s+-m\s+flask\s+run\b)")


def dev_server_warning(project):
    """One line when `web` runs Dash's development server instead of gunicorn."""
    web = project.procfile.types.get("web")
    if web is None or not DEV_SERVER.search(web.command.strip()):
        return None
    return (f"{project.procfile_path}:{web.line}: warning: web runs a development server "
            f"({web.command.strip()}); in a pod it binds 127.0.0.1 with debug on: use "
            "`gunicorn MODULE:server` (`dashscale init` writes one)")


# ─── Kubernetes ───────────────────────────────────────────────────────────────────────
def k8s_quantity(n):
    """Bytes as a Kubernetes quantity: ``2Gi``, ``512Mi``, ``8G``, or plain bytes."""
    for unit, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10),
                        ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def dns_name(type_name):
    """A process type as a DNS-1123 label part: lowercase, '_' → '-'."""
    return type_name.lower().replace("_", "-")


def _base_name(project, app_name):
    if app_name:
        return app_name
    name = re.sub(r"[^a-z0-9-]+", "-", os.path.basename(project.directory).lower())
    name = re.sub(r"-+", "-", name).strip("-")
    name = re.sub(r"^[0-9-]+", "", name)[:40].rstrip("-")  # DNS-1035: starts with a letter
    return name or "app"


def _object_names(project, base):
    names, seen = {}, {}
    for ptype in project.procfile.types.values():
        part = dns_name(ptype.name)
        full = f"{base}-{part}"
        where = (project.procfile_path, ptype.line)
        if not DNS_LABEL.match(part):
            raise UsageError(f"process type {ptype.name!r} cannot be a Kubernetes name "
                             "(use letters and digits, with '-' or '_' only inside)", *where)
        if part in seen:
            raise UsageError(f"process types {seen[part]!r} and {ptype.name!r} both become "
                             f"{full!r} in Kubernetes", *where)
        if len(full) > 63:
            raise UsageError(f"Kubernetes name {full!r} is longer than 63 characters "
                             "(use a shorter --app-name or process type)", *where)
        seen[part] = ptype.name
        names[ptype.name] = full
    return names


def split_env(env):
    """(config, secret): .env entries split by whether they look like secrets."""
    config, secret = {}, {}
    for key, value in env.items():
        looks_secret = SECRET_KEY.search(key) or URL_WITH_PASSWORD.match(value or "")
        (secret if looks_secret else config)[key] = str(value)
    return config, secret


REDIS_IMAGE = "redis:7"


def service_names(settings, extra=()):
    """Managed services (`--service` / dashscale.ini `services`) as for `start`."""
    from .services import parse_names
    if extra:
        return parse_names(",".join(extra), "--service")
    return list(settings.services)


def services_comment(base, services, redis_name=None):
    """Header lines saying what became of each managed service."""
    lines = []
    if services:
        lines.append(f"# services: {', '.join(services)} (dashscale start --service …)")
    if "redis" in services:
        lines.append(f"# redis: Deployment + Service {redis_name} ({REDIS_IMAGE}, requirepass "
                     f"from Secret {redis_name}, AOF on an emptyDir: use a managed Redis or a "
                     "PersistentVolume for data that must outlive the pod); every container "
                     "gets REDIS_URL")
    if "postgres" in services:
        lines.append(f"# postgres: not deployed. Every container reads DATABASE_URL from Secret "
                     f"{base}-postgres; create it for your database:")
        lines.append(f"#   kubectl create secret generic {base}-postgres "
                     "--from-literal=DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DB")
    return "".join(line + "\n" for line in lines)


def redis_objects(name, base, common):
    """A password-protected Redis for the app: Secret, Deployment, Service."""
    import secrets
    labels = {**common, "service": "redis"}
    selector = {"app": base, "service": "redis"}
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": name, "labels": dict(labels)},
         "stringData": {"REDIS_PASSWORD": secrets.token_urlsafe(24)}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "labels": dict(labels),
                      "annotations": {"dashscale/service": "redis"}},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                  "selector": {"matchLabels": selector},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": {
                      "containers": [{
                          "name": "redis", "image": REDIS_IMAGE,
                          "args": ["--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes"],
                          "env": [{"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
                              "name": name, "key": "REDIS_PASSWORD"}}}],
                          "ports": [{"name": "redis", "containerPort": 6379,
                                     "protocol": "TCP"}],
                          "readinessProbe": {"tcpSocket": {"port": "redis"},
                                             "periodSeconds": 5},
                          "resources": {"requests": {"memory": "128Mi"},
                                        "limits": {"memory": "1Gi"}},
                          "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "emptyDir": {}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "labels": dict(labels)},
         "spec": {"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "redis", "port": 6379, "targetPort": "redis",
                             "protocol": "TCP"}]}},
    ]


def redis_object_name(project, base):
    taken = {dns_name(t) for t in project.procfile.types}
    return f"{base}-managed-redis" if "redis" in taken else f"{base}-redis"


def k8s_objects(project, counts, image=DEFAULT_IMAGE, app_name=None, port=CONTAINER_PORT,
                services=()):
    """The manifests as a list of dicts, in apply order."""
    base = _base_name(project, app_name)
    names = _object_names(project, base)
    for key in project.env:
        if not CONFIGMAP_KEY.match(key):
            raise UsageError(f"env key {key!r} cannot be a ConfigMap/Secret key "
                             "(letters, digits, '-', '_' and '.' only)", project.env_files[-1])
    config, secret = split_env(project.env)
    common = {"app": base, "app.kubernetes.io/managed-by": MANAGED_BY}
    objects = []
    env_from = []
    if config:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"{base}-env", "labels": dict(common)},
                        "data": dict(sorted(config.items()))})
        env_from.append({"configMapRef": {"name": f"{base}-env"}})
    if secret:
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": f"{base}-secret", "labels": dict(common)},
                        "stringData": dict(sorted(secret.items()))})
        env_from.append({"secretRef": {"name": f"{base}-secret"}})

    service_env = []
    if "redis" in services:
        redis_name = redis_object_name(project, base)
        objects += redis_objects(redis_name, base, common)
        service_env += [
            {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": redis_name, "key": "REDIS_PASSWORD"}}},
            {"name": "REDIS_URL", "value": f"redis://:$(REDIS_PASSWORD)@{redis_name}:6379/0"}]
    if "postgres" in services:
        service_env.append({"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
            "name": f"{base}-postgres", "key": "DATABASE_URL"}}})

    path = f"/{app_name}/" if app_name else "/"
    fixed_env = {"PORT": str(port), "PYTHONUNBUFFERED": "1", **_dash_prefix_env(app_name)}

    def make_container(name, command, limit, replica_env):
        env = [{"name": k, "value": v} for k, v in fixed_env.items()] + [replica_env]
        container = {
            "name": dns_name(name),
            "image": image,
            "command": command_argv(resolve_port(command, port)),
            "env": env + [dict(e) for e in service_env],
            "resources": {"requests": {"memory": k8s_quantity(min(MEMORY_REQUEST, limit))},
                          "limits": {"memory": k8s_quantity(limit)}},
        }
        if env_from:
            container["envFrom"] = [dict(e) for e in env_from]
        return container

    jobs = release_jobs(project, names, common, make_container)
    objects += [job for step, job in jobs if step.phase == "before"]
    for type_name in project.type_names:
        ptype = project.procfile.types[type_name]
        labels = {**common, "process-type": dns_name(ptype.name)}
        selector = {"app": base, "process-type": dns_name(ptype.name)}
        container = make_container(
            ptype.name, replica_command(ptype.command, host="0.0.0.0"),
            project.memory_limits[ptype.name],
            {"name": "DASHSCALE_REPLICA",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        if ptype.name == "web":
            container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
            container["readinessProbe"] = {
                "httpGet": {"path": path, "port": "http"},
                "initialDelaySeconds": 2, "periodSeconds": 5, "timeoutSeconds": 5,
                "failureThreshold": 3}
        objects.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": names[ptype.name], "labels": labels,
                         "annotations": {"dashscale/process-type": ptype.name,
                                         "dashscale/procfile-command": ptype.command}},
            "spec": {"replicas": counts.get(ptype.name, 0),
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [container]}}}})
    if "web" in names:
        service = names["web"]
        objects.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "labels": {**common, "process-type": "web"}},
            "spec": {"type": "ClusterIP",
                     "selector": {"app": base, "process-type": "web"},
                     "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http",
                                "protocol": "TCP"}]}})
        if app_name:
            objects.append({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": base, "labels": dict(common)},
                "spec": {"rules": [{"http": {"paths": [{
                    "path": path, "pathType": "Prefix",
                    "backend": {"service": {"name": service,
                                            "port": {"name": "http"}}}}]}}]}})
    elif app_name:
        click.echo("dashscale: no 'web' process type: no Service or Ingress written",
                   err=True)
    objects += [job for step, job in jobs if step.phase == "after"]
    return objects


def release_jobs(project, names, common, make_container):
    """[(step, Job)]: each release step as a Kubernetes Job run once, to completion (a
    Job rather than an initContainer, which would run in every pod at every restart:
    Heroku's release and DE's predeploy run once per deploy). Same image, env and
    command as the replicas; restartPolicy Never and backoffLimit 0 (a failure fails the
    deploy, it is not retried); resources as web's."""
    limit = project.memory_limits.get("web", DEFAULT_MEMORY_LIMIT)
    jobs = []
    for step in project.release_steps:
        name = names.get(step.name) or f"{common['app']}-{dns_name(step.name)}"
        labels = {**common, "release-step": step.name}
        container = make_container(step.name, step.command, limit,
                                   {"name": "DASHSCALE_REPLICA", "value": step.name})
        jobs.append((step, {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"dashscale/release-step": step.name,
                                         "dashscale/source": step.source,
                                         "dashscale/runs": RUNS[step.phase]}},
            "spec": {"backoffLimit": 0,
                     "template": {"metadata": {"labels": dict(labels)},
                                  "spec": {"restartPolicy": "Never",
                                           "containers": [container]}}}}))
    return jobs


RUNS = {"before": "to completion before the Deployments roll",
        "after": "once the new Deployments are available"}


def release_comment(project, base, names):
    """Header lines (and the same on stderr) saying how to run the release Jobs."""
    lines = []
    for step in project.release_steps:
        job = names.get(step.name) or f"{base}-{dns_name(step.name)}"
        lines.append(f"# {step.name} ({step.source}): Job {job}, run once {RUNS[step.phase]}"
                     f": kubectl apply the Job, then `kubectl wait --for=condition=complete "
                     f"job/{job}` (a Job is immutable: delete it before the next deploy)")
    return "".join(line + "\n" for line in lines)


def to_yaml(obj):
    """One YAML document. PyYAML when installed; else JSON, which is valid YAML."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        import json
        return json.dumps(obj, indent=2) + "\n"
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # no &id001/*id001 for the repeated labels
            return True
    return yaml.dump(obj, Dumper=Dumper, sort_keys=False, default_flow_style=False,
                     width=10**6, allow_unicode=True)


def _header(project, counts, what, comment="#"):
    return (f"{comment} formation {format_formation(counts)} from "
            f"{project.formation_source}\n"
            f"{comment} Generated by `dashscale export {what}` from {project.procfile_path}\n"
            f"{comment} memory limits "
            + ", ".join(f"{t}={format_size(v)}" for t, v in project.memory_limits.items())
            + "\n")


def _write_private(path, text, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


def write_k8s(objects, output, header):
    if output in (None, "-"):
        docs = [to_yaml(o) for o in objects]
        sys.stdout.write(header + "---\n" + "---\n".join(docs))
        return []
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError("exists and is not a directory (k8s export writes one file per "
                         "object into a directory)", output)
    try:
        os.makedirs(output, exist_ok=True)
        written = []
        for obj in objects:
            path = os.path.join(output, f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
            mode = 0o600 if obj["kind"] == "Secret" else 0o644
            _write_private(path, header + to_yaml(obj), mode)
            written.append(path)
    except OSError as exc:
        raise UsageError(f"cannot write: {exc.strerror}", exc.filename or output) from None
    return written


# ─── supervisord ──────────────────────────────────────────────────────────────────────
ENV_WORDCHARS = re.compile(r"^[A-Za-z0-9_/.+\-():]+$")  # supervisor's unquoted token chars


def _pct(text):
    return text.replace("%", "%%")  # supervisor expands %(name)s in every value


def supervisor_env_value(key, value, source):
    """``value`` as supervisor's ``environment=`` parser reads it back exactly.

    supervisor splits the line with a non-POSIX shlex (no escapes: a value is a bare
    word or quoted with the other kind of quote), strips every quote character at both
    ends of a value, expands ``%``, and its config parser cuts the line at ``;``/``#``
    after whitespace. Values it cannot carry are errors, never silently changed.
    """
    def bad(why):
        return UsageError(f"{key}: {why}: supervisord's environment= syntax cannot carry "
                          "this value", source)
    if not ENV_WORDCHARS.match(key):
        raise bad("key is not a plain word")
    if any(c in value for c in "\n\r\0"):
        raise bad("value contains a line break or NUL")
    if re.search(r"\s[;#]", value):
        raise bad("value contains ';' or '#' after whitespace (read as a comment)")
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise bad("value starts or ends with a quote (supervisord strips it)")
    if "%(here)s" in value:
        raise bad("value contains '%(here)s'")
    if value and ENV_WORDCHARS.match(value):
        quoted = value
    elif '"' not in value:
        quoted = f'"{value}"'
    elif "'" not in value:
        quoted = f"'{value}'"
    else:
        raise bad("value contains both kinds of quotes")
    return f"{key}={_pct(quoted)}"


def _supervisor_value(text, what, source):
    if re.search(r"\s[;#]", text) or "\n" in text:
        raise UsageError(f"{what} contains ';' or '#' after whitespace, which supervisord "
                         "reads as a comment", *source)
    return _pct(text)


def supervisord_conf(project, settings, counts, app_name=None):
    """The text of a standalone supervisord.conf for the formation."""
    replicas = plan_replicas(project.type_names, counts, settings.base_port)
    env_source = project.env_files[-1]
    # The replicas' Python environment first on PATH, as `start` runs them (resolved now:
    # the config is for this machine, as its directory is).
    applied = project.python_env.apply({**os.environ, **project.env})
    python_env = {k: applied[k] for k in ("PATH", "VIRTUAL_ENV") if k in applied}
    fixed_keys = {"PORT", "DASHSCALE_REPLICA", "PYTHONUNBUFFERED", *_dash_prefix_env(app_name),
                  *python_env}
    dotenv = [supervisor_env_value(k, str(v), env_source) for k, v in project.env.items()
              if k not in fixed_keys]  # dashscale's own variables win, as in `start`
    dotenv += [supervisor_env_value(k, v, project.python_env.source)
               for k, v in python_env.items()]
    lines = [_header(project, counts, "supervisord", ";").rstrip("\n"),
             "; Run it with: supervisord -c THIS_FILE   (in the foreground: add -n)",
             "; Control it:  supervisorctl -c THIS_FILE status | restart web:* | shutdown",
             "; Socket, pid file and logs are written next to this file (%(here)s).",
             "; Control is over the unix socket only: there is no [inet_http_server].",
             "",
             "[unix_http_server]",
             "file = %(here)s/supervisord.sock",
             "chmod = 0700",
             "",
             "[supervisord]",
             "logfile = %(here)s/supervisord.log",
             "logfile_maxbytes = 10MB",
             "logfile_backups = 1",
             "pidfile = %(here)s/supervisord.pid",
             "childlogdir = %(here)s",
             "loglevel = info",
             "",
             "[rpcinterface:supervisor]",
             "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
             "",
             "[supervisorctl]",
             "serverurl = unix://%(here)s/supervisord.sock",
             ""]
    for step in project.release_steps:  # supervisord has no one-shot step
        when = "before starting" if step.phase == "before" else "once they serve, after"
        lines += [f"; {step.name} ({step.source}) is a release step, not a program: run it "
                  f"once, to completion, {when} the programs: {step.command}"
                  .replace("\n", " "), ""]
    by_type = {}
    for spec in replicas:
        by_type.setdefault(spec.type, []).append(spec)
    for type_name in project.type_names:
        ptype = project.procfile.types[type_name]
        where = (project.procfile_path, ptype.line)
        specs = by_type.get(type_name, [])
        if not specs:
            lines += [f"; {type_name}: 0 replicas in this formation", ""]
            continue
        lines += [f"[group:{type_name}]",
                  "programs = " + ",".join(s.name for s in specs), ""]
        for spec in specs:
            command = resolve_port(replica_command(ptype.command), spec.port)
            argv_text = shlex.join(command_argv(command))
            env = [f"PORT={spec.port}", f"DASHSCALE_REPLICA={spec.name}",
                   "PYTHONUNBUFFERED=1"]
            env += [supervisor_env_value(k, v, "--app-name")
                    for k, v in _dash_prefix_env(app_name).items()]
            env += dotenv
            lines += [
                f"; {spec.name}: Procfile line {ptype.line}: {ptype.command}".replace("\n", " "),
                f"; memory limit {format_size(project.memory_limits[type_name])} "
                "(not enforced by supervisord)",
                f"[program:{spec.name}]",
                f"command = {_supervisor_value(argv_text, 'the command', where)}",
                f"directory = {_supervisor_value(project.directory, 'the directory', where)}",
                f"environment = {','.join(env)}",
                "autostart = true",
                "autorestart = true",
                f"startsecs = {settings.startsecs}",
                f"startretries = {settings.startretries}",
                "stopsignal = TERM",
                f"stopwaitsecs = {settings.stop_timeout}",
                "stopasgroup = true",
                "killasgroup = true",
                "redirect_stderr = true",
                f"stdout_logfile = %(here)s/{spec.name}.log",
                "stdout_logfile_maxbytes = 50MB",
                "stdout_logfile_backups = 1",
                ""]
    return "\n".join(lines)


# ─── CLI ──────────────────────────────────────────────────────────────────────────────
def _common(fn):
    for decorator in reversed([
            procfile_option,
            click.option("-m", "-c", "--formation", "formation", multiple=True,
                         help="Replicas per type: web=4,worker=1 or all=2 (default: "
                              "the running instance's, else the persisted formation, "
                              "else 1 each)."),
            click.option("--memory-limit", default=None,
                         help="8GiB, or per type: web=2GiB,worker=512MiB (default 8GiB)."),
            click.option("-e", "--env", "env_files", multiple=True,
                         help="Env file(s) (default: .env next to the Procfile)."),
            click.option("--app-name", default=None,
                         help="Serve under /NAME/ (sets DASH_APP_NAME and the Dash "
                              "pathname prefixes)."),
    ]):
        fn = decorator(fn)
    return fn


@click.group()
def export():
    """Write the formation as Kubernetes manifests or a supervisord config."""


@export.command("k8s")
@_common
@click.option("-o", "--output", default=None,
              help="Directory: one YAML file per object. Omitted or '-': multi-document "
                   "YAML on stdout.")
@click.option("--image", default=DEFAULT_IMAGE, show_default=True,
              help="Container image holding the app (WORKDIR = the Procfile's directory).")
@click.option("--port", "port", type=click.IntRange(1, 65535), default=CONTAINER_PORT,
              show_default=True, help="Port every container listens on ($PORT).")
@click.option("--service", "services", multiple=True, metavar="redis|postgres",
              help="Managed services as for start (default: dashscale.ini's `services`).")
@handle_errors
def export_k8s(procfile, formation, memory_limit, env_files, app_name, output, image, port,
               services):
    """Kubernetes manifests: a Deployment per process type, a Service (and with
    --app-name an Ingress) for web, .env as ConfigMap/Secret."""
    project, settings, counts = load(procfile, env_files, formation, memory_limit,
                                     app_name=app_name)
    app_name = settings.app_name or None
    warning = dev_server_warning(project)
    if warning:
        click.echo(warning, err=True)
    services = service_names(settings, services)
    objects = k8s_objects(project, counts, image=image, app_name=app_name, port=port,
                          services=services)
    base = _base_name(project, app_name)
    names = _object_names(project, base)
    release_text = release_comment(project, base, names)
    header = _header(project, counts, "k8s") + services_comment(
        base, services, redis_object_name(project, base)) + release_text
    for line in release_text.splitlines():
        click.echo("dashscale: " + line.removeprefix("# "), err=True)
    written = write_k8s(objects, output, header)
    for path in written:
        click.echo(f"wrote {path}", err=True)


@export.command("supervisord")
@_common
@click.option("-o", "--output", default=None,
              help="File to write (omitted or '-': stdout). Logs and the socket go next to it.")
@click.option("--base-port", type=click.IntRange(1, 65535), default=None,
              help="First replica port (default 5006; +100 per type, +1 per replica).")
@handle_errors
def export_supervisord(procfile, formation, memory_limit, env_files, app_name, output,
                       base_port):
    """A standalone supervisord config: run it with `supervisord -c FILE`."""
    project, settings, counts = load(procfile, env_files, formation, memory_limit, base_port,
                                     app_name)
    text = supervisord_conf(project, settings, counts, settings.app_name or None)
    if output in (None, "-"):
        sys.stdout.write(text)
        return
    if os.path.isdir(output):
        raise UsageError("is a directory (supervisord export writes one file)", output)
    try:
        _write_private(output, text, 0o600)  # may hold .env values
    except OSError as exc:
        raise UsageError(f"cannot write: {exc.strerror}", output) from None
    click.echo(f"wrote {output}", err=True)
