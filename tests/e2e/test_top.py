"""`dashscale top`: `--once`/non-tty output, and the live view driven
under a real pseudo-terminal against a real formation (q and Ctrl-C exit 0 and restore
the terminal)."""
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from dashscale_local.testing import wait_for
from dashscale_local.top import LEAVE

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
UP = r"(?:RUNNING|STARTING)\*?"   # supervisord says RUNNING after startsecs


# -- against a real formation -----------------------------------------------------------
PROCFILE = "web: gunicorn echo_app:app --workers 1\n"


def top_cmd(run, *args):
    return [sys.executable, "-m", "dashscale_local.cli", "top", "-f", run.procfile, *args]


@pytest.mark.slow
def test_top_once_and_non_tty(dashscale):
    run = dashscale(PROCFILE, formation="web=2", args=["--memory-limit", "256MiB"])
    run.get("/")
    for args in (["--once"], []):   # not a terminal: one frame either way
        res = subprocess.run(top_cmd(run, *args), env=run.env(), capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        out = res.stdout
        assert "\x1b[" not in out                     # no colour, no cursor moves
        assert re.search(r"^web\.1\s+%s\s+\d+\s+%d" % (UP, run.replica("web.1")["port"]), out, re.M), out
        assert re.search(r"^web\.2\s+" + UP, out, re.M)
        assert "/ 256 MiB" in out and "of max 512 MiB" in out
        assert out.count("\n") < 40


@pytest.mark.slow
def test_top_not_running(tmp_path):
    (tmp_path / "Procfile").write_text(PROCFILE)
    res = subprocess.run([sys.executable, "-m", "dashscale_local.cli", "top", "-f",
                          str(tmp_path / "Procfile"), "--once"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    assert "no dashscale is running here" in res.stderr


class PtyProcess:
    """A command on a fresh pseudo-terminal that is its controlling terminal, so Ctrl-C
    typed on the master side becomes SIGINT as in a real terminal."""

    def __init__(self, cmd, env, cols=120, rows=30):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.attrs_before = termios.tcgetattr(slave)
        self.slave = slave

        def make_controlling_tty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, preexec_fn=make_controlling_tty)
        self.output = b""

    def read(self, timeout=0.2):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0, left))
            if not ready:
                return self.output
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return self.output
            if not data:
                return self.output
            self.output += data

    def screen(self):
        """The text of the last complete frame (frames start with ESC[H)."""
        text = self.output.decode("utf-8", "replace")
        frames = text.split("\x1b[H")
        last = frames[-1] if "\x1b[J" in frames[-1] or len(frames) < 3 else frames[-2]
        return ANSI.sub("", last)

    def wait_screen(self, predicate, timeout, message):
        def check():
            self.read(0.1)
            return predicate(self.screen())
        try:
            return wait_for(check, timeout, interval=0.01, message=message)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- screen ---\n{self.screen()}")

    def send(self, data):
        os.write(self.master, data)

    def wait_exit(self, timeout=10):
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read(0.05)
        self.read(0.1)
        return self.proc.wait(max(0.1, end - time.monotonic()))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.mark.slow
def test_top_live_under_a_pty(dashscale):
    run = dashscale(PROCFILE, formation="web=1", args=["--memory-limit", "256MiB"])
    env = run.env()
    env.pop("NO_COLOR", None)
    top = PtyProcess(top_cmd(run), env)
    try:
        # web.1 up and measured (the guard's first sweep may come a frame later)
        screen = top.wait_screen(lambda s: re.search(r"^web\.1\s+" + UP, s, re.M) and "█" in s
                                 and s, 15, "top to show web.1 and its memory")
        assert "\x1b[?1049h" in top.output.decode()            # alternate screen
        assert re.search(r"^REPLICA\s+STATE\s+PID\s+PORT\s+INFL\s+SERVED\s+RESTARTS\s+OOM\s+MEMORY",
                         screen, re.M), screen
        assert "TOTAL [" in screen and "of max 256 MiB" in screen
        # It updates: a new replica appears, and served requests are counted.
        run.cli("scale", "web=2", check=True)
        for _ in range(4):
            run.get("/")
        top.wait_screen(lambda s: re.search(r"^web\.2\s+" + UP + r"\s+\d+", s, re.M), 15,
                        "top to show web.2")

        def served(s):
            counts = [int(m) for m in re.findall(r"^web\.\d\s+" + UP + r"\s+\d+\s+\d+\s+\d+\s+(\d+)",
                                                  s, re.M)]
            return sum(counts) >= 4
        top.wait_screen(served, 10, "served requests to be counted")
        frames = top.output.count(b"\x1b[H")
        top.read(2.2)
        assert top.output.count(b"\x1b[H") >= frames + 2         # about one frame a second
        top.send(b"q")
        assert top.wait_exit(10) == 0
        tail = top.output.decode("utf-8", "replace")
        assert tail.rstrip().endswith(LEAVE)                     # main screen, cursor back
        assert termios.tcgetattr(top.slave) == top.attrs_before  # cooked mode again
    finally:
        top.close()

    # Ctrl-C quits cleanly as well.
    top = PtyProcess(top_cmd(run), env)
    try:
        top.wait_screen(lambda s: "web.2" in s, 15, "second top to draw")
        top.send(b"\x03")
        assert top.wait_exit(10) == 0
        assert top.output.decode("utf-8", "replace").rstrip().endswith(LEAVE)
        assert "Traceback" not in top.output.decode("utf-8", "replace")
        assert termios.tcgetattr(top.slave) == top.attrs_before
    finally:
        top.close()
