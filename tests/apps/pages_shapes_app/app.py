"""A Dash Pages app with the shapes public apps have that trip a load generator: a
landing page without a button, two pages that both call their button `btn`, a page
with a multi-output callback next to one that fails, and a page whose component ids
are drawn at import (each replica draws its own). Run: gunicorn app:server."""
import dash
from dash import Dash, html

app = Dash(__name__, use_pages=True, title="Shapes")
server = app.server

menu = html.Ul([html.Li(html.A(page["name"], href=page["relative_path"]))
                for page in dash.page_registry.values()])
app.layout = html.Div([html.Header(menu), html.Main(dash.page_container)])
