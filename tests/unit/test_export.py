"""`dashscale export k8s|supervisord`: manifests validated offline by kubernetes-validate,
and the supervisord config read back by supervisor's own loader (run by a real
supervisord in tests/e2e/test_export.py)."""
import glob
import json
import os
import re
import stat

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from dashscale_local.cli import main
from dashscale_local.export import command_argv, resolve_port, supervisor_env_value

K8S_VERSION = kubernetes_validate.latest_version()  # the newest the package ships
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_kubernetes_version_is_current():
    major, minor = (int(x) for x in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 30), K8S_VERSION


def write(directory, name, text):
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def export(directory, *args, expect=0):
    result = CliRunner().invoke(main, ["export", *args[:1], "-f",
                                       os.path.join(str(directory), "Procfile"), *args[1:]])
    assert result.exit_code == expect, (result.output, result.stderr, result.exception)
    return result


def k8s(directory, *args):
    """Export to stdout, parse, validate every object strictly; {(kind, name): obj}."""
    docs = [d for d in yaml.safe_load_all(export(directory, "k8s", *args).stdout) if d]
    objects = {}
    for obj in docs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]
        assert len(obj["metadata"]["name"]) <= 63
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in objects
        objects[key] = obj
    return objects


def container(obj):
    [c] = obj["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.fixture
def project(tmp_path):
    d = tmp_path / "shop"
    d.mkdir()
    return d


def test_k8s_single_web(project):
    write(project, "Procfile", "web: gunicorn app:server --workers 2\n")
    objs = k8s(project)
    assert set(objs) == {("Deployment", "shop-web"), ("Service", "shop-web")}
    dep = objs["Deployment", "shop-web"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["selector"]["matchLabels"] == {"app": "shop", "process-type": "web"}
    assert dep["spec"]["template"]["metadata"]["labels"]["process-type"] == "web"
    c = container(dep)
    assert c["image"] == "dashscale-app:latest"
    assert c["command"] == ["gunicorn", "app:server", "--workers", "2",
                            "--bind", "0.0.0.0:8050"]
    assert c["resources"] == {"requests": {"memory": "128Mi"}, "limits": {"memory": "8Gi"}}
    assert c["ports"] == [{"name": "http", "containerPort": 8050, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    env = env_of(c)
    assert env["PORT"] == "8050" and env["PYTHONUNBUFFERED"] == "1"
    assert env["DASHSCALE_REPLICA"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "DASH_APP_NAME" not in env and "envFrom" not in c
    svc = objs["Service", "shop-web"]
    assert svc["spec"]["selector"] == {"app": "shop", "process-type": "web"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                     "protocol": "TCP"}]


def test_k8s_formation_and_limits_per_type(project):
    write(project, "Procfile", "web: gunicorn app:server -w 3\n"
                               "worker: python worker.py --queue default\n")
    objs = k8s(project, "-m", "web=3,worker=2", "--memory-limit", "web=2GiB,worker=512MiB",
               "--image", "registry.example/shop:1.2")
    web, worker = objs["Deployment", "shop-web"], objs["Deployment", "shop-worker"]
    assert web["spec"]["replicas"] == 3 and worker["spec"]["replicas"] == 2
    assert container(web)["resources"]["limits"] == {"memory": "2Gi"}
    assert container(worker)["resources"]["limits"] == {"memory": "512Mi"}
    for dep in (web, worker):
        assert container(dep)["resources"]["requests"] == {"memory": "128Mi"}
        assert container(dep)["image"] == "registry.example/shop:1.2"
    assert container(worker)["command"] == ["python", "worker.py", "--queue", "default"]
    assert "ports" not in container(worker) and "readinessProbe" not in container(worker)
    assert ("Service", "shop-worker") not in objs
    # A decimal limit stays exact; a limit below 128Mi lowers the request to it.
    objs = k8s(project, "--memory-limit", "web=3G,worker=100Mi")
    assert container(objs["Deployment", "shop-web"])["resources"]["limits"] == {"memory": "3G"}
    assert container(objs["Deployment", "shop-worker"])["resources"] == {
        "requests": {"memory": "100Mi"}, "limits": {"memory": "100Mi"}}


def test_k8s_default_is_the_persisted_formation(project):
    write(project, "Procfile", "web: gunicorn app:server -w 2\nworker: python w.py\n")
    write(project, "DOKKU_SCALE", "web=4\nworker=0\n")
    objs = k8s(project)
    assert objs["Deployment", "shop-web"]["spec"]["replicas"] == 4
    assert objs["Deployment", "shop-worker"]["spec"]["replicas"] == 0
    objs = k8s(project, "-m", "web=2")
    assert objs["Deployment", "shop-web"]["spec"]["replicas"] == 2
    export(project, "k8s", "-m", "web=11", expect=2)  # Dash Enterprise's cap


def test_k8s_says_where_the_formation_comes_from(project):
    write(project, "Procfile", "web: gunicorn app:server -w 2\nworker: python w.py\n")
    first = export(project, "k8s").stdout.splitlines()[0]
    assert first == "# formation web=1,worker=1 from default 1 per type"
    os.makedirs(project / ".dashscale")
    write(project / ".dashscale", "formation", "web=2\n")
    assert export(project, "k8s").stdout.splitlines()[0] == \
        "# formation web=2,worker=1 from .dashscale/formation"
    assert export(project, "k8s", "-m", "worker=0").stdout.splitlines()[0] == \
        "# formation web=2,worker=0 from -m over .dashscale/formation"


@pytest.mark.parametrize("command, warned", [
    ("python app.py", True), ("python3 -u app.py --debug", True), ("flask run", True),
    ("FLASK_APP=app.py flask run -p $PORT", True), ("python -m flask run", True),
    (".venv/bin/python index.py", True),
    ("gunicorn app:server --workers 2", False), ("python -m gunicorn app:server", False),
    ("waitress-serve --port=$PORT app:server", False)])
def test_k8s_warns_about_a_dev_server_web(project, command, warned):
    write(project, "Procfile", f"# the app\nweb: {command}\nworker: python worker.py\n")
    result = export(project, "k8s")
    lines = [line for line in result.stderr.splitlines() if "warning" in line]
    if not warned:
        assert lines == []
        return
    assert lines == [f"{project / 'Procfile'}:2: warning: web runs a development server "
                     f"({command}); in a pod it binds 127.0.0.1 with debug on: use "
                     "`gunicorn MODULE:server` (`dashscale init` writes one)"]


def test_k8s_underscore_types_become_dns_labels(project):
    write(project, "Procfile", "web: gunicorn app:server -w 2\nmy_worker: python w.py\n"
                               "Clock_2: python clock.py\n")
    objs = k8s(project, "-m", "my_worker=2")
    assert ("Deployment", "shop-my-worker") in objs and ("Deployment", "shop-clock-2") in objs
    dep = objs["Deployment", "shop-my-worker"]
    assert dep["spec"]["replicas"] == 2
    assert container(dep)["name"] == "my-worker"
    assert dep["metadata"]["labels"]["process-type"] == "my-worker"
    assert dep["metadata"]["annotations"]["dashscale/process-type"] == "my_worker"


@pytest.mark.parametrize("procfile, message", [
    ("web: gunicorn a:b\nmy_worker: x\nmy-worker: y\n", "both become"),
    ("web: gunicorn a:b\n_: x\n", "cannot be a Kubernetes name"),
    ("web: gunicorn a:b\n" + "w" * 60 + ": x\n", "longer than 63"),
])
def test_k8s_impossible_names_are_errors(project, procfile, message):
    write(project, "Procfile", procfile)
    result = export(project, "k8s", expect=2)
    assert message in result.stderr
    assert re.search(r"Procfile:[23]: ", result.stderr), result.stderr


def test_k8s_app_name_ingress_and_prefix_env(project):
    write(project, "Procfile", "web: gunicorn app:server -w 2\nworker: python w.py\n")
    objs = k8s(project, "--app-name", "sales-report")
    ing = objs["Ingress", "sales-report"]
    [rule] = ing["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/sales-report/" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": "sales-report-web", "port": {"name": "http"}}
    assert ("Service", "sales-report-web") in objs
    for name in ("sales-report-web", "sales-report-worker"):
        env = env_of(container(objs["Deployment", name]))
        assert env["DASH_APP_NAME"] == "sales-report"
        assert env["DASH_REQUESTS_PATHNAME_PREFIX"] == "/sales-report/"
        assert env["DASH_ROUTES_PATHNAME_PREFIX"] == "/sales-report/"
    probe = container(objs["Deployment", "sales-report-web"])["readinessProbe"]
    assert probe["httpGet"]["path"] == "/sales-report/"
    for bad in ("Sales", "sales_report", "1sales", "x" * 64):
        assert "invalid app name" in export(project, "k8s", "--app-name", bad,
                                            expect=2).stderr


def test_k8s_port_resolution_and_shell_form(project):
    write(project, "Procfile",
          "web: gunicorn app:server -w 2 --bind 0.0.0.0:${PORT:-5000}\n"
          "worker: celery -A tasks worker --concurrency $CELERY_CONCURRENCY\n"
          "clock: python clock.py --port=$PORT && echo done\n")
    objs = k8s(project, "--port", "9000")
    web = container(objs["Deployment", "shop-web"])
    assert web["command"] == ["gunicorn", "app:server", "-w", "2", "--bind", "0.0.0.0:9000"]
    assert web["ports"][0]["containerPort"] == 9000
    assert container(objs["Deployment", "shop-worker"])["command"] == [
        "/bin/sh", "-c", "exec celery -A tasks worker --concurrency $CELERY_CONCURRENCY"]
    assert container(objs["Deployment", "shop-clock"])["command"] == [
        "/bin/sh", "-c", "python clock.py --port=9000 && echo done"]


def test_resolve_port_and_argv():
    assert resolve_port("a $PORT ${PORT} ${PORT-1} '$PORT' \"$PORT\" $PORTX", 80) == \
        "a 80 80 80 '$PORT' \"80\" $PORTX"
    assert command_argv("gunicorn 'app:create_app()' -w 2") == \
        ["gunicorn", "app:create_app()", "-w", "2"]
    assert command_argv("FOO=1 gunicorn app:server")[:2] == ["/bin/sh", "-c"]


def test_k8s_env_configmap_secret_and_files(project, tmp_path):
    write(project, "Procfile", "web: gunicorn app:server -w 2\n")
    write(project, ".env", "DEBUG=1\nTITLE='Sales, 2024 (50% off)'\nSECRET_KEY=s3cr3t\n"
                           "DATABASE_URL=postgres://u:pw@db:5432/shop\nREDIS_URL=redis://r:6379\n"
                           "API_TOKEN=t0k\nPORT=1234\n")
    objs = k8s(project)
    cm, secret = objs["ConfigMap", "shop-env"], objs["Secret", "shop-secret"]
    assert cm["data"] == {"DEBUG": "1", "PORT": "1234", "REDIS_URL": "redis://r:6379",
                          "TITLE": "Sales, 2024 (50% off)"}
    assert secret["stringData"] == {"API_TOKEN": "t0k", "DATABASE_URL":
                                    "postgres://u:pw@db:5432/shop", "SECRET_KEY": "s3cr3t"}
    c = container(objs["Deployment", "shop-web"])
    assert c["envFrom"] == [{"configMapRef": {"name": "shop-env"}},
                            {"secretRef": {"name": "shop-secret"}}]
    assert env_of(c)["PORT"] == "8050"  # `env` wins over envFrom, as dashscale's PORT locally
    # -o DIR: one file per object, the same objects; the Secret private.
    out = tmp_path / "manifests"
    export(project, "k8s", "-o", str(out))
    files = sorted(os.path.basename(p) for p in glob.glob(str(out / "*.yaml")))
    assert files == ["configmap-shop-env.yaml", "deployment-shop-web.yaml",
                     "secret-shop-secret.yaml", "service-shop-web.yaml"]
    for path in glob.glob(str(out / "*.yaml")):
        [obj] = [d for d in yaml.safe_load_all(open(path)) if d]
        assert obj == objs[obj["kind"], obj["metadata"]["name"]]
    assert stat.S_IMODE(os.stat(out / "secret-shop-secret.yaml").st_mode) == 0o600
    write(tmp_path, "afile", "")
    assert "not a directory" in export(project, "k8s", "-o", str(tmp_path / "afile"),
                                       expect=2).stderr


def test_bad_input_exits_2(project):
    write(project, "Procfile", "web: gunicorn app:server\n")
    assert "unknown process type" in export(project, "k8s", "-m", "api=2", expect=2).stderr
    assert "invalid size" in export(project, "supervisord", "--memory-limit", "lots",
                                    expect=2).stderr
    os.remove(project / "Procfile")
    assert "Procfile not found" in export(project, "k8s", expect=2).stderr


# ─── supervisord ──────────────────────────────────────────────────────────────────────
TRICKY_ENV = {
    "PLAIN": "abc",
    "COMMA": "a, b, c",
    "PERCENT": "50% of %(name)s %s",
    "DQUOTE": 'say "hi" now',
    "SQUOTE": "it's",
    "EQUALS": "x=1;y#2",
    "JSON": '{"a": [1, 2]}',
    "UNICODE": "ünï cödé",
    "SHELLISH": "a\\b $HOME `x`",
    "EMPTY": "",
}


def test_supervisor_environment_round_trips_through_supervisor(tmp_path):
    """supervisor's own config loader reads back exactly what we meant."""
    from supervisor.options import ServerOptions

    env = ",".join(supervisor_env_value(k, v, ".env") for k, v in TRICKY_ENV.items())
    conf = write(tmp_path, "s.conf", "[supervisord]\nlogfile = %(here)s/s.log\n"
                                     "[program:web.1]\ncommand = true\n"
                                     f"environment = {env}\n")
    options = ServerOptions()
    options.realize(["-c", conf])
    [group] = options.process_group_configs
    assert group.process_configs[0].environment == TRICKY_ENV


@pytest.mark.parametrize("value, why", [
    ("line1\nline2", "line break"),
    ("both ' and \" inside", "both kinds of quotes"),
    ('"quoted"', "starts or ends with a quote"),
    ("tail'", "starts or ends with a quote"),
    ("a ;b", "read as a comment"),
    ("a #b", "read as a comment"),
])
def test_supervisord_export_refuses_values_it_cannot_carry(project, value, why):
    write(project, "Procfile", "web: gunicorn app:server\n")
    write(project, ".env", "OK=1\nBAD=" + json.dumps(value) + "\n")
    result = export(project, "supervisord", expect=2)
    assert "BAD" in result.stderr and why in result.stderr, result.stderr
    assert ".env" in result.stderr


def test_supervisord_conf_shape(project):
    write(project, "Procfile", "web: gunicorn app:server -w 2\nworker: python w.py\n"
                               "clock: python clock.py\n")
    text = export(project, "supervisord", "-m", "web=3,worker=1,clock=0",
                  "--base-port", "7000", "--memory-limit", "web=1GiB").stdout
    assert re.findall(r"^\[program:(\S+)\]$", text, re.M) == ["web.1", "web.2", "web.3",
                                                             "worker.1"]
    assert "[group:web]\nprograms = web.1,web.2,web.3" in text
    assert "command = gunicorn app:server -w 2 --bind 127.0.0.1:7002" in text
    assert "PORT=7100,DASHSCALE_REPLICA=worker.1,PYTHONUNBUFFERED=1" in text
    assert "[unix_http_server]\nfile = %(here)s/supervisord.sock\nchmod = 0700" in text
    assert "inet_http_server]" not in text.replace("no [inet_http_server]", "")
    assert "memory limit 1 GiB" in text and "clock: 0 replicas" in text
    for key in ("autorestart = true", "stopasgroup = true", "killasgroup = true",
                f"directory = {project}"):
        assert key in text
