"""User-space instructions per proxied request, counted by valgrind's callgrind.

    python benchmarks/bench_proxy_instructions.py [--requests 2000]

Unlike req/s on a shared 2-core machine, an instruction count does not move with other
load: it is the figure to compare two versions of the proxy's per-request path. The
standalone proxy runs under ``valgrind --tool=callgrind`` in front of 4 sync gunicorn
replicas; 2 client threads send keep-alive GETs; the counter is zeroed after a warm-up
and dumped after ``--requests`` requests. Two runs: with http11's C fast path (what the
proxy uses) and without (the anchor: pure Python, DASHSCALE_HTTP11_PURE=1).

Needs valgrind (Debian package ``valgrind``).
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_proxy import Procs, free_port, start_replicas, wait_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def client(port, n, threads=2):
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port

    def worker(k):
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(k):
                s.sendall(req)
                buf = b""
                while True:
                    buf += s.recv(65536)
                    h = buf.find(b"\r\n\r\n")
                    if h >= 0:
                        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:h])
                        if len(buf) >= h + 4 + int(m.group(1)):
                            assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
                            break

    ts = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def instructions_per_request(procs, replicas, requests, pure, tmp, log):
    port = free_port()
    out = os.path.join(tmp, f"callgrind.{'pure' if pure else 'c'}.out")
    env = dict(os.environ)
    env.pop("DASHSCALE_HTTP11_PURE", None)
    if pure:
        env["DASHSCALE_HTTP11_PURE"] = "1"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, "-m", "dashscale_local.proxy", "--port", str(port)]
    for b in replicas:
        cmd += ["--backend", f"127.0.0.1:{b}"]
    p = procs.start(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
    wait_port(port, timeout=120, proc=p)
    client(port, 300)                       # warm-up: imports, caches, first connections
    subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
    client(port, requests)
    subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
    procs.stop(p)
    dumps = [f for f in os.listdir(tmp) if f.startswith(os.path.basename(out) + ".")]
    path = os.path.join(tmp, sorted(dumps)[-1]) if dumps else out
    with open(path) as f:
        total = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
    return total / requests


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found: apt-get install -y valgrind")
    tmp = tempfile.mkdtemp(prefix="dsinstr-")
    procs = Procs()
    log = open(os.path.join(tmp, "bench.log"), "wb")
    try:
        replicas = start_replicas(procs, 4, log)
        c = instructions_per_request(procs, replicas, args.requests, False, tmp, log)
        py = instructions_per_request(procs, replicas, args.requests, True, tmp, log)
    finally:
        procs.stop_all()
        log.close()
    print(f"user-space instructions per request ({args.requests} keep-alive GETs, 2 clients)")
    print(f"{'C fast path':14} {c / 1000:8.1f}k")
    print(f"{'pure Python':14} {py / 1000:8.1f}k   (anchor)")
    print(f"{'ratio':14} {c / py:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
