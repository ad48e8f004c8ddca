"""Security review, as tests: nothing listens beyond loopback unless asked (and then a
warning), the run directory and its sockets are private, supervisord has no TCP server,
the control API refuses other users, .env values are never printed, and neither a
client nor a replica can spoof the headers the proxy sets.

Also covered elsewhere: replicas bind 127.0.0.1 on their ports
(test_core.py::test_replicas_bind_loopback_on_their_ports), the dashboard's cross-site
and DNS-rebinding protection (test_dashboard.py), request smuggling and header rules of
the parser (test_http11.py, test_http11_fuzz.py).
"""
import errno
import http.client
import json
import os
import socket
import stat
import urllib.request

import psutil
import pytest

from dashscale_local.testing import processes_with_marker, wait_for

slow = pytest.mark.slow  # the end-to-end tests (real replicas)

ECHO = "web: gunicorn echo_app:app --workers 1\n"
TWO_TYPES = ECHO + "worker: python -c 'import time; time.sleep(1e6)'\n"
LOOPBACK = ("127.0.0.1", "::1")
SECRET = "hunter2-Zq8v-not-for-logs"


def listening(run):
    """(pid, name, address, port) of every listening TCP socket and bound UDP socket of
    every process of the run (runner, supervisord, replica masters and workers)."""
    found = []
    for proc in processes_with_marker(run.run_id):
        try:
            for c in proc.net_connections("inet"):
                if (c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN) or \
                        (c.type == socket.SOCK_DGRAM and c.laddr):
                    found.append((proc.pid, proc.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return found


# ─── binds ───────────────────────────────────────────────────────────────────────────
@slow
def test_default_binds_are_loopback_only(dashscale):
    """Proxy (and the dashboard on it), every replica (master and workers) and a
    non-web process: every listening socket of every process of the run is on
    loopback, and the runner and supervisord listen on no TCP port but the proxy's."""
    run = dashscale(TWO_TYPES, formation="web=2,worker=1")
    st = run.status()
    assert st["proxy"]["host"] == "127.0.0.1"
    assert run.get("/_dashscale/api/status")[0] == 200  # the dashboard is on the proxy port
    socks = listening(run)
    assert socks, "nothing listens?"
    wrong = [s for s in socks if s[2] not in LOOPBACK]
    assert not wrong, wrong
    by_pid = {}
    for pid, _, _, port in socks:
        by_pid.setdefault(pid, set()).add(port)
    assert by_pid.get(st["runner_pid"]) == {run.port}
    assert st["supervisord_pid"] not in by_pid
    replica_ports = {r["port"] for r in st["replicas"] if r["type"] == "web"}
    others = {port for pid, ports in by_pid.items() if pid != st["runner_pid"] for port in ports}
    assert others == replica_ports
    assert "WARNING" not in run.output()  # a loopback start warns of nothing


@slow
def test_binding_all_interfaces_warns(dashscale):
    """--host 0.0.0.0 works but says, before anything else, that the app (and its
    dashboard) is reachable from other machines; the replicas stay on loopback."""
    run = dashscale(ECHO, formation="web=1", args=["--host", "0.0.0.0"])
    out = run.output()
    warning = [line for line in out.splitlines() if "WARNING" in line and "0.0.0.0" in line]
    assert warning, out
    assert "other machines" in warning[0]
    assert out.index(warning[0]) < out.index("ready")
    socks = listening(run)
    assert (run.status()["runner_pid"], "0.0.0.0") in {(s[0], s[2]) for s in socks}
    assert all(s[2] in LOOPBACK for s in socks if s[0] != run.status()["runner_pid"])


def dashboard_post(run, body, headers=()):
    """POST /_dashscale/api/scale to 127.0.0.1 (only ever loopback from a test), with the
    headers the page sends: (status, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=60)
    try:
        conn.request("POST", "/_dashscale/api/scale", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-Dashscale-Request": "1",
                              **dict(headers)})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def dashboard_get(run, path):
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


@slow
def test_dashboard_beyond_loopback_needs_the_token(dashscale):
    """--host 0.0.0.0: `start` prints the dashboard URL with a token; a state-changing
    dashboard request without it (or with a wrong one) is 403 and changes nothing, even
    from 127.0.0.1 (a tunnel makes a remote user look local); with the header, or the
    cookie the tokened page sets, it works. Only `status` over the socket shows it."""
    run = dashscale(ECHO, formation="web=1", args=["--host", "0.0.0.0"])
    [line] = [line for line in run.output().splitlines() if "?token=" in line]
    url = line.split()[-1]
    assert url.startswith(f"http://0.0.0.0:{run.port}/_dashscale/?token=")
    token = url.partition("?token=")[2]
    assert len(token) >= 32
    path = os.path.join(run.run_dir, "dashboard-token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    status = json.loads(run.cli("status", "--json", check=True).stdout)
    assert status["dashboard_url"] == url

    scale = {"formation": {"web": 2}}
    for headers in ({}, {"X-Dashscale-Token": token[:-1]}, {"X-Dashscale-Token": ""},
                    {"Cookie": "dashscale_token=nope"}):
        code, payload = dashboard_post(run, scale, headers)
        assert code == 403 and "token" in payload["error"], (headers, payload)
    assert run.status()["formation"] == {"web": 1} and len(run.status()["replicas"]) == 1
    code, _, body = dashboard_get(run, "/_dashscale/api/status")
    assert code == 200 and token.encode() not in body  # reading needs no token, nor shows it

    code, payload = dashboard_post(run, scale, {"X-Dashscale-Token": token})
    assert code == 200 and payload == {"formation": {"web": 2}}, payload

    assert dashboard_get(run, "/_dashscale/?token=wrong")[0] == 403
    code, headers, _ = dashboard_get(run, f"/_dashscale/?token={token}")
    headers = dict((k.lower(), v) for k, v in headers)
    assert code == 303 and headers["location"] == "/_dashscale/"  # the token leaves the URL
    cookie = headers["set-cookie"]
    assert {"HttpOnly", "SameSite=Strict", "Path=/_dashscale/"} <= \
        {part.strip() for part in cookie.split(";")}, cookie
    code, payload = dashboard_post(run, {"formation": {"web": 1}},
                                   {"Cookie": cookie.split(";")[0]})
    assert code == 200 and payload == {"formation": {"web": 1}}, payload
    assert run.cli("stop").returncode == 0
    assert not os.path.exists(path)


# ─── files and sockets of the run directory ─────────────────────────────────────────
def modes(run_dir):
    """{relative path: mode} of the run directory and everything in it."""
    out = {".": stat.S_IMODE(os.lstat(run_dir).st_mode)}
    for root, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, run_dir)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


@slow
def test_run_directory_is_private(dashscale, app_dir):
    """.dashscale 0700, supervisor.sock 0700, control.sock 0600, launchers 0600, and no
    file or directory in it readable or writable by group or others — also the logs
    supervisord writes and the files written later (saved formation, new replicas)."""
    (app_dir / ".env").write_text(f"SECRET_TOKEN={SECRET}\n")
    run = dashscale(TWO_TYPES, formation="web=1,worker=1")
    assert run.cli("scale", "web=2").returncode == 0  # writes .dashscale/formation
    run.get("/")
    rd = run.run_dir
    m = modes(rd)
    assert m["."] == 0o700
    assert stat.S_ISSOCK(os.lstat(os.path.join(rd, "supervisor.sock")).st_mode)
    assert m["supervisor.sock"] == 0o700
    assert m["control.sock"] == 0o600
    launchers = [p for p in m if p.startswith("launch" + os.sep)]
    pod_scripts = [p for p in launchers if p.endswith(".pod.sh")]  # podfs: one per replica
    assert len(launchers) == 6 and len(pod_scripts) == 3
    assert all(m[p] == 0o600 for p in launchers)
    for must in ("supervisord.conf", "state.json", "formation", "logs/supervisord.log",
                 "logs/web.1.log", "logs/web.2.log", "logs/worker.1.log", "supervisord.pid"):
        assert must in m, (must, sorted(m))
    # podfs: the replicas' copies of the app tree (deploys/, pods/) and the shared
    # ../mount keep the user's own modes, as their source tree has; only the private
    # run directory leads to them.
    assert m["deploys"] == m["pods"] == 0o700
    tree = ("deploys" + os.sep, "pods" + os.sep, "mount")
    loose = {p: oct(mode) for p, mode in m.items() if mode & 0o077 and not p.startswith(tree)}
    assert not loose, f"group/world bits in .dashscale: {loose}"
    # ... while the replicas keep the user's umask for the files they write themselves.
    for proc in processes_with_marker(run.run_id):
        if proc.environ().get("DASHSCALE_REPLICA") == "web.1":
            with open(f"/proc/{proc.pid}/status") as f:
                umask = [line.split()[1] for line in f if line.startswith("Umask:")][0]
            assert int(umask, 8) == _own_umask()
            break
    else:
        raise AssertionError("web.1 not found")


def _own_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@slow
def test_supervisord_has_no_inet_server(dashscale):
    """supervisord is driven over its unix socket only: no [inet_http_server] in its
    config, no listening TCP socket, and its RPC socket is a unix socket in .dashscale."""
    run = dashscale(ECHO, formation="web=1")
    import configparser
    import glob
    sections = set()
    for path in [os.path.join(run.run_dir, "supervisord.conf"),
                 *glob.glob(os.path.join(run.run_dir, "programs", "*.conf"))]:
        parser = configparser.RawConfigParser()
        parser.read(path)
        sections |= set(parser.sections())
    assert "inet_http_server" not in sections
    assert "unix_http_server" in sections
    sup = psutil.Process(run.status()["supervisord_pid"])
    assert [c for c in sup.net_connections("inet") if c.status == psutil.CONN_LISTEN] == []
    unix = [c.laddr for c in sup.net_connections("unix") if c.laddr]
    # supervisord binds supervisor.sock.PID, then renames it to supervisor.sock
    assert unix and all(a.startswith(os.path.join(run.run_dir, "supervisor.sock"))
                        for a in unix), unix


# ─── the control API and other users ─────────────────────────────────────────────────
NOBODY = 65534


def as_other_user(path, uid=NOBODY):
    """In a forked child running as ``uid``: connect to the unix socket ``path`` and
    ask GET /status. Returns 'EACCES' / 'ENOENT'… when the connect is refused, else
    the first line of the answer (or 'closed')."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, just the answer on the pipe
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
            except OSError as exc:
                os.write(w, errno.errorcode.get(exc.errno, str(exc.errno)).encode())
                os._exit(0)
            s.sendall(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            os.write(w, data.split(b"\r\n")[0] or b"closed")
        except BaseException as exc:  # noqa: BLE001 - report anything
            os.write(w, f"child error {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


class opened_path:
    """Temporarily make every directory above ``path`` traversable by others (o+x) and
    set given modes; restore everything afterwards."""

    def __init__(self, path, modes=None):
        self.path = os.path.abspath(path)
        self.modes = modes or {}
        self.saved = {}

    def __enter__(self):
        d = os.path.dirname(self.path)
        while d != "/":
            mode = stat.S_IMODE(os.stat(d).st_mode)
            if not mode & 0o001:
                self.saved[d] = mode
                os.chmod(d, mode | 0o001)
            d = os.path.dirname(d)
        for p, mode in self.modes.items():
            self.saved.setdefault(p, stat.S_IMODE(os.stat(p).st_mode))
            os.chmod(p, mode)
        return self

    def __exit__(self, *exc):
        for p, mode in self.saved.items():
            try:
                os.chmod(p, mode)
            except OSError:
                pass


@slow
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user (setuid)")
def test_control_api_refuses_other_users(dashscale):
    """Another user cannot use the control API: refused by the run directory's mode,
    by the socket file's own mode (0600), and — were both opened up — by the server's
    SO_PEERCRED check (403). supervisord's socket likewise."""
    run = dashscale(ECHO, formation="web=1")
    ctl = os.path.join(run.run_dir, "control.sock")
    sup = os.path.join(run.run_dir, "supervisor.sock")
    # Sanity: the owner gets in.
    assert run.status()["replicas"][0]["name"] == "web.1"
    with opened_path(ctl):
        assert as_other_user(ctl) == "EACCES"          # .dashscale is 0700
        assert as_other_user(sup) == "EACCES"
    with opened_path(ctl, {run.run_dir: 0o711}):
        assert as_other_user(ctl) == "EACCES"          # control.sock is 0600
        assert as_other_user(sup) == "EACCES"          # supervisor.sock is 0700
    with opened_path(ctl, {run.run_dir: 0o711, ctl: 0o666}):
        answer = as_other_user(ctl)                    # only the peer check is left
        assert answer.startswith("HTTP/1.1 403"), answer
    # Nothing was changed by the attempts, and the modes are back.
    assert stat.S_IMODE(os.stat(ctl).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run.run_dir).st_mode) == 0o700
    assert run.status()["formation"] == {"web": 1}


# ─── secrets ─────────────────────────────────────────────────────────────────────────
@slow
def test_env_values_never_printed(dashscale, app_dir):
    """A .env secret reaches the app, but is in no output, status, config or log: not in
    `dashscale` output, `status` / `status --json`, the dashboard's status, `check`,
    supervisord's config/logs/program files, state.json, any replica's command line;
    only in the launcher scripts, which are 0600 (and in the replicas' copies of the app
    tree, .env included, under the 0700 run directory). Also across an .env change."""
    (app_dir / ".env").write_text(f"SECRET_TOKEN={SECRET}\nOTHER=plain\n")
    run = dashscale(ECHO, formation="web=2")
    body = json.loads(run.get("/env?keys=SECRET_TOKEN")[2])
    assert body == {"SECRET_TOKEN": SECRET}  # the app gets it
    mark = len(run.output())
    (app_dir / ".env").write_text(f"SECRET_TOKEN={SECRET}-2\nOTHER=plain\n")
    wait_for(lambda: "reload applied" in run.output()[mark:], 60, message="rolled")
    assert json.loads(run.get("/env?keys=SECRET_TOKEN")[2]) == {"SECRET_TOKEN": SECRET + "-2"}
    texts = {
        "dashscale output": run.output(),
        "status": run.cli("status").stdout,
        "status --json": run.cli("status", "--json").stdout,
        "dashboard status": run.get("/_dashscale/api/status")[2].decode(),
        "check --json": run.cli("check", "--json").stdout,
        "logs": run.cli("logs").stdout,
    }
    for proc in processes_with_marker(run.run_id):
        try:
            texts[f"cmdline of {proc.pid}"] = " ".join(proc.cmdline())
        except psutil.Error:
            pass
    launchers = []
    for root, _, files in os.walk(run.run_dir):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            rel = os.path.relpath(path, run.run_dir)
            if rel.startswith("launch" + os.sep):
                launchers.append(path)
                continue
            if rel.startswith(("deploys" + os.sep, "pods" + os.sep)):
                continue  # podfs: the replicas' copies of the app tree (its .env too)
            with open(path, "rb") as f:
                texts[os.path.relpath(path, run.run_dir)] = f.read().decode("latin-1")
    assert "supervisord.conf" in texts and "logs/supervisord.log" in texts
    leaks = [where for where, text in texts.items() if SECRET in text]
    assert not leaks, f"the .env secret appears in: {leaks}"
    assert launchers
    for path in launchers:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# ─── headers ─────────────────────────────────────────────────────────────────────────
def raw_request(port, data, timeout=15):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return lines[0], headers, body


SPOOFS = [
    ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "6.6.6.7"),
    ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"), ("X-Real-IP", "6.6.6.8"), ("Forwarded", "for=6.6.6.9"),
    ("X-Dashscale-Replica", "web.9"), ("X-Dashscale-Request", "1"),
    ("X-Dashscale-Anything", "x"),
    # CGI-style servers read underscores as dashes (HTTP_X_FORWARDED_FOR)
    ("X_Forwarded_For", "6.6.6.10"), ("X-Forwarded_For", "6.6.6.11"),
    ("X_Dashscale_Replica", "web.8"), ("X_Real_IP", "6.6.6.12"),
]


@slow
def test_client_cannot_spoof_forwarding_headers(dashscale):
    """Whatever the client sends, the replica sees X-Forwarded-For = the real peer,
    X-Forwarded-Proto http, X-Forwarded-Host = the Host, and no X-Dashscale-* / X-Real-IP
    / Forwarded — also under underscore spellings, with gunicorn told to map them
    (--header-map dangerous, as a CGI-style server would), and also when the client
    names the proxy's own headers in Connection."""
    run = dashscale("web: gunicorn echo_app:app --workers 1 --header-map dangerous\n",
                    formation="web=1")
    extra = "".join(f"{k}: {v}\r\n" for k, v in SPOOFS)
    for conn_header in ("close", "close, X-Forwarded-For, Via"):
        req = (f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\n{extra}"
               f"Content-Length: 2\r\nConnection: {conn_header}\r\n\r\nhi").encode()
        status, headers, body = raw_request(run.port, req)
        assert status.startswith("HTTP/1.1 200"), (status, body)
        seen = json.loads(body)["headers"]
        assert seen["x-forwarded-for"] == "127.0.0.1", seen
        assert seen["x-forwarded-proto"] == "http", seen
        assert seen["x-forwarded-host"] == f"127.0.0.1:{run.port}", seen
        assert seen["via"] == "1.1 dashscale", seen
        for name in seen:
            assert not name.startswith("x-dashscale"), seen
            assert name not in ("x-real-ip", "forwarded", "x-forwarded-port"), seen
        assert "6.6.6" not in body.decode() and "evil" not in body.decode(), seen
    # the underscore mapping really is on (so the check above means something)
    _, _, body = raw_request(run.replica("web.1")["port"],
                             b"GET /echo HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4\r\n"
                             b"Connection: close\r\n\r\n")
    assert json.loads(body)["headers"].get("x-forwarded-for") == "1.2.3.4"


SPOOF_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                              ("X-Dashscale-Replica", "web.99"),
                              ("x-dashscale-replica", "web.98"),
                              ("X-Dashscale-Other", "spoof")])
    return [b"ok"]
'''


@slow
def test_replica_cannot_spoof_replica_header(dashscale, app_dir):
    """A replica that sets X-Dashscale-Replica (or any X-Dashscale-*) itself: the client
    gets exactly one X-Dashscale-Replica, the proxy's, naming the real replica."""
    (app_dir / "spoof_app.py").write_text(SPOOF_APP)
    run = dashscale("web: gunicorn spoof_app:app --workers 1\n", formation="web=2")
    for expected in ("web.1", "web.2"):
        status, headers, body = raw_request(
            run.port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\n"
                      "Connection: close\r\n\r\n".encode())
        assert status.startswith("HTTP/1.1 200") and body == b"ok"
        ours = [v for k, v in headers if k.lower().startswith("x-dashscale")]
        assert ours == [expected], headers
        assert [k for k, v in headers if k.lower() == "x-dashscale-replica"] == \
            ["X-Dashscale-Replica"]
    # and through a keep-alive client (urllib) too
    with urllib.request.urlopen(run.url + "/") as resp:
        assert resp.headers.get_all("X-Dashscale-Replica") in (["web.1"], ["web.2"])
        assert resp.headers.get("X-Dashscale-Other") is None
