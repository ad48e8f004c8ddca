"""A WSGI app that keeps files on disk, for the pod-disk tests (tests/e2e/test_podfs.py).

GET /write?name=data.txt&text=hi → writes text to name, relative to the working directory
GET /read?name=data.txt          → the file's text, or 404
GET /cwd                         → the working directory
"""
import os
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    status, body = "200 OK", ""
    if path == "/write":
        with open(query["name"], "w", encoding="utf-8") as f:
            f.write(query.get("text", ""))
        body = "written"
    elif path == "/read":
        try:
            with open(query["name"], encoding="utf-8") as f:
                body = f.read()
        except FileNotFoundError:
            status, body = "404 Not Found", "missing"
    elif path == "/cwd":
        body = os.getcwd()
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
