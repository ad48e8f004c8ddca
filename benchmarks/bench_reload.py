"""Live changes: how fast a Procfile edit is seen and served, and what a rolling restart
costs under load — against the anchor every Procfile runner without reload offers:
stop everything and start again.

    python benchmarks/bench_reload.py [--rounds 5] [--replicas 4] [--rate 20]

Rows:
  detect     saving the Procfile (atomic rename, as editors save) → the runner reports
             the change (goal ≤0.5 s)
  first new  saving → the first response from the new version through the proxy
  rolling    `dashscale restart web --rolling` of N replicas under a steady load:
             duration and failed requests (goal 0)
  anchor     stop + start (what honcho/foreman users do): saving → first response of
             the new version, and failed requests meanwhile
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dashscale_local.testing import Run  # noqa: E402

PROCFILE = "web: VERSION={v} gunicorn echo_app:app --workers 1\n"


class Load(threading.Thread):
    """Steady GETs at ``rate``/s; counts successes and failures."""

    def __init__(self, url, rate):
        super().__init__(daemon=True)
        self.url, self.interval = url, 1.0 / rate
        self.ok = self.failed = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                with urllib.request.urlopen(self.url + "/", timeout=30) as resp:
                    resp.read()
                self.ok += 1
            except Exception:
                self.failed += 1
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(60)
        return self


def version(url):
    try:
        with urllib.request.urlopen(url + "/env?keys=VERSION", timeout=5) as resp:
            return json.loads(resp.read())["VERSION"]
    except Exception:
        return None


def save_atomically(path, text):
    tmp = path + ".swp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def poll(predicate, timeout=60.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--rate", type=float, default=20.0)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dsreload-")
    shutil.copy(os.path.join(ROOT, "tests", "apps", "echo_app.py"), d)
    procfile = os.path.join(d, "Procfile")
    run = Run(d, PROCFILE.format(v=0), f"web={args.replicas}")
    detect, first_new, rolling, rolling_failed, anchor, anchor_failed = [], [], [], [], [], []
    try:
        run.start()
        v = 0
        for _ in range(args.rounds):
            v += 1
            mark = len(run.output())
            load = Load(run.url, args.rate)
            load.start()
            t0 = time.monotonic()
            save_atomically(procfile, PROCFILE.format(v=v))
            t_seen = poll(lambda: "web changed" in run.output()[mark:])
            t_new = poll(lambda: version(run.url) == str(v))
            poll(lambda: "reload applied" in run.output()[mark:], timeout=120)
            load.stop()
            detect.append(t_seen - t0)
            first_new.append(t_new - t0)
            rolling_failed.append(load.failed)
            # rolling restart under load
            load = Load(run.url, args.rate)
            load.start()
            t0 = time.monotonic()
            result = run.cli("restart", "web", "--rolling")
            rolling.append(time.monotonic() - t0)
            load.stop()
            assert result.returncode == 0, result.stderr
            rolling_failed.append(load.failed)
        # anchor: stop everything and start again with the edit
        for _ in range(min(args.rounds, 3)):
            v += 1
            load = Load(run.url, args.rate)
            load.start()
            t0 = time.monotonic()
            save_atomically(procfile, PROCFILE.format(v=v))
            run.stop()
            port, base = run.port, run.base_port
            run = Run(d, None, f"web={args.replicas}")
            run.port, run.base_port = port, base
            run.start(wait=False)
            t_new = poll(lambda: version(run.url) == str(v))
            anchor.append(t_new - t0)
            load.stop()
            anchor_failed.append(load.failed)
            run.wait_ready()
    finally:
        leftovers = run.stop()
        shutil.rmtree(d, ignore_errors=True)
    med = statistics.median
    print(f"live changes, web={args.replicas} echo replicas, {args.rounds} rounds, "
          f"load {args.rate:g} req/s")
    print(f"{'what':<34} {'median':>9} {'max':>9}")
    print(f"{'detect (save -> runner sees it)':<34} {med(detect):>8.3f}s {max(detect):>8.3f}s")
    print(f"{'first response of new version':<34} {med(first_new):>8.3f}s {max(first_new):>8.3f}s")
    print(f"{'rolling restart of all replicas':<34} {med(rolling):>8.3f}s {max(rolling):>8.3f}s")
    print(f"{'anchor: stop + start, first new':<34} {med(anchor):>8.3f}s {max(anchor):>8.3f}s")
    print(f"failed requests: reload+rolling {sum(rolling_failed)} "
          f"(of ~{int(args.rate * (sum(first_new) + sum(rolling)))} sent while changing); "
          f"anchor stop+start {sum(anchor_failed)}")
    print(f"detect goal <= 0.5 s: {'met' if max(detect) <= 0.5 else 'NOT met'}; "
          f"first new version: {med(anchor) / med(first_new):.1f}x faster than stop+start "
          f"(which drops requests; live reload dropped {sum(rolling_failed)})")
    if leftovers:
        print(f"LEFTOVER processes: {leftovers}")


if __name__ == "__main__":
    main()
