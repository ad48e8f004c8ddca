"""Formations: how many replicas of each process type, and their ports.

Syntax as foreman's ``-m``: ``web=4,worker=1`` or ``all=2``.  The same
``type=N`` items, one per line, make a DOKKU_SCALE-style scale file.
"""

import re
from dataclasses import dataclass

from .errors import UsageError

MAX_REPLICAS_PER_TYPE = 10  # Dash Enterprise allows 1..10 replicas per process type
DEFAULT_POD_LIMIT = 40
BASE_PORT = 5006  # not 5000: macOS AirPlay Receiver listens there
PORT_STEP_PER_TYPE = 100
MAX_PORT = 65535

# [0-9] rather than \d: \d also matches non-ASCII digits such as '٣'.
ITEM = re.compile(r"^([A-Za-z0-9_-]+)\s*=\s*(\S*)$")
COUNT = re.compile(r"^[0-9]+$")


def _parse_item(item, counts, file, line=None):
    m = ITEM.match(item)
    if m is None:
        raise UsageError(f"invalid formation item {item!r} (expected type=N, e.g. web=4)",
                         file, line)
    name, value = m.groups()
    if not COUNT.match(value):
        raise UsageError(f"invalid count in {item!r} (expected a whole number >= 0)",
                         file, line)
    if name in counts:
        raise UsageError(f"{name!r} is given twice", file, line)
    counts[name] = int(value)


def parse_formation(spec, source="-m"):
    """Parse ``web=4,worker=1`` / ``all=N``; ``source`` names the option or file."""
    counts = {}
    for item in spec.split(","):
        if item.strip():  # tolerate "web=2," and surrounding spaces
            _parse_item(item.strip(), counts, source)
    return counts


def parse_scale_file(text, path):
    """Parse a DOKKU_SCALE-style file: one ``type=N`` per line, ``#`` comments."""
    counts = {}
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            _parse_item(line, counts, path, number)
    return counts


def unknown_type(name, type_names, file=None, line=None):
    """The error for a formation (or limit) naming a type that runs no replicas."""
    if name == "release":
        return UsageError("'release' is a release step, not a process type: it runs once "
                          "per deploy, to completion, and has no replicas to scale", file, line)
    return UsageError(f"unknown process type {name!r} (Procfile has: {', '.join(type_names)})",
                      file, line)


def resolve_formation(type_names, *specs, pod_limit=DEFAULT_POD_LIMIT,
                      max_per_type=MAX_REPLICAS_PER_TYPE):
    """Counts for every type: 1 each, then ``specs`` in order (later wins).

    Within one spec ``all`` applies first, so ``all=2,web=4`` means web=4.
    Caps are checked on the final result only.
    """
    counts = {name: 1 for name in type_names}
    for spec in specs:
        for name in spec:
            if name != "all" and name not in counts:
                raise unknown_type(name, type_names)
        if "all" in spec:
            counts = {name: spec["all"] for name in counts}
        counts.update((name, n) for name, n in spec.items() if name != "all")
    for name, n in counts.items():
        if n > max_per_type:
            raise UsageError(f"{name}={n} exceeds the cap of {max_per_type} replicas "
                             "per process type (as in Dash Enterprise)")
    total = sum(counts.values())
    if total > pod_limit:
        raise UsageError(f"{total} replicas in total exceed the pod limit of {pod_limit} "
                         f"(raise it with --pod-limit {total})")
    return counts


@dataclass(frozen=True)
class ReplicaSpec:
    name: str  # "web.2", as foreman/honcho name them
    type: str
    index: int  # 1-based
    port: int


def replica_port(type_position, index, base_port=BASE_PORT, step=PORT_STEP_PER_TYPE):
    """Port of replica ``index`` (1-based) of the type at ``type_position`` (0-based)."""
    return base_port + step * type_position + (index - 1)


def plan_replicas(type_names, counts, base_port=BASE_PORT):
    """One ReplicaSpec per replica: types in Procfile order, indices 1..N.

    A type keeps its port block even when an earlier type has 0 replicas,
    so ports do not move when the formation changes.
    """
    replicas = []
    for position, type_name in enumerate(type_names):
        n = counts.get(type_name, 0)
        if n > PORT_STEP_PER_TYPE:  # would run into the next type's ports
            raise UsageError(f"{type_name}={n}: at most {PORT_STEP_PER_TYPE} replicas "
                             "fit in one type's port range")
        for index in range(1, n + 1):
            port = replica_port(position, index, base_port)
            if port > MAX_PORT:
                raise UsageError(f"port {port} for {type_name}.{index} is above {MAX_PORT} "
                                 f"(choose a lower base port than {base_port})")
            replicas.append(ReplicaSpec(f"{type_name}.{index}", type_name, index, port))
    return replicas


def format_formation(counts):
    """``{"web": 4, "worker": 1}`` -> ``"web=4,worker=1"``."""
    return ",".join(f"{name}={n}" for name, n in counts.items())
