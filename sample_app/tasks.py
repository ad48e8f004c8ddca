"""Celery for the sample app's background callbacks, on the app's managed Redis.

    dashscale start -f Procfile.celery --service redis -m web=1,worker=1

`dashscale start --service redis` injects REDIS_URL into every replica; the Procfile's
`worker: celery -A sample_app.tasks worker …` replicas run the callbacks that the web
replicas queue. Importing the Dash app below is what registers those callbacks as
Celery tasks (Dash's CeleryManager names each task after the callback).
"""
import os

from celery import Celery, signals

REDIS_URL = os.environ.get("REDIS_URL")
if not REDIS_URL:
    raise RuntimeError("sample_app.tasks needs REDIS_URL: run the app with "
                       "`dashscale start --service redis` (or set REDIS_URL)")

celery = Celery("sample_app", broker=REDIS_URL, backend=REDIS_URL)
celery.conf.update(
    broker_connection_retry_on_startup=True,  # Redis restarted by supervisord: reconnect
    worker_prefetch_multiplier=1,             # one job per idle process, none hoarded
    result_expires=3600,
)

import sample_app.app  # noqa: E402,F401  (defines the background callbacks)


@signals.worker_init.connect
def _warm_up(**_kwargs):
    """Plotly imports pandas and its validators lazily, and a first import racing in
    several threads (Procfile.celery uses the threads pool) can see a half-initialised
    module: build one figure before the pool takes jobs."""
    import plotly.express as px
    px.bar(x=["a", "b"], y=[1, 2]).to_plotly_json()
