"""The stateful example, fixed: the same app with its state in Redis instead of
module-level variables. `dashscale start` runs a private Redis for it (dashscale.ini:
`services = redis`) and gives every replica the same REDIS_URL, so whichever replica
serves a callback reads what another one wrote.

State here is app-wide, as in ../stateful_app; a real multi-user app would key it by
user or session (e.g. a uuid kept in a dcc.Store).
"""
import os

import redis
from dash import Dash, Input, Output, State, callback, dcc, html

DATASETS = {"iris": 150, "tips": 244, "gapminder": 1704}

if not os.environ.get("REDIS_URL"):
    raise RuntimeError("REDIS_URL is not set: run this app with `dashscale start` here "
                       "(dashscale.ini asks for --service redis)")
store = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)

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
    store.hset("current", mapping={"name": name, "rows": DATASETS[name]})
    return f"loaded {name}"


@callback(Output("added", "children"), Input("add", "n_clicks"), prevent_initial_call=True)
def add_row(_clicks):
    return f"{store.incr('added')} added"  # atomic: two replicas never lose an increment


@callback(Output("summary", "children"), Input("loaded", "children"),
          Input("added", "children"))
def summary(_loaded, _added):
    current = store.hgetall("current")
    if not current:
        return "no dataset loaded"
    added = int(store.get("added") or 0)
    return f"{current['name']}: {int(current['rows']) + added} rows ({added} added)"
