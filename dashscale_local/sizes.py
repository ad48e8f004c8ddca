"""Memory sizes written as Kubernetes writes them: ``512Mi``, ``2GiB``, ``8G``.

As in Kubernetes, K/M/G/T are powers of 1000 and Ki/Mi/Gi/Ti powers of
1024; a trailing ``B`` is optional (``MB`` = ``M``, ``MiB`` = ``Mi``).
Units are case-insensitive except a bare ``m``: Kubernetes reads ``512m``
as 0.512 bytes and Docker as 512 MiB, so we refuse to guess.
"""

import math
import re
from fractions import Fraction

from .errors import UsageError

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
DEFAULT_MEMORY_LIMIT = 8 * GiB  # Dash Enterprise's default per replica
MIN_MEMORY_LIMIT = 64 * MiB  # below this gunicorn + Python + Dash cannot even start

UNITS = {"": 1, "b": 1}
for _i, _prefix in enumerate("kmgt", start=1):
    UNITS[_prefix] = UNITS[_prefix + "b"] = 1000**_i
    UNITS[_prefix + "i"] = UNITS[_prefix + "ib"] = 1024**_i

SIZE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)$")
HINT = "use e.g. 512MiB, 2GiB, 8G"


def parse_size(text, source="--memory-limit"):
    """``"1.5GiB"`` -> 1610612736 bytes; fractions of a byte round up."""
    text = text.strip()
    if not text:
        raise UsageError(f"empty size ({HINT})", source)
    if text.startswith("-"):
        raise UsageError(f"invalid size {text!r}: sizes cannot be negative", source)
    m = SIZE.match(text)
    if m is None:
        raise UsageError(f"invalid size {text!r} ({HINT})", source)
    number, unit = m.groups()
    if unit == "m":
        raise UsageError(f"ambiguous size {text!r}: write {number}Mi (MiB) or {number}M (MB)",
                         source)
    if unit.lower() not in UNITS:
        raise UsageError(f"invalid size {text!r}: unknown unit {unit!r} "
                         "(use B, K, Ki, M, Mi, G, Gi, T or Ti)", source)
    return math.ceil(Fraction(number) * UNITS[unit.lower()])


def parse_limits(spec, type_names, source="--memory-limit"):
    """Memory limit per process type, in bytes.

    ``spec`` is one size for every type (``8GiB``) or per type
    (``web=2GiB,worker=512MiB``, ``all=`` allowed); unnamed types get
    DEFAULT_MEMORY_LIMIT.  ``None`` means all defaults.
    """
    limits = {name: DEFAULT_MEMORY_LIMIT for name in type_names}
    if spec is None:
        return limits
    texts = {}  # type -> the size as written (named in the error messages)
    if "=" not in spec:
        given = {"all": parse_size(spec, source)}
        texts["all"] = spec.strip()
    else:
        given = {}
        for item in filter(None, (i.strip() for i in spec.split(","))):
            name, eq, size = (part.strip() for part in item.partition("="))
            if not eq or not name:
                raise UsageError(f"invalid item {item!r} (expected type=SIZE, e.g. web=2GiB)",
                                 source)
            if name != "all" and name not in limits:
                from .formation import unknown_type
                raise unknown_type(name, type_names, source)
            if name in given:
                raise UsageError(f"{name!r} is given twice", source)
            if not size:
                raise UsageError(f"{name}: empty size in {item!r} ({HINT})", source)
            given[name] = parse_size(size, source)
            texts[name] = size
    if "all" in given:
        limits = dict.fromkeys(limits, given.pop("all"))
        texts = {**dict.fromkeys(limits, texts.pop("all")), **texts}
    limits.update(given)
    for name, limit in limits.items():
        if limit < MIN_MEMORY_LIMIT:
            text = texts.get(name, "")
            unitless = bool(text) and text[-1:].isdigit()
            raise UsageError(f"{name}: limit {format_size(limit)} is below the minimum of "
                             f"{format_size(MIN_MEMORY_LIMIT)} (gunicorn and Python need "
                             "more than that to start)"
                             + (f"; {text!r} has no unit, so it is bytes: write "
                                f"{text}Mi or {text}Gi" if unitless else ""), source)
    return limits


def format_size(n):
    """Human-readable binary size: ``1.5 GiB``, ``512 MiB``, ``100 B``."""
    if abs(n) < KiB:
        return f"{n} B"
    for unit, scale in (("KiB", KiB), ("MiB", MiB), ("GiB", GiB), ("TiB", TiB)):
        value = round(n / scale, 1)
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if value == int(value) else f"{value:.1f} {unit}"
