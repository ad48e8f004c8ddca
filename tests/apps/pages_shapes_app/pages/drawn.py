"""Page /drawn: component ids drawn when the module is imported, so each replica (each
gunicorn process) serves different ids; the app shell is the same everywhere."""
import uuid

import dash
from dash import html

dash.register_page(__name__, path="/drawn", name="Drawn")

BOX = f"box-{uuid.uuid4().hex[:8]}"
layout = html.Div([html.H2("Drawn ids"), html.Div("content", id=BOX)])
