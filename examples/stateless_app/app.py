"""A small Dash app that is safe to run as several replicas: what the user picked and
how many rows they added live in the browser (dcc.Store), so any replica can answer any
callback. Compare with ../stateful_app, which keeps the same things in module globals."""
from dash import Dash, Input, Output, State, callback, dcc, html

# Read-only data shared by all callbacks: fine in a module-level variable.
DATASETS = {"iris": 150, "tips": 244, "gapminder": 1704}

app = Dash(__name__)
server = app.server

app.layout = html.Div([
    dcc.Dropdown(id="dataset", options=list(DATASETS), value="iris"),
    html.Button("Load", id="load", n_clicks=0),
    html.Button("Add a row", id="add", n_clicks=0),
    dcc.Store(id="selection"),          # per user, in the browser
    dcc.Store(id="added", data=0),
    html.Div(id="summary"),
])


@callback(Output("selection", "data"), Input("load", "n_clicks"),
          State("dataset", "value"), prevent_initial_call=True)
def load(_clicks, name):
    return {"name": name, "rows": DATASETS[name]}


@callback(Output("added", "data"), Input("add", "n_clicks"), State("added", "data"),
          prevent_initial_call=True)
def add_row(_clicks, added):
    return (added or 0) + 1


@callback(Output("summary", "children"), Input("selection", "data"), Input("added", "data"))
def summary(selection, added):
    if not selection:
        return "no dataset loaded"
    return f"{selection['name']}: {selection['rows'] + added} rows ({added} added)"
