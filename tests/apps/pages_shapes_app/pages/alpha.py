"""Page /alpha: its button is `btn`, as on /beta."""
import dash
from dash import Input, Output, callback, html

dash.register_page(__name__, path="/alpha", name="Alpha")

layout = html.Div([html.Button("Go", id="btn", n_clicks=0), html.Div(id="alpha-out")])


@callback(Output("alpha-out", "children"), Input("btn", "n_clicks"))
def alpha(n):
    return f"alpha {n}"
