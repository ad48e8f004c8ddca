"""Typed settings in one place: the packaged defaults (conf/defaults.ini), then the
project's dashscale.ini, then command-line options. Each key is one field of the frozen
`Settings`, with its type and check; a bad value is one line naming where it came from
(``…/dashscale.ini: port: …`` or ``--port: …``) and the value, exit 2.

For code that still reads settings as the dict they used to be, ``settings["port"]``,
``settings.get("spread")`` and ``"port" in settings`` give the typed value."""
import configparser
import dataclasses
import functools
import ipaddress
import math
import os
import re
from importlib.util import find_spec
from types import MappingProxyType

from .errors import UsageError

SECTION = "dashscale"
PROJECT_FILE = "dashscale.ini"
DEFAULTS_FILE = "conf/defaults.ini"

# Dash Enterprise names an app's URL path and its Kubernetes objects (the export's
# Deployments, Service and Ingress) after it, so it must be a DNS-1035 label.
APP_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Also memory.METRICS and balancer.Pool.POLICIES (not imported here: start-up time);
# tests/unit/test_settings.py checks they agree.
MEMORY_METRICS = ("pss", "rss", "uss")
BALANCE_POLICIES = ("round-robin", "least-outstanding")
OPTION_NAMES = {"services": "--service"}  # the CLI option of a key, when not --key-name


@functools.lru_cache(maxsize=None)
def packaged_text(name):
    """Text of a file shipped in conf/ (defaults and templates), read once per run (the
    program template is used for every replica). A plain file read: importlib.resources
    costs ~5 ms of imports on the start-up path."""
    directory = find_spec("dashscale_local.conf").submodule_search_locations[0]
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return f.read()


# ─── parsers: a value as written (or as click typed it) → the typed value ─────────────
def _shown(value):
    return repr(value if isinstance(value, str) else str(value))


def _number(kind, low, high, what):
    """Parser of an int or float within [low, high]; bools are not numbers."""
    def parse(value):
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)):
                raise ValueError
            n = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"not {'a whole number' if kind is int else 'a number'}: "
                             f"{_shown(value)}") from None
        if not (low <= n <= (math.inf if high is None else high)) or math.isinf(n):
            bound = f"from {low} to {high}" if high is not None else f">= {low:g}"
            raise ValueError(f"{_shown(value)} must be {what} {bound}")
        return n
    return parse


def _seconds(low=0.0):
    return _number(float, low, None, "a number of seconds")


def _count(low=0, high=None):
    return _number(int, low, high, "a whole number")


def _choice(*options):
    def parse(value):
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{_shown(value)} is not one of {', '.join(options)}")
        return text
    return parse


def _bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in TRUE + FALSE:
        raise ValueError(f"{_shown(value)} is not one of true, false (or yes/no, on/off, 1/0)")
    return text in TRUE


def _text(value):
    return str(value).strip()


def _host(value):
    text = _text(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not HOSTNAME.fullmatch(text):
            raise ValueError(f"{_shown(value)} is not an IP address or host name") from None
    return text


def _size(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return _count()(value)
    from .sizes import parse_size
    return parse_size(str(value), None)


def _memory_limit(value):
    """The spec as written (8GiB, or web=2GiB,worker=512MiB), its sizes checked here;
    its process types are checked against the Procfile by project.Project."""
    from .sizes import parse_limits
    text = _text(value)
    names = [item.partition("=")[0].strip() for item in text.split(",")] if "=" in text else []
    parse_limits(text, [name for name in names if name != "all"], None)
    return text


def app_name(value):
    """The one app-name rule (start's /NAME/ prefix, export's object names): empty, or
    a DNS-1035 label — lowercase letters, digits and '-', starting with a letter and
    ending with a letter or digit, at most 63 characters."""
    text = _text(value)
    if text and not APP_NAME.fullmatch(text):
        raise ValueError(f"invalid app name {_shown(value)}: use lowercase letters, digits "
                         "and '-', starting with a letter and ending with a letter or digit, "
                         "at most 63 characters (as Dash Enterprise and Kubernetes require)")
    return text


def _services(value):
    """Managed services, as a tuple of known names (aliases resolved)."""
    text = value if isinstance(value, str) else ",".join(value)
    if not text.strip():
        return ()
    from .services import parse_names
    return tuple(parse_names(text, None))


# ─── the settings ─────────────────────────────────────────────────────────────────────
def _field(parse, default=dataclasses.MISSING):
    return dataclasses.field(default=default, metadata={"parse": parse})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting, typed; the defaults are conf/defaults.ini's (documented there)."""

    host: str = _field(_host)
    port: int = _field(_count(0, 65535))
    base_port: int = _field(_count(1, 65535))
    max_replicas_per_type: int = _field(_count(1))
    pod_limit: int = _field(_count(1))
    memory_limit: str = _field(_memory_limit)
    memory_metric: str = _field(_choice(*MEMORY_METRICS))
    memory_interval: float = _field(_seconds(0.01))
    on_limit: str = _field(_choice("stop", "restart"))
    backoff_initial: float = _field(_seconds())
    backoff_max: float = _field(_seconds())
    backoff_reset: float = _field(_seconds())
    startsecs: int = _field(_count())
    startretries: int = _field(_count())
    stop_timeout: int = _field(_count())
    app_name: str = _field(app_name)
    spread: bool = _field(_bool)
    ready_timeout: float = _field(_seconds(0.01))
    services: tuple = _field(_services)
    proxy_max_body: int = _field(_size)
    proxy_header_timeout: float = _field(_seconds(0.01))
    proxy_body_timeout: float = _field(_seconds(0.01))
    proxy_keepalive_timeout: float = _field(_seconds(0.01))
    proxy_connect_timeout: float = _field(_seconds(0.01))
    proxy_read_timeout: float = _field(_seconds(0.01))
    proxy_send_timeout: float = _field(_seconds(0.01))
    proxy_max_connections: int = _field(_count(1))
    proxy_retry_after: int = _field(_count())
    proxy_health_interval: float = _field(_seconds())
    proxy_health_idle_interval: float = _field(_seconds())
    memory_idle_interval: float = _field(_seconds(0.01))
    memory_max_growth: int = _field(_size)
    monitor_idle_interval: float = _field(_seconds(0.01))
    balance: str = _field(_choice(*BALANCE_POLICIES))
    shared_fs: bool = _field(_bool)
    pod_disk: str = _field(_choice("auto", "overlay", "copy"))
    mount: str = _field(_text)
    python: str = _field(_text)
    # key → where its value came from, as errors name it: "…/dashscale.ini: key", "--key"
    sources: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        for key, parse in PARSERS.items():
            try:
                value = parse(getattr(self, key))
            except (ValueError, UsageError) as exc:
                raise UsageError(getattr(exc, "message", str(exc)), self.where(key)) from None
            object.__setattr__(self, key, value)
        if self.backoff_max < self.backoff_initial:
            key = "backoff_max" if "backoff_max" in self.sources else "backoff_initial"
            raise UsageError(f"backoff_max ({self.backoff_max:g}) must be >= backoff_initial "
                             f"({self.backoff_initial:g})", self.where(key))
        if self.memory_idle_interval < self.memory_interval:
            raise UsageError(f"{self.memory_idle_interval:g} must be >= memory_interval "
                             f"({self.memory_interval:g})",
                             self.where("memory_idle_interval"))

    def where(self, key):
        """Where ``key``'s value came from, as error messages name it: ``--option``,
        ``…/dashscale.ini: key``, or just ``key`` for a packaged default."""
        return self.sources.get(key, key)

    @property
    def caps(self):
        """The replica caps, as formation.resolve_formation takes them."""
        return {"pod_limit": self.pod_limit, "max_per_type": self.max_replicas_per_type}

    # Read-only dict access, for code not yet moved to attributes.
    def __getitem__(self, key):
        if key not in PARSERS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key) if key in PARSERS else default

    def __contains__(self, key):
        return key in PARSERS

    def __iter__(self):
        return iter(PARSERS)

    def keys(self):
        return PARSERS.keys()

    def items(self):
        return [(key, getattr(self, key)) for key in PARSERS]


PARSERS = {f.name: f.metadata["parse"] for f in dataclasses.fields(Settings)
           if "parse" in f.metadata}


def option_name(key):
    """The command-line option that sets ``key``: --memory-limit, --service…"""
    return OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


def load_settings(project_dir=None, overrides=None, given_as=option_name):
    """Settings from conf/defaults.ini, then ``project_dir``'s dashscale.ini (if any),
    then ``overrides`` (e.g. CLI options; None = not given), named in errors by
    ``given_as(key)``. Raises UsageError naming the file or option, key and value."""
    values = _read_ini(packaged_text("defaults.ini"), DEFAULTS_FILE)
    sources = {}
    project_file = project_dir and os.path.join(project_dir, PROJECT_FILE)
    if project_file and os.path.exists(project_file):
        with open(project_file, encoding="utf-8", errors="replace") as f:
            project = _read_ini(f.read(), project_file)
        for key, value in project.items():
            if key not in PARSERS:
                raise UsageError(f"unknown setting '{key}'{_did_you_mean(key)}",
                                 file=project_file)
            values[key], sources[key] = value, f"{project_file}: {key}"
    for key, value in (overrides or {}).items():
        if key not in PARSERS:
            raise TypeError(f"no setting {key!r}")  # a programming error, not bad input
        if value is not None:
            values[key], sources[key] = value, given_as(key)
    return Settings(**values, sources=sources)


def _read_ini(text, source):
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        if getattr(exc, "errors", None):  # ParsingError: [(line, repr of its text)]
            line, text = exc.errors[0]
            message = "not a 'key = value' line: " + text.replace(r"\n", "")
        elif isinstance(exc, configparser.MissingSectionHeaderError):
            message = f"{exc.line.strip()!r} comes before the [{SECTION}] line"
        elif isinstance(exc, configparser.DuplicateOptionError):
            message = f"'{exc.option}' is set twice"
        else:
            message = str(exc).splitlines()[0].split("]: ")[-1]  # [line  N]: …
        raise UsageError(message, source, line) from None
    return dict(parser[SECTION]) if parser.has_section(SECTION) else {}


def _did_you_mean(key):
    import difflib
    close = difflib.get_close_matches(key, PARSERS, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def number(settings, key, kind=float):
    """``kind(settings[key])``; settings are typed now, so this is only a conversion."""
    return kind(settings[key])
