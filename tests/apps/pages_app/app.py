"""A Dash Pages app as people write them: a nav bar of links, `dash.page_container`,
pages registered from pages/ (home with a "learn more" button, a report page whose
Refresh button drives slow callbacks). Run: gunicorn app:server."""
import dash
from dash import Dash, dcc, html

app = Dash(__name__, use_pages=True)
server = app.server

app.layout = html.Div([
    html.Nav([dcc.Link(page["name"], href=page["relative_path"], style={"margin": "8px"})
              for page in dash.page_registry.values()]),
    dash.page_container,
])

if __name__ == "__main__":
    app.run(debug=True)
