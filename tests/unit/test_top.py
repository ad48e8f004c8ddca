"""`dashscale top`: the frame renderer, without processes (`--once`, non-tty output and the
live view under a real pseudo-terminal: tests/e2e/test_top.py)."""
import re

import pytest

from dashscale_local.top import render

MiB = 1024 * 1024
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def fake_status(**memory):
    reps = []
    for i, (name, state, used) in enumerate([("web.1", "RUNNING", 90 * MiB),
                                             ("web.2", "OOMKILLED", 0),
                                             ("worker.1", "RUNNING", 450 * MiB)]):
        reps.append({"name": name, "type": name.split(".")[0], "state": state,
                     "ready": state == "RUNNING", "pid": 1000 + i if used else None,
                     "port": 5006 + i, "memory_bytes": used, "memory_limit_bytes": 512 * MiB,
                     "restarts": 1 if state == "OOMKILLED" else 0,
                     "oom_kills": 1 if state == "OOMKILLED" else 0,
                     "proxy": {"inflight": 2 if i == 0 else 0, "served": 1200 if i == 0 else 3}})
    return {"proxy": {"url": "http://127.0.0.1:8050"}, "formation": {"web": 2, "worker": 1},
            "replicas": reps,
            "memory": {"total_bytes": 540 * MiB, "max_bytes": 1536 * MiB, "metric": "pss",
                       "on_limit": "stop", **memory},
            "events": [{"time": 1700000000, "kind": "oomkill", "message": "web.2 OOMKilled"}]}


# -- renderer (no processes) ------------------------------------------------------------
def test_render_rows_bars_and_totals():
    lines = render(fake_status(), width=120, height=40, chars=("#", "."))
    text = "\n".join(lines)
    header = next(line for line in lines if line.startswith("REPLICA"))
    for col in ("STATE", "PID", "PORT", "INFL", "SERVED", "RESTARTS", "OOM", "MEMORY", "USE"):
        assert col in header
    web1 = next(line for line in lines if line.startswith("web.1 "))
    assert re.search(r"web\.1\s+RUNNING\s+1000\s+5006\s+2\s+1200\s+0\s+0\s+\[#+\.+\]\s+90 MiB / 512 MiB\s+18%", web1), web1
    web2 = next(line for line in lines if line.startswith("web.2 "))
    assert "OOMKILLED" in web2 and re.search(r"\s1\s+1\s+\[\.+\]", web2)
    assert "TOTAL [" in text and "540 MiB of max 1.5 GiB (35%)" in text
    assert "web.2 OOMKilled" in text          # recent events
    assert lines[-1].startswith("q quit")


def test_render_colours_memory_over_80_percent():
    lines = render(fake_status(), width=120, height=40, colour=True, chars=("#", "."))
    worker = next(line for line in lines if ANSI.sub("", line).startswith("worker.1"))
    web1 = next(line for line in lines if ANSI.sub("", line).startswith("web.1"))
    assert "\x1b[33m#" in worker          # 88 % of the limit: yellow
    assert "\x1b[32m#" in web1            # 18 %: green
    oom = next(line for line in lines if ANSI.sub("", line).startswith("web.2"))
    assert "OOMKILLED" in oom and "\x1b[41;97;1mOOMKILLED" in oom


@pytest.mark.parametrize("width", [50, 60, 72, 80, 100, 160])
def test_render_fits_the_terminal(width):
    lines = render(fake_status(), width=width, height=12, colour=True, error="gone")
    assert len(lines) <= 12
    for line in lines:
        assert len(ANSI.sub("", line)) <= width, line
    plain = [ANSI.sub("", line) for line in lines]
    assert any(line.startswith("web.1") for line in plain)
    if width >= 80:
        assert any("[" in line and line.startswith("web.1") for line in plain)  # a bar
