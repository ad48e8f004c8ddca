"""A tiny WSGI app for the end-to-end tests (fast to boot, unlike Dash).

GET /            → "replica pid"
GET /slow?s=1.5  → sleeps, then answers
GET /crash       → the worker process exits (gunicorn restarts the worker; with
                   ?master=1 the whole replica exits)
POST /echo       → the request body back, with the headers the replica saw as JSON
GET /alloc?mib=N → holds N MiB more in this worker
GET /fail        → HTTP 500 (an app error, counted as a 5xx)
"""
import json
import os
import signal
import time
from urllib.parse import parse_qs

REPLICA = os.environ.get("DASHSCALE_REPLICA", "?")
_held = []


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    body, status = b"", "200 OK"
    if path == "/slow":
        time.sleep(float(query.get("s", "1")))
        body = f"{REPLICA} slept".encode()
    elif path == "/crash":
        if query.get("master"):
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(3)
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        body = json.dumps({"replica": REPLICA, "method": environ["REQUEST_METHOD"],
                           "path": path, "query": environ.get("QUERY_STRING", ""),
                           "length": len(data), "body": data.decode("latin-1"),
                           "headers": headers}).encode()
    elif path == "/alloc":
        _held.append(b"\x01" * (int(query.get("mib", "10")) * 1024 * 1024))
        body = f"{REPLICA} holds {len(_held)} blocks".encode()
    elif path == "/env":
        body = json.dumps({k: os.environ.get(k) for k in query.get("keys", "").split(",")}).encode()
    elif path == "/fail":
        body, status = f"{REPLICA} failed".encode(), "500 Internal Server Error"
    else:
        body = f"{REPLICA} {os.getpid()}".encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
