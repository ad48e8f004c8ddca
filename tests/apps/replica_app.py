"""A Dash app for `dashscale check --replicas` (tests/e2e/test_replica_check.py); its mode
comes from the environment (.env):

clean   — fixed component ids, a secret key shared by every process;
ids     — a component id and a caption drawn at import in each process (uuid4, the clock),
          and a callback on that id;
session — a secret key drawn at import (os.urandom): a session cookie signed by one
          replica is rejected by another.

Every mode stores a visitor id in the Flask session when the page is served.
"""
import os
import time
import uuid

import flask
from dash import Dash, Input, Output, dcc, html

MODE = os.environ.get("REPLICA_APP_MODE", "clean")

app = Dash(__name__)
server = app.server
if MODE == "session":
    server.secret_key = os.urandom(16)
else:
    server.secret_key = os.environ.get("SECRET_KEY", "the-same-key-for-every-replica")

SUFFIX = uuid.uuid4().hex[:6] if MODE == "ids" else "main"
CAPTION = f"started at {time.time():.6f}" if MODE == "ids" else "started"

app.layout = html.Div([
    html.H1("Replica check", id="title"),
    dcc.Input(id="name", value="x"),
    html.Div(id=f"graph-{SUFFIX}"),
    html.P(CAPTION, id="caption"),
])


@app.callback(Output(f"graph-{SUFFIX}", "children"), Input("name", "value"))
def echo(value):
    return value


@server.before_request
def remember_visitor():
    if flask.request.path == "/" and "visitor" not in flask.session:
        flask.session["visitor"] = uuid.uuid4().hex
