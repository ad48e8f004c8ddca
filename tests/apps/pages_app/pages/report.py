"""The report page: Refresh drives two slow queries and a summary chained on them."""
import os
import time

import dash
from dash import Input, Output, State, callback, dcc, html

dash.register_page(__name__, path="/report", name="Report")
SECONDS = float(os.environ.get("PAGES_CALLBACK_SECONDS", "0.3"))

layout = html.Div([
    html.H2("Sales report"),
    dcc.Dropdown(["north", "south"], "north", id="region"),
    html.Button("Refresh", id="refresh", n_clicks=0),
    html.Div(id="sales"), html.Div(id="costs"), html.Div(id="summary"),
])


@callback(Output("sales", "children"), Input("refresh", "n_clicks"), State("region", "value"))
def sales(n, region):
    time.sleep(SECONDS)
    return f"sales {region} #{n}"


@callback(Output("costs", "children"), Input("refresh", "n_clicks"), State("region", "value"))
def costs(n, region):
    time.sleep(SECONDS)
    return f"costs {region} #{n}"


@callback(Output("summary", "children"), Input("sales", "children"), Input("costs", "children"))
def summary(sales_text, costs_text):
    return f"{sales_text} / {costs_text}"
