"""A WSGI app that holds a big block allocated at import (~200 MiB, DASHSCALE_TEST_SHARED_MIB).

Run with ``gunicorn preload_app:app --preload --workers 4``: the master imports it and the
workers share the block copy-on-write (one bytes object: nothing ever writes to its pages,
not even reference counting, which touches only the object's header page). Σ RSS over the
replica counts the block five times; Σ PSS (what a pod's cgroup charges) once.

GET /      → "replica pid size"
"""
import os

REPLICA = os.environ.get("DASHSCALE_REPLICA", "?")
SHARED_MIB = int(os.environ.get("DASHSCALE_TEST_SHARED_MIB", "200"))
BLOCK = b"\x01" * (SHARED_MIB * 1024 * 1024)  # written once, here, by the master


def app(environ, start_response):
    body = f"{REPLICA} {os.getpid()} {len(BLOCK)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
