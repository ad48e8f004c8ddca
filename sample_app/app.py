"""The demo app: one button, four graphs whose callbacks each take 2 s.

With one sync gunicorn worker the four callbacks queue up (≈8 s per click); with
four replicas behind dashscale's proxy they run side by side (≈2 s). The memory hog
control lets a user watch the per-replica memory limit act.
"""
import os
import random
import time

import plotly.express as px
from dash import Dash, Input, Output, State, dcc, html

CALLBACK_SECONDS = float(os.environ.get("SAMPLE_CALLBACK_SECONDS", "2"))
REPLICA = os.environ.get("DASHSCALE_REPLICA", "local")

app = Dash(__name__, title="dashscale sample app")
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
        html.H4("Memory hog"),
        html.P("Allocates memory in the replica that serves the click, to show the limit."),
        dcc.Input(id="hog-mib", type="number", value=100, min=1, step=1),
        html.Button("Allocate MiB", id="hog-alloc", n_clicks=0),
        html.Button("Release", id="hog-release", n_clicks=0),
        html.Div(id="hog-status"),
    ],
    style={"fontFamily": "sans-serif", "margin": "1em"},
)


def _make_graph_callback(i):
    @app.callback(Output(f"graph-{i}", "figure"), Input("btn", "n_clicks"))
    def update(n_clicks):
        time.sleep(CALLBACK_SECONDS)
        fig = px.bar(x=["a", "b"], y=[random.random(), random.random()])
        fig.update_layout(title=f"graph {i} · {REPLICA} · click {n_clicks}")
        return fig

    return update


for _i in range(1, 5):
    _make_graph_callback(_i)


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
