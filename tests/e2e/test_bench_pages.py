"""bench on a Dash Pages app as a browser sees it: only the callbacks of the rendered
page fire, a page without a button points at the app's pages, and failed callbacks
are named by replica and left out of the ideal."""
import json
import os
import shutil

import pytest

from dashscale_local import bench as B
from dashscale_local.dash_client import CallResult, ClickResult, DashApp, DashProtocolError
from tests import TESTS

SHAPES_APP = os.path.join(TESTS, "apps", "pages_shapes_app")


def _c(type_, id_=None, **props):
    return {"type": type_, "namespace": "dash_html_components",
            "props": dict(props, **({"id": id_} if id_ else {}))}


def _dep(output, *inputs, state=()):
    def ids(keys):
        return [{"id": k.rsplit(".", 1)[0], "property": k.rsplit(".", 1)[1]} for k in keys]
    return {"output": output, "inputs": ids(inputs), "state": ids(state),
            "clientside_function": None}


def test_only_callbacks_whose_components_are_on_the_page_are_planned():
    layout = _c("Div", children=[_c("Button", "btn", n_clicks=0), _c("Div", "a-out")])
    deps = [_dep("a-out.children", "btn.n_clicks"),
            _dep("b-out.children", "btn.n_clicks"),                       # output elsewhere
            _dep("a-out.title", "btn.n_clicks", state=["b-choice.value"]),  # state elsewhere
            _dep("a-out.style", "btn.n_clicks", "b-slider.value")]        # input elsewhere
    app = DashApp.from_json(layout, deps, url="http://h:1/a")
    plan = app.plan("btn.n_clicks")
    assert [cb.name for cb in plan.callbacks] == ["a-out.children"] and plan.skipped == []
    assert app.trigger_candidates() == [("btn.n_clicks", 1, "Button")]


def test_service_times_leave_failed_calls_out_but_count_the_worker_they_held():
    # one sync worker: a call that failed after 0.6 s was served first, then the
    # 0.3 s callback; the failure is no callback's time, the wait behind it is queueing
    failed = CallResult("..b.children...c.children..", 500, 0.6, "web.1", None,
                        "HTTP 500 from web.1 (see dashscale logs web.1)")
    ok = CallResult("a.children", 200, 0.9, "web.1", {})
    times = B.service_times([ClickResult(0.9, [failed, ok], started=100.0)], 1)
    assert times == {"a.children": pytest.approx(0.3)}


@pytest.mark.slow
def test_bench_dash_pages_shared_ids_no_button_and_failed_callbacks(dashscale, tmp_path):
    directory = tmp_path / "shapes"
    shutil.copytree(SHAPES_APP, directory)
    run = dashscale("web: gunicorn app:server --workers 1\n", formation="web=2",
                    directory=directory, env={"SHAPES_CALLBACK_SECONDS": "0.3"})
    # /alpha and /beta both have `btn`: only /alpha's callback fires on /alpha
    res = run.cli("bench", run.url + "/alpha", "--json", "-n", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["callbacks"] == ["alpha-out.children"] and data["callbacks_per_click"] == 1
    assert data["errors"] == 0 and data["skipped"] == []
    # the landing page has nothing to click: the pages it links to, no Dash internals
    res = run.cli("bench", run.url + "/", "-n", "1")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "pages it links to: /alpha, /beta, /drawn, /report" in res.stderr
    assert f"try e.g. dashscale bench {run.url}/alpha" in res.stderr
    assert "_pages_location" not in res.stderr
    # a failing multi-output callback: named as the user wrote it, by replica, no HTML
    res = run.cli("bench", run.url + "/report", "--json", "-n", "2")
    assert res.returncode == 1, res.stderr
    data = json.loads(res.stdout)
    assert data["callbacks"] == ["total.children, count.children",
                                 "broken.children, broken-note.children"]
    assert data["errors"] == 2
    messages = [m["message"] for m in data["error_messages"]]
    assert messages and all(
        m in (f"broken.children, broken-note.children: HTTP 500 from {r} (see dashscale "
              f"logs {r})" for r in ("web.1", "web.2")) for m in messages), messages
    assert list(data["callback_unloaded_s"]) == ["total.children, count.children"]
    assert 0.3 <= data["ideal_s"] < 0.5  # the 0.6 s failure is not in it
    res = run.cli("bench", run.url + "/report", "-n", "1")
    assert "HTTP 500 from web." in res.stdout and "<" not in res.stdout.split("errors")[1]


def test_hint_without_links_on_a_pages_app():
    layout = _c("Div", children=[_c("Location", "_pages_location"),
                                 _c("Div", "_pages_content"), _c("Store", "_pages_store")])
    deps = [_dep(".._pages_content.children..._pages_store.data..",
                 "_pages_location.pathname", "_pages_location.search")]
    app = DashApp.from_json(layout, deps, url="http://h:1/")
    with pytest.raises(DashProtocolError) as exc:
        app.default_input()
    assert str(exc.value) == ("the page / has no server-side callback the bench can drive; "
                              "try a page URL, e.g. dashscale bench http://h:1/page")
