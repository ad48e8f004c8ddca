"""Start-up time: `dashscale start -m web=4` until all 4 replicas answer through the
proxy, against `honcho start -c web=4` until all 4 answer on their ports, on the same
Procfile (the sample app), alternating rounds in one run.

    python benchmarks/bench_startup.py [--rounds 5] [--replicas 4]
"""
import argparse
import compileall
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dashscale_local.testing import free_port, free_port_block, processes_with_marker  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFILE = "web: gunicorn sample_app.app:server --workers 1\n"


# Both runners are polled the same way: a cheap path (any HTTP answer counts as
# "answering"; a 404 costs the app ~1 ms, the Dash index ~15 ms of CPU that would be
# taken from replicas still booting), every POLL_S.
PROBE_PATH = "/_startup_probe"
POLL_S = 0.02


def get(port, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", PROBE_PATH)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Dashscale-Replica")
    finally:
        conn.close()


def wait_until(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(POLL_S)
    raise TimeoutError


def project_dir():
    d = tempfile.mkdtemp(prefix="dsbench-")
    shutil.copytree(os.path.join(REPO, "sample_app"), os.path.join(d, "sample_app"))
    with open(os.path.join(d, "Procfile"), "w") as f:
        f.write(PROCFILE)
    return d


def env_with_marker(marker):
    env = dict(os.environ, DASHSCALE_RUN_ID=marker, PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def stop(proc, marker):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for p in processes_with_marker(marker):
        p.kill()


def time_until_answering(argv, d, marker, all_answer):
    """Seconds from exec of ``argv`` in ``d`` until ``all_answer()``; then everything it
    started is stopped and ``d`` removed."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=d, env=env_with_marker(marker), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(all_answer)
        return time.monotonic() - t0
    finally:
        stop(proc, marker)
        shutil.rmtree(d, ignore_errors=True)


def time_dashscale(n):
    port, base = free_port(), free_port_block()
    seen = set()

    def all_answer():
        # n requests per round, as honcho's side tries each of its n ports per round:
        # round-robin then cannot make a ready replica wait for the next rounds.
        for _ in range(n):
            status, replica = get(port)
            if not replica:
                break  # 503: none ready yet
            seen.add(replica)
            if len(seen) == n:
                return True
        return False
    return time_until_answering(
        [sys.executable, "-m", "dashscale_local.cli", "start", "-m", f"web={n}",
         "--port", str(port), "--base-port", str(base)],
        project_dir(), f"bench-ds-{time.time()}", all_answer)


def time_honcho(n):
    base = free_port_block()
    honcho = shutil.which("honcho", path=os.path.dirname(sys.executable)) or "honcho"
    pending = set(range(base, base + n))

    def all_answer():
        for p in list(pending):
            try:
                if get(p, timeout=10)[0]:
                    pending.discard(p)
            except (OSError, http.client.HTTPException):
                pass
        return not pending
    return time_until_answering([honcho, "start", "-c", f"web={n}", "-p", str(base)],
                                project_dir(), f"bench-honcho-{time.time()}", all_answer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args()
    # honcho's modules were byte-compiled when pip installed them; an editable install
    # of dashscale is not, and with PYTHONDONTWRITEBYTECODE set every start would
    # recompile it (~0.1 s of CPU). Compile it once, as pip would.
    compileall.compile_dir(os.path.join(REPO, "dashscale_local"), quiet=1)
    results = {"dashscale": [], "honcho": []}
    time_dashscale(1)  # warm the page cache so round 1 is not penalised
    for i in range(args.rounds):
        order = ("dashscale", "honcho") if i % 2 == 0 else ("honcho", "dashscale")
        for name in order:
            fn = time_dashscale if name == "dashscale" else time_honcho
            results[name].append(fn(args.replicas))
    print(f"start-up to {args.replicas} replicas answering (sample app), {args.rounds} rounds")
    print(f"{'runner':<10} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, xs in results.items():
        print(f"{name:<10} {statistics.median(xs):>9.2f} {min(xs):>7.2f} {max(xs):>7.2f}")
    ratio = statistics.median(results["dashscale"]) / statistics.median(results["honcho"])
    # Each round's two runs are back to back: their ratio cancels the machine's drift.
    paired = statistics.median(d / h for d, h in zip(results["dashscale"], results["honcho"]))
    print(f"ratio dashscale/honcho (median): {ratio:.2f}x  (goal <= 1.2x); "
          f"median of the rounds' own ratios: {paired:.2f}x")


if __name__ == "__main__":
    main()
