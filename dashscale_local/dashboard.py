"""The Scale tab: served by the runner on the proxy port under /_dashscale/.

``handle(runner, req, body)`` answers every request whose path starts with
/_dashscale/; the app keeps every other path.
"""
import json

JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


async def handle(runner, req, body):
    path = req.target.split(b"?", 1)[0]
    if path == b"/_dashscale/api/status" and req.method in (b"GET", b"HEAD"):
        return 200, JSON, json.dumps(runner.status()).encode()
    return 404, [(b"content-type", b"text/plain")], b"not found\n"
