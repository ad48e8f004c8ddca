"""The demo app: one button, four graphs whose callbacks each take 2 s.

With one sync gunicorn worker the four callbacks queue up (≈8 s per click); with
four replicas behind dashscale's proxy they run side by side (≈2 s). The memory hog
control lets a user watch the per-replica memory limit act.

The "background" button runs the same slow work as Dash background callbacks through
Celery on Redis when REDIS_URL is set (`dashscale start -f Procfile.celery --service
redis`): the web replica only queues jobs and answers polls, `worker` replicas run them.
Without REDIS_URL those callbacks run as ordinary ones in the web replica.
"""
import os
import random
import time

import plotly.express as px
from dash import Dash, Input, Output, State, dcc, html

CALLBACK_SECONDS = float(os.environ.get("SAMPLE_CALLBACK_SECONDS", "2"))
REPLICA = os.environ.get("DASHSCALE_REPLICA", "local")

background_manager = None
if os.environ.get("REDIS_URL"):
    from dash import CeleryManager

    from sample_app.tasks import celery

    background_manager = CeleryManager(celery)

app = Dash(__name__, title="dashscale sample app", background_callback_manager=background_manager)
server = app.server

# Memory deliberately held by this process (the hog control).
_hog = []

app.layout = html.Div(
    [
        html.H2("dashscale sample app"),
        html.P(
            "Each graph's callback sleeps %g s. One sync worker serves them one after "
            "another; replicas serve them side by side." % CALLBACK_SECONDS
        ),
        html.Button("Update graphs", id="btn", n_clicks=0),
        html.Div(
            [dcc.Graph(id=f"graph-{i}", style={"height": "260px"}) for i in range(1, 5)],
            style={"display": "grid", "gridTemplateColumns": "1fr 1fr"},
        ),
        html.Hr(),
        html.H4("Background callbacks"),
        html.P(
            "The same four slow callbacks as Dash background callbacks: queued by the web "
            "replica, run by the Celery worker replicas on Redis."
            if background_manager is not None else
            "No REDIS_URL (start with --service redis and Procfile.celery): these run as "
            "ordinary callbacks in the web replica."
        ),
        html.Button("Update graphs in the background", id="bg-btn", n_clicks=0),
        html.Div(
            [dcc.Graph(id=f"bg-graph-{i}", style={"height": "260px"}) for i in range(1, 5)],
            style={"display": "grid", "gridTemplateColumns": "1fr 1fr"},
        ),
        html.Hr(),
        html.H4("Memory hog"),
        html.P("Allocates memory in the replica that serves the click, to show the limit."),
        dcc.Input(id="hog-mib", type="number", value=100, min=1, step=1),
        html.Button("Allocate MiB", id="hog-alloc", n_clicks=0),
        html.Button("Release", id="hog-release", n_clicks=0),
        html.Div(id="hog-status"),
    ],
    style={"fontFamily": "sans-serif", "margin": "1em"},
)


def _slow_bar(title):
    """What every demo callback does: a slow computation, then a bar of two values."""
    time.sleep(CALLBACK_SECONDS)
    fig = px.bar(x=["a", "b"], y=[random.random(), random.random()])
    fig.update_layout(title=title)
    return fig


def _make_graph_callback(i):
    @app.callback(Output(f"graph-{i}", "figure"), Input("btn", "n_clicks"))
    def update(n_clicks):
        return _slow_bar(f"graph {i} · {REPLICA} · click {n_clicks}")

    return update


for _i in range(1, 5):
    _make_graph_callback(_i)


def _make_background_callback(i):
    # The graph's id as State: Dash keys a background result by the function's source
    # and its arguments, and these four share their source.
    @app.callback(
        Output(f"bg-graph-{i}", "figure"),
        Input("bg-btn", "n_clicks"),
        State(f"bg-graph-{i}", "id"),
        prevent_initial_call=True,
        background=background_manager is not None,
        interval=250,
    )
    def update_in_background(n_clicks, _graph_id):
        return _slow_bar(f"background {i} · {REPLICA} (pid {os.getpid()}) · click {n_clicks}")

    return update_in_background


for _i in range(1, 5):
    _make_background_callback(_i)


@app.callback(
    Output("hog-status", "children"),
    Input("hog-alloc", "n_clicks"),
    Input("hog-release", "n_clicks"),
    State("hog-mib", "value"),
    prevent_initial_call=True,
)
def hog(alloc_clicks, release_clicks, mib):
    from dash import ctx

    if ctx.triggered_id == "hog-release":
        _hog.clear()
    else:
        # Written pages (not calloc'd zero pages), so they really count in RSS/PSS.
        _hog.append(b"\x01" * (int(mib or 0) * 1024 * 1024))
    held = sum(len(b) for b in _hog) // (1024 * 1024)
    return f"{REPLICA} (pid {os.getpid()}) holds {held} MiB"
