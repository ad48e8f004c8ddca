"""Page /report: Refresh drives two multi-output callbacks, one of which fails slowly
(a timeout deep in a driver, say)."""
import os
import time

import dash
from dash import Input, Output, callback, html

dash.register_page(__name__, path="/report", name="Report")
SECONDS = float(os.environ.get("SHAPES_CALLBACK_SECONDS", "0.3"))

layout = html.Div([html.Button("Refresh", id="refresh", n_clicks=0),
                   html.Div(id="total"), html.Div(id="count"),
                   html.Div(id="broken"), html.Div(id="broken-note")])


@callback(Output("total", "children"), Output("count", "children"),
          Input("refresh", "n_clicks"), prevent_initial_call=True)
def totals(n):
    time.sleep(SECONDS)
    return f"total {n}", f"count {n}"


@callback(Output("broken", "children"), Output("broken-note", "children"),
          Input("refresh", "n_clicks"),
          prevent_initial_call=True)
def broken(n):
    time.sleep(2 * SECONDS)
    raise RuntimeError("the database did not answer")
