"""The click pieces every `dashscale` command shares: its errors turned into exit codes
and the -f/--procfile and --python options. Commands living in their own modules
(check, export, bench, top, init) import them from here, not from cli.py."""
import functools
import os

import click

from .errors import RuntimeFailure, UsageError, exit_with


def handle_errors(fn):
    """UsageError → one line, exit 2; RuntimeFailure → one line, exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UsageError, RuntimeFailure) as exc:
            exit_with(exc)
    return wrapper


procfile_option = click.option("-f", "--procfile", default="Procfile", show_default=True,
                               help="The Procfile; the run directory .dashscale/ is next to it.")


python_option = click.option(
    "--python", default=None, metavar="PATH",
    help="The replicas' Python: a venv directory or a python executable (default: the "
         "active VIRTUAL_ENV, else .venv/ or venv/ next to the Procfile, else dashscale's).")


def python_setting(python):
    """Settings overrides for --python (a path relative to where the command runs)."""
    if python is None:
        return {}
    return {"python": os.path.abspath(os.path.expanduser(python))}
