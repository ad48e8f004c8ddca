"""`dashscale init`: write a Procfile for the Dash app found in a directory.

Scans the .py files (AST only, nothing is imported or run) for the module that creates
`Dash(...)` (or defines a module-level `server = <x>.server` over one), skipping
virtualenvs, .git, .dashscale, node_modules, tests and site-packages. Picks the module
gunicorn should load: one that defines `server`, else one that runs the app
(`app.run` / `__main__`), else the shallowest. Writes
`web: gunicorn MODULE:server --workers 2` (the Dash Enterprise convention) and prints
what still needs fixing: a missing `server = app.server`, `app.run(...)` at module
level (each gunicorn worker would start Dash's development server), gunicorn missing
from the requirements.
"""
import ast
import os
import re
from dataclasses import dataclass
from typing import Optional

import click

from . import appsource
from .clickutil import handle_errors
from .errors import UsageError
from .procfile import procfiles_below, shown_path

SKIP_DIRS = {".git", ".hg", ".dashscale", "node_modules", "tests", "test", "site-packages",
             "__pycache__", ".venv", "venv", "env", ".tox", ".nox", "build", "dist",
             ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}
MAX_FILES = 2000
MAX_FILE_BYTES = 2_000_000
DASH_CLASSES = {"Dash", "DashProxy"}  # dash.Dash, dash_extensions.enrich.DashProxy
WORKERS = 2
REQUIREMENT_FILES = ("requirements.txt", "requirements.in", "pyproject.toml", "Pipfile",
                     "setup.cfg", "setup.py")


@dataclass
class Candidate:
    path: str                      # relative to the directory
    module: str                    # dotted, as gunicorn imports it
    pythonpath: Optional[str]      # for a src/ layout: the import root
    dash_line: Optional[int] = None     # line of Dash(...)
    dash_var: Optional[str] = None      # `app` in `app = Dash(...)` at module level
    dash_in_function: Optional[str] = None
    server_line: Optional[int] = None   # module-level `server` defined here
    server_imported: bool = False  # `from app import app, server`: the entry point
    server_of_app: bool = False    # `server = <x>.server` or imported `server`
    runs: bool = False             # app.run(...) / if __name__ == "__main__"

    @property
    def rank(self):
        """Best first: defines `server`; imports it (index.py over app.py in Dash's
        multi-page layout, where index.py sets the layout); runs the app; creates it."""
        return (self.server_line is None, not self.server_imported, not self.runs,
                self.dash_line is None, self.path.count(os.sep), self.path)


# ─── scanning ─────────────────────────────────────────────────────────────────────────
def python_files(directory):
    """Relative paths of the .py files worth scanning, in a stable order."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                         and not os.path.exists(os.path.join(root, d, "pyvenv.cfg")))
        for name in sorted(files):
            if name.endswith(".py"):
                found.append(os.path.relpath(os.path.join(root, name), directory))
                if len(found) >= MAX_FILES:
                    return found
    return found


def module_path(directory, relpath):
    """'app/main.py' → ('app.main', None) when app/ is a package; 'src/app/main.py'
    without src/__init__.py → ('app.main', 'src'): the import root goes to --pythonpath."""
    folders = relpath.split(os.sep)[:-1]
    parts = relpath[:-3].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    first = len(folders)  # climb while the folder above is a package
    while first > 0 and os.path.isfile(os.path.join(directory, *folders[:first], "__init__.py")):
        first -= 1
    return ".".join(parts[first:]), os.sep.join(folders[:first]) or None


def _dash_names(tree):
    """Names bound to the Dash class and to the dash module by the file's imports."""
    classes, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in ("dash", "dash_extensions"):
            classes |= {a.asname or a.name for a in node.names if a.name in DASH_CLASSES}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names
                        if a.name.split(".")[0] in ("dash", "dash_extensions")}
    return classes, modules


def _is_dash_call(node, classes, modules):
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in classes
    return (isinstance(func, ast.Attribute) and func.attr in DASH_CLASSES
            and isinstance(func.value, (ast.Name, ast.Attribute))
            and ast.unparse(func.value) in modules)


def _targets(node):
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _module_level(tree):
    """Statements at module level, including those inside top-level if/try blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            todo[:0] = node.body + node.orelse + getattr(node, "finalbody", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]


def scan_file(directory, relpath):
    """A Candidate when the file creates Dash(...) or defines `server = <x>.server`."""
    path = os.path.join(directory, relpath)
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            return None
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), relpath)
    except (OSError, SyntaxError, ValueError):
        return None
    classes, modules = _dash_names(tree)
    cand = Candidate(relpath, *module_path(directory, relpath))
    top = list(_module_level(tree))
    for node in top:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            if _is_dash_call(node.value, classes, modules) and cand.dash_line is None:
                cand.dash_line, cand.dash_var = node.lineno, (_targets(node) or [None])[0]
            if "server" in _targets(node):
                cand.server_line = node.lineno
                cand.server_of_app = isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "server"
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == "server":
            cand.server_line = node.lineno
        elif isinstance(node, ast.ImportFrom) and any(
                (a.asname or a.name) == "server" for a in node.names):
            cand.server_line, cand.server_imported = node.lineno, True
            cand.server_of_app = True
        elif isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            cand.runs = True
    if cand.dash_line is None:  # Dash(...) inside a factory function
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            call = next((c for c in ast.walk(fn) if _is_dash_call(c, classes, modules)), None)
            if call is not None:
                cand.dash_line, cand.dash_in_function = call.lineno, fn.name
                break
    runners = {cand.dash_var or "app", "app"}  # app.run(...), not subprocess.run(...)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr == "run_server" or node.func.attr == "run" and
                isinstance(node.func.value, ast.Name) and node.func.value.id in runners):
            cand.runs = True
    if cand.dash_line is None and not cand.server_of_app:
        return None  # `server = "db.local"` in a config module is no Dash app
    return cand


def find_candidates(directory):
    found = [c for c in (scan_file(directory, p) for p in python_files(directory)) if c]
    return sorted(found, key=lambda c: c.rank)


# ─── requirements ─────────────────────────────────────────────────────────────────────
def requirements_note(directory, app_dir=None):
    """(file or None, has gunicorn) for the first requirements file present in
    ``directory``, else in the app module's folder ``app_dir`` (relative to it)."""
    folders = [""] + ([app_dir] if app_dir else [])
    for name in (os.path.join(folder, n) for folder in folders for n in REQUIREMENT_FILES):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            return name, bool(re.search(r"(?im)^[^#\n]*\bgunicorn\b", text))
    return None, False


# ─── the command ──────────────────────────────────────────────────────────────────────
def procfile_line(cand):
    extra = f" --pythonpath {cand.pythonpath}" if cand.pythonpath else ""
    return f"web: gunicorn {cand.module}:server --workers {WORKERS}{extra}\n"


def fixes(cand, directory):
    """What still stands between the Procfile and a running app, one line each."""
    todo = []
    if cand.server_line is None:
        where = f"{cand.path}:{cand.dash_line}"
        if cand.dash_in_function:
            todo.append(f"{where}: Dash(...) is created inside {cand.dash_in_function}(): "
                        f"at module level, add `app = {cand.dash_in_function}()` and "
                        "`server = app.server` (gunicorn loads "
                        f"{cand.module}:server)")
        else:
            var = cand.dash_var or "app"
            todo.append(f"{where}: add `server = {var}.server` after the `{var} = Dash(...)` "
                        f"statement (gunicorn loads {cand.module}:server)")
    tree = appsource.parse(os.path.join(directory, cand.path))
    for line, receiver, method, where in appsource.dev_server_calls(tree) if tree else []:
        if where == "module":
            todo.append(f"{cand.path}:{line}: "
                        + appsource.dev_server_at_import(receiver, method, cand.module))
    name, has_gunicorn = requirements_note(directory, os.path.dirname(cand.path))
    if name is None:
        todo.append("no requirements.txt: add one listing the app's packages and gunicorn "
                    "(Dash Enterprise installs from it)")
    elif not has_gunicorn:
        todo.append(f"{name}: add gunicorn (the Procfile runs it; Dash Enterprise installs "
                    f"from {name})")
    return todo


def run_init(procfile, force=False, echo=click.echo):
    procfile = os.path.abspath(procfile)
    directory = os.path.dirname(procfile)
    if os.path.exists(procfile) and not force:
        raise UsageError("a Procfile already exists; `dashscale init --force` overwrites it",
                         file=procfile)
    below = procfiles_below(directory)
    if below and not force:
        sub = shown_path(below[0])
        raise UsageError(f"a Procfile already exists below: {sub} — run dashscale from "
                         f"there or pass -f {sub}; `dashscale init --force` writes one here "
                         "anyway")
    found = find_candidates(directory)
    if not found:
        raise UsageError(f"no Dash app found in {directory} (no .py file creates Dash(...) "
                         "or defines `server`)")
    cand = found[0]
    line = procfile_line(cand)
    with open(procfile, "w", encoding="utf-8") as f:
        f.write(line)
    where = f"{cand.path}:{cand.dash_line or cand.server_line}"
    echo(f"Dash app: {where} (module {cand.module}; "
         + ("defines `server`" if cand.server_line else "no module-level `server`") + ")")
    if len(found) > 1:
        echo("also found: " + ", ".join(f"{c.path}:{c.dash_line or c.server_line}"
                                        for c in found[1:6])
             + (" …" if len(found) > 6 else ""))
    echo(f"wrote {procfile}:\n  {line.rstrip()}")
    todo = fixes(cand, directory)
    for item in todo:
        echo(f"fix: {item}")
    echo("next: dashscale start" + ("  (after the fixes above)" if todo else ""))
    return cand, todo


@click.command()
@click.option("-f", "--procfile", default="Procfile", show_default=True,
              help="The Procfile to write; the app is searched for in its directory.")
@click.option("--force", is_flag=True, help="Overwrite an existing Procfile.")
@handle_errors
def init(procfile, force):
    """Write a Procfile for the Dash app found here (web: gunicorn MODULE:server)."""
    run_init(procfile, force)
