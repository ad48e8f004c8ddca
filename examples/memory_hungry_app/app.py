"""An app with one callback that needs far more memory than the others, e.g. a report
that loads a whole table at once. Under a memory limit (Dash Enterprise: per replica)
the replica running it is OOMKilled, just as a pod would be."""
import time

from dash import Dash, Input, Output, State, callback, dcc, html

MiB = 1024 * 1024

app = Dash(__name__)
server = app.server

app.layout = html.Div([
    dcc.Input(id="size", type="number", value=16),   # MiB the report needs
    html.Button("Build report", id="build", n_clicks=0),
    html.Div(id="report"),
])


@callback(Output("report", "children"), Input("build", "n_clicks"), State("size", "value"),
          prevent_initial_call=True)
def build_report(_clicks, size_mib):
    table = b"\x01" * (int(size_mib) * MiB)   # touched pages: really resident
    time.sleep(1.0)                            # ... crunching
    return f"report built from {len(table) // MiB} MiB"
