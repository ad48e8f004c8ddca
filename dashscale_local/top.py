"""`dashscale top`: a live terminal view of the replicas, refreshed every second from
the control API (the same data as `dashscale status --json`).

Plain ANSI on the alternate screen with the terminal in cbreak mode (keys arrive one at
a time, Ctrl-C still signals); `q` or Ctrl-C quits and the terminal is restored, also
on SIGTERM or an error. Not on a terminal (or with --once): print one frame and exit.
"""
import os
import select
import signal
import sys
import termios
import time
import tty

import click

from . import control, rundir
from .clickutil import procfile_option
from .errors import RuntimeFailure, UsageError, exit_with
from .sizes import format_size

STATE_SGR = {"RUNNING": "32", "STARTING": "33", "STOPPING": "33", "BACKOFF": "31;1",
             "FATAL": "31;1", "OOMKILLED": "41;97;1", "STOPPED": "2", "EXITED": "31"}
ENTER = "\x1b[?1049h\x1b[?25l"       # alternate screen, hide cursor
LEAVE = "\x1b[?25h\x1b[?1049l"       # show cursor, main screen
EVENT_SGR = {"oomkill": "31;1", "crash": "31", "fatal": "31;1", "reload-error": "31",
             "memory": "33", "scale": "36", "reload": "36", "restart": "32", "start": "32"}


# -- rendering (pure: status dict → lines) ---------------------------------------------
class Line:
    """Segments of (text, SGR or None); rendered cut to the terminal width."""

    def __init__(self, *segments):
        self.segments = [s if isinstance(s, tuple) else (s, None) for s in segments]

    def add(self, text, sgr=None):
        self.segments.append((text, sgr))
        return self

    def plain(self):
        return "".join(t for t, _ in self.segments)

    def render(self, width, colour):
        out, left = [], width
        for text, sgr in self.segments:
            if left <= 0:
                break
            text = text[:left]
            left -= len(text)
            out.append(f"\x1b[{sgr}m{text}\x1b[0m" if colour and sgr and text else text)
        return "".join(out)


def _bar_chars():
    enc = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return ("█", "░") if enc.startswith("utf") else ("#", ".")


def memory_bar(used, limit, width, chars=("#", ".")):
    """(bar text, SGR): green, yellow at ≥80 % of the limit, red at/over it."""
    if width <= 0:
        return "", None
    frac = min(1.0, used / limit) if limit else 0.0
    filled = int(round(frac * width))
    if used and not filled:
        filled = 1
    sgr = "32" if not limit or used < 0.8 * limit else "33" if used < limit else "31;1"
    return chars[0] * filled + chars[1] * (width - filled), sgr


def _mem_text(used, limit):
    return f"{format_size(used)} / {format_size(limit)}" if limit else format_size(used)


def _short(n):
    return format_size(n).replace(" ", "").replace("iB", "").replace("B", "")


def _mem_short(used, limit):
    return f"{_short(used)}/{_short(limit)}" if limit else _short(used)


def _pct(used, limit):
    return f"{100 * used / limit:.0f}%" if limit else "-"


def render(status, width=100, height=40, colour=False, error=None, now=None, chars=None):
    """The frame for a status dict, as a list of strings (no trailing newlines)."""
    chars = chars or _bar_chars()
    width = max(width, 40)
    lines = []
    formation = ",".join(f"{k}={v}" for k, v in status.get("formation", {}).items())
    clock = time.strftime("%H:%M:%S", time.localtime(now or time.time()))
    title = f" dashscale top  {status['proxy']['url']}  formation {formation or '-'}"
    title = title[:width - len(clock) - 2].ljust(width - len(clock) - 1)
    lines.append(Line((title + clock + " ", "7")))
    if error:
        lines.append(Line((f" runner unreachable: {error} — retrying", "31;1")))

    head = ("REPLICA", "STATE", "PID", "PORT", "INFL", "SERVED", "RESTARTS", "OOM")
    rows = []
    for r in status.get("replicas", []):
        px = r.get("proxy") or {}
        state = r["state"] + ("" if r.get("ready") or r["state"] != "RUNNING" else "*")
        rows.append((r, (r["name"], state, str(r.get("pid") or "-"), str(r.get("port", "-")),
                         str(px.get("inflight", 0)), str(px.get("served", 0)),
                         str(r.get("restarts", 0)), str(r.get("oom_kills", 0)))))
    w = [max([len(head[i])] + [len(cells[i]) for _, cells in rows]) for i in range(len(head))]
    # Memory is the last column and takes what is left: bar + "90 MiB / 512 MiB" + "18%",
    # then shorter forms on narrow terminals.
    mems = [(r.get("memory_bytes", 0), r.get("memory_limit_bytes", 0)) for r, _ in rows]
    room = width - (sum(w) + 2 * len(w)) - 1
    layout = (None, 0, 0)                  # narrowest: the percentage only
    for text_fn, min_bar in ((_mem_text, 10), (_mem_short, 6), (None, 6), (_mem_short, 0)):
        tw = 0
        if text_fn:
            label = "MEMORY / LIMIT" if text_fn is _mem_text else "MEM/LIM"
            tw = max([len(text_fn(*m)) for m in mems] + [len(label)])
        left = room - (tw + 2 if tw else 0) - 4
        bar_w = min(40, left - 3) if min_bar else 0
        if (min_bar and bar_w >= min_bar) or (not min_bar and left >= 0):
            layout = (text_fn, tw, bar_w)
            break
    text_fn, tw, bar_w = layout

    def memory_cells(line, used=None, limit=None, down=False):
        if used is None:           # the header
            if bar_w:
                line.add("MEMORY".ljust(bar_w + 3), "1")
            if tw:
                line.add(("MEMORY / LIMIT" if text_fn is _mem_text else "MEM/LIM").ljust(tw) + "  ",
                         "1")
            return line.add(f"{'USE':>4}", "1")
        if bar_w:
            text, sgr = memory_bar(used, limit, bar_w, chars)
            line.add("[").add(text, "31;1" if down else sgr).add("] ")
        if tw:
            line.add(text_fn(used, limit).rjust(tw) + "  ")
        return line.add(f"{_pct(used, limit):>4}")

    header = Line()
    for i, name in enumerate(head):
        header.add((name.ljust(w[i]) if i < 2 else name.rjust(w[i])) + "  ", "1")
    lines.append(memory_cells(header))
    for (r, cells), (used, limit) in zip(rows, mems):
        line = Line()
        for i, cell in enumerate(cells):
            if i == 1:
                line.add(cell, STATE_SGR.get(r["state"])).add(" " * (w[i] - len(cell)) + "  ")
            elif i == 7 and cell != "0":
                line.add(cell.rjust(w[i]), "31;1").add("  ")
            else:
                line.add((cell.ljust(w[i]) if i == 0 else cell.rjust(w[i])) + "  ")
        lines.append(memory_cells(line, used, limit, r["state"] == "OOMKILLED"))
    if not rows:
        lines.append(Line(("  (no replicas: scale a process type up, e.g. dashscale scale web=1)",
                           "2")))

    m = status.get("memory", {})
    total, cap = m.get("total_bytes", 0), m.get("max_bytes", 0)
    bar = memory_bar(total, cap, max(bar_w, 10), chars)
    lines.append(Line())
    lines.append(Line(("TOTAL ", "1")).add("[").add(*bar).add("] ")
                 .add(f"{format_size(total)} of max {format_size(cap)} ({_pct(total, cap)})  ", "1")
                 .add(f"metric {m.get('metric', 'pss')}, at the limit: {m.get('on_limit', 'stop')}",
                      "2"))
    if any(not r.get("ready") and r["state"] == "RUNNING" for r, _ in rows):
        lines.append(Line(("* running but not answering HTTP yet", "2")))

    footer = Line(("q", "1"), " quit   refreshed every second   ",
                  ("dashboard: " + status["proxy"]["url"] + "/_dashscale/", "2"))
    events = status.get("events") or []
    room = height - len(lines) - 3
    if events and room > 0:
        lines.append(Line())
        lines.append(Line(("RECENT EVENTS", "1")))
        for ev in list(reversed(events))[:room - 1] if room > 1 else []:
            lines.append(Line(time.strftime("%H:%M:%S ", time.localtime(ev["time"])),
                              (ev["kind"].ljust(12), EVENT_SGR.get(ev["kind"])), ev["message"]))
    lines = lines[:max(1, height - 1)]
    lines.append(footer)
    return [line.render(width, colour) for line in lines]


# -- the terminal loop -------------------------------------------------------------------
def _fetch(socket_path):
    return control.call(socket_path, "GET", "/status", timeout=5)


def _size():
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 100, 40


def _want_colour(stream):
    if "NO_COLOR" in os.environ:
        return False
    return stream.isatty() or bool(os.environ.get("FORCE_COLOR"))


def print_once(status):
    width, height = _size() if sys.stdout.isatty() else (int(os.environ.get("COLUMNS", 120)), 1000)
    for line in render(status, width, height, colour=_want_colour(sys.stdout)):
        click.echo(line.rstrip())


def live(socket_path, status, interval=1.0):
    """Redraw every ``interval`` s until q / Ctrl-C; the terminal is always restored."""
    fd_in = sys.stdin.fileno()
    out = sys.stdout
    saved = termios.tcgetattr(fd_in)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def on_winch(signum, frame):
        try:
            os.write(wake_w, b"w")
        except OSError:
            pass

    def on_term(signum, frame):
        raise SystemExit(0)

    # SIGINT too: a process started in the background of a non-interactive shell
    # inherits it ignored, and Python then leaves it ignored; Ctrl-C must still quit.
    old_handlers = {sig: signal.signal(sig, h) for sig, h in
                    ((signal.SIGWINCH, on_winch), (signal.SIGTERM, on_term),
                     (signal.SIGHUP, on_term), (signal.SIGINT, signal.default_int_handler))}
    error = None
    try:
        tty.setcbreak(fd_in)          # keys unbuffered, no echo; ISIG kept for Ctrl-C
        out.write(ENTER)
        while True:
            width, height = _size()
            frame = render(status, width, height, colour=_want_colour(out), error=error)
            out.write("\x1b[H" + "\x1b[K\n".join(frame) + "\x1b[K\x1b[J")
            out.flush()
            deadline = time.monotonic() + interval
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([fd_in, wake_r], [], [], left)
                if wake_r in ready:
                    os.read(wake_r, 64)
                    break                 # resized: redraw now
                if fd_in in ready:
                    keys = os.read(fd_in, 64)
                    if not keys or b"q" in keys.lower() or b"\x03" in keys:
                        return 0
            try:
                status, error = _fetch(socket_path), None
            except (UsageError, RuntimeFailure) as exc:
                error = str(exc)
    except KeyboardInterrupt:
        return 0
    finally:
        out.write(LEAVE)
        out.flush()
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


@click.command()
@procfile_option
@click.option("--once", is_flag=True, help="Print one frame and exit (also when not on a terminal).")
@click.option("--interval", "-n", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")
def top(procfile, once, interval):
    """Live view of the replicas: state, requests, memory vs limit (q quits)."""
    socket_path = rundir.control_socket(rundir.run_dir_for(procfile))
    try:
        status = _fetch(socket_path)
    except (UsageError, RuntimeFailure) as exc:
        exit_with(exc)
    if once or not (sys.stdin.isatty() and sys.stdout.isatty()):
        print_once(status)
        return
    sys.exit(live(socket_path, status, interval))
