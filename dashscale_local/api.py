"""ControlAPI: the whole control surface as one object (as supervisor's rpcinterface),
behind both doors: the control socket (control.py) and the dashboard (dashboard.py).

Every request is checked against one schema before anything changes:

  GET  status   [?since=T]                      T: a finite number (epoch seconds)
  POST scale    {"formation": {TYPE|"all": N}}  N: a whole number ≥ 0 (not a bool, float
                                                or string); types from the Procfile; the
                                                result within the caps (max per type, pods)
  POST restart  {"target": T, "rolling": B}     both optional; T: "all", a type with
                                                replicas or a replica name; B: a bool
  POST stop     {} or no body

A body is a JSON object of at most MAX_BODY bytes; unknown fields are refused. A bad
request is answered 4xx with one line naming the field and value, and changes nothing.
"""
import json
import math
import time
from urllib.parse import parse_qs

from . import rundir
from .errors import RuntimeFailure, UsageError
from .formation import resolve_formation

MAX_BODY = 64 * 1024
METHODS = {"status": ("GET", "HEAD"), "scale": ("POST",), "restart": ("POST",),
           "stop": ("POST",)}


class ApiError(Exception):
    """A refused request: HTTP status and a one-line message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def show(value, limit=40):
    """A JSON value as a short one-line string, for error messages."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


def parse_body(body):
    """The request body as a dict: empty → {}; else one JSON object."""
    if len(body) > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "body is not JSON")
    if not isinstance(value, dict):
        raise ApiError(400, f"body must be a JSON object, not {show(value)}")
    return value


def check_fields(body, allowed, required=()):
    for name in body:
        if name not in allowed:
            expected = ", ".join(allowed) or "none"
            raise ApiError(400, f"unknown field {show(name)} (expected: {expected})")
    for name in required:
        if name not in body:
            raise ApiError(400, f"missing field {show(name)}")


def parse_query(query):
    """'since=12.5' → {"since": 12.5}; any other parameter is refused."""
    params = parse_qs(query, keep_blank_values=True)
    for name in params:
        if name != "since":
            raise ApiError(400, f"unknown query parameter {show(name)} (expected: since)")
    if "since" not in params:
        return {}
    raw = params["since"][-1]
    try:
        since = float(raw)
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        raise ApiError(400, f"since must be a number (epoch seconds), not {show(raw)}")
    return {"since": since}


class ControlAPI:
    """Status, scale, restart, stop and the memory history of one running Runner."""

    def __init__(self, runner):
        self.runner = runner
        self.token = rundir.read_token(runner.run_dir)

    async def handle(self, method, route, body=b"", query="", routes=tuple(METHODS),
                     private=False):
        """(HTTP status, JSON payload) for one request; never raises. ``routes``: the
        routes this door offers; ``private``: the caller is the local user (the socket)."""
        try:
            if route not in routes:
                raise ApiError(404, f"no route {method} /{route}")
            if method not in METHODS[route]:
                raise ApiError(405, f"use {' or '.join(METHODS[route])} for /{route}")
            if route == "status":
                if body:
                    raise ApiError(400, "status takes no body")
                return 200, self.status(private=private, **parse_query(query))
            return 200, await getattr(self, route)(parse_body(body))
        except ApiError as exc:
            return exc.status, {"error": exc.message}
        except UsageError as exc:  # the runner's own checks, e.g. a reload changed the types
            return 400, {"error": str(exc)}
        except RuntimeFailure as exc:
            return 500, {"error": str(exc)}
        except Exception as exc:  # report, never kill the runner
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

    # -- the schema ------------------------------------------------------------------
    def caps(self):
        settings = self.runner.settings
        return dict(settings.caps)

    def check_scale(self, body):
        """The validated ``formation`` of a scale request."""
        check_fields(body, ("formation",), required=("formation",))
        spec = body["formation"]
        if not isinstance(spec, dict) or not spec:
            raise ApiError(400, f'formation must be an object like {{"web": 2}}, not {show(spec)}')
        caps = self.caps()
        for name, count in spec.items():
            field = f"formation[{show(name)}]"
            if type(count) is not int or count < 0:
                raise ApiError(400, f"{field}: {show(count)} is not a whole number ≥ 0")
            if count > caps["max_per_type"]:
                raise ApiError(400, f"{field}: {show(count)} exceeds the cap of "
                                    f"{caps['max_per_type']} replicas per process type")
        try:
            resolve_formation(self.runner.project.type_names, self.runner.counts, spec, **caps)
        except UsageError as exc:
            raise ApiError(400, f"formation: {exc}")
        return spec

    def check_restart(self, body):
        """(target, rolling) of a restart request."""
        check_fields(body, ("target", "rolling"))
        target, rolling = body.get("target"), body.get("rolling", False)
        if not isinstance(rolling, bool):
            raise ApiError(400, f"rolling: {show(rolling)} is not true or false")
        replicas = self.runner.replicas
        known = {"all", *replicas, *(r.type for r in replicas.values())}
        if target is not None and (not isinstance(target, str) or target not in known):
            running = ", ".join(sorted(replicas)) or "none"
            raise ApiError(400, f"target: no replica or process type named {show(target)} "
                                f"(running: {running})")
        return target, rolling

    # -- the surface -----------------------------------------------------------------
    def status(self, since=None, private=False):
        """The runner's status, the dashboard's figures and, with ``since``, the memory
        samples newer than it. ``private`` adds the dashboard URL with its token."""
        data = self.runner.status()
        history = getattr(self.runner, "memory_history", None)
        data["dashboard"] = dict(self.caps(), time=time.time(),
                                 history_interval=getattr(history, "interval", None),
                                 history_keep=getattr(getattr(history, "samples", None),
                                                      "maxlen", None))
        if getattr(self.runner, "run_dir", None):  # the last `dashscale check --replicas`
            from .replica_check import load
            data["replica_check"] = load(self.runner.run_dir)
        if since is not None:
            data["memory_history"] = history.since(since) if history is not None else []
        if private:
            data["dashboard_url"] = self.dashboard_url()
        return data

    def dashboard_url(self):
        runner = self.runner
        host = f"[{runner.host}]" if ":" in runner.host else runner.host
        return f"http://{host}:{runner.port}/_dashscale/" + \
            (f"?token={self.token}" if self.token else "")

    async def scale(self, body):
        return {"formation": await self.runner.scale(self.check_scale(body))}

    async def restart(self, body):
        target, rolling = self.check_restart(body)
        return {"restarted": await self.runner.restart(target, rolling)}

    async def stop(self, body):
        check_fields(body, ())
        await self.runner.stop()
        return {"stopping": True}
