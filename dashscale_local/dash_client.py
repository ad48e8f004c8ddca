"""The Dash callback protocol, spoken as the Dash renderer (dash >= 2) speaks it.

The one implementation of it in dashscale: `dashscale bench` drives apps with it, and a
test plugin can reuse it. Two layers:

* sans-IO — `DashApp.from_json(layout, dependencies, config)` parses what an app serves,
  `DashApp.plan(input)` finds the callbacks a click triggers (and the ones it cannot
  drive, with reasons), `DashApp.build_request(...)` builds the exact JSON body the
  renderer POSTs, `decode_response(...)` reads the answer;
* I/O — `DashApp.fetch(url)` loads an app over HTTP; `Session` is one simulated browser
  tab: its own keep-alive connections (at most 6 at once, as a browser holds per host),
  its own copy of the component values, and `click(...)`, which fires the triggered
  callbacks concurrently, then the callbacks chained on their outputs, as the renderer
  does.

Only the standard library is used for HTTP (http.client), so the client's own cost stays
small and measurable (`CallResult.queued_s`, `CallResult.decode_s`).
"""
import concurrent.futures
import copy
import http.client
import http.cookies
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import List, Optional

REPLICA_HEADER = "X-Dashscale-Replica"
BROWSER_CONNECTIONS = 6  # HTTP/1.1 connections a browser opens per host
WILDCARDS = ("MATCH", "ALL", "ALLSMALLER")
_MISSING = object()
# props that change on a user action or a timer, not while a page loads
ACTION_PROPS = {"n_clicks", "n_clicks_timestamp", "n_intervals", "n_submit",
                "n_submit_timestamp", "n_blur", "n_blur_timestamp"}
NOT_BUTTONS = {"Store", "Interval", "Location"}  # have n_* props or data, never clicked
INTERNAL_PREFIX = "_pages_"  # Dash Pages' own components (router, store): never a trigger
LINK_TYPES = {"Link", "A"}   # dcc.Link, html.A: where a page's links to other pages are
_CONFIG_RE = re.compile(rb'<script[^>]*id="_dash-config"[^>]*>(.*?)</script>', re.S)


class DashProtocolError(Exception):
    """The URL is not a Dash app, or the request makes no sense for this app."""


# -- ids and prop ids -------------------------------------------------------------------

def stringify_id(id_):
    """A component id as the renderer writes it in prop ids (dict ids: sorted keys)."""
    if not isinstance(id_, dict):
        return id_
    parts = []
    for key in sorted(id_):
        value = id_[key]
        if isinstance(value, list) and len(value) == 1 and value[0] in WILDCARDS:
            text = value[0]  # wildcard as the renderer prints it
        else:
            text = json.dumps(value, separators=(",", ":"))
        parts.append(json.dumps(key) + ":" + text)
    return "{" + ",".join(parts) + "}"


def prop_id(id_, prop):
    return f"{stringify_id(id_)}.{prop}"


def parse_id(text):
    """'btn' → 'btn'; '{"index":1,"type":"b"}' → dict."""
    if isinstance(text, str) and text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def split_prop_id(text):
    """'graph.figure' → ('graph', 'figure'); the id may be a dict id in JSON."""
    id_part, dot, prop = text.rpartition(".")
    if not dot or not id_part:
        raise DashProtocolError(f"'{text}' is not id.property")
    return parse_id(id_part), prop


def is_pattern_id(id_):
    return isinstance(id_, dict) or (isinstance(id_, str) and id_.startswith("{"))


def has_wildcard(id_):
    id_ = parse_id(id_)
    return isinstance(id_, dict) and any(
        isinstance(v, list) and len(v) == 1 and v[0] in WILDCARDS for v in id_.values())


def id_matches(pattern, concrete):
    """Does a dependency id (maybe with MATCH/ALL/ALLSMALLER) cover a concrete id?"""
    pattern, concrete = parse_id(pattern), parse_id(concrete)
    if not isinstance(pattern, dict) or not isinstance(concrete, dict):
        return pattern == concrete
    if set(pattern) != set(concrete):
        return False
    for key, value in pattern.items():
        wild = isinstance(value, list) and len(value) == 1 and value[0] in WILDCARDS
        if not wild and value != concrete[key]:
            return False
    return True


def split_output(output):
    """The renderer's output string → [(id, prop)], multi.

    '..a.children...b.children..' (several outputs) or 'a.children' (one); a property may
    carry '@<hash>' (allow_duplicate), which is sent back as is."""
    if output.startswith("..") and output.endswith(".."):
        parts = output[2:-2].split("...")
        return [split_prop_id(p) for p in parts], True
    return [split_prop_id(output)], False


# -- the app's callbacks ----------------------------------------------------------------

@dataclass
class Callback:
    """One entry of /_dash-dependencies."""
    index: int
    output: str                       # the key the server knows the callback by
    outputs: List[dict]               # [{"id", "property"}] ([] for no-output callbacks)
    multi: bool
    inputs: List[dict]
    state: List[dict]
    prevent_initial_call: bool = False
    reason: Optional[str] = None      # why it cannot be driven; None = drivable
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def drivable(self):
        return self.reason is None

    @property
    def input_keys(self):
        return [prop_id(d["id"], d["property"]) for d in self.inputs]

    @property
    def output_keys(self):
        return [prop_id(d["id"], d["property"].split("@")[0]) for d in self.outputs]

    @property
    def name(self):
        """Short human name: its outputs, or the no-output key."""
        return ", ".join(self.output_keys) or f"(no output) {self.output[:12]}"


def _undrivable_reason(dep, outputs, no_output):
    if dep.get("clientside_function"):
        fn = dep["clientside_function"]
        label = ""
        if isinstance(fn, dict) and not str(fn.get("namespace", "")).startswith("_dashprivate"):
            label = f": {fn.get('namespace')}.{fn.get('function_name')}"
        return "clientside callback (runs in the browser, never reaches a replica)" + label
    ids = [o["id"] for o in outputs] + [d["id"] for d in dep.get("inputs", [])] + \
          [d["id"] for d in dep.get("state", [])]
    if any(has_wildcard(i) for i in ids):
        return "pattern-matching callback (ALL/MATCH/ALLSMALLER ids are expanded in the browser)"
    if any(is_pattern_id(i) for i in ids):
        return "dict (pattern-matching style) component ids are not supported"
    if dep.get("background"):
        return "background callback (its result is polled through a job queue)"
    if dep.get("websocket"):
        return "websocket callback"
    return None


def parse_dependencies(dependencies):
    """/_dash-dependencies JSON → [Callback]."""
    if not isinstance(dependencies, list):
        raise DashProtocolError("/_dash-dependencies is not a list")
    callbacks = []
    for i, dep in enumerate(dependencies):
        if not isinstance(dep, dict) or "output" not in dep or "inputs" not in dep:
            raise DashProtocolError(f"/_dash-dependencies entry {i} is not a callback")
        no_output = bool(dep.get("no_output"))
        if no_output:
            pairs, multi = [], False
        else:
            pairs, multi = split_output(dep["output"])
        outputs = [{"id": parse_id(i_), "property": p} for i_, p in pairs]
        inputs = [{"id": parse_id(d["id"]), "property": d["property"]} for d in dep["inputs"]]
        state = [{"id": parse_id(d["id"]), "property": d["property"]}
                 for d in dep.get("state") or []]
        callbacks.append(Callback(i, dep["output"], outputs, multi, inputs, state,
                                  bool(dep.get("prevent_initial_call")),
                                  _undrivable_reason(dep, outputs, no_output), dep))
    return callbacks


def walk_all(node):
    """Yield (id or None, props, type) for every component, in document order,
    including components held in props other than children (e.g. Tab.label)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            props = item.get("props")
            if isinstance(props, dict) and "type" in item:
                yield props.get("id"), props, item.get("type")
                stack.extend(reversed(list(props.values())))
            else:
                stack.extend(reversed(list(item.values())))


def walk_layout(node):
    """Yield (id, props, type) for every component with an id, in document order."""
    return ((id_, props, type_) for id_, props, type_ in walk_all(node) if id_ is not None)


def decode_response(status, body, replica=None):
    """(status, bytes) → the update {id: {prop: value}}, or None for 204 PreventUpdate.

    Raises DashProtocolError for anything a browser would treat as a failed callback;
    an HTTP error names the replica that answered (`replica`, from X-Dashscale-Replica)
    and where its traceback is, rather than quoting an HTML error page."""
    if status == 204:
        return None
    if status != 200:
        if replica:
            raise DashProtocolError(f"HTTP {status} from {replica} (see dashscale logs "
                                    f"{replica})")
        snippet = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
        html = snippet[:1] == "<"  # an error page: its markup says nothing useful here
        raise DashProtocolError(f"HTTP {status}" + (f": {snippet}" if snippet and not html
                                                    else ""))
    try:
        data = json.loads(body)
    except ValueError:
        raise DashProtocolError("HTTP 200 with a body that is not JSON")
    if not isinstance(data, dict) or "response" not in data:
        raise DashProtocolError("HTTP 200 without a 'response'")
    if data.get("multi"):
        return data["response"]
    return {"__single__": data["response"].get("props", {})}  # dash < 1.11 form


def update_changes(cb, update):
    """A decoded update → {prop id: value}."""
    if "__single__" in update and cb.outputs:
        update = {stringify_id(cb.outputs[0]["id"]): update["__single__"]}
    return {f"{id_}.{prop}": value for id_, props in update.items() if isinstance(props, dict)
            for prop, value in props.items()}


@dataclass
class Plan:
    """What a click on `input` makes the browser do."""
    input: str
    direct: List[Callback]    # drivable, fired at once
    chained: List[Callback]   # drivable, may fire once an upstream output changes
    skipped: List[tuple]      # (Callback, reason): triggered but not driven

    @property
    def callbacks(self):
        return self.direct + self.chained

    def skipped_json(self):
        return [{"output": cb.name, "reason": reason} for cb, reason in self.skipped]


class DashApp:
    """An app's layout and callbacks; sans-IO apart from `fetch`."""

    def __init__(self, url, layout, dependencies, config=None):
        self.url = url
        self.config = config or {}
        self.layout = layout
        self.dependencies = dependencies
        self.callbacks = parse_dependencies(dependencies)
        self.rendered, self.render_errors = [], []  # callbacks resolve() fired
        self.unapplied = []  # `sets` keys whose component never appeared
        parsed = urllib.parse.urlsplit(url or "http://localhost/")
        prefix = self.config.get("requests_pathname_prefix") or \
            self.config.get("url_base_pathname") or parsed.path or "/"
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.page_path = parsed.path or "/"     # the browser's location, for dcc.Location
        self.page_search = f"?{parsed.query}" if parsed.query else ""
        self._index()
        self._descendants = {}
        self.cookies = {}   # cookies the page set (a CSRF token, say), for sessions
        self.chosen = {}    # prop values set to reach the layout ({"tabs.value": "tab-2"})

    def _index(self):
        """(Re)read the components and their values from the layout tree."""
        self.components = list(walk_layout(self.layout))
        self.values = {}
        for id_, props, _type in self.components:
            for prop, value in props.items():
                if prop != "id":
                    self.values[prop_id(id_, prop)] = value
        self._ids = {stringify_id(c[0]) for c in self.components}

    @classmethod
    def from_json(cls, layout, dependencies, config=None, url=None):
        """From already-fetched JSON (e.g. a Flask test client's answers)."""
        return cls(url, layout, dependencies, config)

    @classmethod
    def fetch(cls, url, timeout=30.0, headers=None):
        """GET the page (for the renderer config), /_dash-layout and /_dash-dependencies."""
        client = _Fetcher(url, timeout, headers)
        config = {}
        parts = urllib.parse.urlsplit(url)
        path = parts.path or "/"
        for _ in range(5):  # follow same-host redirects (/ → /app-name/, say)
            status, resp_headers, body = client.get(path)
            location = resp_headers.get("Location")
            if status not in (301, 302, 303, 307, 308) or not location:
                break
            target = urllib.parse.urlsplit(urllib.parse.urljoin(f"{parts.scheme}://"
                                                                f"{parts.netloc}{path}",
                                                                location))
            if target.netloc != parts.netloc:
                break
            path = target.path or "/"
        if path != (parts.path or "/"):
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        match = _CONFIG_RE.search(body) if status == 200 else None
        if match:
            try:
                config = json.loads(match.group(1))
            except ValueError:
                config = {}
        base = cls(url, {}, [], config).prefix
        layout = client.get_json(base + "_dash-layout")
        deps = client.get_json(base + "_dash-dependencies")
        app = cls(url, layout, deps, config)
        app.cookies = dict(client.cookies)
        return app

    # -- the page a browser shows ----------------------------------------------------
    def fresh(self):
        """A copy with the layout as served (resolve() changes the layout in place)."""
        app = DashApp(self.url, copy.deepcopy(self.layout), self.dependencies, self.config)
        app.cookies = dict(self.cookies)
        return app

    def location_changes(self):
        """What each dcc.Location reads from the address bar when the page loads."""
        changes = {}
        for id_, _props, type_ in self.components:
            if type_ == "Location":
                for prop, value in (("pathname", self.page_path), ("search", self.page_search),
                                    ("hash", ""), ("href", self.url)):
                    changes[prop_id(id_, prop)] = value
        return changes

    def _write(self, changes):
        """Set {prop id: value} on the components the layout has; returns the keys set."""
        by_id = {stringify_id(id_): props for id_, props, _type in self.components}
        written = set()
        for key, value in changes.items():
            id_, prop = split_prop_id(key)
            props = by_id.get(stringify_id(id_))
            if props is not None:
                props[prop] = value
                written.add(key)
        if written:
            self._index()
        return written

    def on_page(self, cb):
        """Is every component the callback names (outputs, inputs, state) on the page?
        The renderer fires a callback only then, so a callback of another Dash Pages
        page that reuses an id of this one is not fired here. (Pattern-matching ids
        match what exists; such callbacks are not driven anyway.)"""
        return all(is_pattern_id(d["id"]) or stringify_id(d["id"]) in self._ids
                   for d in cb.outputs + cb.inputs + cb.state)

    def fires_here(self, cb):
        """Drivable and on the page: a callback a click on this page may fire."""
        return cb.drivable and self.on_page(cb)

    def _renders_on_load(self, cb, changed):
        """Does the browser fire `cb` while the page loads, and may it render content?"""
        if not cb.inputs or not self.fires_here(cb) or \
                not any(o["property"].split("@")[0] == "children" for o in cb.outputs):
            return False
        if any(k in changed for k in cb.input_keys):
            return True
        return not cb.prevent_initial_call and \
            not all(d["property"] in ACTION_PROPS for d in cb.inputs)

    def resolve(self, fire, sets=None, max_rounds=10):
        """Render the page as the browser does on load: set dcc.Location from the URL
        (and `sets`, e.g. {"tabs.value": "tab-2"}), fire the server-side callbacks that
        render `children` (the Pages router, a tab's content, their chains), merge what
        they return into the layout, and repeat until nothing more fires (bounded).
        `fire(body)` POSTs one request body and returns the decoded update."""
        pending = dict(self.location_changes(), **(sets or {}))
        changed, fired = set(), set()
        for _ in range(max_rounds):
            written = self._write(pending)
            changed |= written
            pending = {k: v for k, v in pending.items() if k not in written}
            ready = [cb for cb in self.callbacks
                     if cb.index not in fired and self._renders_on_load(cb, changed)]
            todo = [cb for cb in ready  # upstream callbacks first, as the renderer does
                    if not any(cb.index in self.descendants(o) for o in ready)] or ready
            if not todo:
                break
            fired |= {cb.index for cb in todo}
            for cb, update, error in self._fire_all(fire, todo, changed):
                if error:
                    self.render_errors.append(f"{cb.name}: {error}")
                    continue
                self.rendered.append(cb.name)
                if update:
                    pending.update(update_changes(cb, update))
        self._write(pending)
        self.unapplied = sorted(set(pending) & set(sets or {}))

    def _fire_all(self, fire, callbacks, changed):
        """[(cb, update, error)]: the callbacks fired at once, as the renderer does."""
        def one(cb):
            try:
                return cb, fire(bodies[cb.index]), None
            except DashProtocolError as exc:
                return cb, None, str(exc)
        bodies = {cb.index: self.build_request(cb, self.values, changed) for cb in callbacks}
        if len(callbacks) == 1:
            return [one(callbacks[0])]
        with concurrent.futures.ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
            return list(pool.map(one, callbacks))

    def known_ids(self, limit=12):
        ids = sorted(str(i) for i in self._ids)
        return ", ".join(ids[:limit]) + (" …" if len(ids) > limit else "")

    def has_component(self, key):
        try:
            return stringify_id(split_prop_id(key)[0]) in self._ids
        except DashProtocolError:
            return False

    def tab_choices(self):
        """[{"tabs.value": v}] for each dcc.Tabs value not selected now."""
        choices = []
        for id_, props, type_ in self.components:
            tabs = props.get("children") if type_ == "Tabs" else None
            for i, tab in enumerate(tabs if isinstance(tabs, list) else [tabs] if tabs else []):
                if isinstance(tab, dict) and isinstance(tab.get("props"), dict):
                    value = tab["props"].get("value") or f"tab-{i + 1}"  # dcc.Tabs' default
                    if value != props.get("value"):
                        choices.append({prop_id(id_, "value"): value})
        return choices

    def resolved(self, fire, sets=None, want=None, max_tries=20):
        """A copy with the page rendered (`resolve`). When `want` (id.prop) is not on
        it, each other dcc.Tabs value is tried until one renders it; `chosen` records
        the values set."""
        sets = dict(sets or {})
        app = self.fresh()
        app.resolve(fire, sets)
        app.chosen = sets
        if app.unapplied:
            raise DashProtocolError(f"cannot set {app.unapplied[0]}: no such component on "
                                    f"the page {app.page_path} (ids: {app.known_ids()})")
        if want is None or app.has_component(want):
            return app
        for extra in app.tab_choices()[:max_tries]:
            trial = self.fresh()
            trial.resolve(fire, dict(sets, **extra))
            if trial.has_component(want):
                trial.chosen = dict(sets, **extra)
                return trial
        return app

    # -- what a click triggers --------------------------------------------------------
    def trigger_candidates(self):
        """[(prop id, number of callbacks a change drives, component type)] for every
        prop in the layout that is an Input of a drivable callback; most first."""
        types = {stringify_id(id_): type_ for id_, _props, type_ in self.components}
        order = {key: i for i, key in enumerate(types)}
        keys = []
        for cb in self.callbacks:
            for d in cb.inputs if self.fires_here(cb) else []:
                key = prop_id(d["id"], d["property"])
                if not str(stringify_id(d["id"])).startswith(INTERNAL_PREFIX) \
                        and key not in keys:
                    keys.append(key)
        found = [(k, len(self.plan(k).callbacks), types[stringify_id(split_prop_id(k)[0])])
                 for k in keys]
        return sorted(found, key=lambda c: (-c[1], order[stringify_id(split_prop_id(c[0])[0])]))

    def default_input(self):
        """The button (n_clicks) whose click drives the most server-side callbacks,
        chains included; never a dcc.Store, a dcc.Interval or a dcc.Location."""
        candidates = self.trigger_candidates()
        for key, count, type_ in candidates:
            if key.endswith(".n_clicks") and count and type_ not in NOT_BUTTONS:
                return key
        if not candidates:
            raise DashProtocolError(f"the page {self.page_path} has no server-side callback "
                                    f"the bench can drive{self._pages_hint()}")
        listed = ", ".join(f"{k} ({n} callback{'s' * (n != 1)})" for k, n, _t in candidates[:8])
        raise DashProtocolError(f"no button on the page {self.page_path} drives a server-side "
                                f"callback; pass --input ID.PROP (candidates: {listed})")

    def linked_pages(self):
        """Paths of this app that the page links to (dcc.Link / html.A hrefs, e.g. a
        Dash Pages nav bar), this page left out, in document order."""
        here = self.page_path.rstrip("/")
        paths = []
        for _id, props, type_ in walk_all(self.layout):
            href = props.get("href") if type_ in LINK_TYPES else None
            if isinstance(href, str) and href.startswith("/") and not href.startswith("//"):
                path = urllib.parse.urlsplit(href).path
                if path.rstrip("/") != here and path not in paths and \
                        "/assets/" not in path and "/_dash" not in path:
                    paths.append(path)
        return paths

    def _pages_hint(self):
        """'; pages it links to: …' to bench instead, or for a Dash Pages app with no
        link found, the advice to pass a page URL."""
        parts = urllib.parse.urlsplit(self.url or "http://localhost/")
        root = f"{parts.scheme}://{parts.netloc}"
        pages = self.linked_pages()
        if pages:
            listed = ", ".join(pages[:6]) + (" …" if len(pages) > 6 else "")
            return (f"; pages it links to: {listed} — try e.g. dashscale bench "
                    f"{root}{pages[0]}")
        if any(str(stringify_id(i)).startswith(INTERNAL_PREFIX) for i in self._ids):
            return f"; try a page URL, e.g. dashscale bench {root}{self.prefix}page"
        return ""

    def check_input(self, input):
        """Validate 'id.prop'; returns it normalised (dict ids stringified)."""
        id_, prop = split_prop_id(input)
        key = prop_id(id_, prop)
        if stringify_id(id_) not in self._ids:
            raise DashProtocolError(f"no component '{stringify_id(id_)}' on the page "
                                    f"{self.page_path} (ids: {self.known_ids()}); to reach "
                                    "one that another choice renders, pass --set "
                                    "ID.PROP=VALUE")
        if not any(self._input_matches(d, key) for cb in self.callbacks for d in cb.inputs):
            raise DashProtocolError(f"'{key}' is not an Input of any callback")
        return key

    @staticmethod
    def _input_matches(dep, key):
        id_, prop = split_prop_id(key)
        return dep["property"] == prop and id_matches(dep["id"], id_)

    def triggered_by(self, keys):
        """Every callback (drivable or not) with an Input among these prop ids."""
        return [cb for cb in self.callbacks
                if any(self._input_matches(d, k) for d in cb.inputs for k in keys)]

    def click_changes(self, input, values, value=_MISSING):
        """The props a click sets, as the browser sets them: n_clicks + 1 and
        n_clicks_timestamp for a click; a numeric prop + 1; otherwise `value` (default:
        the current value, i.e. the input is re-sent as it is)."""
        id_, prop = split_prop_id(input)
        current = values.get(input)
        if value is not _MISSING:
            return {input: value}
        if prop == "n_clicks":
            return {input: (current or 0) + 1,
                    prop_id(id_, "n_clicks_timestamp"): int(time.time() * 1000)}
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            return {input: current + 1}
        return {input: current}

    def plan(self, input):
        """The callbacks a click on `input` fires directly, those chained on their
        outputs, and those it triggers but the bench cannot drive (with reasons)."""
        input = self.check_input(input)
        id_, prop = split_prop_id(input)
        first = [input] + ([prop_id(id_, "n_clicks_timestamp")] if prop == "n_clicks" else [])
        direct, chained, skipped, seen = [], [], [], set()
        frontier = [(k, None) for k in first]   # (prop id, skipped upstream or None)
        depth = 0
        while frontier and depth < 50:
            nxt = []
            for key, bad_upstream in frontier:
                for cb in self.triggered_by([key]):
                    if cb.index in seen or not self.on_page(cb):
                        continue  # seen, or not on this page: the browser never fires it
                    seen.add(cb.index)
                    if bad_upstream is not None and not cb.drivable:
                        skipped.append((cb, cb.reason))
                    elif bad_upstream is not None:
                        skipped.append((cb, "chained on the output of a skipped callback "
                                            f"({bad_upstream.name})"))
                    elif not cb.drivable:
                        skipped.append((cb, cb.reason))
                    else:
                        (direct if depth == 0 else chained).append(cb)
                    upstream = bad_upstream or (None if cb.drivable else cb)
                    nxt.extend((k, upstream) for k in cb.output_keys)
            frontier, depth = nxt, depth + 1
        # a callback reachable both ways is driven: drop it from skipped
        driven = {cb.index for cb in direct + chained}
        skipped = [(cb, r) for cb, r in skipped if cb.index not in driven]
        return Plan(input, direct, chained, skipped)

    def descendants(self, cb):
        """Indexes of the callbacks that (transitively) take an output of `cb` as Input."""
        if cb.index not in self._descendants:
            out, todo = set(), list(cb.output_keys)
            while todo:
                key = todo.pop()
                for other in self.triggered_by([key]):
                    if other.index not in out:
                        out.add(other.index)
                        todo.extend(other.output_keys)
            self._descendants[cb.index] = out
        return self._descendants[cb.index]

    # -- the request --------------------------------------------------------------
    @staticmethod
    def _fill(deps, values):
        filled = []
        for d in deps:
            item = {"id": d["id"], "property": d["property"]}
            value = values.get(prop_id(d["id"], d["property"]), _MISSING)
            if value is not _MISSING:  # the renderer leaves out props the layout lacks
                item["value"] = value
            filled.append(item)
        return filled

    def build_request(self, cb, values, changed):
        """The JSON body the renderer POSTs to /_dash-update-component."""
        if not cb.drivable:
            raise DashProtocolError(f"cannot drive {cb.name}: {cb.reason}")
        changed_ids = [k for k in cb.input_keys if k in changed]
        outputs = [dict(o) for o in cb.outputs]
        body = {
            "output": cb.output,
            "outputs": outputs if cb.multi or not outputs else outputs[0],
            "inputs": self._fill(cb.inputs, values),
            "changedPropIds": changed_ids,
            "parsedChangedPropsIds": changed_ids,
        }
        if cb.state:
            body["state"] = self._fill(cb.state, values)
        return body

    def update_path(self):
        path = self.prefix + "_dash-update-component"
        if self.config.get("end_id"):
            path += "?endId=" + urllib.parse.quote(str(self.config["end_id"]), safe="~")
        return path


# -- HTTP ------------------------------------------------------------------------

def _connection(url, timeout):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DashProtocolError(f"not an http(s) URL: {url}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def _store_cookies(jar, headers):
    for value in headers.get_all("Set-Cookie") or []:
        try:
            parsed = http.cookies.SimpleCookie(value)
        except http.cookies.CookieError:
            continue
        for name, morsel in parsed.items():
            jar[name] = morsel.value


def _cookie_header(jar):
    return "; ".join(f"{k}={v}" for k, v in jar.items())


class _Fetcher:
    def __init__(self, url, timeout, headers=None):
        self.url, self.timeout = url, timeout
        self.headers = dict(headers or {})
        self.cookies = {}

    def get(self, path):
        conn = _connection(self.url, self.timeout)
        try:
            headers = dict(self.headers)
            if self.cookies:
                headers["Cookie"] = _cookie_header(self.cookies)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            _store_cookies(self.cookies, resp.headers)
            return resp.status, resp.headers, body
        finally:
            conn.close()

    def get_json(self, path):
        status, _headers, body = self.get(path)
        if status != 200:
            raise DashProtocolError(f"GET {path}: HTTP {status} (not a Dash app at "
                                    f"{self.url}?)")
        try:
            return json.loads(body)
        except ValueError:
            raise DashProtocolError(f"GET {path}: not JSON (not a Dash app at {self.url}?)")


@dataclass
class CallResult:
    """One POST /_dash-update-component."""
    callback: str                   # the callback's output key
    status: Optional[int]           # None: no HTTP answer (connection error/timeout)
    seconds: float                  # request sent → response read
    replica: Optional[str]          # X-Dashscale-Replica, when behind dashscale
    response: Optional[dict]        # decoded update; None for 204 / errors
    error: Optional[str] = None
    queued_s: float = 0.0           # click start (or upstream done) → request sent
    decode_s: float = 0.0           # JSON decoding of the answer
    started_s: float = 0.0          # offset from the click's start

    @property
    def ok(self):
        return self.error is None


@dataclass
class ClickResult:
    seconds: float
    calls: List[CallResult]
    started: float = 0.0            # time.perf_counter() at the click

    @property
    def errors(self):
        return sum(1 for c in self.calls if not c.ok)


class Session:
    """One simulated browser tab: keep-alive connections (≤ `max_connections` at once,
    one per worker thread), cookies, and its own copy of the component values."""

    def __init__(self, app, max_connections=BROWSER_CONNECTIONS, timeout=120.0,
                 headers=None, follow_chains=True):
        self.app = app
        self.values = dict(app.values)
        self.cookies = dict(app.cookies)
        self.timeout = timeout
        self.follow_chains = follow_chains
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self.headers.update(headers or {})
        self._local = threading.local()
        self._conns = []
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix="dash-session")

    # -- one callback --------------------------------------------------------------
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connection(self.app.url, self.timeout)
            self._local.conn, self._local.used = conn, False
            with self._lock:
                self._conns.append(conn)
        return conn

    def _headers(self):
        headers = dict(self.headers)
        if self.cookies:
            headers["Cookie"] = _cookie_header(self.cookies)
            token = self.cookies.get(self.app.config.get("csrf_token_name", "_csrf_token"))
            if token:
                headers[self.app.config.get("csrf_header_name", "X-CSRFToken")] = token
        return headers

    def post(self, body, queued_s=0.0, started_s=0.0):
        """POST one request body; never raises for HTTP or connection failures."""
        payload = json.dumps(body).encode()
        path = self.app.update_path()
        name = body.get("output", "?")
        for attempt in (0, 1):
            conn = self._conn()
            reused = self._local.used
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=payload, headers=self._headers())
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as exc:
                conn.close()
                self._local.used = False
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: the browser retries too
                return CallResult(name, None, time.perf_counter() - t0, None, None,
                                  f"{type(exc).__name__}: {exc}", queued_s, 0.0, started_s)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.used = False
                return CallResult(name, None, time.perf_counter() - t0, None, None,
                                  f"{type(exc).__name__}: {exc}", queued_s, 0.0, started_s)
            seconds = time.perf_counter() - t0
            self._local.used = not resp.will_close
            if resp.will_close:
                conn.close()
            if resp.headers.get("Set-Cookie"):
                with self._lock:
                    _store_cookies(self.cookies, resp.headers)
            replica = resp.headers.get(REPLICA_HEADER)
            t1 = time.perf_counter()
            try:
                update, error = decode_response(resp.status, data, replica), None
            except DashProtocolError as exc:
                update, error = None, str(exc)
            return CallResult(name, resp.status, seconds, replica, update, error, queued_s,
                              time.perf_counter() - t1, started_s)

    def call(self, cb, changed, queued_s=0.0, started_s=0.0):
        """Fire one callback with the session's current values."""
        return self.post(self.app.build_request(cb, self.values, changed), queued_s,
                         started_s)

    # -- one click ---------------------------------------------------------------
    def click(self, input=None, value=_MISSING):
        """Click `input` (default: the app's default input) as a browser does: set the
        props, fire the triggered callbacks concurrently, apply their answers, and fire
        callbacks chained on the outputs once no running callback can still feed them."""
        app = self.app
        input = app.check_input(input or app.default_input())
        t_click = time.perf_counter()
        changes = app.click_changes(input, self.values, value)
        self.values.update(changes)
        changed = set(changes)
        candidates = [cb for cb in app.triggered_by(list(changes)) if app.fires_here(cb)]
        fired, running, results = set(), {}, []
        ready_since = {cb.index: t_click for cb in candidates}

        def launch():
            for cb in list(candidates):
                if cb.index in fired:
                    candidates.remove(cb)
                    continue
                if any(cb.index in app.descendants(r) for r in running.values()):
                    continue  # an upstream still runs: wait, as the renderer does
                candidates.remove(cb)
                fired.add(cb.index)
                body = app.build_request(cb, self.values, changed)
                fut = self._pool.submit(self._timed_post, body, ready_since[cb.index], t_click)
                running[fut] = cb

        launch()
        while running:
            done, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
            now = time.perf_counter()
            for fut in done:
                cb = running.pop(fut)
                result = fut.result()
                results.append(result)
                if not result.response:
                    continue
                updated = self._apply(cb, result.response)
                changed |= updated
                if self.follow_chains and updated:
                    for nxt in app.triggered_by(list(updated)):
                        if (app.fires_here(nxt) and nxt.index not in fired
                                and all(c.index != nxt.index for c in candidates)):
                            candidates.append(nxt)
                            ready_since[nxt.index] = now
            launch()
        return ClickResult(time.perf_counter() - t_click, results, t_click)

    def _timed_post(self, body, ready_at, t_click):
        sent = time.perf_counter()
        return self.post(body, queued_s=sent - ready_at, started_s=sent - t_click)

    def _apply(self, cb, update):
        changes = update_changes(cb, update)
        self.values.update(changes)
        return set(changes)

    def fire(self, body):
        """POST one body; the decoded update, or DashProtocolError (for resolve())."""
        result = self.post(body)
        if not result.ok:
            raise DashProtocolError(result.error)
        return result.response

    def close(self):
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
