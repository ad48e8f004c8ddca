"""The dashscale proxy against nginx in front of the SAME gunicorn replicas.

    python benchmarks/bench_proxy.py                       # throughput + memory
    python benchmarks/bench_proxy.py --scenario balance    # round-robin vs least-outstanding
    python benchmarks/bench_proxy.py --scenario all --rounds 5 --duration 10

Throughput: 4 sync gunicorn replicas (1 worker each) of tests/apps/echo_app.py on free
loopback ports; (a) nginx (Debian package; one worker process — the dashscale proxy is
one process on one event loop, so that is the like-for-like comparison; generated from
benchmarks/nginx.conf.tmpl) and (b) ``python -m dashscale_local.proxy`` (uvloop) in front
of them; ``wrk -t1 -cC -dDs --latency`` on ``/``, alternating which one goes first each
round; medians of the rounds. Also the CPU time each proxy process spent per request.
``--compare-pure`` adds (c) the same proxy with http11's C fast path turned off.

Memory: RSS of the proxy process with 500 open keep-alive client connections (each has
served one request), next to nginx's worker.

Balance: the slow-callback case. The same 4 replicas; 3 client loops call
``/slow?s=2`` back to back while 4 loops call ``/`` every 50 ms; one run per policy per
round, alternating. Reports the fast requests' p50/p95/max latency and the slow ones'.

nginx and wrk come from Debian (``apt-get install nginx-light wrk``; ``make bench``
installs them). Requires: gunicorn in this Python's environment.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(REPO, "tests", "apps")
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open after {timeout}s")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def start_replicas(procs, n, log):
    ports = [free_port() for _ in range(n)]
    for i, port in enumerate(ports, 1):
        env = dict(os.environ, DASHSCALE_REPLICA=f"web.{i}", PYTHONUNBUFFERED="1")
        procs.start([sys.executable, "-m", "gunicorn", "echo_app:app", "--workers", "1",
                     "--bind", f"127.0.0.1:{port}", "--chdir", APPS, "--log-level", "warning",
                     "--backlog", "2048"], env=env, stdout=log, stderr=log)
    for port in ports:
        wait_port(port)
    return ports


def start_nginx(procs, tmp, port, backends, log):
    d = os.path.join(tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(HERE, "nginx.conf.tmpl")) as f:
        tmpl = f.read()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backends)
    conf = tmpl.replace("{dir}", d).replace("{servers}", servers).replace("{port}", str(port))
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = procs.start([nginx, "-p", d, "-c", path, "-e", os.path.join(d, "error.log")],
                    stdout=log, stderr=log)
    wait_port(port, proc=p)
    return p


def start_dashscale(procs, port, backends, log, balance="round-robin", loop="uvloop",
                    pure=False):
    cmd = [sys.executable, "-m", "dashscale_local.proxy", "--port", str(port),
           "--balance", balance, "--loop", loop]
    for b in backends:
        cmd += ["--backend", f"127.0.0.1:{b}"]
    env = dict(os.environ)
    env.pop("DASHSCALE_HTTP11_PURE", None)
    if pure:
        env["DASHSCALE_HTTP11_PURE"] = "1"  # http11 without its C fast path
    p = procs.start(cmd, cwd=REPO, stdout=log, stderr=log, env=env)
    wait_port(port, proc=p)
    return p


def worker_process(p):
    """The process that does the proxying: nginx's worker, or the proxy itself."""
    proc = psutil.Process(p.pid)
    kids = proc.children()
    return kids[0] if kids else proc


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _dur(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(port, duration, connections, path="/"):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": _dur(pct["50"]), "p99": _dur(pct["99"]), "errors": errors,
            "requests": total}


def open_idle_connections(port, n):
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        s.sendall(req)
    for s in socks:
        s.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(rest) < length:
            rest += s.recv(65536)
    return socks


# --------------------------------------------------------------------------- scenarios

def throughput(args, procs, tmp, log, replicas):
    ng_port, ds_port = free_port(), free_port()
    nginx = start_nginx(procs, tmp, ng_port, replicas, log)
    ds = start_dashscale(procs, ds_port, replicas, log, loop=args.loop)
    targets = {"nginx": (ng_port, worker_process(nginx)), "dashscale": (ds_port, worker_process(ds))}
    if args.compare_pure:
        py_port = free_port()
        py = start_dashscale(procs, py_port, replicas, log, loop=args.loop, pure=True)
        targets["pure-py"] = (py_port, worker_process(py))
    for name, (port, _) in targets.items():  # warm up
        run_wrk(port, 2, args.connections)
    results = {name: [] for name in targets}
    order = list(targets)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            port, proc = targets[name]
            cpu0 = sum(proc.cpu_times()[:2])
            res = run_wrk(port, args.duration, args.connections)
            res["cpu_us_per_req"] = (sum(proc.cpu_times()[:2]) - cpu0) / max(res["requests"], 1) * 1e6
            results[name].append(res)
            print(f"  round {r + 1} {name:9} {res['rps']:8.0f} req/s  p50 {res['p50'] * 1e3:6.2f} ms"
                  f"  p99 {res['p99'] * 1e3:6.2f} ms  cpu {res['cpu_us_per_req']:5.0f} µs/req"
                  f"  errors {res['errors']}", flush=True)
    summary = {name: {k: statistics.median(x[k] for x in rs)
                      for k in ("rps", "p50", "p99", "cpu_us_per_req", "errors")}
               for name, rs in results.items()}
    memory = {}
    if not args.skip_rss:
        for name, (port, proc) in targets.items():
            base = proc.memory_info().rss
            socks = open_idle_connections(port, args.idle)
            time.sleep(0.5)
            memory[name] = {"rss_idle_conns": proc.memory_info().rss, "rss_before": base}
            for s in socks:
                s.close()
    # Each round's own ratio (the two ran back to back), whose median cancels the drift
    # of this shared machine between rounds.
    paired = {name: {"rps": statistics.median(x["rps"] / n["rps"]
                                              for x, n in zip(rs, results["nginx"])),
                     "p50": statistics.median(x["p50"] / n["p50"]
                                              for x, n in zip(rs, results["nginx"]))}
              for name, rs in results.items() if name != "nginx"}
    procs.stop(nginx)
    procs.stop(ds)
    return {"rounds": results, "median": summary, "paired": paired, "memory": memory}


async def _http_get(reader, writer, path):
    writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if m:
        await reader.readexactly(int(m.group(1)))
    status = int(head.split(b" ", 2)[1])
    return status


async def _loop_client(port, path, until, pause, lat, errors):
    reader = writer = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.monotonic()
            status = await _http_get(reader, writer, path)
            if status != 200:
                errors.append(status)
            lat.append(time.monotonic() - t0)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
            writer = None
        if pause:
            await asyncio.sleep(pause)
    if writer is not None:
        writer.close()


async def _balance_round(port, duration, slow_users, fast_users):
    until = time.monotonic() + duration
    slow, fast, errors = [], [], []
    await asyncio.gather(
        *(_loop_client(port, "/slow?s=2", until, 0, slow, errors) for _ in range(slow_users)),
        *(_loop_client(port, "/", until, 0.05, fast, errors) for _ in range(fast_users)))
    return slow, fast, errors


def _pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def balance(args, procs, tmp, log, replicas):
    results = {p: [] for p in ("round-robin", "least-outstanding")}
    order = list(results)
    for r in range(args.rounds):
        for policy in (order if r % 2 == 0 else order[::-1]):
            port = free_port()
            p = start_dashscale(procs, port, replicas, log, balance=policy, loop=args.loop)
            slow, fast, errors = asyncio.run(_balance_round(port, args.balance_duration, 3, 4))
            procs.stop(p)
            res = {"fast_n": len(fast), "fast_p50": _pct(fast, 0.5), "fast_p95": _pct(fast, 0.95),
                   "fast_max": max(fast, default=float("nan")), "slow_n": len(slow),
                   "slow_p50": _pct(slow, 0.5), "slow_max": max(slow, default=float("nan")),
                   "errors": len(errors)}
            results[policy].append(res)
            print(f"  round {r + 1} {policy:17} fast n={res['fast_n']:4} p50 {res['fast_p50'] * 1e3:7.1f} ms"
                  f" p95 {res['fast_p95'] * 1e3:7.1f} ms max {res['fast_max']:5.2f} s | slow n={res['slow_n']:3}"
                  f" p50 {res['slow_p50']:5.2f} s max {res['slow_max']:5.2f} s | errors {res['errors']}",
                  flush=True)
            time.sleep(2.5)  # let replicas finish the last slow requests
    summary = {p: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for p, rs in results.items()}
    return {"rounds": results, "median": summary}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("throughput", "balance", "all"), default="throughput")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--idle", type=int, default=500, help="open connections for the RSS figure")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--balance-duration", type=int, default=20)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--compare-pure", action="store_true",
                    help="also measure the proxy with http11 in pure Python (no C fast path)")
    args = ap.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} not found: apt-get install -y nginx-light wrk")
    tmp = tempfile.mkdtemp(prefix="dsproxybench-")
    procs = Procs()
    log = open(os.path.join(tmp, "bench.log"), "wb")
    out = {"args": vars(args)}
    try:
        replicas = start_replicas(procs, args.replicas, log)
        print(f"{args.replicas} sync gunicorn replicas on ports {replicas}; logs in {tmp}")
        if args.scenario in ("throughput", "all"):
            print(f"throughput: wrk -t1 -c{args.connections} -d{args.duration}s, "
                  f"{args.rounds} alternating rounds (nginx: 1 worker; dashscale: {args.loop})")
            res = out["throughput"] = throughput(args, procs, tmp, log, replicas)
            med = res["median"]
            ng, ds = med["nginx"], med["dashscale"]
            print()
            print(f"{'median':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu µs/req':>11} {'errors':>7}")
            for name in med:
                m = med[name]
                print(f"{name:10} {m['rps']:8.0f} {m['p50'] * 1e3:8.2f} {m['p99'] * 1e3:8.2f} "
                      f"{m['cpu_us_per_req']:11.0f} {m['errors']:7.0f}")
            print(f"{'ratio':10} {ds['rps'] / ng['rps']:8.2f}x {ds['p50'] / ng['p50']:7.2f}x "
                  f"{ds['p99'] / ng['p99']:7.2f}x {ds['cpu_us_per_req'] / ng['cpu_us_per_req']:10.2f}x"
                  "   (dashscale / nginx; goals: req/s ≥ 0.85x, p50 ≤ 1.2x)")
            for name, pr in res["paired"].items():
                print(f"{name:10} median of the rounds' own ratios: req/s {pr['rps']:.2f}x, "
                      f"p50 {pr['p50']:.2f}x")
            if "pure-py" in med:
                py = med["pure-py"]
                print(f"{'pure-py':10} {py['rps'] / ng['rps']:8.2f}x {py['p50'] / ng['p50']:7.2f}x "
                      f"{py['p99'] / ng['p99']:7.2f}x {py['cpu_us_per_req'] / ng['cpu_us_per_req']:10.2f}x"
                      "   (the proxy without http11's C fast path / nginx)")
            for name, m in res["memory"].items():
                print(f"RSS {name:9} with {args.idle} open keep-alive connections: "
                      f"{m['rss_idle_conns'] / 2**20:6.1f} MiB (idle, none open: "
                      f"{m['rss_before'] / 2**20:.1f} MiB)")
        if args.scenario in ("balance", "all"):
            print(f"\nbalance: 3 loops of /slow?s=2 + 4 loops of / every 50 ms, "
                  f"{args.balance_duration}s per run, {args.rounds} alternating rounds")
            res = out["balance"] = balance(args, procs, tmp, log, replicas)
            print()
            for policy, m in res["median"].items():
                print(f"{policy:17} fast p50 {m['fast_p50'] * 1e3:7.1f} ms  p95 {m['fast_p95'] * 1e3:7.1f} ms"
                      f"  max {m['fast_max']:5.2f} s | slow p50 {m['slow_p50']:5.2f} s"
                      f"  max {m['slow_max']:5.2f} s | fast served {m['fast_n']:.0f}, slow served {m['slow_n']:.0f}")
    finally:
        procs.stop_all()
        log.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
