"""The landing page: text and the nav bar, nothing to click."""
import dash
from dash import html

dash.register_page(__name__, path="/", name="Home")

layout = html.Div([html.H2("Welcome"), html.P("Pick a page above.")])
