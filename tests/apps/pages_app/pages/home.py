"""The landing page: one "learn more" button with one quick callback."""
import dash
from dash import Input, Output, callback, html

dash.register_page(__name__, path="/", name="Home")

layout = html.Div([
    html.H2("Welcome"),
    html.Button("Learn more", id="learn-more", n_clicks=0),
    html.Div(id="learn-more-text"),
])


@callback(Output("learn-more-text", "children"), Input("learn-more", "n_clicks"),
          prevent_initial_call=True)
def learn_more(n):
    return "dashscale runs your Procfile as replicas."
