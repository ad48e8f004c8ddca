"""`dashscale check --replicas`: do the running web replicas serve the same app?

Every ready ``web`` replica is asked directly (127.0.0.1:its port, not through the proxy,
under the --app-name prefix when there is one) for ``/_dash-layout`` and
``/_dash-dependencies``; each answer is compared with the first replica's:

* layout — both trees are walked side by side: an id that differs at the same place is an
  id drawn per process (``uuid4()``/``random`` at import); another prop that differs is a
  value computed at import (a time, a random number); a different component or number of
  children is a layout built differently in each process;
* dependencies — callbacks are matched by their output; one without a match on the other
  replica is listed (its outputs), as is one whose inputs or state differ;
* pages — `/_dash-layout` of a Dash Pages (or dcc.Location-routed, or tabbed) app is
  only the shell: each page is rendered on each replica as `bench` renders it
  (dash_client's resolve: dcc.Location set from the URL, the router and tab-content
  callbacks fired), for `/`, the pages the shell links to and every `--page PATH`, and
  what those callbacks rendered is compared as the layout is;
* session — the cookies a plain GET of the page (and of the layout) sets on one replica
  are presented to every other one. The replica that set them is the control: when it
  keeps the cookie (sets no new value) and another replica answers with a new value for
  it, or another status, that replica rejected the cookie — the session is lost when the
  proxy sends the next request there (a per-process secret key signs it). Cookies the
  control itself replaces on every request are noted as not comparable.

Nothing is ignored: a value that legitimately differs per request (a layout function
putting the clock in the page) is reported too; the cause text says so. The result is
kept as JSON in the run directory (``replica-check.json``) for the dashboard.
Exit 0 when the replicas agree, 1 when they do not, 2 when fewer than two web replicas
are ready (nothing to compare) or nothing runs.
"""
import concurrent.futures
import http.client
import json
import os
import time

from . import rundir
from .dash_client import DashApp, DashProtocolError, Session, _Fetcher, _store_cookies
from .errors import UsageError

RESULT_FILE = "replica-check.json"
CAUSES = {
    "id": "component ids drawn per process (uuid/random at import): give components "
          "fixed ids",
    "value": "a value computed at import (a time, a random number, data loaded at start) "
             "differs between processes (or per request): compute it in a callback or a "
             "layout function that gives the same answer everywhere",
    "structure": "the layout is built differently in each process (import-time randomness "
                 "or state)",
    "callback": "callbacks registered on ids drawn per process (uuid/random at import): "
                "give components fixed ids",
    "session": "a per-process secret key (e.g. app.server.secret_key = os.urandom(16)): "
               "read it from an environment variable set in .env / DE's app settings",
    "http": "the replica answers differently (an error on one replica only?)",
}
MAX_PAGES = 20  # pages rendered per replica: `/`, linked pages, --page PATHs


def short(value, width=60):
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) \
        else repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _is_component(node):
    return isinstance(node, dict) and "type" in node and isinstance(node.get("props"), dict)


def _label(node):
    return f"{node.get('namespace', '?')}.{node['type']}"


def diff_layout(a, b, names, where="layout"):
    """Differences between two layouts: [(kind, id, detail)]; ``names`` = (name of the
    replica of ``a``, of ``b``)."""
    out = []
    _diff(a, b, names, where, out)
    return out


def _diff(a, b, names, where, out):
    first, other = names
    if _is_component(a) and _is_component(b):
        if (a.get("namespace"), a["type"]) != (b.get("namespace"), b["type"]):
            out.append(("structure", None, f"at {where}: {_label(a)} on {first}, "
                                           f"{_label(b)} on {other}"))
            return
        pa, pb = a["props"], b["props"]
        id_a, id_b = pa.get("id"), pb.get("id")
        here = f"{where} > {b['type']}" + (f"#{short(id_a, 40)}" if id_a is not None else "")
        if id_a != id_b:
            out.append(("id", id_a, f"id {short(id_a)} on {first}, {short(id_b)} on {other} "
                                    f"({_label(a)} at {where})"))
        for key in sorted(set(pa) | set(pb)):
            if key != "id":
                _diff(pa.get(key), pb.get(key), names, f"{here}.{key}", out)
        return
    if isinstance(a, list) and isinstance(b, list) and \
            any(_is_component(x) or isinstance(x, list) for x in a + b):
        if len(a) != len(b):
            out.append(("structure", None, f"at {where}: {len(a)} children on {first}, "
                                           f"{len(b)} on {other}"))
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, names, f"{where}[{i}]", out)
        return
    if a != b:
        out.append(("value", None, f"{where}: {short(a)} on {first}, {short(b)} on {other}"))


def diff_dependencies(a, b, names):
    """Callbacks on one replica without a match on the other: [(kind, id, detail)]."""
    first, other = names
    by_a = {d.get("output"): d for d in a if isinstance(d, dict)}
    by_b = {d.get("output"): d for d in b if isinstance(d, dict)}
    only_a = [k for k in by_a if k not in by_b]
    only_b = [k for k in by_b if k not in by_a]
    out = []
    for i, key in enumerate(only_a):
        match = f", {short(only_b[i])} on {other}" if i < len(only_b) else \
            f", none on {other}"
        out.append(("callback", key, f"callback {short(key)} on {first}{match}"))
    for key in only_b[len(only_a):]:
        out.append(("callback", key, f"callback {short(key)} on {other}, none on {first}"))
    for key in by_a.keys() & by_b.keys():
        for part in ("inputs", "state"):
            if by_a[key].get(part) != by_b[key].get(part):
                out.append(("callback", key, f"callback {short(key)}: {part} "
                                             f"{short(by_a[key].get(part))} on {first}, "
                                             f"{short(by_b[key].get(part))} on {other}"))
    return out


# -- fetching -----------------------------------------------------------------------------
class Replica:
    """What one replica served."""

    def __init__(self, name, port, prefix, timeout):
        self.name, self.port, self.prefix = name, port, prefix
        self.fetcher = _Fetcher(f"http://127.0.0.1:{port}/", timeout,
                                {"User-Agent": "dashscale-check"})
        self.layout = self.dependencies = self.error = None
        self.page_status = None

    def fetch(self):
        try:
            self.page_status = self.fetcher.get(self.prefix)[0]
            self.layout = self._json("_dash-layout")
            self.dependencies = self._json("_dash-dependencies")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        return self

    def app(self, path=""):
        """The app as served, with the browser at ``path`` (under the prefix)."""
        url = f"http://127.0.0.1:{self.port}{self.prefix}{path.lstrip('/')}"
        app = DashApp.from_json(self.layout, self.dependencies,
                                {"requests_pathname_prefix": self.prefix}, url)
        app.cookies = dict(self.fetcher.cookies)
        return app

    def render(self, path):
        """{prop id: value} of what the page's render callbacks (router, tab content)
        returned with the browser at ``path``, and the errors of those that failed."""
        page = self.app(path)
        with Session(page, timeout=self.fetcher.timeout) as session:
            page.resolve(session.fire)
        by_name = {cb.name: cb for cb in page.callbacks}
        rendered = {key: page.values.get(key) for name in page.rendered
                    for key in by_name[name].output_keys}
        return rendered, page.render_errors

    def _json(self, name):
        status, _headers, body = self.fetcher.get(self.prefix + name)
        if status != 200:
            raise ValueError(f"GET {self.prefix}{name}: HTTP {status}")
        return json.loads(body)

    def replay(self, cookies):
        """GET the page with ``cookies``: (status, {name: value} it sets)."""
        fetcher = _Fetcher(self.fetcher.url, self.fetcher.timeout, self.fetcher.headers)
        fetcher.cookies = dict(cookies)
        status, headers, _body = fetcher.get(self.prefix)
        jar = {}
        _store_cookies(jar, headers)
        return status, jar


def _payload(value):
    """A signed cookie's payload (itsdangerous/Flask: payload.timestamp.signature): a
    re-signed, unchanged session keeps it; any other cookie is compared whole."""
    return value.rsplit(".", 2)[0] if value.count(".") >= 2 else value


def session_divergences(replicas):
    """[(replica, kind, cookie, detail)] and notes, from replaying each replica's cookies
    to the others."""
    found, notes = [], []
    for origin in replicas:
        cookies = origin.fetcher.cookies
        if not cookies:
            continue
        status0, control = origin.replay(cookies)
        unstable = [k for k, v in control.items() if k in cookies
                    and _payload(v) != _payload(cookies[k])]
        for name in unstable:
            notes.append(f"cookie {name!r}: {origin.name} replaces it on every request "
                         "(not compared)")
        for other in replicas:
            if other is origin:
                continue
            status, jar = other.replay(cookies)
            for name in cookies:
                if name in unstable:
                    continue
                if name in jar and _payload(jar[name]) != _payload(cookies[name]):
                    found.append((other.name, "session", name,
                                  f"cookie {name!r} set by {origin.name} is not accepted by "
                                  f"{other.name} (it answers with a new {name!r}; "
                                  f"{origin.name} keeps it): the session is lost when the "
                                  f"proxy sends the next request to {other.name}"))
            if status != status0:
                found.append((other.name, "session", None,
                              f"with the cookies {origin.name} set "
                              f"({', '.join(sorted(cookies))}), {origin.name} answers HTTP "
                              f"{status0}, {other.name} HTTP {status}"))
    return found, notes


# -- the check ----------------------------------------------------------------------------
def page_paths(base, pages=()):
    """`/`, the pages the shell of ``base`` links to, and ``pages`` (--page), without the
    prefix, deduplicated, at most MAX_PAGES."""
    paths = ["/"]
    for path in base.app().linked_pages() + list(pages):
        if path.startswith(base.prefix):
            path = "/" + path[len(base.prefix):]
        path = "/" + path.lstrip("/")
        if path not in paths:
            paths.append(path)
    return paths[:MAX_PAGES]


def page_divergences(replicas, pages=()):
    """[(replica, kind, id, detail)]: each page rendered on each replica, compared with
    the first replica's rendering."""
    base, out = replicas[0], []
    for path in page_paths(base, pages):
        try:
            with concurrent.futures.ThreadPoolExecutor(len(replicas)) as pool:
                renders = list(pool.map(lambda r: r.render(path), replicas))
        except (OSError, http.client.HTTPException, DashProtocolError) as exc:
            out.append((base.name, "http", None, f"page {path}: {type(exc).__name__}: {exc}"))
            continue
        (first, first_errors), names = renders[0], base.name
        for other, (rendered, errors) in zip(replicas[1:], renders[1:]):
            for error in sorted(set(errors) - set(first_errors)):
                out.append((other.name, "http", None, f"page {path}: rendering failed on "
                                                      f"{other.name} only: {error}"))
            for key in sorted(set(first) | set(rendered)):
                where = f"page {path} > {key}"
                for kind, id_, detail in diff_layout(first.get(key), rendered.get(key),
                                                     (names, other.name), where):
                    out.append((other.name, kind, id_, detail))
    return out


def check_replicas(status, timeout=30.0, pages=()):
    """The comparison for a runner's ``status`` (the control API's): the result dict.
    ``pages``: paths to render besides `/` and the linked ones (--page)."""
    web = [r for r in status["replicas"] if r["type"] == "web" and r.get("ready")]
    if len(web) < 2:
        have = ", ".join(r["name"] for r in web) or "none"
        raise UsageError(f"check --replicas needs at least 2 ready web replicas (ready: "
                         f"{have}); scale up first: dashscale scale web=2")
    prefix = f"/{status['app_name']}/" if status.get("app_name") else "/"
    replicas = [Replica(r["name"], r["port"], prefix, timeout) for r in web]
    with concurrent.futures.ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(Replica.fetch, replicas))
    divergences = []

    def add(replica, what, kind, id_, detail):
        divergences.append({"replica": replica, "what": what, "id": id_, "detail": detail,
                            "cause": CAUSES[kind]})

    if all(r.error for r in replicas):
        raise UsageError(f"no web replica serves a Dash app under {prefix}: "
                         f"{replicas[0].name}: {replicas[0].error}")
    base = replicas[0]
    for other in replicas:
        if other.error:
            add(other.name, "http", "http", None, f"{other.name}: {other.error}")
    ok = [r for r in replicas if not r.error]
    if base in ok:
        for other in ok[1:]:
            names = (base.name, other.name)
            for kind, id_, detail in diff_layout(base.layout, other.layout, names):
                add(other.name, "layout", kind, id_, detail)
            for kind, id_, detail in diff_dependencies(base.dependencies,
                                                       other.dependencies, names):
                add(other.name, "dependencies", kind, id_, detail)
        for replica, kind, id_, detail in page_divergences([base] + ok[1:], pages):
            add(replica, "page", kind, id_, detail)
    notes = []
    try:
        sessions, notes = session_divergences(ok)
    except (OSError, http.client.HTTPException) as exc:
        sessions, notes = [], [f"session check failed: {type(exc).__name__}: {exc}"]
    for replica, kind, cookie, detail in sessions:
        add(replica, "session", kind, cookie, detail)
    return {"agree": not divergences, "divergences": divergences,
            "replicas": [{"name": r.name, "port": r.port, "error": r.error,
                          "cookies": sorted(r.fetcher.cookies)} for r in replicas],
            "prefix": prefix, "notes": notes, "time": time.time()}


def save(run_dir, result):
    """Keep the last result for the dashboard (written whole, then renamed)."""
    rundir.write_json(os.path.join(run_dir, RESULT_FILE), result)


def load(run_dir):
    """The last saved result, or None."""
    return rundir.read_json(os.path.join(run_dir, RESULT_FILE))


def format_text(result):
    lines = []
    for d in result["divergences"]:
        lines.append(f"{d['replica']}: {d['what']}: {d['detail']}")
        lines.append(f"    likely cause: {d['cause']}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    names = ", ".join(r["name"] for r in result["replicas"])
    n = len(result["divergences"])
    lines.append(f"replicas agree ({names})" if result["agree"] else
                 f"{n} divergence{'s' if n != 1 else ''} between replicas ({names})")
    return "\n".join(lines)


def run(procfile, as_json, echo, pages=()):
    """The CLI's `check --replicas`: exit code."""
    from . import control
    run_dir = rundir.run_dir_for(procfile)
    status = control.call(rundir.control_socket(run_dir), "GET", "/status")
    result = check_replicas(status, pages=pages)
    save(run_dir, result)
    echo(json.dumps(result, indent=2) if as_json else format_text(result))
    return 0 if result["agree"] else 1
