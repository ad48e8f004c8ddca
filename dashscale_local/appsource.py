"""What an app module's source says, read without running it (AST): the names it binds
when imported, where it creates its Dash app and where it calls ``run_server``; and the
Dash version of the Python that runs the replicas."""
import ast
import functools
import subprocess
import sys

DASH_CLASSES = {"Dash", "DashProxy", "JupyterDash"}
# Calls that can bind module names the AST does not show: no finding when one is used.
DYNAMIC = {"globals", "exec", "setattr", "vars", "eval"}


def parse(path):
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None


def _main_guard(node):
    """``if __name__ == "__main__":`` (either way round)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _import_time(nodes):
    """Yield (node, inside_main_guard) for the nodes that run when the module runs,
    not descending into function or class bodies (a def's name is yielded)."""
    for node in nodes:
        yield node, False
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if _main_guard(node):
            for child, _ in _import_time(node.body):
                yield child, True
            yield from _import_time(node.orelse)
            continue
        yield from _import_time(ast.iter_child_nodes(node))


def module_names(tree):
    """Names the module binds when imported (not run as __main__), or None when that
    cannot be told from the source (``from x import *``, globals(), exec, a module
    ``__getattr__``…)."""
    names = set()
    for node, in_main in _import_time(tree.body):
        if in_main:
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in DYNAMIC:
            return None
        if isinstance(node, ast.alias):
            if node.name == "*":
                return None
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif getattr(node, "name", None) and isinstance(node, (ast.MatchAs, ast.MatchStar)):
            names.add(node.name)
    return None if "__getattr__" in names else names


def dash_assignment(tree):
    """(variable, line) of the first module-level ``x = Dash(...)``, else None."""
    for node, in_main in _import_time(tree.body):
        if isinstance(node, ast.Assign) and not in_main and isinstance(node.value, ast.Call) \
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DASH_CLASSES:
                return node.targets[0].id, node.lineno
    return None


def dash_apps(tree):
    """Names the module binds to a ``Dash(...)`` (any DASH_CLASSES call) at import."""
    names = set()
    for node, _in_main in _import_time(tree.body):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if (func.attr if isinstance(func, ast.Attribute)
                    else getattr(func, "id", None)) in DASH_CLASSES:
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def dev_server_calls(tree):
    """[(line, receiver, method, where)] of the calls that start Dash's development
    server: ``x.run_server(...)``, and ``app.run(...)`` where ``app`` is a Dash app
    of the module (not ``subprocess.run``); where is "module" (runs on import),
    "main" (under ``if __name__ == "__main__"``) or "function"."""
    at_import = {id(node): in_main for node, in_main in _import_time(tree.body)}
    apps = dash_apps(tree)
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = ast.unparse(node.func.value)
        if node.func.attr == "run_server" or (node.func.attr == "run" and receiver in apps):
            where = "function" if id(node) not in at_import else \
                "main" if at_import[id(node)] else "module"
            calls.append((node.lineno, receiver, node.func.attr, where))
    return sorted(calls)


def run_server_calls(tree):
    """[(line, receiver, where)] of ``x.run_server(...)`` calls (see dev_server_calls)."""
    return [(line, receiver, where) for line, receiver, method, where
            in dev_server_calls(tree) if method == "run_server"]


def dev_server_at_import(receiver, method, module):
    """The finding for a development server started at import (the wording `check`
    and `init` share)."""
    return (f"'{receiver}.{method}(' at module level starts Dash's development server "
            f"when gunicorn imports {module}: put it under "
            "`if __name__ == \"__main__\":`")


@functools.lru_cache(maxsize=None)
def dash_version(python=sys.executable):
    """The version of Dash installed for ``python`` as a tuple of ints, None when Dash
    is not installed there (or the interpreter does not run)."""
    code = ("import importlib.metadata as m\ntry:\n print(m.version('dash'))\n"
            "except m.PackageNotFoundError:\n pass")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    parts = []
    for piece in out.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or None
