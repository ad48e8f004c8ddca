"""`dashscale bench`: click a Dash app's button as N browsers do and measure.

Reads the app's layout and callbacks (dash_client), fires the callbacks a click triggers
as the renderer does (each user's concurrently, users in parallel, clicks one after the
other), and reports callback and click latency against the ideal for the formation:

    ideal = the least time the click's callbacks (× users) take on the total workers,
            each callback at its fastest time seen (or --callback-seconds), chained
            callbacks after their upstream; for n equal callbacks
            ceil(n × users / workers) × callback time

where total workers = Σ over ready web replicas of gunicorn's --workers (× --threads).
With callbacks so fast that the ideal is under 50 ms, HTTP dominates: latency only, no
ratio. The page is rendered first as a browser renders it (Dash Pages, tab content:
see DashApp.resolve), so `bench URL/page` and `--input` reach the callbacks on it.
`--scaling 1,2,4` repeats the run at each web replica count through the control API,
prints a table, plots latency vs replicas next to the ideal, and restores the formation.
"""
import collections
import statistics
import json
import math
import os
import shlex
import sys
import threading
import time

import click

from . import control, rundir
from .dash_client import DashApp, DashProtocolError, Session
from .errors import RuntimeFailure, UsageError, exit_with

DEFAULT_PLOT = "dashscale-bench.html"
LATENCY_ONLY_BELOW_S = 0.05  # an ideal under this: report latency, no ratio


# -- figures -------------------------------------------------------------------------

def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def gunicorn_concurrency(command):
    """Requests one replica serves at once: gunicorn --workers × --threads (default 1);
    1 for anything that is not gunicorn."""
    try:
        argv = shlex.split(command or "")
    except ValueError:
        return 1
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]
    if not argv:
        return 1
    if os.path.basename(argv[0]) == "gunicorn":
        args = argv[1:]
    elif os.path.basename(argv[0]).startswith("python") and argv[1:3] == ["-m", "gunicorn"]:
        args = argv[3:]
    else:
        return 1
    found = {"workers": 1, "threads": 1}
    i = 0
    while i < len(args):
        arg, value = args[i], None
        for name, short in (("workers", "-w"), ("threads", None)):
            if arg == f"--{name}" or (short and arg == short):
                value = args[i + 1] if i + 1 < len(args) else None
                i += 1
            elif arg.startswith(f"--{name}="):
                value = arg.split("=", 1)[1]
            elif short and arg.startswith(short) and len(arg) > 2 and not arg.startswith("--"):
                value = arg[2:]
            else:
                continue
            try:
                found[name] = max(1, int(value))
            except (TypeError, ValueError):
                pass
            break
        i += 1
    return found["workers"] * found["threads"]


def web_workers(status):
    """(total workers, {replica: workers}) over the ready web replicas of a status."""
    per = {r["name"]: gunicorn_concurrency(r.get("command"))
           for r in status.get("replicas", []) if r.get("type") == "web" and r.get("ready")}
    return sum(per.values()), per


def ideal_schedule(seconds, upstream, users, workers):
    """The least time for one click per user on `workers` workers: every callback takes
    its unloaded time (`seconds`, {name: s}) and starts once the callbacks it is chained
    on (`upstream`, {name: [names]}) are done; greedy list scheduling. For n equal
    callbacks without chains this is ceil(n × users / workers) × their time."""
    if not seconds or not workers:
        return None
    tasks = [(u, name) for u in range(users) for name in seconds]
    done, free = {}, [0.0] * workers
    while tasks:
        ready = [t for t in tasks if all((t[0], up) in done for up in upstream.get(t[1], ())
                                         if up in seconds)] or tasks  # a cycle: ignore chains
        at = {t: max([done.get((t[0], up), 0.0) for up in upstream.get(t[1], ())] or [0.0])
              for t in ready}
        task = min(ready, key=lambda t: (at[t], -seconds[t[1]]))
        worker = min(range(workers), key=lambda w: free[w])
        done[task] = free[worker] = max(at[task], free[worker]) + seconds[task[1]]
        tasks.remove(task)
    return max(done.values())


def service_times(clicks, workers_per_replica):
    """{callback: its fastest time on a worker}, queueing taken out: a request sent to
    a replica whose W workers are busy with k ≥ W earlier requests starts when the
    (k-W+1)-th of them ends (gunicorn's accept queue is FIFO). A failed call (an HTTP
    error) held a worker too, but its time is no callback's: the ideal is computed
    from the callbacks that succeeded."""
    by_replica = collections.defaultdict(list)
    for click_result in clicks:
        for c in click_result.calls:
            if c.status is not None:
                sent = click_result.started + c.started_s
                by_replica[c.replica].append((sent, sent + c.seconds, c.callback, c.ok))
    exact, inferred = collections.defaultdict(list), collections.defaultdict(list)
    for calls in by_replica.values():
        calls.sort()
        for i, (sent, end, name, ok) in enumerate(calls):
            if not ok:
                continue
            ahead = sorted(e for s_, e, _n, _ok in calls[:i] if e > sent)
            k = len(ahead)
            if k < workers_per_replica:  # a worker was free: it started when sent
                exact[name].append(end - sent)
            elif end - ahead[k - workers_per_replica] > 0:
                inferred[name].append(end - max(sent, ahead[k - workers_per_replica]))
    # A call that started at once is measured; a queued one is inferred from the client's
    # send order, which two connections can swap: never let one such guess undercut.
    return {name: min(exact[name]) if exact[name] else statistics.median(inferred[name])
            for name in set(exact) | set(inferred)}


def _upstream(plan):
    """{callback key: [keys of the callbacks in the plan whose outputs it takes]}."""
    return {cb.output: [o.output for o in plan.callbacks
                        if set(o.output_keys) & set(cb.input_keys)]
            for cb in plan.callbacks}


# -- the run -------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total, label="", stream=None):
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.label, self.done, self.last = total, label, 0, None
        self.lock = threading.Lock()

    def step(self, seconds=None):
        with self.lock:
            self.done += 1
            self.last = seconds if seconds is not None else self.last
            if self.enabled:
                width = 30
                fill = int(width * self.done / max(self.total, 1))
                last = f"  last {self.last:.2f}s" if self.last is not None else ""
                self.stream.write(f"\r{self.label}[{'#' * fill}{'.' * (width - fill)}] "
                                  f"{self.done}/{self.total} clicks{last}   ")
                self.stream.flush()

    def note(self, text):
        if self.enabled:
            with self.lock:
                self.stream.write(f"\r\033[K{self.label}{text}")
                self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


class BenchRun:
    """The raw outcome of one bench run."""

    def __init__(self, app, plan, users, clicks):
        self.app, self.plan, self.users, self.clicks_per_user = app, plan, users, clicks
        self.warmup = []      # ClickResult per user (not counted)
        self.clicks = []      # (user, n, ClickResult), counted
        self.duration = 0.0


def load_app(url, timeout=30.0, sets=None, input=None):
    """The app at `url` with its page rendered as a browser shows it (Dash Pages,
    tab content: DashApp.resolved), `sets` applied, and when `input` names a
    component a dcc.Tabs choice renders, that choice made. Errors mapped for the
    bench (exit 2 for 'not a Dash app' and 'nothing listening')."""
    try:
        app = DashApp.fetch(url, timeout=timeout)
        with Session(app, timeout=timeout) as session:
            return app.resolved(session.fire, sets, input)
    except DashProtocolError as exc:
        raise UsageError(str(exc))
    except ConnectionRefusedError:
        raise UsageError(f"nothing is listening at {url}")
    except OSError as exc:
        raise RuntimeFailure(f"{url}: {exc}")


def parse_sets(items):
    """('tabs.value=tab-2', 'n.value=3') → {"tabs.value": "tab-2", "n.value": 3}: the
    value as JSON when it parses, else as a string."""
    sets = {}
    for item in items or ():
        key, eq, text = item.partition("=")
        if not eq or "." not in key.strip(".") or not key.strip():
            raise UsageError(f"--set: expected ID.PROP=VALUE (e.g. tabs.value=tab-2), "
                             f"got {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        sets[key.strip()] = value
    return sets


def run_bench(app, users=1, clicks=5, input=None, warmup=True, progress_label="",
              timeout=120.0):
    """Click `input` `clicks` times in each of `users` parallel sessions."""
    try:
        input = app.check_input(input) if input else app.default_input()
        plan = app.plan(input)
    except DashProtocolError as exc:
        raise UsageError(str(exc))
    if not plan.callbacks:
        reasons = "; ".join(f"{cb.name}: {r}" for cb, r in plan.skipped) or "none"
        raise UsageError(f"'{input}' triggers no callback the bench can drive "
                         f"(skipped: {reasons})")
    run = BenchRun(app, plan, users, clicks)
    progress = Progress(users * clicks, progress_label)
    sessions = [Session(app, timeout=timeout) for _ in range(users)]
    marks = {}
    barrier = threading.Barrier(users, action=lambda: marks.setdefault("t0", time.perf_counter()))
    lock = threading.Lock()
    failures = []

    def user(i):
        session = sessions[i]
        try:
            if warmup:
                result = session.click(input)
                with lock:
                    run.warmup.append(result)
            barrier.wait()
            for n in range(clicks):
                result = session.click(input)
                with lock:
                    run.clicks.append((i, n, result))
                progress.step(result.seconds)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:  # report, do not hang the other users
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    if warmup:
        progress.note(f"warm-up click{'s' * (users > 1)} (not counted) …")
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        progress.close()
        for s in sessions:
            s.close()
    if failures:
        raise RuntimeFailure(f"bench failed: {failures[0]!r}")
    run.duration = time.perf_counter() - marks.get("t0", time.perf_counter())
    return run


def summarize(run, total_workers=None, callback_seconds=None, workers_source="status"):
    """The report as a dict: the DESIGN.md `bench --json` keys, then extras."""
    clicks = [r for _u, _n, r in run.clicks]
    calls = [c for r in clicks for c in r.calls]
    ok_calls = [c for c in calls if c.ok]
    click_s = [r.seconds for r in clicks]
    per_click = collections.Counter(len(r.calls) for r in clicks)
    callbacks = per_click.most_common(1)[0][0] if per_click else len(run.plan.callbacks)
    replicas = collections.Counter(c.replica for c in calls if c.replica)
    if not total_workers:
        total_workers, workers_source = max(len(replicas), 1), "assumed: 1 per replica seen"
    per_replica = max(1, round(total_workers / max(len(replicas), 1)))
    unloaded = service_times(clicks + run.warmup, per_replica)
    names = {cb.output: cb.name for cb in run.app.callbacks}  # 'a.children, b.children'
    if callback_seconds is not None:
        unloaded = {name: callback_seconds for name in unloaded}
    cb_time = max(unloaded.values(), default=None)
    ideal = ideal_schedule(unloaded, _upstream(run.plan), run.users, total_workers)
    # fast callbacks: HTTP and queueing dominate, a ratio to the ideal means nothing
    latency_only = ideal is not None and ideal < LATENCY_ONLY_BELOW_S
    errors = [c for c in calls if not c.ok]
    messages = collections.Counter(f"{names.get(c.callback, c.callback)}: {c.error}"
                                   for c in errors)
    p50 = percentile(click_s, 50)
    rnd = lambda v, n=4: None if v is None else round(v, n)  # noqa: E731
    return {
        "clicks": len(clicks),
        "users": run.users,
        "callbacks_per_click": callbacks,
        "click_p50_s": rnd(p50),
        "click_p95_s": rnd(percentile(click_s, 95)),
        "click_max_s": rnd(max(click_s, default=None)),
        "ideal_s": rnd(ideal),
        "errors": len(errors),
        "replicas": dict(sorted(replicas.items(), key=lambda kv: _order(kv[0]))),
        "skipped": run.plan.skipped_json(),
        # extras
        "url": run.app.url,
        "input": run.plan.input,
        "callbacks": [cb.name for cb in run.plan.callbacks],
        "clicks_per_user": run.clicks_per_user,
        "warmup_clicks": len(run.warmup),
        "callback_p50_s": rnd(percentile([c.seconds for c in ok_calls], 50)),
        "callback_p95_s": rnd(percentile([c.seconds for c in ok_calls], 95)),
        "callback_max_s": rnd(max((c.seconds for c in ok_calls), default=None)),
        "callback_s": rnd(cb_time),
        "callback_s_source": "--callback-seconds" if callback_seconds is not None
                             else "each one's fastest on a worker",
        "callback_unloaded_s": {names.get(k, k): rnd(v) for k, v in unloaded.items()},
        "total_workers": total_workers,
        "workers_source": workers_source,
        "ratio": rnd(p50 / ideal, 3) if p50 and ideal and not latency_only else None,
        "latency_only": latency_only,
        "page": run.app.page_path,
        "rendered_by": run.app.rendered,
        "render_errors": run.app.render_errors,
        "set": run.app.chosen,
        "duration_s": rnd(run.duration, 3),
        "throughput_clicks_per_s": rnd(len(clicks) / run.duration, 3) if run.duration else None,
        "throughput_callbacks_per_s": rnd(len(calls) / run.duration, 3) if run.duration else None,
        "status_counts": {str(k): v for k, v in
                          sorted(collections.Counter(c.status for c in calls).items(),
                                 key=lambda kv: str(kv[0]))},
        "prevented": sum(1 for c in calls if c.status == 204),
        "error_messages": [{"message": m, "count": n} for m, n in messages.most_common(5)],
        "client_overhead_ms": rnd(1000 * sum(c.queued_s + c.decode_s for c in calls)
                                  / max(len(calls), 1), 3),
        "click_seconds": [rnd(s) for s in click_s],
    }


def _order(name):
    kind, _, num = (name or "").partition(".")
    return (kind, int(num) if num.isdigit() else 0, name)


# -- text output ---------------------------------------------------------------------

def _s(v):
    if v is None:
        return "-"
    return f"{v * 1000:.1f}ms" if v < 0.1 else f"{v:.2f}s"


def format_report(s, formation=None):
    lines = []
    n = s["callbacks_per_click"]
    names = ", ".join(s["callbacks"][:6]) + (" …" if len(s["callbacks"]) > 6 else "")
    lines.append(f"bench {s['url']}  input {s['input']} → {n} callback{'s' * (n != 1)} "
                 f"per click ({names})")
    warm = (f" (+{s['warmup_clicks']} warm-up click{'s' * (s['warmup_clicks'] != 1)}, "
            "not counted)") if s["warmup_clicks"] else " (no warm-up)"
    lines.append(f"{s['users']} user{'s' * (s['users'] != 1)} × {s['clicks_per_user']} "
                 f"click{'s' * (s['clicks_per_user'] != 1)}{warm}")
    if s["rendered_by"] or s["set"] or s["render_errors"]:
        chosen = "".join(f", {k}={v!r}" for k, v in s["set"].items())
        lines.append(f"page        {s['page']} rendered by "
                     f"{', '.join(s['rendered_by']) or 'no callback'}{chosen}")
        for error in s["render_errors"]:
            lines.append(f"            failed: {error}")
    if formation:
        lines.append(f"formation   {formation}")
    lines.append(f"{'':11} {'p50':>8} {'p95':>8} {'max':>8}")
    lines.append(f"{'callback':11} {_s(s['callback_p50_s']):>8} {_s(s['callback_p95_s']):>8} "
                 f"{_s(s['callback_max_s']):>8}")
    lines.append(f"{'click':11} {_s(s['click_p50_s']):>8} {_s(s['click_p95_s']):>8} "
                 f"{_s(s['click_max_s']):>8}")
    if s["latency_only"]:
        lines.append(f"ideal       {s['ideal_s'] * 1000:.0f} ms: callbacks this fast are "
                     "bound by HTTP, not workers; latency only, no ratio")
    elif s["ideal_s"] is not None:
        lines.append(f"ideal       {_s(s['ideal_s'])} = {n} callbacks × {s['users']} "
                     f"user{'s' * (s['users'] != 1)} on {s['total_workers']} workers, "
                     f"chains in order (callback time: {s['callback_s_source']}, longest "
                     f"{_s(s['callback_s'])}; workers: {s['workers_source']})")
        if s["ratio"] is not None:
            lines.append(f"ratio       click p50 / ideal = {s['ratio']:.2f}")
    if s["throughput_clicks_per_s"] is not None:
        lines.append(f"throughput  {s['throughput_clicks_per_s']:.2f} clicks/s, "
                     f"{s['throughput_callbacks_per_s']:.2f} callbacks/s "
                     f"over {s['duration_s']:.1f}s")
    spread = "  ".join(f"{k} {v}" for k, v in s["replicas"].items()) or \
        "(no X-Dashscale-Replica header: not behind dashscale?)"
    lines.append(f"replicas    {spread}")
    if s["prevented"]:
        lines.append(f"prevented   {s['prevented']} (HTTP 204 PreventUpdate)")
    lines.append(f"errors      {s['errors']}")
    for e in s["error_messages"]:
        lines.append(f"            {e['count']} × {e['message']}")
    if s["skipped"]:
        lines.append(f"skipped     {len(s['skipped'])} callback(s) the click triggers but the "
                     "bench cannot fire:")
        for item in s["skipped"]:
            lines.append(f"            {item['output']}: {item['reason']}")
    else:
        lines.append("skipped     none")
    lines.append(f"overhead    {s['client_overhead_ms']:.2f} ms per callback in the client "
                 "(queueing + decoding)")
    return "\n".join(lines)


def format_table(rows):
    head = ("replicas", "workers", "p50", "p95", "max", "ideal", "ratio")
    body = [(str(r["web_replicas"]), str(r["total_workers"]), _s(r["click_p50_s"]),
             _s(r["click_p95_s"]), _s(r["click_max_s"]), _s(r["ideal_s"]),
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths))
                     for row in [head] + body)


def write_plot(rows, path, title="Click latency vs web replicas"):
    """Plot click p50/p95/max against replicas next to the ideal. Returns written paths."""
    try:
        import plotly.graph_objects as go
    except ImportError:  # the sample app's stack (`demo` extra), not a dependency
        click.echo("dashscale bench: plot not written: plotly is not installed in "
                   f"dashscale's environment ({sys.executable} -m pip install plotly)", err=True)
        return []
    xs = [r["web_replicas"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[r["ideal_s"] for r in rows], name="ideal",
                             mode="lines+markers", line={"dash": "dash", "color": "grey"}))
    fig.add_trace(go.Scatter(
        x=xs, y=[r["click_p50_s"] for r in rows], name="click p50", mode="lines+markers",
        error_y={"type": "data", "symmetric": False,
                 "array": [(r["click_p95_s"] or 0) - (r["click_p50_s"] or 0) for r in rows],
                 "arrayminus": [0] * len(rows)}))
    fig.add_trace(go.Scatter(x=xs, y=[r["click_max_s"] for r in rows], name="click max",
                             mode="markers", marker={"symbol": "x"}))
    fig.update_layout(title=title, xaxis_title="web replicas", yaxis_title="seconds",
                      xaxis={"tickvals": xs}, yaxis={"rangemode": "tozero"},
                      template="plotly_white")
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)
    written = [path]
    import importlib.util
    if importlib.util.find_spec("kaleido") is None:
        return written
    png = os.path.splitext(path)[0] + ".png"
    try:
        fig.write_image(png, width=900, height=500)
        written.append(png)
    except Exception as exc:  # kaleido present but cannot render (no Chrome, say)
        click.echo(f"dashscale bench: PNG not written ({type(exc).__name__}: {exc})", err=True)
    return written


# -- control API helpers -----------------------------------------------------------------

def _status(socket_path):
    return control.call(socket_path, "GET", "/status")


def wait_web_ready(socket_path, count, timeout=180.0):
    """Until exactly `count` web replicas exist and all are ready; returns the status."""
    deadline = time.monotonic() + timeout
    while True:
        st = _status(socket_path)
        web = [r for r in st["replicas"] if r["type"] == "web"]
        if len(web) == count and all(r["ready"] for r in web):
            return st
        if time.monotonic() > deadline:
            states = ", ".join(f"{r['name']} {r['state']}{'' if r['ready'] else ' (not ready)'}"
                               for r in web) or "none"
            raise RuntimeFailure(f"web={count} not ready after {timeout:g}s ({states})")
        time.sleep(0.1)


def _formation_text(status):
    total = web_workers(status)[0]
    return (",".join(f"{k}={v}" for k, v in status.get("formation", {}).items())
            + f" ({total} web worker{'s' * (total != 1)} ready)")


# -- the command ---------------------------------------------------------------------

def _port(url):
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _parse_scaling(text):
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise UsageError(f"--scaling: expected replica counts like 1,2,4, got '{text}'")
    return counts


@click.command()
@click.argument("url", required=False)
@click.option("-f", "--procfile", default="Procfile", show_default=True,
              help="Finds the running instance (its URL, formation, control API).")
@click.option("-u", "--users", default=1, show_default=True, type=click.IntRange(1, 500),
              help="Simulated browsers clicking in parallel.")
@click.option("-n", "--clicks", default=5, show_default=True, type=click.IntRange(1, 100000),
              help="Clicks per user, one after the other.")
@click.option("--input", "input_", default=None, metavar="ID.PROP",
              help="What to click (default: the button whose click drives the most "
                   "server callbacks, e.g. btn.n_clicks). A component inside a tab is "
                   "found by trying each dcc.Tabs value.")
@click.option("--set", "sets", multiple=True, metavar="ID.PROP=VALUE",
              help="Set a prop before the page renders (repeatable), e.g. "
                   "tabs.value=tab-2 to open a tab; VALUE is JSON or a string.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable (stable keys).")
@click.option("--scaling", default=None, metavar="1,2,4",
              help="Run at each web replica count (scaled through the control API), "
                   "print a table, plot it, then restore the formation.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="One click per user first, not counted.")
@click.option("--plot", "plot_path", default=None, metavar="PATH",
              help=f"Plot file (HTML; PNG too if kaleido is installed). With --scaling the "
                   f"default is ./{DEFAULT_PLOT}.")
@click.option("--callback-seconds", type=float, default=None,
              help="Callback time for the ideal (default: the fastest callback seen).")
@click.option("--concurrency", type=click.IntRange(1), default=None,
              help="Total workers for the ideal (default: from the running formation).")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds before one callback request counts as failed.")
def bench(url, procfile, users, clicks, input_, sets, as_json, scaling, warmup, plot_path,
          callback_seconds, concurrency, timeout):
    """Click the app's button as browsers do and measure latency against the ideal."""
    try:
        code = _bench(url, procfile, users, clicks, input_, parse_sets(sets), as_json,
                      scaling, warmup, plot_path, callback_seconds, concurrency, timeout)
    except (UsageError, RuntimeFailure) as exc:
        exit_with(exc)
    except KeyboardInterrupt:
        exit_with("bench interrupted", 130)
    sys.exit(code)


def _bench(url, procfile, users, clicks, input_, sets, as_json, scaling, warmup, plot_path,
           callback_seconds, concurrency, timeout):
    socket_path = rundir.control_socket(rundir.run_dir_for(procfile))
    counts = _parse_scaling(scaling) if scaling else None
    status = None
    if url is None or counts:
        try:
            status = _status(socket_path)
        except control.NotRunning as exc:
            raise UsageError(f"{exc}; start one with `dashscale start`"
                             + ("" if url else ", or pass the app's URL"))
    elif os.path.exists(socket_path):
        try:  # the formation behind the URL, when the URL is this instance's proxy
            status = _status(socket_path)
            if _port(status["proxy"]["url"]) != _port(url):
                status = None
        except (UsageError, RuntimeFailure, KeyError):
            status = None
    if url is None:
        url = status["proxy"]["url"].replace("://0.0.0.0:", "://127.0.0.1:")
    app = load_app(url, min(timeout, 30.0), sets, input_)
    label = "" if as_json else "bench "

    def one(st, label):
        run = run_bench(app, users, clicks, input_, warmup, label, timeout)
        if concurrency:
            workers, source = concurrency, "--concurrency"
        elif st is not None:
            workers, source = web_workers(st)[0], "Σ gunicorn --workers over ready web replicas"
        else:
            workers, source = None, None
        return summarize(run, workers, callback_seconds, source or "status")

    if not counts:
        summary = one(status, label)
        if status is not None:
            summary["formation"] = status.get("formation")
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(format_report(summary, _formation_text(status) if status else None))
        if plot_path:
            rows = [dict(summary, web_replicas=len(summary["replicas"]) or 1)]
            for p in write_plot(rows, plot_path, "Click latency"):
                click.echo(f"plot: {p}", err=as_json)
        return 1 if summary["errors"] else 0

    original = status["formation"].get("web")
    if original is None:
        raise UsageError("--scaling: the Procfile has no web process type", file=procfile)
    rows = []
    try:
        for n in counts:
            if not as_json:
                click.echo(f"scaling web={n} …", err=True)
            control.call(socket_path, "POST", "/scale", {"formation": {"web": n}})
            st = wait_web_ready(socket_path, n)
            summary = one(st, f"web={n} ")
            summary["web_replicas"] = n
            rows.append(summary)
            if not as_json:
                click.echo(format_report(summary, _formation_text(st)) + "\n")
    finally:
        current = _status(socket_path)["formation"].get("web")
        if current != original:
            control.call(socket_path, "POST", "/scale", {"formation": {"web": original}})
            if not as_json:
                click.echo(f"restored web={original}", err=True)
    paths = write_plot(rows, plot_path or DEFAULT_PLOT,
                       f"Click latency vs web replicas ({users} user{'s' * (users != 1)}, "
                       f"{rows[0]['callbacks_per_click']} callbacks per click)") if rows else []
    if as_json:
        click.echo(json.dumps({"scaling": rows, "plot": paths,
                               "restored_formation": {"web": original}}, indent=2))
    else:
        click.echo(format_table(rows))
        for p in paths:
            click.echo(f"plot: {p}")
    return 1 if any(r["errors"] for r in rows) else 0
