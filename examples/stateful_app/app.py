"""The classic replica bug: this app keeps what the user loaded, and a counter, in
module-level variables. With one process it works; with two replicas behind a
round-robin proxy the callback that reads the data often lands on a replica whose
process never saw the write. (Dash's docs: "don't modify global variables".)"""
from dash import Dash, Input, Output, State, callback, dcc, html

DATASETS = {"iris": 150, "tips": 244, "gapminder": 1704}

# BUG: per-process state. Each replica (and each gunicorn worker) has its own copy.
CURRENT = {"name": None, "rows": 0}
ADDED = 0

app = Dash(__name__)
server = app.server

app.layout = html.Div([
    dcc.Dropdown(id="dataset", options=list(DATASETS), value="iris"),
    html.Button("Load", id="load", n_clicks=0),
    html.Button("Add a row", id="add", n_clicks=0),
    html.Div(id="loaded"),
    html.Div(id="added"),
    html.Div(id="summary"),
])


@callback(Output("loaded", "children"), Input("load", "n_clicks"),
          State("dataset", "value"), prevent_initial_call=True)
def load(_clicks, name):
    CURRENT.update(name=name, rows=DATASETS[name])
    return f"loaded {name}"


@callback(Output("added", "children"), Input("add", "n_clicks"), prevent_initial_call=True)
def add_row(_clicks):
    global ADDED
    ADDED += 1
    return f"{ADDED} added"


@callback(Output("summary", "children"), Input("loaded", "children"),
          Input("added", "children"))
def summary(_loaded, _added):
    if CURRENT["name"] is None:
        return "no dataset loaded"
    return f"{CURRENT['name']}: {CURRENT['rows'] + ADDED} rows ({ADDED} added)"
