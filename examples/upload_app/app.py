"""A file-on-disk replica bug: one callback saves an upload to a path relative to the
app, the next reads it back. In one directory shared by every process this works; on
Dash Enterprise each pod has its own disk, so the read lands on a replica that never saw
the file. dashscale gives each replica its own disk by default (--shared-fs: not)."""
import base64
import os

from dash import Dash, Input, Output, callback, dcc, html

UPLOADS = "uploads"   # BUG: a pod's own disk; ../mount is shared by every replica

app = Dash(__name__)
server = app.server

app.layout = html.Div([
    dcc.Upload(id="upload", children=html.Button("Upload a CSV")),
    html.Div(id="saved"),
    html.Div(id="rows"),
])


@callback(Output("saved", "children"), Input("upload", "contents"),
          Input("upload", "filename"), prevent_initial_call=True)
def save(contents, filename):
    os.makedirs(UPLOADS, exist_ok=True)
    data = base64.b64decode(contents.partition(",")[2])
    with open(os.path.join(UPLOADS, os.path.basename(filename)), "wb") as f:
        f.write(data)
    return filename


@callback(Output("rows", "children"), Input("saved", "children"), prevent_initial_call=True)
def count_rows(filename):
    try:
        with open(os.path.join(UPLOADS, filename), encoding="utf-8") as f:
            return f"{filename}: {sum(1 for _ in f) - 1} rows"
    except FileNotFoundError:
        return f"{filename}: not found"
