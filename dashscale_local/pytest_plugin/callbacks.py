"""Calling Dash callbacks from a test: CallbackClient (one browser tab against the app,
through `dashscale_local.dash_client`, the protocol code `dashscale bench` uses) and the
CallbackResult of each call."""
from dataclasses import dataclass, field
from typing import Optional

from .. import dash_client


class CallbackError(AssertionError):
    """A callback call failed (HTTP error, connection lost, replica killed)."""


@dataclass
class CallbackResult:
    """One callback call: the decoded update and who served it."""
    callback: str                 # the callback's output key, as the server knows it
    status: Optional[int]         # HTTP status (None: no answer at all)
    replica: Optional[str]        # X-Dashscale-Replica of the answer
    response: Optional[dict]      # decoded update {id: {prop: value}}; None for 204/errors
    error: Optional[str]          # None when ok
    seconds: float
    request: dict = field(repr=False, default_factory=dict)   # the body that was POSTed

    @property
    def ok(self):
        return self.error is None

    @property
    def prevented(self):
        """True when the callback raised PreventUpdate (HTTP 204)."""
        return self.status == 204

    @property
    def outputs(self):
        """The update flattened: {"id.prop": value} (empty for 204 or errors)."""
        flat = {}
        for id_, props in (self.response or {}).items():
            if isinstance(props, dict):
                for prop, value in props.items():
                    flat[f"{id_}.{prop}"] = value
        return flat

    def value(self, prop_id):
        """The new value of one output, e.g. result.value("total.children")."""
        outputs = self.outputs
        if prop_id not in outputs:
            raise KeyError(f"{prop_id} is not in the update of {self.callback} "
                           f"(has: {', '.join(outputs) or 'nothing'})")
        return outputs[prop_id]


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class CallbackClient:
    """A browser tab against a Dash app, for tests: fetches the layout and callbacks once,
    keeps the component values (layout values, then every update it receives, as the
    renderer does), and calls one callback at a time by its output.

    ``inputs`` is either a dict {"id.prop": value} of new values (those that are Inputs
    are sent as changed), or a prop id / list of prop ids that changed: "btn.n_clicks"
    is a click (n_clicks + 1 and its timestamp, as dash_client clicks), any other prop
    is re-sent with its current value (e.g. a dcc.Store another callback just set).
    ``state`` sets State (or other) values without marking them changed.
    """

    def __init__(self, url, timeout=60.0, headers=None):
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self.headers = headers
        self._app = None
        self._session = None

    @property
    def app(self):
        """The app as dash_client parsed it (DashApp), fetched on first use."""
        if self._app is None:
            self._app = dash_client.DashApp.fetch(self.url, timeout=self.timeout,
                                                  headers=self.headers)
        return self._app

    @property
    def session(self):
        if self._session is None:
            self._session = dash_client.Session(self.app, max_connections=1,
                                                timeout=self.timeout, headers=self.headers)
        return self._session

    @property
    def values(self):
        """The tab's current component values {"id.prop": value}."""
        return self.session.values

    def reset(self):
        """Forget every update: back to the layout's values (a fresh tab)."""
        self.close()

    def callback(self, output):
        """The callback (dash_client.Callback) whose output is ``output``: its exact
        output key, one of its outputs ("id.prop"), or a list of all its outputs."""
        callbacks = self.app.callbacks
        if isinstance(output, str):
            exact = [cb for cb in callbacks if cb.output == output]
            if exact:
                return exact[0]
            matches = [cb for cb in callbacks if output in cb.output_keys]
        else:
            wanted = set(output)
            matches = [cb for cb in callbacks if set(cb.output_keys) == wanted]
        if len(matches) == 1:
            return matches[0]
        known = "; ".join(cb.output for cb in callbacks) or "none"
        if not matches:
            raise CallbackError(f"no callback has output {output!r} (callbacks: {known})")
        raise CallbackError(f"several callbacks output {output!r}: pass the exact output "
                            f"key (one of: {'; '.join(cb.output for cb in matches)})")

    def call(self, output, inputs=None, state=None, check=True, apply=True):
        """Call one callback; returns a CallbackResult. Raises CallbackError when the
        call failed and ``check`` is true; ``apply`` feeds the update back into the
        tab's values (so the next call sees it, as in a browser)."""
        app = self.app
        cb = self.callback(output)
        if not cb.drivable:
            raise CallbackError(f"cannot call {cb.name}: {cb.reason}")
        session = self.session
        values = session.values
        known = set(cb.input_keys) | {dash_client.prop_id(d["id"], d["property"])
                                      for d in cb.state}
        if isinstance(inputs, dict):
            changes = dict(inputs)
        else:
            changes = {}
            for key in _as_list(inputs):
                if key.endswith(".n_clicks"):   # a click, as the renderer sends it
                    changes.update(app.click_changes(key, values))
                else:                            # re-sent as it is, marked changed
                    changes[key] = values.get(key)
        for key in list(changes) + list(state or {}):
            if key not in known and not key.endswith(".n_clicks_timestamp"):
                raise CallbackError(f"{key} is neither an Input nor a State of {cb.name} "
                                    f"(inputs: {', '.join(cb.input_keys)})")
        values.update(changes)
        values.update(state or {})
        changed = [k for k in changes if k in cb.input_keys]
        body = app.build_request(cb, values, changed)
        raw = session.post(body)
        result = CallbackResult(cb.output, raw.status, raw.replica, raw.response, raw.error,
                                raw.seconds, body)
        if raw.response and apply:
            session._apply(cb, raw.response)
        if check and not result.ok:
            raise CallbackError(f"callback {cb.name} failed"
                                + (f" on {result.replica}" if result.replica else "")
                                + f": {result.error}")
        return result

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None
