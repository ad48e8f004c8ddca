"""Settings: packaged defaults (conf/defaults.ini), then the project's dashscale.ini,
then command-line options. Values stay strings here; each consumer parses its own."""
import configparser
import functools
import os
from importlib.util import find_spec

from .errors import UsageError

SECTION = "dashscale"
PROJECT_FILE = "dashscale.ini"


@functools.lru_cache(maxsize=None)
def packaged_text(name):
    """Text of a file shipped in conf/ (defaults and templates), read once per run (the
    program template is used for every replica). A plain file read: importlib.resources
    costs ~5 ms of imports on the start-up path."""
    directory = find_spec("dashscale_local.conf").submodule_search_locations[0]
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return f.read()


def load_settings(project_dir, overrides=None):
    """Return a dict of settings; ``overrides`` (e.g. CLI options) win when not None."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(packaged_text("defaults.ini"), source="conf/defaults.ini")
    settings = dict(parser[SECTION])
    project_file = os.path.join(project_dir, PROJECT_FILE)
    if os.path.exists(project_file):
        project = configparser.ConfigParser(interpolation=None)
        try:
            project.read(project_file)
        except configparser.Error as exc:
            raise UsageError(f"cannot parse: {exc}".splitlines()[0], file=project_file)
        if project.has_section(SECTION):
            for key, value in project[SECTION].items():
                if key not in settings and key != "services":
                    raise UsageError(f"unknown setting '{key}'", file=project_file)
                settings[key] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            settings[key] = value
    return settings


def number(settings, key, kind=float):
    value = settings[key]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"setting {key}: not a number: {value!r}")
