"""A tabs app: each tab's content is rendered by a callback, and the Compute tab's Run
button (which exists only once that tab is chosen) drives two slow callbacks.
Run: gunicorn tabs_app:server."""
import os
import time

from dash import Dash, Input, Output, dcc, html

SECONDS = float(os.environ.get("TABS_CALLBACK_SECONDS", "0.2"))

app = Dash(__name__, suppress_callback_exceptions=True)
server = app.server
app.layout = html.Div([
    dcc.Tabs(id="tabs", value="overview", children=[
        dcc.Tab(label="Overview", value="overview"),
        dcc.Tab(label="Compute", value="compute"),
    ]),
    html.Div(id="tab-content"),
])


@app.callback(Output("tab-content", "children"), Input("tabs", "value"))
def render(tab):
    if tab == "compute":
        return html.Div([html.Button("Run", id="run", n_clicks=0),
                         html.Div(id="fit"), html.Div(id="score")])
    return html.Div([html.Button("Details", id="details", n_clicks=0),
                     html.Div(id="details-text")])


@app.callback(Output("details-text", "children"), Input("details", "n_clicks"))
def details(n):
    return f"details {n}"


@app.callback(Output("fit", "children"), Input("run", "n_clicks"))
def fit(n):
    time.sleep(SECONDS)
    return f"fit {n}"


@app.callback(Output("score", "children"), Input("run", "n_clicks"))
def score(n):
    time.sleep(SECONDS)
    return f"score {n}"
