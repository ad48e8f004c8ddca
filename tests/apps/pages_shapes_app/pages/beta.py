"""Page /beta: also a button `btn`; its callback needs the page's own dropdown and
fails without it (what a browser on /alpha never sends)."""
import dash
from dash import Input, Output, State, callback, dcc, html

dash.register_page(__name__, path="/beta", name="Beta")

layout = html.Div([dcc.Dropdown(["x", "y"], "x", id="beta-choice"),
                   html.Button("Go", id="btn", n_clicks=0), html.Div(id="beta-out")])


@callback(Output("beta-out", "children"), Input("btn", "n_clicks"),
          State("beta-choice", "value"))
def beta(n, choice):
    return f"beta {n} " + choice.upper()
