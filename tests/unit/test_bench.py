"""dash_client (the Dash callback protocol) and `dashscale bench`.

Unit tests build requests from real apps' /_dash-layout and /_dash-dependencies (Flask
test client) and check the server accepts them; a few drive a small app served on
loopback in-process (the bench on real replicas: tests/e2e/test_bench.py).
"""
import json
import threading

import pytest
from click.testing import CliRunner
from dash import ALL, MATCH, Dash, Input, Output, State, dcc, html
from werkzeug.serving import make_server

from dashscale_local import bench as B
from dashscale_local.cli import main
from dashscale_local.dash_client import (DashApp, DashProtocolError, Session, decode_response,
                                         split_output, stringify_id)
from dashscale_local.testing import free_port

DESIGN_KEYS = {"clicks", "users", "callbacks_per_click", "click_p50_s", "click_p95_s",
               "click_max_s", "ideal_s", "errors", "replicas", "skipped"}


def app_from(dash_app):
    client = dash_app.server.test_client()
    return DashApp.from_json(client.get("/_dash-layout").get_json(),
                             client.get("/_dash-dependencies").get_json()), client


@pytest.fixture
def sample(monkeypatch):
    import sample_app.app as mod
    monkeypatch.setattr(mod, "CALLBACK_SECONDS", 0)
    return mod


def probe_app():
    """Multi-output with State, a chained callback, allow_duplicate, no-output."""
    app = Dash("probe")
    app.layout = html.Div([
        html.Button("go", id="btn", n_clicks=0),
        dcc.Input(id="txt", value="hello"),
        html.Div(id="a"), html.Div(id="b"), html.Div(id="c"), html.Div(id="d"),
    ])

    @app.callback(Output("a", "children"), Output("b", "children"),
                  Input("btn", "n_clicks"), State("txt", "value"))
    def two(n, text):
        return f"{n}{text}", "b"

    @app.callback(Output("c", "children"), Input("a", "children"))
    def chained(a):
        return (a or "") + "!"

    @app.callback(Output("d", "children", allow_duplicate=True), Input("btn", "n_clicks"),
                  prevent_initial_call=True)
    def dup(n):
        return f"d{n}"

    @app.callback(Input("txt", "value"))
    def no_output(value):
        pass

    return app


def skipping_app():
    """Callbacks the bench cannot drive, next to one it can."""
    app = Dash("skipping")
    app.layout = html.Div([
        html.Button("go", id="btn", n_clicks=0),
        html.Div(id="plain"), html.Div(id="cs"), html.Div(id="after-cs"),
        html.Button("pm", id={"type": "pm", "index": 1}, n_clicks=0),
        html.Div(id={"type": "out", "index": 1}),
        html.Div(id={"type": "all", "index": 1}),
    ])

    @app.callback(Output("plain", "children"), Input("btn", "n_clicks"))
    def plain(n):
        return n

    app.clientside_callback("function(n) { return n; }",
                            Output("cs", "children"), Input("btn", "n_clicks"))

    @app.callback(Output("after-cs", "children"), Input("cs", "children"))
    def after_cs(v):
        return v

    @app.callback(Output({"type": "all", "index": ALL}, "children"), Input("btn", "n_clicks"))
    def fan_out(n):
        return [n]

    @app.callback(Output({"type": "out", "index": MATCH}, "children"),
                  Input({"type": "pm", "index": MATCH}, "n_clicks"))
    def matched(n):
        return n

    return app


class Served:
    def __init__(self, app):
        wsgi = app.server if isinstance(app, Dash) else app
        self.server = make_server("127.0.0.1", 0, wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def factory(app):
        servers.append(Served(app))
        return servers[-1]
    yield factory
    for s in servers:
        s.close()


def test_sample_app_request_is_the_renderers(sample):
    app, client = app_from(sample.app)
    assert app.default_input() == "btn.n_clicks"
    plan = app.plan("btn.n_clicks")
    assert [cb.name for cb in plan.direct] == [f"graph-{i}.figure" for i in range(1, 5)]
    assert plan.chained == [] and plan.skipped == []
    values = dict(app.values)
    changes = app.click_changes("btn.n_clicks", values)
    assert changes["btn.n_clicks"] == 1 and "btn.n_clicks_timestamp" in changes
    values.update(changes)
    body = app.build_request(plan.direct[0], values, set(changes))
    assert body == {"output": "graph-1.figure",
                    "outputs": {"id": "graph-1", "property": "figure"},
                    "inputs": [{"id": "btn", "property": "n_clicks", "value": 1}],
                    "changedPropIds": ["btn.n_clicks"],
                    "parsedChangedPropsIds": ["btn.n_clicks"]}
    resp = client.post("/_dash-update-component", json=body)
    update = decode_response(resp.status_code, resp.data)
    assert "click 1" in update["graph-1"]["figure"]["layout"]["title"]["text"]


def test_sample_app_state_and_two_inputs(sample):
    app, client = app_from(sample.app)
    plan = app.plan("hog-alloc.n_clicks")
    assert [cb.name for cb in plan.direct] == ["hog-status.children"]
    values = dict(app.values, **{"hog-mib.value": 1})
    values.update(app.click_changes("hog-alloc.n_clicks", values))
    body = app.build_request(plan.direct[0], values, {"hog-alloc.n_clicks"})
    assert body["inputs"] == [{"id": "hog-alloc", "property": "n_clicks", "value": 1},
                              {"id": "hog-release", "property": "n_clicks", "value": 0}]
    assert body["state"] == [{"id": "hog-mib", "property": "value", "value": 1}]
    assert body["changedPropIds"] == ["hog-alloc.n_clicks"]
    try:
        resp = client.post("/_dash-update-component", json=body)
        assert resp.status_code == 200
        assert "holds 1 MiB" in decode_response(200, resp.data)["hog-status"]["children"]
    finally:
        sample._hog.clear()


def test_multi_output_duplicate_and_no_output():
    app, client = app_from(probe_app())
    assert split_output("..a.children...b.children..") == \
        ([("a", "children"), ("b", "children")], True)
    plan = app.plan("btn.n_clicks")
    assert [cb.name for cb in plan.direct] == ["a.children, b.children", "d.children"]
    assert [cb.name for cb in plan.chained] == ["c.children"]
    values = dict(app.values, **{"btn.n_clicks": 3})
    multi = app.build_request(plan.direct[0], values, {"btn.n_clicks"})
    assert multi["output"] == "..a.children...b.children.."
    assert multi["outputs"] == [{"id": "a", "property": "children"},
                                {"id": "b", "property": "children"}]
    assert multi["state"] == [{"id": "txt", "property": "value", "value": "hello"}]
    dup = app.build_request(plan.direct[1], values, {"btn.n_clicks"})
    assert dup["output"].startswith("d.children@")
    assert dup["outputs"]["property"] == dup["output"].split(".", 1)[1]
    for body, expect in ((multi, {"a": {"children": "3hello"}, "b": {"children": "b"}}),
                         (dup, {"d": {"children": "d3"}})):
        resp = client.post("/_dash-update-component", json=body)
        assert decode_response(resp.status_code, resp.data) == expect
    # an input the layout lacks is left out, as the renderer leaves it out
    chained = app.build_request(plan.chained[0], app.values, {"a.children"})
    assert chained["inputs"] == [{"id": "a", "property": "children", "value": None}]
    no_out = app.plan("txt.value").direct[0]
    body = app.build_request(no_out, app.values, {"txt.value"})
    assert body["outputs"] == [] and body["changedPropIds"] == ["txt.value"]
    assert client.post("/_dash-update-component", json=body).status_code in (200, 204)


def test_decode_response():
    assert decode_response(204, b"") is None
    assert decode_response(200, b'{"multi":true,"response":{"x":{"y":1}}}') == {"x": {"y": 1}}
    for status, body in ((500, b"boom"), (200, b"<html>"), (200, b'{"nope":1}')):
        with pytest.raises(DashProtocolError):
            decode_response(status, body)
    assert stringify_id({"type": "b", "index": 1}) == '{"index":1,"type":"b"}'


def test_skipped_callbacks_are_listed_with_reasons():
    app, _client = app_from(skipping_app())
    plan = app.plan("btn.n_clicks")
    assert [cb.name for cb in plan.direct] == ["plain.children"]
    reasons = {item["output"]: item["reason"] for item in plan.skipped_json()}
    assert set(reasons) == {"cs.children", "after-cs.children",
                            '{"index":ALL,"type":"all"}.children'}
    assert reasons["cs.children"].startswith("clientside")
    assert "skipped callback (cs.children)" in reasons["after-cs.children"]
    assert reasons['{"index":ALL,"type":"all"}.children'].startswith("pattern-matching")
    # clicking a pattern-matching button: everything it triggers is skipped, none dropped
    pm = app.plan('{"index":1,"type":"pm"}.n_clicks')
    assert pm.callbacks == [] and len(pm.skipped) == 1
    assert pm.skipped[0][1].startswith("pattern-matching")
    with pytest.raises(DashProtocolError, match="no component 'nope'"):
        app.plan("nope.n_clicks")
    with pytest.raises(DashProtocolError, match="not an Input"):
        app.plan("plain.children")


def test_workers_and_ideal():
    c = B.gunicorn_concurrency
    assert c("gunicorn app:server") == 1
    assert c("gunicorn app:server --workers 4") == 4
    assert c("gunicorn app:server -w 3 --bind 127.0.0.1:$PORT") == 3
    assert c("gunicorn app:server -w3") == 3
    assert c("FOO=1 gunicorn --workers=2 --threads 2 app:server") == 4
    assert c("python -m gunicorn -w 2 app:server") == 2
    assert c("python app.py") == 1
    status = {"replicas": [
        {"name": "web.1", "type": "web", "ready": True, "command": "gunicorn a:s -w 4"},
        {"name": "web.2", "type": "web", "ready": False, "command": "gunicorn a:s -w 4"},
        {"name": "worker.1", "type": "worker", "ready": True, "command": "gunicorn a:s -w 4"},
        {"name": "web.3", "type": "web", "ready": True, "command": "gunicorn a:s"}]}
    assert B.web_workers(status) == (5, {"web.1": 4, "web.3": 1})
    assert B.percentile([1, 2, 3, 4], 50) == 2.5 and B.percentile([5], 95) == 5


def test_session_click_follows_chains(serve):
    server = serve(probe_app())
    app = DashApp.fetch(server.url)
    with Session(app) as session:
        first = session.click()
        second = session.click("btn.n_clicks")
    assert sorted(c.callback.split("@")[0] for c in first.calls) == \
        ["..a.children...b.children..", "c.children", "d.children"]
    assert all(c.ok and c.status == 200 for c in first.calls + second.calls)
    chained = next(c for c in second.calls if c.callback == "c.children")
    multi = next(c for c in second.calls if c.callback.startswith(".."))
    assert chained.started_s >= multi.started_s + multi.seconds * 0.9  # fired after it
    assert session.values["c.children"] == "2hello!"
    assert first.seconds < 5


def test_fetch_under_a_path_prefix_after_a_redirect(serve):
    dash_app = Dash("prefixed", url_base_pathname="/myapp/")
    dash_app.layout = html.Div([html.Button(id="go", n_clicks=0), html.Div(id="out")])

    @dash_app.callback(Output("out", "children"), Input("go", "n_clicks"))
    def echo(n):
        return n

    def wsgi(environ, start_response):  # / redirects to the app, as with --app-name
        if environ["PATH_INFO"] == "/":
            start_response("302 Found", [("Location", "/myapp/")])
            return [b""]
        return dash_app.server(environ, start_response)

    server = serve(wsgi)
    app = DashApp.fetch(server.url)
    assert app.prefix == "/myapp/" and app.url.endswith("/myapp/")
    with Session(app) as session:
        click = session.click()
    assert [c.status for c in click.calls] == [200]
    assert session.values["out.children"] == 1


def test_cli_bench_json_and_errors(serve, tmp_path):
    def broken():
        app = Dash("broken")
        app.layout = html.Div([html.Button(id="go", n_clicks=0), html.Div(id="out")])

        @app.callback(Output("out", "children"), Input("go", "n_clicks"))
        def fail(n):
            raise RuntimeError("boom")
        return app

    def not_dash(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<html>hello</html>"]

    runner = CliRunner()
    procfile = str(tmp_path / "Procfile")
    good = serve(probe_app())
    res = runner.invoke(main, ["bench", good.url, "-f", procfile, "--json", "-n", "2",
                               "-u", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert DESIGN_KEYS <= set(data)
    assert data["clicks"] == 4 and data["users"] == 2 and data["callbacks_per_click"] == 3
    assert data["errors"] == 0 and data["skipped"] == [] and data["warmup_clicks"] == 2
    assert data["workers_source"].startswith("assumed")

    bad = serve(broken())
    res = runner.invoke(main, ["bench", bad.url, "-f", procfile, "--json", "-n", "1",
                               "--no-warmup"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["errors"] == 1

    for args, message in (([good.url, "--input", "nope.n_clicks"], "no component 'nope'"),
                          ([f"http://127.0.0.1:{free_port()}"], "nothing is listening"),
                          ([serve(not_dash).url], "not a Dash app"),
                          ([], "no dashscale is running here")):
        res = runner.invoke(main, ["bench", "-f", procfile, *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output


def _component(type_, id_, **props):
    return {"type": type_, "namespace": "dash_core_components", "props": {"id": id_, **props}}


def _dep(output, *inputs, prevent=False):
    return {"output": output, "inputs": [{"id": i.rsplit(".", 1)[0],
                                          "property": i.rsplit(".", 1)[1]} for i in inputs],
            "state": [], "clientside_function": None, "prevent_initial_call": prevent}


def test_default_trigger_is_the_button_driving_the_most_callbacks():
    layout = {"type": "Div", "namespace": "dash_html_components", "props": {"children": [
        _component("Button", "learn-more", n_clicks=0),
        _component("Store", "cache", data={}),
        _component("Interval", "tick", n_intervals=0),
        _component("Button", "run", n_clicks=0),
    ] + [_component("Div", f"o{i}") for i in range(8)]}}
    deps = [_dep("o0.children", "learn-more.n_clicks"),
            _dep("o1.children", "run.n_clicks"), _dep("o2.children", "run.n_clicks"),
            _dep("o3.children", "o1.children"),          # chained: counts for run
            _dep("o4.children", "cache.data"), _dep("o5.children", "cache.data"),
            _dep("o6.children", "cache.data"), _dep("o7.children", "cache.data"),
            _dep("o4.style", "tick.n_intervals")]
    app = DashApp.from_json(layout, deps)
    candidates = {k: n for k, n, _type in app.trigger_candidates()}
    assert candidates["run.n_clicks"] == 3 and candidates["learn-more.n_clicks"] == 1
    assert candidates["cache.data"] == 4  # drives more, but a Store is never clicked
    assert app.default_input() == "run.n_clicks"


def test_no_meaningful_trigger_fails_listing_the_candidates():
    layout = {"type": "Div", "props": {"children": [
        _component("Store", "cache", data={}), _component("Interval", "tick", n_intervals=0),
        _component("Div", "out"), _component("Div", "out2")]}}
    app = DashApp.from_json(layout, [_dep("out.children", "cache.data"),
                                     _dep("out2.children", "cache.data"),
                                     _dep("out.style", "tick.n_intervals")])
    with pytest.raises(DashProtocolError) as exc:
        app.default_input()
    message = str(exc.value)
    assert "\n" not in message and "no button on the page / drives" in message
    assert "cache.data (2 callbacks)" in message and "tick.n_intervals (1 callback)" in message


def client_fire(client):
    """resolve()'s fire through a Flask test client."""
    def fire(body):
        resp = client.post("/_dash-update-component", json=body)
        return decode_response(resp.status_code, resp.data)
    return fire


PAGES_LAYOUT = {"type": "Div", "namespace": "dash_html_components", "props": {"children": [
    _component("Location", "_pages_location", refresh="callback-nav"),
    {"type": "Div", "namespace": "dash_html_components",
     "props": {"id": "_pages_content", "children": None}},
    _component("Store", "_pages_store")]}}
PAGES_DEPS = [
    dict(_dep(".._pages_content.children..._pages_store.data..", "_pages_location.pathname",
              "_pages_location.search", prevent=True), hidden=True),
    _dep("sales.children", "refresh.n_clicks"), _dep("costs.children", "refresh.n_clicks"),
    _dep("summary.children", "sales.children", "costs.children"),
    _dep("learn-text.children", "learn-more.n_clicks", prevent=True)]


def test_pages_router_renders_the_page_of_the_url():
    """The layout and callbacks a Dash Pages app serves (its shapes): the router runs
    with dcc.Location's pathname from the URL; the page's button becomes reachable."""
    seen = []

    def router(body):
        seen.append(body)
        if body["output"].startswith(".._pages_content"):
            path = body["inputs"][0]["value"]
            page = [_component("Button", "refresh", n_clicks=0)] + \
                [_component("Div", i) for i in ("sales", "costs", "summary")] \
                if path == "/report" else [_component("Button", "learn-more", n_clicks=0),
                                           _component("Div", "learn-text")]
            return {"_pages_content": {"children": page}, "_pages_store": {"data": {}}}
        return {"summary": {"children": "-"}}

    app = DashApp.from_json(PAGES_LAYOUT, PAGES_DEPS, url="http://h:1/report?q=1")
    with pytest.raises(DashProtocolError, match="no component 'refresh' on the page /report"):
        app.check_input("refresh.n_clicks")
    page = app.resolved(router)
    assert seen[0]["inputs"] == [
        {"id": "_pages_location", "property": "pathname", "value": "/report"},
        {"id": "_pages_location", "property": "search", "value": "?q=1"}]
    assert seen[0]["changedPropIds"] == ["_pages_location.pathname", "_pages_location.search"]
    assert [b["output"] for b in seen[1:]] == ["summary.children"]  # chained on the page
    assert page.rendered == ["_pages_content.children, _pages_store.data", "summary.children"]
    assert page.default_input() == "refresh.n_clicks"
    assert [cb.name for cb in page.plan("refresh.n_clicks").callbacks] == \
        ["sales.children", "costs.children", "summary.children"]
    assert page.values["summary.children"] == "-"
    home = DashApp.from_json(PAGES_LAYOUT, PAGES_DEPS, url="http://h:1/").resolved(router)
    assert home.default_input() == "learn-more.n_clicks"
    assert not app.has_component("refresh.n_clicks")  # the fetched app is left as served


@pytest.fixture
def tabs_module():
    from tests.apps import tabs_app
    return tabs_app


def test_tab_content_is_rendered_and_other_tabs_are_tried(tabs_module, monkeypatch):
    monkeypatch.setattr(tabs_module, "SECONDS", 0)
    app, client = app_from(tabs_module.app)
    fire = client_fire(client)
    overview = app.resolved(fire)
    assert overview.default_input() == "details.n_clicks" and overview.chosen == {}
    # --input run.n_clicks: only the Compute tab renders it; found by trying the tabs
    compute = app.resolved(fire, want="run.n_clicks")
    assert compute.chosen == {"tabs.value": "compute"}
    assert compute.values["tabs.value"] == "compute"
    assert [cb.name for cb in compute.plan("run.n_clicks").callbacks] == \
        ["fit.children", "score.children"]
    # --set tabs.value=compute does the same, and the Run button is then the default
    chosen = app.resolved(fire, {"tabs.value": "compute"})
    assert chosen.default_input() == "run.n_clicks"
    assert B.parse_sets(["tabs.value=compute", "n.value=3", 'x.data={"a":1}']) == \
        {"tabs.value": "compute", "n.value": 3, "x.data": {"a": 1}}
    with pytest.raises(DashProtocolError, match=r"cannot set nope.value: no such component "
                                                r"on the page / \(ids: details, "):
        app.resolved(fire, {"nope.value": 1})
    for bad in ("tabs=compute", "novalue", "=3"):
        with pytest.raises(B.UsageError, match="--set: expected ID.PROP=VALUE"):
            B.parse_sets([bad])


def test_cli_bench_tab_content_and_fast_callbacks_have_no_ratio(serve, tmp_path, tabs_module,
                                                               monkeypatch):
    monkeypatch.setattr(tabs_module, "SECONDS", 0)
    procfile = str(tmp_path / "Procfile")
    server = serve(tabs_module.app)
    runner = CliRunner()
    res = runner.invoke(main, ["bench", server.url, "-f", procfile, "--input", "run.n_clicks",
                               "--json", "-n", "3"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert DESIGN_KEYS - {"ratio"} <= set(data)
    assert data["input"] == "run.n_clicks" and data["callbacks_per_click"] == 2
    assert data["set"] == {"tabs.value": "compute"} and data["errors"] == 0
    assert data["rendered_by"] == ["tab-content.children"]
    assert data["ideal_s"] is not None and data["ideal_s"] < 0.05
    assert data["ratio"] is None and data["latency_only"] is True
    res = runner.invoke(main, ["bench", server.url, "-f", procfile, "--set",
                               "tabs.value=compute", "-n", "2"])
    assert res.exit_code == 0, res.output
    assert "input run.n_clicks" in res.stdout and "tabs.value='compute'" in res.stdout
    assert "latency only, no ratio" in res.stdout and "ratio       click" not in res.stdout
    res = runner.invoke(main, ["bench", server.url, "-f", procfile, "--input", "nope.n_clicks"])
    assert res.exit_code == 2 and "no component 'nope' on the page /" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_ideal_schedule():
    s = B.ideal_schedule
    four = {f"g{i}": 2.0 for i in range(4)}
    # n equal callbacks: ceil(n × users / workers) × their time
    for users, workers, ideal in ((1, 4, 2.0), (1, 1, 8.0), (4, 16, 2.0), (3, 8, 4.0),
                                  (1, 3, 4.0)):
        assert s(four, {}, users, workers) == ideal
    # two slow queries and a fast summary chained on both: the summary waits for them
    page = {"sales": 0.3, "costs": 0.3, "summary": 0.01}
    chains = {"summary": ["sales", "costs"]}
    assert s(page, chains, 1, 2) == pytest.approx(0.31)
    assert s(page, chains, 1, 1) == pytest.approx(0.61)
    assert s(page, chains, 2, 2) == pytest.approx(0.61)
    assert s({}, {}, 1, 2) is None and s(page, chains, 1, 0) is None


def test_service_times_take_queueing_out():
    """4 callbacks of 0.5 s on two 1-worker replicas: the 3rd and 4th wait 0.5 s in a
    replica's queue; their time on a worker is still 0.5 s."""
    from dashscale_local.dash_client import CallResult, ClickResult

    def call(name, replica, sent, seconds):
        return CallResult(name, 200, seconds, replica, {}, started_s=sent)
    click = ClickResult(1.0, [call("g1", "web.1", 0.0, 0.5), call("g2", "web.2", 0.001, 0.5),
                              call("g3", "web.1", 0.002, 0.998),
                              call("g4", "web.2", 0.003, 0.997)], started=100.0)
    times = B.service_times([click], 1)
    assert times == pytest.approx({"g1": 0.5, "g2": 0.5, "g3": 0.5, "g4": 0.499})
    assert B.service_times([click], 2)["g3"] == pytest.approx(0.998)  # 2 workers: no wait


def test_callbacks_rendering_on_load_fire_together():
    """Two callbacks render from the URL (a Dash 1.x multi-page app's shape): both fire
    in the same round, concurrently, and what they return joins the layout."""
    layout = {"type": "Div", "props": {"children": [
        _component("Location", "url"), _component("Div", "nav"), _component("Div", "page")]}}
    deps = [_dep("nav.children", "url.pathname"), _dep("page.children", "url.pathname"),
            _dep("out.children", "go.n_clicks")]
    barrier = threading.Barrier(2, timeout=10)

    def fire(body):
        barrier.wait()  # both requests are in flight at once, or this times out
        if body["output"] == "page.children":
            return {"page": {"children": [_component("Button", "go", n_clicks=0),
                                          _component("Div", "out")]}}
        return {"nav": {"children": body["inputs"][0]["value"]}}

    app = DashApp.from_json(layout, deps, url="http://h:1/apps/sales").resolved(fire)
    assert sorted(app.rendered) == ["nav.children", "page.children"]
    assert app.values["nav.children"] == "/apps/sales"
    assert app.default_input() == "go.n_clicks" and app.render_errors == []
